"""Agreement of the functional API with the independent float64 reference in tests/reference.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reprsim
from reprsim.measures import _cka

from . import reference as ref


def related_pair(n: int, p: int, q: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x and a noisy linear map of it, both with a large common offset (which centring must remove)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) * rng.uniform(0.5, 2.0, size=p) + 3.0
    w = rng.normal(size=(p, q)) / np.sqrt(p)
    y = np.tanh(x @ w) + 0.5 * rng.normal(size=(n, q)) - 1.0
    return x, y


# (n, p, q): tiny n, p >> n, n >> p, square-ish, unequal widths.
SHAPES = [(4, 1, 1), (5, 3, 2), (12, 3000, 40), (64, 1, 300), (300, 20, 20), (700, 512, 96), (2000, 7, 3)]
ESTIMATORS = [(kernel, unbiased) for kernel in ("linear", "rbf", "laplace") for unbiased in (False, True, "lange")]


# Linear CKA has two code paths (feature space, n×n Grams); each linear case runs through both as well as
# through the automatic choice.
ESTIMATOR_PATHS = [
    ("linear", unbiased, space) for unbiased in (False, True, "lange") for space in ("auto", "features", "samples")
] + [(kernel, unbiased, "auto") for kernel in ("rbf", "laplace") for unbiased in (False, True, "lange")]


def force_linear_path(monkeypatch: pytest.MonkeyPatch, space: str) -> None:
    if space != "auto":
        monkeypatch.setattr(_cka, "_prefer_feature_space", lambda n, p, q: space == "features")


@pytest.mark.parametrize(("n", "p", "q"), SHAPES)
@pytest.mark.parametrize(("kernel", "unbiased", "space"), ESTIMATOR_PATHS)
def test_cka_float64_matches_reference(
    n: int,
    p: int,
    q: int,
    kernel: str,
    unbiased: bool,
    space: str,
    device: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if unbiased and n < 4:
        return  # the unbiased estimator is undefined below 4 samples (its error is tested elsewhere)
    force_linear_path(monkeypatch, space)
    x, y = related_pair(n, p, q, seed=n + p + q)
    expected = ref.cka(x, y, kernel=kernel, unbiased=unbiased)
    got = reprsim.cka(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), kernel=kernel, unbiased=unbiased)
    assert got.dtype == torch.float64
    assert got.device.type == device
    assert abs(float(got) - expected) <= 1e-10


@pytest.mark.parametrize(("n", "p", "q"), SHAPES)
@pytest.mark.parametrize(("kernel", "unbiased"), ESTIMATORS)
def test_cka_float32_matches_reference(n: int, p: int, q: int, kernel: str, unbiased: bool, device: str) -> None:
    if unbiased and n < 4:
        return  # the unbiased estimator is undefined below 4 samples (its error is tested elsewhere)
    x, y = related_pair(n, p, q, seed=n * p + q)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    expected = ref.cka(x32, y32, kernel=kernel, unbiased=unbiased)
    got = reprsim.cka(
        torch.from_numpy(x32).to(device), torch.from_numpy(y32).to(device), kernel=kernel, unbiased=unbiased
    )
    assert got.dtype == torch.float32
    assert abs(float(got) - expected) <= 1e-5


@pytest.mark.parametrize("space", ["samples", "features"])
@pytest.mark.parametrize("unbiased", [False, True, "lange"])
@pytest.mark.parametrize("rows", [1, 7, 16, 50])  # one row, a remainder strip, exact division, one strip
def test_symmetric_strips_match_reference(
    space: str, unbiased: bool, rows: int, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither path forms its symmetric products whole: the n×n path sums the upper triangle of row strips of
    # XXᵀ and YYᵀ, the feature path that of column strips of XᵀX and YᵀY. Every strip height gives the
    # reference's number, on every device (the heights used in practice depend on the size and the device).
    force_linear_path(monkeypatch, space)
    monkeypatch.setattr(_cka, "_strip_rows", lambda n, device: rows)
    x, y = related_pair(50, 48, 50, seed=rows)
    expected = ref.cka(x, y, unbiased=unbiased)
    got = reprsim.cka(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), unbiased=unbiased)
    assert abs(float(got) - expected) <= 1e-10


@pytest.mark.parametrize("unbiased", [False, True, "lange"])
def test_float32_strips_of_a_large_gram(unbiased: bool, device: str) -> None:
    # n = 1500 > 384 uses 256-row strips on the CPU (the last one shorter); p > n takes the n×n path
    x, y = related_pair(1500, 1600, 1700, seed=11)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    expected = ref.cka(x32, y32, unbiased=unbiased)
    got = reprsim.cka(torch.from_numpy(x32).to(device), torch.from_numpy(y32).to(device), unbiased=unbiased)
    assert got.dtype == torch.float32
    assert abs(float(got) - expected) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(("kernel", "unbiased"), [("linear", False), ("linear", True), ("rbf", False)])
def test_cka_large_n(kernel: str, unbiased: bool) -> None:
    x, y = related_pair(5000, 10, 6, seed=7)
    expected = ref.cka(x, y, kernel=kernel, unbiased=unbiased)
    assert abs(reprsim.cka(x, y, kernel=kernel, unbiased=unbiased) - expected) <= 1e-10


def test_rbf_explicit_sigma_and_median_fraction() -> None:
    x, y = related_pair(80, 6, 5, seed=3)
    for kwargs in ({"sigma": 0.7}, {"sigma": 25.0}, {"median_fraction": 0.4}, {"median_fraction": 2.5}):
        expected = ref.cka(x, y, kernel="rbf", **kwargs)  # type: ignore[arg-type]
        assert abs(reprsim.cka(x, y, kernel="rbf", **kwargs) - expected) <= 1e-10  # type: ignore[arg-type]
    # the bandwidth matters: a wrong one would not change the number
    assert abs(reprsim.cka(x, y, kernel="rbf", sigma=0.7) - reprsim.cka(x, y, kernel="rbf", sigma=25.0)) > 1e-3


@pytest.mark.parametrize("n", [5, 6])  # odd and even n²: NumPy averages the two middle entries when even
def test_rbf_median_convention_includes_diagonal(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 3))
    expected = ref.rbf_kernel(x)
    got = reprsim.rbf_gram(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_numpy_in_float_out_and_torch_in_tensor_out() -> None:
    x, y = related_pair(50, 4, 3, seed=1)
    assert type(reprsim.cka(x, y)) is float
    assert type(reprsim.cka(x.tolist(), y.tolist())) is float
    out = reprsim.cka(torch.from_numpy(x), y)
    assert isinstance(out, torch.Tensor)
    assert out.ndim == 0


def test_low_precision_and_integer_inputs_are_upcast() -> None:
    x, y = related_pair(100, 8, 8, seed=2)
    xh, yh = torch.from_numpy(x).half(), torch.from_numpy(y).bfloat16()
    got = reprsim.cka(xh, yh)
    assert got.dtype == torch.float32
    expected = ref.cka(xh.double().numpy(), yh.double().numpy())
    assert abs(float(got) - expected) <= 1e-5
    forced = reprsim.cka(xh, yh, dtype=torch.float64)
    assert forced.dtype == torch.float64
    assert abs(float(forced) - expected) <= 1e-10
    xi = np.round(x * 10).astype(np.int64)
    assert abs(reprsim.cka(xi, y) - ref.cka(xi.astype(float), y)) <= 1e-5


def test_trailing_dims_are_flattened() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 2, 3, 4)), rng.normal(size=(30, 5))
    assert abs(reprsim.cka(x, y) - ref.cka(x.reshape(30, -1), y)) <= 1e-10


def test_cka_is_differentiable() -> None:
    x, y = related_pair(40, 5, 4, seed=5)
    xt = torch.from_numpy(x).requires_grad_()
    value = reprsim.cka(xt, torch.from_numpy(y))
    value.backward()
    assert xt.grad is not None
    assert torch.isfinite(xt.grad).all()
    assert float(xt.grad.abs().max()) > 0


@pytest.mark.parametrize(
    ("kernel_kwargs", "space"),
    [({"kernel": "linear"}, space) for space in ("auto", "features", "samples")]
    + [({"kernel": "rbf", "sigma": 2.0}, "auto"), ({"kernel": "rbf", "median_fraction": 0.8}, "auto")],
)
@pytest.mark.parametrize("unbiased", [False, True])
def test_gradcheck_cka(
    unbiased: bool, kernel_kwargs: dict[str, object], space: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    force_linear_path(monkeypatch, space)
    x, y = related_pair(8, 3, 2, seed=11)
    xt = torch.from_numpy(x).requires_grad_()
    yt = torch.from_numpy(y).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: reprsim.cka(a, b, unbiased=unbiased, **kernel_kwargs),  # type: ignore[arg-type]
        (xt, yt),
    )


@pytest.mark.parametrize("unbiased", [False, True, "lange"])
def test_gradcheck_hsic(unbiased: bool) -> None:
    rng = np.random.default_rng(12)
    k = torch.from_numpy(ref.linear_kernel(rng.normal(size=(7, 3)))).requires_grad_()
    l = torch.from_numpy(ref.rbf_kernel(rng.normal(size=(7, 2)))).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: reprsim.hsic(a, b, unbiased=unbiased), (k, l))


@pytest.mark.parametrize("unbiased", [False, True, "lange"])
def test_hsic_and_cka_from_grams_match_reference(unbiased: bool, device: str) -> None:
    x, y = related_pair(60, 9, 4, seed=13)
    k, l = ref.linear_kernel(x), ref.rbf_kernel(y)
    h_ref = {False: ref.hsic_biased, True: ref.hsic_unbiased, "lange": ref.hsic_lange}[unbiased](k, l)
    kt, lt = torch.from_numpy(k).to(device), torch.from_numpy(l).to(device)
    assert abs(float(reprsim.hsic(kt, lt, unbiased=unbiased)) - h_ref) <= 1e-10 * max(1.0, abs(h_ref))
    c_ref = ref.cka_from_kernels(k, l, unbiased)
    assert abs(float(reprsim.cka_from_grams(kt, lt, unbiased=unbiased)) - c_ref) <= 1e-10


@pytest.mark.parametrize("unbiased", [False, True])
def test_center_gram_inner_product_is_hsic(unbiased: bool) -> None:
    x, y = related_pair(30, 5, 3, seed=14)
    k, l = ref.linear_kernel(x), ref.linear_kernel(y)
    kc = reprsim.center_gram(k, unbiased=unbiased).numpy()
    lc = reprsim.center_gram(l, unbiased=unbiased).numpy()
    n = 30
    scale = n * (n - 3) if unbiased else (n - 1) ** 2
    expected = ref.hsic_unbiased(k, l) if unbiased else ref.hsic_biased(k, l)
    assert abs(float((kc * lc).sum()) / scale - expected) <= 1e-10 * abs(expected)


def test_linear_gram_matches_reference() -> None:
    x = np.random.default_rng(15).normal(size=(9, 4, 2))
    flat = x.reshape(9, -1)
    np.testing.assert_allclose(reprsim.linear_gram(x).numpy(), flat @ flat.T, rtol=1e-13)  # raw XXᵀ, uncentred


@pytest.mark.parametrize(("kernel", "unbiased"), ESTIMATORS)
def test_cka_matrix_matches_reference_pairs(kernel: str, unbiased: bool, device: str) -> None:
    rng = np.random.default_rng(16)
    n = 50
    base = rng.normal(size=(n, 6))
    xs = [base, np.tanh(base @ rng.normal(size=(6, 30))), rng.normal(size=(n, 2, 2))]
    ys = [base + 0.3 * rng.normal(size=(n, 6)), rng.normal(size=(n, 11))]
    got = reprsim.cka_matrix(
        [torch.from_numpy(v).to(device) for v in xs],
        [torch.from_numpy(v).to(device) for v in ys],
        kernel=kernel,
        unbiased=unbiased,
    )
    assert got.shape == (3, 2)
    expected = np.array([[ref.cka(a, b, kernel=kernel, unbiased=unbiased) for b in ys] for a in xs])
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=0, atol=1e-10)
    # without ys: all pairs within xs, symmetric with a unit diagonal
    self_m = reprsim.cka_matrix([torch.from_numpy(v) for v in xs], kernel=kernel, unbiased=unbiased)
    expected_self = np.array([[ref.cka(a, b, kernel=kernel, unbiased=unbiased) for b in xs] for a in xs])
    np.testing.assert_allclose(self_m.numpy(), expected_self, rtol=0, atol=1e-10)


def test_cka_matrix_float32_and_grad() -> None:
    rng = np.random.default_rng(17)
    xs = [torch.from_numpy(rng.normal(size=(40, d)).astype(np.float32)).requires_grad_() for d in (3, 8)]
    m = reprsim.cka_matrix(xs, [xs[0] * 2 + 1])
    assert m.dtype == torch.float32
    assert abs(float(m.detach()[0, 0]) - 1.0) < 1e-5
    m.sum().backward()
    assert xs[1].grad is not None
    assert torch.isfinite(xs[1].grad).all()


def test_rbf_duplicate_rows_are_at_distance_exactly_zero() -> None:
    rng = np.random.default_rng(18)
    x = rng.normal(size=(12, 5)) * 100 + 1e3  # large norms make expansion residues large
    x[7] = x[2]
    x[9] = x[2]
    k = reprsim.rbf_gram(x, sigma=3.0)
    assert float(k[2, 7]) == 1.0
    assert float(k[7, 9]) == 1.0
    np.testing.assert_allclose(k.numpy(), ref.rbf_kernel(x, sigma=3.0), rtol=0, atol=1e-10)


@pytest.mark.parametrize("magnitude", [1e-18, 1e15])
@pytest.mark.parametrize(("n", "p"), [(300, 20), (30, 200)])  # feature space and sample space
@pytest.mark.parametrize("unbiased", [False, True])
def test_float32_extreme_magnitudes_neither_overflow_nor_underflow(
    magnitude: float, n: int, p: int, unbiased: bool
) -> None:
    x, y = related_pair(n, p, p // 2, seed=19)
    expected = ref.cka(x, y, unbiased=unbiased)
    xs = torch.from_numpy(x * magnitude).float()
    got = reprsim.cka(xs, torch.from_numpy(y).float(), unbiased=unbiased)
    assert abs(float(got) - expected) <= 1e-5
    m = reprsim.cka_matrix([xs], [torch.from_numpy(y).float()], unbiased=unbiased)
    assert abs(float(m[0, 0]) - expected) <= 1e-5


def test_median_bandwidth_matches_numpy_for_every_small_n() -> None:
    from reprsim._kernels import median_sigma, squared_distances

    rng = np.random.default_rng(20)
    for n in range(2, 41):
        x = np.round(rng.normal(size=(n, 3)), 1)  # coarse values: ties and duplicate rows
        x[n // 2] = x[0]
        d2 = ref.cdist(x, x, "sqeuclidean")
        got = float(median_sigma(squared_distances(torch.from_numpy(x)), 0.5))
        assert got == pytest.approx(0.5 * np.sqrt(np.median(d2)), rel=1e-12, abs=1e-12), n


def test_half_precision_is_accepted_as_input_and_refused_as_the_dtype_computed_in() -> None:
    """At n = 10⁴ float16 sums of squares overflow: computing in float16 gave NaN, and unbiased a false
    "constant" error. float16 inputs are upcast; dtype=torch.float16 is refused with the reason."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 8))
    y = np.tanh(x @ rng.normal(size=(8, 8)))
    x16, y16 = torch.tensor(x, dtype=torch.float16), torch.tensor(y, dtype=torch.float16)
    for unbiased in (False, True):
        expected = ref.cka(x16.double().numpy(), y16.double().numpy(), unbiased=unbiased)
        assert abs(float(reprsim.cka(x16, y16, unbiased=unbiased)) - expected) < 1e-5
        for dtype in (torch.float16, torch.bfloat16):
            with pytest.raises(reprsim.errors.InvalidParameterError, match="too narrow to compute in"):
                reprsim.cka(x16, y16, unbiased=unbiased, dtype=dtype)
    with pytest.raises(reprsim.errors.InvalidParameterError, match=r"dtype must be a torch dtype .*'float32' \(str\)"):
        reprsim.cka(x, y, dtype="float32")  # type: ignore[arg-type]


# -- arrays from other frameworks ---------------------------------------------------------------------------


class DLPackOnly:
    """What JAX, CuPy or TensorFlow arrays offer: the DLPack protocol, and no NumPy or torch type."""

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __dlpack__(self, **kwargs: object) -> object:
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._a.__dlpack_device__()  # type: ignore[no-any-return]


class ArrayOnly:
    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self._a


def test_arrays_from_other_frameworks_are_read_without_a_copy() -> None:
    from reprsim._validation import as_matrix

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 6)), rng.normal(size=(50, 4))
    t = as_matrix(DLPackOnly(x), "x")
    assert t.data_ptr() == x.__array_interface__["data"][0]  # shared memory
    for fn in (reprsim.cka, reprsim.procrustes, reprsim.mutual_knn):
        assert fn(DLPackOnly(x), ArrayOnly(y)) == pytest.approx(fn(x, y), abs=1e-12)


# -- hsic on uncentred Grams of offset features (from the review of 0.2) -------------------------------------------


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("offset", [0.0, 100.0, 1000.0])
def test_hsic_of_raw_grams_with_a_common_offset(unbiased: bool, offset: float) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 8))
    y = np.tanh(x @ rng.normal(size=(8, 5))) + 0.3 * rng.normal(size=(60, 5))
    h = ref.hsic_unbiased if unbiased else ref.hsic_biased
    expected = h(ref.linear_kernel(x), ref.linear_kernel(y))  # the reference centres the features first
    k, l = reprsim.linear_gram(torch.tensor(x + offset)), reprsim.linear_gram(torch.tensor(y + offset))
    got = float(reprsim.hsic(k, l, unbiased=unbiased))
    assert abs(got - expected) <= 1e-10 * abs(expected)
    # and it agrees with cka_from_grams on the same Grams
    cka_ref = ref.cka_from_kernels(ref.linear_kernel(x), ref.linear_kernel(y), unbiased)
    selfs = [float(reprsim.hsic(g, g, unbiased=unbiased)) for g in (k, l)]
    assert abs(got / np.sqrt(selfs[0] * selfs[1]) - cka_ref) < 1e-10


@pytest.mark.parametrize("unbiased", [False, True, "lange"])
def test_laplace_cka_of_near_duplicates_keeps_full_accuracy(unbiased: bool) -> None:
    """docs/measures.md: the Laplace kernel takes the square root of squared distances; near-duplicates (10⁻⁹ apart,
    100 from the origin) are recomputed from their difference, so the root does not magnify rounding to √ε."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 5)) * 3 + 100
    x[30:45] = x[:15] + 1e-9 * rng.normal(size=(15, 5))
    y = np.tanh(x - 100) @ rng.normal(size=(5, 4))
    want = ref.cka(x, y, "laplace", unbiased, sigma=2.0)  # scipy's distances from differences
    for rows in (None, 7):
        assert abs(reprsim.cka(x, y, kernel="laplace", unbiased=unbiased, sigma=2.0, chunk_rows=rows) - want) < 1e-10


def test_unbiased_takes_false_true_or_lange() -> None:
    from reprsim.errors import InvalidParameterError
    from reprsim.measures import CKA

    x, y = related_pair(20, 3, 2, seed=1)
    with pytest.raises(InvalidParameterError, match=r"False .*True .*or 'lange'"):
        reprsim.cka(x, y, unbiased="song")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match=r"minibatch CKA always uses unbiased HSIC per batch \(Song"):
        CKA(estimator="minibatch", unbiased="lange")
    with pytest.raises(InvalidParameterError, match="chunk_rows= applies to the RBF and Laplace kernels"):
        reprsim.cka(x, y, unbiased="lange", chunk_rows=5)
    assert CKA(unbiased="lange").target == "population"  # tests/test_coverage.py: it covers the population CKA
    assert CKA(kernel="rbf", unbiased="lange").target == "expectation"
