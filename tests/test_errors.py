"""Bad input gets a clear error that names the problem and the fix; each message is pinned here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reprsim
from reprsim import ReprsimError, ReprsimWarning, cka
from reprsim.errors import (
    ConstantRepresentationError,
    DeviceMismatchError,
    InsufficientSamplesError,
    InvalidParameterError,
    NonFiniteError,
    ShapeMismatchError,
)
from reprsim.streaming import LinearCKA

rng = np.random.default_rng(0)
X = rng.normal(size=(20, 5))
Y = rng.normal(size=(20, 3))


def test_error_family() -> None:
    for cls in (
        ShapeMismatchError,
        InsufficientSamplesError,
        NonFiniteError,
        ConstantRepresentationError,
        DeviceMismatchError,
        InvalidParameterError,
    ):
        assert issubclass(cls, ReprsimError)
        assert issubclass(cls, ValueError)
    assert issubclass(reprsim.errors.IncompatibleStateError, RuntimeError)


def test_different_sample_counts() -> None:
    with pytest.raises(
        ShapeMismatchError,
        match=r"x and y must hold the same samples .* 20 rows in x \(shape \(20, 5\)\) and 19 in y",
    ):
        reprsim.cka(X, Y[:19])


@pytest.mark.parametrize(
    ("n", "unbiased", "msg"),
    [(1, False, "at least 2 samples; got 1"), (3, True, "at least 4 samples; got 3.*unbiased=False")],
)
def test_too_few_samples(n: int, unbiased: bool, msg: str) -> None:
    with pytest.raises(InsufficientSamplesError, match=msg):
        reprsim.cka(X[:n], Y[:n], unbiased=unbiased)


def test_non_finite_names_input_and_counts() -> None:
    bad = Y.copy()
    bad[0, 0] = np.nan
    bad[3, 1] = np.nan
    bad[5, 2] = -np.inf
    with pytest.raises(NonFiniteError, match=r"y contains 2 NaN and 1 infinite values out of 60"):
        reprsim.cka(X, bad)
    with pytest.raises(NonFiniteError, match=r"xs\[1\] contains 2 NaN"):
        reprsim.cka_matrix([X, bad])


def test_constant_representation() -> None:
    const = np.full((20, 4), 3.25)
    with pytest.raises(
        ConstantRepresentationError, match=r"y is constant: its 20 samples differ by no more than rounding"
    ):
        reprsim.cka(X, const)
    with pytest.raises(ConstantRepresentationError, match="x is constant"):
        reprsim.cka(const, Y, kernel="rbf")


def test_constant_in_cka_matrix_gives_nan_and_warning() -> None:
    const = np.zeros((20, 2))
    with pytest.warns(ReprsimWarning, match=r"ys\[1\] is constant over all samples"):
        m = reprsim.cka_matrix([X, Y], [Y, const])
    assert torch.isnan(m[:, 1]).all()
    assert torch.isfinite(m[:, 0]).all()
    assert abs(float(m[1, 0]) - 1.0) < 1e-12


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("inf"), float("nan")])
def test_non_positive_sigma(sigma: float) -> None:
    with pytest.raises(InvalidParameterError, match="sigma must be a positive finite bandwidth"):
        reprsim.cka(X, Y, kernel="rbf", sigma=sigma)


def test_zero_median_bandwidth_asks_for_sigma() -> None:
    dup = np.concatenate([np.repeat(X[:1], 18, axis=0), X[1:3]])  # 326 of the 400 pairs coincide
    with pytest.raises(InvalidParameterError, match="median bandwidth is 0; pass an explicit sigma"):
        reprsim.cka(dup, Y, kernel="rbf")
    assert 0.0 <= reprsim.cka(dup, Y, kernel="rbf", sigma=1.0) <= 1.0


def test_unknown_kernel() -> None:
    with pytest.raises(
        InvalidParameterError, match=r"kernel must be one of \('linear', 'rbf', 'laplace'\); got 'cosine'"
    ):
        reprsim.cka(X, Y, kernel="cosine")


def test_mismatched_devices() -> None:
    with pytest.raises(DeviceMismatchError, match=r"x on cpu, y on meta.*\.to\(device\)"):
        reprsim.cka(torch.from_numpy(X), torch.empty(20, 3, device="meta"))


def test_bad_types_and_shapes() -> None:
    with pytest.raises(InvalidParameterError, match="must hold numbers"):
        reprsim.cka(np.array([["a", "b"], ["c", "d"]]), Y[:2])
    with pytest.raises(ShapeMismatchError, match="got a scalar"):
        reprsim.cka(np.float64(1.0), Y)
    with pytest.raises(ShapeMismatchError, match="has no features"):
        reprsim.cka(np.zeros((20, 0)), Y)
    with pytest.raises(InvalidParameterError, match=r"dtype must be torch\.float32 or torch\.float64"):
        reprsim.cka(X, Y, dtype=torch.int64)
    with pytest.raises(ShapeMismatchError, match=r"square \(n, n\) Gram matrix; got shape \(20, 5\)"):
        reprsim.hsic(X, X)
    with pytest.raises(ShapeMismatchError, match="at least one representation in each sequence"):
        reprsim.cka_matrix([])


# -- inputs that used to end in a raw IndexError/TypeError/RuntimeError/OverflowError, or in a wrong number ----

_NET = torch.nn.Sequential(torch.nn.Linear(5, 3))
_BATCHES = [torch.randn(10, 5) for _ in range(3)]
_GRAD = torch.tensor(X, requires_grad=True)


def _crossmoments_group_99() -> object:
    acc = reprsim.streaming.CrossMoments(folds=3)
    acc.update(X, Y)
    return acc.jackknife_values("cka", group=99)


def _minibatch_procrustes() -> object:
    acc = reprsim.streaming.MinibatchCKA()
    for lo in range(0, 20, 5):
        acc.update(X[lo : lo + 5], Y[lo : lo + 5])
    return reprsim.inference.stream_interval(acc, "procrustes")


BOUNDARY = {
    "cka_matrix of no samples": (lambda: reprsim.cka_matrix([np.zeros((0, 3))]), "needs at least 2 samples"),
    "cka_matrix of one array": (
        lambda: reprsim.cka_matrix(X),
        r"xs is one array of shape \(20, 5\).*cka_matrix\(\[x\]\)",
    ),
    "cka dtype as a string": (lambda: reprsim.cka(X, Y, dtype="float32"), r"dtype must be a torch dtype"),
    "k as a string": (lambda: reprsim.mutual_knn(X, Y, k="5"), r"k must be an integer .*got '5' \(str\)"),
    "k None": (lambda: reprsim.mutual_knn(X, Y, k=None), r"k must be an integer .*got None"),
    "rsa of a tensor that requires grad": (lambda: reprsim.rsa(_GRAD, Y), "not differentiable.*x.detach"),
    "dcor of a tensor that requires grad": (lambda: reprsim.distance_correlation(_GRAD, Y), "not differentiable"),
    "seed 'a'": (lambda: reprsim.inference.permutation_test(X, Y, permutations=5, seed="a"), "seed must be an integer"),
    "seed None": (lambda: reprsim.inference.bootstrap(X, Y, resamples=5, seed=None), "seed must be an integer"),
    "CrossMoments groups of names": (
        lambda: reprsim.streaming.CrossMoments(groups=[("a", None)]),
        r"groups is a list of pairs of layer-index lists",
    ),
    "jackknife_values group 99": (_crossmoments_group_99, r"group must be an integer from 0 to 0"),
    "CrossMoments blocks= (0.2)": (
        lambda: reprsim.streaming.CrossMoments(blocks=[([0], [1])]),
        r"blocks= is now groups= \(groups=\[\(\[0\], \[1\]\)\]\): the pairs of layer groups",
    ),
    "compute_matrix block= (0.2)": (
        lambda: reprsim.streaming.CrossMoments().compute_matrix("cka", block=0),
        r"compute_matrix's keywords changed \(see the CHANGELOG\): block= is now group= \(group=0\)",
    ),
    "compare model_names of one": (
        lambda: reprsim.compare(_NET, _NET, _BATCHES, layers_a=["0"], model_names=("a",), progress=False),
        "model_names must be two non-empty strings",
    ),
    "compare device 'nope'": (
        lambda: reprsim.compare(
            _NET, _NET, _BATCHES, layers_a=["0"], runtime=reprsim.Runtime(device="nope"), progress=False
        ),
        "device must be a torch device",
    ),
    "Extractor inputs=3": (
        lambda: reprsim.Extractor(_NET, ["0"], inputs=3),  # type: ignore[arg-type]
        "inputs must be a function of a batch",
    ),
    "Extractor(3)": (lambda: reprsim.Extractor(3, ["0"]), "Extractor takes an nn.Module; got int"),
    "pool_tokens of a dict": (lambda: reprsim.pool_tokens({"a": 1}, "mean"), "pool_tokens takes a tensor"),
    "linear_gram of NaN": (lambda: reprsim.linear_gram(np.array([[np.nan, 1.0], [1, 2]])), "1 NaN"),
    "unbiased='False' in cka": (
        lambda: reprsim.cka(X, Y, unbiased="False"),
        "unbiased must be False .*, True .* or 'lange' .*; got 'False'",
    ),
    "unbiased=1.0 in cka": (lambda: reprsim.cka(X, Y, unbiased=1.0), "unbiased must be True or False"),
    "unbiased='False' in cknna": (lambda: reprsim.cknna(X, Y, k=3, unbiased="False"), "unbiased must be True"),
    "unbiased='False' in dcor": (lambda: reprsim.distance_correlation(X, Y, unbiased="False"), "unbiased must be"),
    "unbiased='False' in LinearCKA": (lambda: reprsim.streaming.LinearCKA(unbiased="False"), "unbiased must be"),
    "ridge=inf": (lambda: reprsim.predictivity(X, Y, ridge=float("inf")), r"ridge must be a finite number"),
    "align='no'": (lambda: reprsim.compare_stores("a", align="no"), "align must be True or False"),
    "pairs with two models": (
        lambda: reprsim.compare(_NET, _NET, _BATCHES, layers_a=["0"], pairs=[("a", "b")], progress=False),
        "with two models there is one pair",
    ),
    "stream_interval of MinibatchCKA for procrustes": (_minibatch_procrustes, "holds minibatch CKA only"),
    "SimilarityResult with low > high": (
        lambda: reprsim.SimilarityResult(torch.zeros(1, 1), ["a"], ["b"], low=torch.ones(1, 1), high=torch.zeros(1, 1)),
        "low end exceeds its high end",
    ),
    "SimilarityResult with p = 5": (
        lambda: reprsim.SimilarityResult(torch.zeros(1, 1), ["a"], ["b"], p_values=torch.full((1, 1), 5.0)),
        r"p_values must lie in \[0, 1\]",
    ),
    "register(3)": (lambda: reprsim.measures.register("three", 3), "factory must be a callable"),
    "register a taken name": (
        lambda: reprsim.measures.register("cka", lambda: reprsim.measures.Procrustes()),
        "the measure name 'cka' is taken",
    ),
}


@pytest.mark.parametrize("case", sorted(BOUNDARY))
def test_bad_options_are_clear_errors_never_raw_ones_or_numbers(case: str) -> None:
    call, message = BOUNDARY[case]
    with pytest.raises(ReprsimError, match=message):
        call()


def test_numpy_integers_and_generators_are_accepted_as_their_python_kin() -> None:
    assert reprsim.mutual_knn(X, Y, k=np.int64(5)) == reprsim.mutual_knn(X, Y, k=5)
    assert reprsim.measures.SVCCA(keep=np.int64(3)) == reprsim.measures.SVCCA(keep=3)
    layers = reprsim.cka_matrix(layer for layer in (X, Y))  # a generator of layers is read once
    assert torch.equal(layers, reprsim.cka_matrix([X, Y]))
    assert reprsim.measures.get_measure("CKA") == reprsim.measures.get_measure("cka")  # names ignore case
    np.testing.assert_array_equal(reprsim.pool_tokens(np.ones((2, 3, 4)), "mean").numpy(), np.ones((2, 4)))


# -- bandwidths, rbf_gram, sparse and meta inputs (from the review of 0.2) -----------------------------------------


def test_explicit_sigma_with_out_of_range_values_is_a_clear_error() -> None:
    x = np.random.default_rng(0).normal(size=(10, 3)) * 1e200
    with pytest.raises(
        reprsim.errors.InvalidParameterError, match=r"squared distances leave the range of torch\.float64"
    ):
        cka(x, x, kernel="rbf", sigma=1.0)


def test_rbf_gram_bad_samples() -> None:
    with pytest.raises(reprsim.errors.NonFiniteError, match="1 NaN"):
        reprsim.rbf_gram(np.array([[0.0], [np.nan], [1.0]]))
    with pytest.raises(reprsim.errors.InsufficientSamplesError, match="at least 2 samples"):
        reprsim.rbf_gram(np.ones((1, 3)))
    with pytest.raises(reprsim.errors.InsufficientSamplesError, match="holds no samples"):
        reprsim.rbf_gram(np.ones((0, 3)))
    assert float(reprsim.rbf_gram(np.ones((1, 3)), sigma=1.0)[0, 0]) == 1.0


@pytest.mark.parametrize(
    ("sigma", "message"),
    [
        (1e300, "too large: its square overflows"),
        (1e-300, "too small: its square underflows"),
        ("1.0", "must be a positive real number"),
        ("wide", "must be a positive real number"),
        (float("nan"), "positive finite bandwidth"),
        (True, "must be a positive real number"),
    ],
)
def test_bad_sigma(sigma: object, message: str) -> None:
    x = np.random.default_rng(0).normal(size=(10, 3))
    for call in (
        lambda: reprsim.rbf_gram(x, sigma=sigma),  # type: ignore[arg-type]
        lambda: cka(x, x, kernel="rbf", sigma=sigma),  # type: ignore[arg-type]
        lambda: reprsim.streaming.MinibatchCKA(kernel="rbf", sigma=sigma),  # type: ignore[arg-type]
    ):
        with pytest.raises(reprsim.errors.InvalidParameterError, match=message):
            call()


def test_sparse_and_meta_inputs_get_clear_errors() -> None:
    x = torch.randn(10, 4)
    with pytest.raises(reprsim.errors.InvalidParameterError, match=r"sparse_coo tensor.*to_dense"):
        cka(x.to_sparse(), x)
    meta = torch.empty(10, 4, device="meta")
    with pytest.raises(reprsim.errors.InvalidParameterError, match="meta tensor"):
        cka(meta, meta)
    with pytest.raises(reprsim.errors.InvalidParameterError, match="meta tensor"):
        reprsim.cka_matrix([meta])
    with pytest.raises(reprsim.errors.InvalidParameterError, match="meta tensor"):
        LinearCKA().update(meta, meta)


def test_sizes_in_messages_keep_three_digits_so_a_size_over_a_limit_never_prints_as_the_limit() -> None:
    from reprsim._validation import format_bytes

    assert format_bytes(512) == "512 B"
    assert format_bytes(4 * 2**30) == "4 GiB"
    assert format_bytes(4.02 * 2**30) == "4.02 GiB"  # one decimal printed both as "4.0 GiB"
    assert format_bytes(3.4 * 2**20) == "3.4 MiB"
    assert format_bytes(1500 * 2**30) == "1,500 GiB"
