"""Sample-space measures (mutual k-NN, k-NN Jaccard, distance correlation): dense float64 references, blockwise
equal to dense for every strip size, the defined behaviour of ties, duplicates, n ≤ k and constant inputs, and
their use in compare."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from reprsim import Runtime, cka, compare
from reprsim.errors import (
    ConstantRepresentationError,
    InsufficientSamplesError,
    InvalidParameterError,
    MemoryBudgetError,
    ReprsimWarning,
    ShapeMismatchError,
)
from reprsim.measures import (
    CKNNA,
    RSA,
    DistanceCorrelation,
    MutualKNN,
    RankSimilarity,
    cknna,
    distance_correlation,
    jaccard_knn,
    mutual_knn,
    rank_similarity,
    rsa,
    second_order_cosine,
)

from . import reference_measures as rm
from .toys import batches, hand_extract, mlp


def data(n: int = 150, p: int = 6, q: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = np.tanh(x[:, :q] * 1.5) + 0.4 * rng.normal(size=(n, q))
    return x, y


@pytest.mark.parametrize("neighbours", ["cosine", "inner_product", "euclidean"])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_neighbour_measures_match_the_dense_reference(neighbours: str, k: int) -> None:
    x, y = data()
    assert mutual_knn(x, y, k=k, neighbours=neighbours) == pytest.approx(rm.mutual_knn(x, y, k, neighbours), abs=1e-12)
    assert jaccard_knn(x, y, k=k, neighbours=neighbours) == pytest.approx(
        rm.jaccard_knn(x, y, k, neighbours), abs=1e-12
    )


@pytest.mark.parametrize("neighbours", ["cosine", "inner_product", "euclidean"])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_neighbour_list_measures_match_the_dense_reference(neighbours: str, k: int) -> None:
    """platonic-rep's cycle, LCS and edit-distance k-NN against set and dynamic-programming references in plain
    Python, on the dense lists; for every strip size, and on data with exact ties (the lower index first)."""
    from reprsim.measures import LCSKNN, CycleKNN, EditDistanceKNN

    x, y = data()
    rng = np.random.default_rng(2)
    dup = np.vstack([x, x[:7]])
    ydup = np.vstack([y, y[:7]]) + 0.01 * rng.normal(size=(157, 4))
    for a, b in ((x, y), (dup, ydup)):
        for cls, ref in ((CycleKNN, rm.cycle_knn), (LCSKNN, rm.lcs_knn), (EditDistanceKNN, rm.edit_distance_knn)):
            want = ref(a, b, k, neighbours)
            for block in (None, 7):
                got = cls(k, neighbours, chunk_rows=block)(a, b)  # type: ignore[arg-type]
                assert got == pytest.approx(want, abs=1e-12), (cls.name, block)
    # identical representations: every list is its own longest common subsequence, at edit distance 0 (a round
    # trip need not return: j can be i's nearest neighbour without i being j's)
    assert LCSKNN(k, neighbours)(x, 2 * x) == k  # type: ignore[arg-type]
    assert EditDistanceKNN(k, neighbours)(x, x) == 1.0  # type: ignore[arg-type]


def test_cycle_knn_is_not_symmetric_and_the_sequence_tables_know_their_small_cases() -> None:
    from reprsim.measures import CycleKNN
    from reprsim.measures._samples import _sequence_table

    x, y = data(60, 6, 4, seed=5)
    assert CycleKNN(3)(x, y) != CycleKNN(3)(y, x)
    a = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [4, 3, 2, 1], [5, 6, 7, 8]])
    b = torch.tensor([[1, 2, 3, 4], [2, 3, 4, 1], [1, 2, 3, 4], [1, 2, 3, 4]])
    assert _sequence_table(a, b, "lcs").tolist() == [4, 3, 1, 0]
    # kitten-style cases: a rotation is one deletion and one insertion; a reversal of 4 is 4 substitutions
    assert _sequence_table(a, b, "edit").tolist() == [0, 2, 4, 4]


@pytest.mark.parametrize("unbiased", [False, True])
def test_distance_correlation_matches_the_dense_reference(unbiased: bool) -> None:
    x, y = data(200, 5, 3)
    assert abs(distance_correlation(x + 100.0, y, unbiased=unbiased) - rm.distance_correlation(x, y, unbiased)) < 1e-10
    xt = torch.tensor(x, dtype=torch.float32)
    got = distance_correlation(xt, torch.tensor(y, dtype=torch.float32), unbiased=unbiased)
    assert got.dtype == torch.float32
    assert abs(float(got) - rm.distance_correlation(xt.double().numpy(), y.astype(np.float32), unbiased)) < 1e-5


@pytest.mark.parametrize("block", [1, 7, 64, 149, 150, 1000])
def test_blockwise_equals_dense_for_every_block_size(block: int) -> None:
    x, y = data()
    assert mutual_knn(x, y, k=7, chunk_rows=block) == mutual_knn(x, y, k=7, chunk_rows=10_000)
    assert jaccard_knn(x, y, k=7, chunk_rows=block) == jaccard_knn(x, y, k=7, chunk_rows=10_000)
    for unbiased in (False, True):
        dense = rm.distance_correlation(x, y, unbiased)
        assert abs(distance_correlation(x, y, unbiased=unbiased, chunk_rows=block) - dense) < 1e-10


def test_ties_and_duplicates_have_a_defined_answer() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    dup = np.vstack([x, x[:5]])  # five samples with an exact twin: similarity ties
    y = dup + 0.01 * rng.normal(size=dup.shape)
    # ties go to the lower index, as a stable sort of the dense matrix orders them
    assert mutual_knn(dup, y, k=3) == pytest.approx(rm.mutual_knn(dup, y, 3), abs=1e-12)
    grid = np.repeat(np.arange(10.0), 2)[:, None] * np.ones((1, 2)) + 1.0  # every row has a twin: many ties
    assert mutual_knn(grid, grid, k=3, neighbours="inner_product") == 1.0
    assert mutual_knn(grid, grid[::-1].copy(), k=1, neighbours="inner_product") == pytest.approx(
        rm.mutual_knn(grid, grid[::-1].copy(), 1, "inner_product"), abs=1e-12
    )


def test_degenerate_inputs_are_clear_errors() -> None:
    x, y = data(10)
    with pytest.raises(InsufficientSamplesError, match="k = 10 neighbours need at least k \\+ 1 = 11 samples"):
        mutual_knn(x, y, k=10)
    with pytest.raises(InvalidParameterError, match="k must be an integer ≥ 1"):
        MutualKNN(k=0)
    zero = x.copy()
    zero[4] = 0.0
    with pytest.raises(ConstantRepresentationError, match=r"1 rows that are all zero \(e.g. row 4\)"):
        mutual_knn(zero, y, k=3)
    assert 0.0 <= mutual_knn(zero, y, k=3, neighbours="inner_product") <= 1.0
    with pytest.raises(ConstantRepresentationError, match="x is constant: its 10 samples"):
        distance_correlation(np.ones((10, 2)), y)
    with pytest.raises(InvalidParameterError, match="chunk_rows must be an integer ≥ 1"):
        distance_correlation(x, y, chunk_rows=0)
    # 0.2's block= names chunk_rows=, for every sample-space measure, functional form and class
    from reprsim.measures import CKA, SecondOrderCosine, rdm

    old = [
        lambda: distance_correlation(x, y, block=8),
        lambda: mutual_knn(x, y, k=3, block=8),
        lambda: rsa(x, y, block=8),
        lambda: rdm(x, block=8),
        lambda: cka(x, y, kernel="rbf", block=8),
        lambda: CKA(kernel="rbf", block=8),
        lambda: RSA(block=8),
        lambda: DistanceCorrelation(block=8),
        lambda: MutualKNN(block=8),
        lambda: SecondOrderCosine(block=8),
    ]
    for call in old:
        with pytest.raises(InvalidParameterError, match=r"block= is now chunk_rows= \(chunk_rows=8\)"):
            call()
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['blocks'\\]"):
        rsa(x, y, blocks=8)


def test_known_values() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    assert mutual_knn(x, 2 * x @ q, k=10) == 1.0
    assert abs(distance_correlation(x, 3 * x @ q + 2) - 1.0) < 1e-10
    ind = rng.normal(size=(300, 4))
    assert mutual_knn(x, ind, k=10) < 0.15  # chance level is k / (n − 1) ≈ 0.03
    assert abs(distance_correlation(x, ind, unbiased=True)) < 0.05  # bias-corrected: near 0 for independent data
    assert distance_correlation(x, ind) > 0.1  # the V-statistic is biased upwards at this n


def test_sample_measures_in_compare_equal_the_functional_forms() -> None:
    net, other = mlp(0), mlp(1)
    data_ = batches(n=192)
    layers = ["1", "3", "4"]
    out = compare(
        net,
        other,
        data_,
        layers_a=layers,
        measures=[
            "mutual_knn",
            DistanceCorrelation(unbiased=True),
            "cka",
            "cknna",
            "rank_similarity",
            "second_order_cosine",
            RSA("sqeuclidean", "pearson"),
            "rsa",
        ],
        progress=False,
    )
    a, b = hand_extract(net, layers, data_), hand_extract(other, layers, data_)
    for key, fn in (
        ("mutual_knn", lambda u, v: mutual_knn(u, v)),
        ("distance_correlation-unbiased", lambda u, v: distance_correlation(u, v, unbiased=True)),
        ("cknna", lambda u, v: cknna(u, v)),
        ("rank_similarity", lambda u, v: rank_similarity(u, v)),
        ("second_order_cosine", lambda u, v: second_order_cosine(u, v)),
        ("rsa-rdm=squared_euclidean-compare=pearson", lambda u, v: rsa(u, v, rdm="sqeuclidean", compare="pearson")),
        ("rsa", lambda u, v: rsa(u, v)),
    ):
        expected = torch.tensor([[float(fn(a[i], b[j])) for j in layers] for i in layers], dtype=torch.float64)
        torch.testing.assert_close(out[key].matrix, expected, rtol=0, atol=1e-10)
        assert out[key].metadata["samples"] == 192


def test_sample_measures_on_the_device(device: str) -> None:
    """The same numbers on CPU and CUDA, strips on the inputs' device."""
    x, y = data(120, 5, 3)
    xt, yt = torch.tensor(x, device=device), torch.tensor(y, device=device)
    got = mutual_knn(xt, yt, k=5, chunk_rows=17)
    assert got.device.type == device
    assert float(got) == pytest.approx(rm.mutual_knn(x, y, 5), abs=1e-12)
    assert float(jaccard_knn(xt, yt, k=5, neighbours="euclidean")) == pytest.approx(
        rm.jaccard_knn(x, y, 5, "euclidean"), abs=1e-12
    )
    for unbiased in (False, True):
        value = distance_correlation(xt, yt, unbiased=unbiased, chunk_rows=33)
        assert abs(float(value) - rm.distance_correlation(x, y, unbiased)) < 1e-10
        assert (
            abs(float(cknna(xt, yt, k=6, unbiased=unbiased, chunk_rows=19)) - rm.cknna(x, y, 6, "cosine", unbiased))
            < 1e-10
        )
    assert abs(float(second_order_cosine(xt, yt, k=4, chunk_rows=23)) - rm.second_order_cosine(x, y, 4)) < 1e-10
    assert abs(float(rank_similarity(xt, yt, k=4)) - rm.rank_similarity(x, y, 4)) < 1e-12
    from . import reference as ref

    for unbiased in (False, True):
        got = cka(xt, yt, kernel="rbf", unbiased=unbiased, chunk_rows=31)
        assert got.device.type == device
        assert abs(float(got) - ref.cka(x, y, "rbf", unbiased)) < 1e-10


RDMS = {"correlation": "correlation", "cosine": "cosine", "euclidean": "euclidean", "sqeuclidean": "sqeuclidean"}


def reference_rdm(x: np.ndarray, kind: str) -> np.ndarray:
    """The condensed RDM by scipy's pdist: rsatoolbox's "euclidean" is squared over the width; thingsvision's
    "gaussian" is 1 − exp(−D/μ), μ the mean squared distance over the whole square (zero diagonal included)."""
    from scipy.spatial.distance import pdist

    if kind == "sqeuclidean_per_feature":
        return pdist(x, "sqeuclidean") / x.shape[1]
    if kind == "gaussian":
        d = pdist(x, "sqeuclidean")
        mu = 2 * d.sum() / len(x) ** 2
        return 1 - np.exp(-d / mu)
    return pdist(x, RDMS[kind])


@pytest.mark.parametrize("rdm", [*RDMS, "sqeuclidean_per_feature", "gaussian"])
@pytest.mark.parametrize("how", ["pearson", "spearman"])
def test_rsa_matches_scipy_on_the_upper_triangles(rdm: str, how: str) -> None:
    from scipy.stats import pearsonr, spearmanr

    x, y = data(80, 6, 4)
    a, b = reference_rdm(x, rdm), reference_rdm(y, rdm)
    want = (pearsonr if how == "pearson" else spearmanr)(a, b)[0]
    for block in (None, 1, 13, 80):
        assert abs(rsa(x, y, rdm=rdm, compare=how, chunk_rows=block) - want) < 1e-10, block


def test_the_poisson_rdm_is_rsatoolboxs_and_refuses_what_is_not_a_rate() -> None:
    """rsatoolbox's calc_rdm_poisson written out: rates m = (x + 0.1)/1.1, the kernel m·log(m)ᵀ, the symmetrised
    KL over the channels. Integer counts give exactly tied dissimilarities, which the reference rounds to 1e-10
    (reprsim's tie tolerance groups them); every comparator, every strip size, float32 to 1e-5."""
    from scipy.stats import kendalltau, pearsonr, spearmanr

    from reprsim.errors import InvalidParameterError
    from reprsim.measures import rdm

    rng = np.random.default_rng(8)
    x = rng.poisson(3.0, size=(70, 9)).astype(float)
    y = rng.poisson(1.0, size=(70, 5)) + x[:, :5]

    def reference(a: np.ndarray) -> np.ndarray:
        m = (a + 0.1) / 1.1
        k = m @ np.log(m).T
        full = np.diag(k)[:, None] + np.diag(k)[None, :] - k - k.T
        return np.round(full[np.triu_indices(len(a), 1)] / a.shape[1], 10)

    a, b = reference(x), reference(y)
    np.testing.assert_allclose(rdm(x, kind="poisson", chunk_rows=11).numpy(), a, atol=1e-10)
    for how, fn in (("pearson", pearsonr), ("spearman", spearmanr), ("kendall", kendalltau)):
        for block in (None, 1, 13):
            assert abs(rsa(x, y, rdm="poisson", compare=how, chunk_rows=block) - fn(a, b)[0]) < 1e-10, (how, block)
    low = rsa(
        torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), rdm="poisson", compare="pearson"
    )
    assert abs(float(low) - pearsonr(a, b)[0]) < 1e-5
    with pytest.raises(InvalidParameterError, match=r"rates above −0\.1"):
        rsa(x - 1.0, y, rdm="poisson")


def test_rsa_spearman_gives_ties_their_average_rank() -> None:
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(40, 3)).astype(float)  # many equal distances: ties in the RDM
    y = x + rng.integers(0, 2, size=(40, 3))
    want = spearmanr(pdist(x, "sqeuclidean"), pdist(y, "sqeuclidean"))[0]
    assert abs(rsa(x, y, rdm="sqeuclidean", compare="spearman") - want) < 1e-12


@pytest.mark.parametrize("chunk", [3, 1 << 22])
def test_average_ranks_match_scipy_with_and_without_ties_in_every_chunking(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scipy.stats import rankdata

    from reprsim.measures import _samples

    monkeypatch.setattr(_samples, "RANK_CHUNK", chunk)
    rng = np.random.default_rng(11)
    for v in (rng.normal(size=101), rng.integers(0, 7, size=101).astype(float), np.full(5, 2.5), np.array([1.0])):
        got = _samples._average_ranks(torch.tensor(v))
        np.testing.assert_array_equal(got.numpy(), rankdata(v))
    x, y = data(60, 5, 3)
    xi, yi = np.round(2 * x), np.round(2 * y)  # tied distances
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    want = spearmanr(pdist(xi, "sqeuclidean"), pdist(yi, "sqeuclidean"))[0]
    assert abs(rsa(xi, yi, rdm="sqeuclidean") - want) < 1e-12


def test_rank_rsa_over_its_memory_budget_says_what_it_needs_and_what_to_do_instead() -> None:
    x, y = data(300, 5, 4)
    for how, per_entry in (("spearman", 64), ("kendall", 128)):
        need = per_entry * 300 * 299 // 2 + 64 * 2**20
        with pytest.raises(MemoryBudgetError) as caught:
            rsa(x, y, compare=how, max_memory=need - 1)
        message = str(caught.value)
        assert f"exact {how.capitalize()} RSA of 300 samples ranks two triangles of 44,850" in message
        assert "over its budget of" in message
        assert "(max_memory)" in message
        assert "compare='pearson'" in message
        assert "subsample of the stimuli" in message
        assert isinstance(caught.value, MemoryError)
        assert isinstance(caught.value, InvalidParameterError)
        assert rsa(x, y, compare=how, max_memory=need) == rsa(x, y, compare=how)  # at the budget: computed
    assert np.isfinite(rsa(x, y, compare="pearson", max_memory=1))  # strips: no budget to exceed
    with pytest.raises(InvalidParameterError, match="max_memory must be an integer ≥ 1"):
        RSA(max_memory=0)
    # inside compare the measure's own budget applies, before any triangle is built
    net = mlp(0)
    with pytest.raises(MemoryBudgetError, match="exact Spearman RSA of 96 samples"):
        compare(net, mlp(1), batches(n=96), layers_a=["0"], measure=RSA(max_memory=1000), progress=False)


def test_rsa_errors() -> None:
    x, y = data(30)
    flat = x.copy()
    flat[2] = 5.0  # constant across its features: no correlation distance
    with pytest.raises(ConstantRepresentationError, match="constant across features"):
        rsa(flat, y)
    with pytest.raises(InvalidParameterError, match="rdm must be one of"):
        rsa(x, y, rdm="manhattan")  # type: ignore[arg-type]
    for rdm in ("euclidean", "sqeuclidean"):  # in strips, and from moments
        with pytest.raises(ConstantRepresentationError, match="RDM of x is constant"):
            rsa(np.eye(4), y[:4], rdm=rdm, compare="pearson")  # every pair at distance √2
    with pytest.raises(ConstantRepresentationError, match="y is constant: its 30 samples differ"):
        rsa(x, np.ones_like(y), rdm="sqeuclidean", compare="pearson")


def test_rsa_pearson_on_squared_euclidean_rdms_streams_exactly() -> None:
    from scipy.spatial.distance import pdist
    from scipy.stats import pearsonr

    from reprsim.streaming import CrossMoments

    x, y = data(300, 6, 4, seed=11)
    x = x * 50.0 + 1e3  # large, offset activations: the streamed sums stay accurate
    want = pearsonr(pdist(x, "sqeuclidean"), pdist(y, "sqeuclidean"))[0]
    measure = RSA("sqeuclidean", "pearson")
    assert measure.stream == "moments"
    assert measure.fourth
    acc = CrossMoments(fourth=True)
    for s in (slice(0, 1), slice(1, 120), slice(120, 300)):
        acc.update(torch.tensor(x[s]), torch.tensor(y[s]))
    assert abs(acc.compute(measure) - want) < 1e-10
    assert abs(acc.compute(RSA("sqeuclidean_per_feature", "pearson")) - want) < 1e-10
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    got = rsa(torch.tensor(x32), torch.tensor(y32), rdm="sqeuclidean", compare="pearson")
    want32 = pearsonr(pdist(x32.astype(np.float64), "sqeuclidean"), pdist(y32.astype(np.float64), "sqeuclidean"))[0]
    assert abs(float(got) - want32) < 1e-5


@pytest.mark.parametrize("kernel", ["cosine", "inner_product"])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("k", [2, 10, 40])
def test_cknna_matches_the_dense_platonic_definition(kernel: str, unbiased: bool, k: int) -> None:
    x, y = data(120, 6, 4)
    want = rm.cknna(x, y, k, kernel, unbiased)
    for block in (None, 7, 120):
        got = cknna(x, y, k=k, neighbours=kernel, unbiased=unbiased, chunk_rows=block)  # type: ignore[arg-type]
        assert abs(got - want) < 1e-10, block
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    got32 = cknna(xt, yt, k=k, neighbours=kernel, unbiased=unbiased)  # type: ignore[arg-type]
    assert abs(float(got32) - rm.cknna(xt.double().numpy(), yt.double().numpy(), k, kernel, unbiased)) < 1e-5


@pytest.mark.parametrize("k", [1, 5, 30])
def test_second_order_cosine_and_rank_similarity_match_resi(k: int) -> None:
    x, y = data(110, 5, 4, seed=2)
    for block in (None, 9, 110):
        assert abs(second_order_cosine(x, y, k=k, chunk_rows=block) - rm.second_order_cosine(x, y, k)) < 1e-10
        for neighbours in ("cosine", "euclidean"):
            got = rank_similarity(x, y, k=k, neighbours=neighbours, chunk_rows=block)  # type: ignore[arg-type]
            assert abs(got - rm.rank_similarity(x, y, k, neighbours)) < 1e-12


def test_neighbour_order_is_by_similarity_then_index() -> None:
    from reprsim.measures._samples import _neighbour_indices

    # integer data: every product is exact, so twins tie exactly (a blocked matmul may round the products of
    # two equal columns differently, and the order of near-equal similarities then follows the rounding)
    ints = np.random.default_rng(5).integers(-3, 4, size=(50, 3)).astype(float)
    ints = np.vstack([ints, ints[:6]])
    for own in (False, True):
        got = _neighbour_indices(torch.tensor(ints), 8, "inner_product", 7, "x", include_self=own)
        np.testing.assert_array_equal(got.numpy(), rm.knn_lists(ints, 8, "inner_product", include_self=own))


def test_second_order_cosine_duplicates_count_as_zero_with_a_warning() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(size=(10, 3))
    x = np.repeat(base, 3, axis=0)  # every sample has two exact twins
    with pytest.warns(ReprsimWarning, match="30 samples have all their union neighbours at cosine distance 0"):
        value = second_order_cosine(x, 2 * x, k=2)  # both neighbours of every sample are its twins
    assert value == 0.0 == rm.second_order_cosine(x, 2 * x, 2)
    y = x + 0.1 * rng.normal(size=x.shape)  # twins in x only: some unions reach non-twins through y
    with pytest.warns(ReprsimWarning, match="samples have all their union neighbours"):
        value = second_order_cosine(x, y, k=2)
    assert abs(value - rm.second_order_cosine(x, y, 2)) < 1e-10


def test_cknna_and_rank_errors() -> None:
    x, y = data(12)
    with pytest.raises(InsufficientSamplesError, match="k = 12 neighbours need at least k \\+ 1 = 13"):
        cknna(x, y, k=12)
    assert np.isfinite(cknna(x, y, k=12, unbiased=False))  # self included: n ≥ k suffices
    with pytest.raises(InvalidParameterError, match=r"neighbours must be 'cosine' or 'inner_product'.*define none"):
        CKNNA(neighbours="euclidean")
    # kernel= is CKA's; CKNNA's similarity is named as in the other k-NN measures, and the old name says so
    for old in (lambda: CKNNA(kernel="inner_product"), lambda: cknna(x, y, k=3, kernel="inner_product")):
        with pytest.raises(InvalidParameterError, match=r"kernel= is now neighbours= \(neighbours='inner_product'\)"):
            old()
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['kernels'\\]"):
        CKNNA(kernels="cosine")
    assert CKNNA(neighbours="inner_product").id == "cknna-topk=10-neighbours=inner_product"
    with pytest.raises(InvalidParameterError, match="k must be an integer ≥ 1"):
        RankSimilarity(k=0)
    zero = x.copy()
    zero[3] = 0.0
    with pytest.raises(ConstantRepresentationError, match="rows that are all zero"):
        second_order_cosine(zero, y, k=3)


@pytest.mark.parametrize("rdm", ["correlation", "euclidean", "sqeuclidean"])
def test_rsa_kendall_matches_scipy_tau_b(rdm: str) -> None:
    from scipy.spatial.distance import pdist
    from scipy.stats import kendalltau

    x, y = data(60, 5, 3, seed=6)
    want = kendalltau(pdist(x, rdm), pdist(y, rdm)).statistic
    assert abs(rsa(x, y, rdm=rdm, compare="kendall") - want) < 1e-12  # type: ignore[arg-type]
    rng = np.random.default_rng(8)
    ints = rng.integers(0, 3, size=(35, 3)).astype(float)  # many ties, in each RDM and jointly
    other = ints + rng.integers(0, 2, size=(35, 3))
    want = kendalltau(pdist(ints, "sqeuclidean"), pdist(other, "sqeuclidean")).statistic
    assert abs(rsa(ints, other, rdm="sqeuclidean", compare="kendall", chunk_rows=4) - want) < 1e-12


@pytest.mark.parametrize("rdm", ["correlation", "euclidean", "sqeuclidean"])
def test_rsa_cosine_rho_a_and_tau_a_match_rsatoolbox_definitions(rdm: str) -> None:
    """rsatoolbox's comparators, written here from its definitions: the cosine of the triangles, ρ-a (rank
    covariance over the variance of untied ranks) and τ-a (pair signs over all pairs, ties counting 0), on
    continuous data and on integer data with many exact ties (whose distances are exact, so ties are ties)."""
    from itertools import combinations

    from scipy.spatial.distance import pdist
    from scipy.stats import rankdata

    def references(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        n = len(a)
        ra, rb = rankdata(a) - (n + 1) / 2, rankdata(b) - (n + 1) / 2
        signs = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in combinations(range(n), 2))
        return {
            "cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
            "rho_a": float(ra @ rb * 12 / (n**3 - n)),
            "tau_a": float(signs / (n * (n - 1) / 2)),
        }

    x, y = data(30, 5, 3, seed=6)
    rng = np.random.default_rng(8)
    ints = rng.integers(0, 3, size=(25, 3)).astype(float)
    other = ints + rng.integers(0, 2, size=(25, 3))
    cases = [(x, y)] + ([(ints, other)] if rdm != "correlation" else [])  # integer rows can be constant
    for u, v in cases:
        want = references(pdist(u, rdm), pdist(v, rdm))
        for how, value in want.items():
            for rows in (None, 4):
                got = rsa(u, v, rdm=rdm, compare=how, chunk_rows=rows)  # type: ignore[arg-type]
                assert abs(got - value) < 1e-12, (how, rows)


def test_discordant_pair_count_on_small_vectors() -> None:
    from itertools import combinations

    from reprsim.measures._samples import _discordant

    rng = np.random.default_rng(9)
    for n in (1, 2, 3, 5, 8, 13, 64):
        v = rng.integers(0, 4, size=n).astype(float)
        want = sum(1 for p, q in combinations(range(n), 2) if v[p] > v[q])
        assert _discordant(torch.tensor(v)) == want


# -- RBF CKA beyond memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["rbf", "laplace"])
@pytest.mark.parametrize("unbiased", [False, True, "lange"])
@pytest.mark.parametrize("sigma", [None, 2.5])
def test_blockwise_kernel_cka_equals_the_dense_reference(kernel: str, unbiased: bool, sigma: float | None) -> None:
    from . import reference as ref

    x, y = data(101, 6, 3, seed=12)
    want = ref.cka(x + 50.0, y, kernel, unbiased, sigma, median_fraction=0.8)
    options = {"kernel": kernel, "unbiased": unbiased, "sigma": sigma}
    for block in (1, 7, 64, 101, 500):  # 7 and 64 do not divide 101
        got = cka(x + 50.0, y, **options, median_fraction=0.8, chunk_rows=block)  # type: ignore[arg-type]
        assert abs(got - want) < 1e-10, block
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    got32 = cka(torch.tensor(x32), torch.tensor(y32), **options, chunk_rows=13)  # type: ignore[arg-type]
    assert got32.dtype == torch.float32
    want32 = ref.cka(x32.astype(np.float64), y32.astype(np.float64), kernel, unbiased, sigma)
    assert abs(float(got32) - want32) < 1e-5


def test_large_n_switches_to_strips_with_the_same_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from reprsim.measures import _cka

    from . import reference as ref

    x, y = data(90, 4, 3, seed=13)
    monkeypatch.setattr(_cka, "DENSE_RBF_MAX", 50)  # as if 90 samples were too many for whole kernels
    calls = []
    original = _cka.rbf_cka_blockwise
    monkeypatch.setattr(_cka, "rbf_cka_blockwise", lambda *a: calls.append(1) or original(*a))
    assert abs(cka(x, y, kernel="rbf") - ref.cka(x, y, "rbf")) < 1e-10
    assert calls == [1]
    xt = torch.tensor(x, requires_grad=True)
    with pytest.raises(InvalidParameterError, match=r"blockwise RBF CKA .* is not differentiable"):
        cka(xt, torch.tensor(y), kernel="rbf")
    with pytest.raises(InvalidParameterError, match="chunk_rows= applies to the RBF and Laplace kernels"):
        cka(x, y, chunk_rows=10)


@pytest.mark.parametrize("n", [2, 3, 4, 9, 40])
def test_exact_median_of_the_squared_distances_by_histogram_passes(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order statistics behind the median bandwidth, found without holding the distances, equal NumPy's
    median of the dense matrix, also when the bins must be refined (tiny histograms) and with ties."""
    from scipy.spatial.distance import cdist

    from reprsim.measures import _strips

    rng = np.random.default_rng(n)
    cases = [rng.normal(size=(n, 3)), rng.integers(0, 2, size=(n, 2)).astype(float)]  # the second: many ties
    for bins, collect in ((1 << 16, 1 << 24), (4, 3), (2, 1)):
        monkeypatch.setattr(_strips, "_BINS", bins)
        monkeypatch.setattr(_strips, "_COLLECT", collect)
        for x in cases:
            xc = _strips.column_centred(torch.tensor(x))
            got = _strips.triangle_median(xc, xc.sq_norms(), rows=3)
            assert float(got) == pytest.approx(np.median(cdist(x, x, "sqeuclidean")), rel=1e-12, abs=1e-12)


def test_rbf_cka_measure_in_compare_equals_the_functional_form() -> None:
    from reprsim.measures import CKA

    net, other = mlp(0), mlp(1)
    data_ = batches(n=96)
    layers = ["1", "4"]
    song, lange = CKA(kernel="rbf", unbiased=True), CKA(kernel="laplace", unbiased="lange", sigma=2.0)
    out = compare(net, other, data_, layers_a=layers, measures=["cka_rbf", song, lange], progress=False)
    a, b = hand_extract(net, layers, data_), hand_extract(other, layers, data_)
    for key, options in (
        ("cka_rbf", {"kernel": "rbf"}),
        (song.id, {"kernel": "rbf", "unbiased": True}),
        (lange.id, {"kernel": "laplace", "unbiased": "lange", "sigma": 2.0}),
    ):
        expected = [[float(cka(a[i], b[j], **options)) for j in layers] for i in layers]  # type: ignore[arg-type]
        torch.testing.assert_close(out[key].matrix, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10)
    assert CKA(kernel="rbf").stream == "samples"
    assert "isotropic_scaling" not in CKA(kernel="rbf", sigma=1.0).invariances


@pytest.mark.parametrize("budget", [0, 5_000, None])
def test_compare_spills_features_to_memory_mapped_files_beyond_the_budget(
    budget: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    net, other = mlp(0), mlp(1)
    data_ = batches(n=96)
    layers = ["1", "4"]
    folders: list[str] = []
    real = tempfile.TemporaryDirectory

    def recording(*args: object, **kwargs: object) -> tempfile.TemporaryDirectory[str]:
        folder = real(*args, **kwargs)  # type: ignore[call-overload]
        folders.append(folder.name)
        return folder  # type: ignore[no-any-return]

    monkeypatch.setattr(tempfile, "TemporaryDirectory", recording)
    out = compare(
        {"a": net, "b": other, "a again": net},  # a model under two names: kept once per batch
        data=data_,
        layers=layers,
        measures=["mutual_knn", "distance_correlation"],
        runtime=Runtime(feature_memory=budget),
        progress=False,
    )
    a, b = hand_extract(net, layers, data_), hand_extract(other, layers, data_)
    for key, fn in (("mutual_knn", mutual_knn), ("distance_correlation", distance_correlation)):
        for pair, (u, v) in ((("a", "b"), (a, b)), (("a", "a again"), (a, a))):
            expected = [[float(fn(u[i], v[j])) for j in layers] for i in layers]
            torch.testing.assert_close(
                out[pair][key].matrix, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10
            )
    where = out[("a", "b")]["mutual_knn"].metadata["features"]
    if budget is None:
        assert where.startswith("in memory")
        assert folders == []
    else:  # 0: from the first batch; 5,000 bytes: after the first batch was kept in memory
        assert where.startswith("spilled to memory-mapped temporary files")
        assert len(folders) == 1
        assert not os.path.exists(folders[0])  # deleted when compare returned


def test_feature_store_refuses_a_changing_width_and_a_bad_budget() -> None:
    net = mlp(0)
    varying = [torch.randn(8, 10), torch.randn(8, 10)]
    with pytest.raises(InvalidParameterError, match="feature_memory must be an integer ≥ 0"):
        compare(
            net,
            None,
            varying,
            layers_a=["1"],
            measure="mutual_knn",
            runtime=Runtime(feature_memory=-1),
            progress=False,
        )

    class Tokens(nn.Module):  # the token count follows the batch: 3 tokens, then 4
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, None, :].expand(-1, x.shape[1] // 3, -1)

    model = nn.Sequential(Tokens(), nn.Identity())
    data_ = [torch.randn(8, 9), torch.randn(8, 12)]
    with pytest.raises(ShapeMismatchError, match="has 48 features after pooling in this batch but 27 in the first"):
        compare(model, None, data_, layers_a=["1"], measure="mutual_knn", progress=False)


@pytest.mark.parametrize("rdm", ["correlation", "cosine", "euclidean", "gaussian"])
def test_rsa_pearson_in_strips_from_float32_data_within_1e5(rdm: str) -> None:
    from scipy.stats import pearsonr

    x, y = data(150, 6, 4, seed=14)
    x32, y32 = (x * 10.0 + 3.0).astype(np.float32), y.astype(np.float32)
    want = pearsonr(reference_rdm(x32.astype(np.float64), rdm), reference_rdm(y32.astype(np.float64), rdm))[0]
    got = rsa(torch.tensor(x32), torch.tensor(y32), rdm=rdm, compare="pearson", chunk_rows=37)  # type: ignore[arg-type]
    assert got.dtype == torch.float32
    assert abs(float(got) - want) < 1e-5


# -- prepared rows rebuilt block by block (large inputs are not copied) ---------------------------------------


@pytest.mark.parametrize("rdm", [*RDMS, "sqeuclidean_per_feature", "gaussian"])
@pytest.mark.parametrize("how", ["pearson", "spearman", "kendall"])
def test_rsa_without_a_prepared_copy_matches_scipy(rdm: str, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above COPY_BYTES the centred / normalised rows are rebuilt from the input for every product (in column
    blocks that need not divide n): same values as scipy, and the caller's arrays are not touched."""
    from scipy.stats import kendalltau, pearsonr, spearmanr

    from reprsim.measures import _strips

    monkeypatch.setattr(_strips, "COPY_BYTES", 0)
    monkeypatch.setattr(_strips, "COL_BLOCK", 7)
    x, y = data(61, 6, 4)
    x = x + 30.0  # a large common offset: centring matters for accuracy
    a, b = reference_rdm(x, rdm), reference_rdm(y, rdm)
    test = {"pearson": pearsonr, "spearman": spearmanr, "kendall": kendalltau}[how]
    want = test(a, b)[0]
    xt, yt = torch.tensor(x), torch.tensor(y)
    before = (xt.clone(), yt.clone())
    for block in (None, 5, 61):
        assert abs(float(rsa(xt, yt, rdm=rdm, compare=how, chunk_rows=block)) - want) < 1e-10, block
    assert torch.equal(xt, before[0])
    assert torch.equal(yt, before[1])


@pytest.mark.parametrize("unbiased", [False, True])
def test_rbf_cka_without_a_centred_copy_equals_the_dense_reference(
    unbiased: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reprsim.measures import _strips

    from . import reference as ref

    monkeypatch.setattr(_strips, "COPY_BYTES", 0)
    monkeypatch.setattr(_strips, "COL_BLOCK", 9)
    x, y = data(83, 6, 3, seed=5)
    x = x + 50.0
    want = ref.cka(x, y, "rbf", unbiased, None, median_fraction=0.8)
    xt, yt = torch.tensor(x), torch.tensor(y)
    before = xt.clone()
    for block in (1, 10, 83):
        got = cka(xt, yt, kernel="rbf", unbiased=unbiased, median_fraction=0.8, chunk_rows=block)
        assert abs(float(got) - want) < 1e-10, block
    assert torch.equal(xt, before)
    x32 = torch.tensor(x.astype(np.float32))
    got32 = cka(x32, torch.tensor(y.astype(np.float32)), kernel="rbf", unbiased=unbiased, chunk_rows=13)
    ref32 = ref.cka(x32.double().numpy(), y.astype(np.float32).astype(np.float64), "rbf", unbiased)
    assert abs(float(got32) - ref32) < 1e-5


def test_prepared_rows_never_modify_the_input() -> None:
    from reprsim.measures._strips import Prepared

    x = torch.randn(20, 5)
    before = x.clone()
    for hold in (True, False):
        z = Prepared(x, torch.float32, col_shift=x.mean(0), row_shift=torch.ones(20), row_norm=torch.full((20,), 2.0),
                     hold=hold)  # fmt: skip
        want = ((x - x.mean(0)) - 1.0) / 2.0
        assert torch.allclose(z.rows(slice(3, 9)), want[3:9])
        assert torch.allclose(z.rows(torch.tensor([4, 0])), want[[4, 0]])
        assert torch.allclose(z.products(slice(0, 20), slice(5, 20)), want @ want[5:].T, atol=1e-5)
        assert torch.allclose(z.sq_norms(), (want * want).sum(1), atol=1e-5)
    assert torch.equal(x, before)


@pytest.mark.parametrize("unbiased", [False, True])
def test_distance_correlation_without_a_centred_copy(unbiased: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from reprsim.measures import _strips

    monkeypatch.setattr(_strips, "COPY_BYTES", 0)
    monkeypatch.setattr(_strips, "COL_BLOCK", 11)
    x, y = data(57, 5, 3, seed=3)
    xt = torch.tensor(x + 40.0)
    before = xt.clone()
    got = float(distance_correlation(xt, torch.tensor(y), unbiased=unbiased))
    assert abs(got - rm.distance_correlation(x + 40.0, y, unbiased)) < 1e-10
    assert torch.equal(xt, before)


# -- dead layers, offsets in float32, extreme magnitudes (the one constant rule, the exact tie rule) ----------

SAMPLE_MEASURES = {
    "mutual_knn": lambda a, b: mutual_knn(a, b, k=5),
    "jaccard_knn": lambda a, b: jaccard_knn(a, b, k=5),
    "cknna": lambda a, b: cknna(a, b, k=5),
    "second_order_cosine": lambda a, b: second_order_cosine(a, b, k=5),
    "rank_similarity": lambda a, b: rank_similarity(a, b, k=5),
    "rsa cosine kendall": lambda a, b: rsa(a, b, rdm="cosine", compare="kendall"),
    "rsa correlation pearson": lambda a, b: rsa(a, b, rdm="correlation", compare="pearson"),
    "rsa euclidean spearman": lambda a, b: rsa(a, b, rdm="euclidean", compare="spearman"),
    "dcor": lambda a, b: distance_correlation(a, b),
    "dcor unbiased": lambda a, b: distance_correlation(a, b, unbiased=True),
}


@pytest.mark.parametrize("name", sorted(SAMPLE_MEASURES))
def test_dead_layers_are_an_error_not_a_number(name: str) -> None:
    """A zero-weight Linear outputs its bias for every sample (mutual_knn gave 0.077); a float64 0.1 constant
    centres to rounding residues (distance correlation gave 0.7569)."""
    x, y = data(60, 6, 4)
    dead = nn.Linear(6, 5)
    nn.init.zeros_(dead.weight)
    with torch.no_grad():
        bias = dead(torch.tensor(x, dtype=torch.float32)).numpy()
    for const in (bias, np.full((60, 5), 0.1)):
        with pytest.raises(ConstantRepresentationError, match="x is constant"):
            SAMPLE_MEASURES[name](const, y)


def test_dead_layers_inside_compare_name_the_layer() -> None:
    net = nn.Sequential(nn.Linear(10, 16), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    nn.init.zeros_(net[1].weight)
    for measure in ("mutual_knn", "rsa", "distance_correlation", "cknna", "cka", "procrustes"):
        with pytest.raises(ConstantRepresentationError, match=r"model A:0 and model B:1: .*is constant"):
            compare(net, None, batches(), layers_a=["0", "1"], measure=measure, progress=False)


@pytest.mark.parametrize("name", sorted(SAMPLE_MEASURES))
def test_float32_data_with_a_large_offset_give_the_float64_value(name: str) -> None:
    """A common offset 1000× the spread: cosine neighbours and correlation RDMs of nearly parallel rows lost their
    digits in float32 (mutual_knn 0.035 against 0.097, Pearson RSA 8.8e-4 off)."""
    rng = np.random.default_rng(3)
    x, y = data(120, 20, 20)
    offset = 1000.0 * rng.normal(size=20)
    x32 = (x + offset).astype(np.float32)
    expected = SAMPLE_MEASURES[name](x32.astype(np.float64), y)  # the same numbers, in float64
    assert abs(SAMPLE_MEASURES[name](x32, y.astype(np.float32)) - expected) < 1e-5


@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e200, 1e-200])
@pytest.mark.parametrize("name", sorted(SAMPLE_MEASURES))
def test_extreme_magnitudes_give_the_value_at_magnitude_one(name: str, scale: float) -> None:
    x, y = data(80, 6, 4, seed=2)
    dtype = np.float32 if abs(np.log10(scale)) < 38 else np.float64
    xs = (x * scale).astype(dtype)
    assert abs(SAMPLE_MEASURES[name](xs, y) - SAMPLE_MEASURES[name]((xs / scale).astype(np.float64), y)) < 1e-6


def test_ties_on_quantised_data_are_broken_the_same_way_after_exact_transformations() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(200, 5)).astype(np.float32)  # many exactly equal distances
    for neighbours in ("cosine", "euclidean", "inner_product"):
        assert mutual_knn(x, 3 * x, k=10, neighbours=neighbours) == 1.0
        assert jaccard_knn(x, 3 * x, k=10, neighbours=neighbours) == 1.0
        assert rank_similarity(x, 3 * x, k=10, neighbours=neighbours) == 1.0
    flipped = x[:, ::-1].copy()  # a permutation of features: every distance is exactly the same
    assert mutual_knn(x, flipped, k=10, neighbours="euclidean") == 1.0
    assert mutual_knn(x, x + 7, k=10, neighbours="euclidean") == 1.0


def test_rsa_inside_compare_ranks_each_layer_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """48 layers re-ranked for every pair took 425 s: ranked triangles are kept per layer (within a budget)."""
    net = mlp(0)
    data_ = batches(n=96)
    calls: list[int] = []
    original = RSA._ranks

    def counting(self: RSA, x: torch.Tensor, name: str, pieces: list[slice]) -> torch.Tensor:
        calls.append(x.shape[1])
        return original(self, x, name, pieces)

    monkeypatch.setattr(RSA, "_ranks", counting)
    layers = ["0", "2", "4"]
    result = compare(net, mlp(1), data_, layers_a=layers, measure="rsa", progress=False)
    assert len(calls) == 6  # 3 + 3 layers, not 2 × 9 pairs
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    acts_a, acts_b = hand_extract(net, layers, data_), hand_extract(mlp(1), layers, data_)
    for a in layers:
        for b in layers:
            expected = spearmanr(pdist(acts_a[a].numpy(), "correlation"), pdist(acts_b[b].numpy(), "correlation"))[0]
            assert abs(result[a, b] - expected) < 1e-10


# -- the RDM itself ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["correlation", "cosine", "euclidean", "sqeuclidean", "sqeuclidean_per_feature", "gaussian"]
)
def test_rdm_is_pdist_condensed_for_any_block(kind: str) -> None:
    """Against scipy's pdist (the order squareform unpacks), on offset data, for strips of 1, 7 and all rows;
    float32 tensors on offset and on quantised data agree to 1e-5 of the largest entry."""
    from reprsim.measures import rdm

    rng = np.random.default_rng(3)
    x = rng.normal(size=(37, 6)) * rng.uniform(0.5, 2.0, size=6) + 4.0
    expected = reference_rdm(x, kind)
    for block in (1, 7, None):
        got = rdm(x, kind=kind, chunk_rows=block)
        assert got.dtype == torch.float64
        assert got.shape == (37 * 36 // 2,)
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10 * expected.max())
    quantised = np.round(x * 4) / 4
    for data in (x, quantised):
        reference = reference_rdm(data, kind)
        low = rdm(torch.tensor(data, dtype=torch.float32), kind=kind)
        assert low.dtype == torch.float32
        np.testing.assert_allclose(low.double().numpy(), reference, rtol=0, atol=1e-5 * reference.max())


def test_rsa_is_the_correlation_of_the_two_rdms() -> None:
    from scipy.stats import spearmanr

    from reprsim.measures import rdm, rsa

    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 5))
    y = np.tanh(x @ rng.normal(size=(5, 3))) + 0.3 * rng.normal(size=(40, 3))
    a, b = rdm(x).numpy(), rdm(y).numpy()
    assert rsa(x, y, compare="pearson") == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-10)
    assert rsa(x, y) == pytest.approx(spearmanr(a, b).statistic, abs=1e-10)


def test_rdm_refuses_what_has_no_rdm() -> None:
    from reprsim.measures import plot_rdm, rdm

    with pytest.raises(InvalidParameterError, match=r"kind must be one of \('correlation'"):
        rdm(np.ones((5, 3)), kind="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ConstantRepresentationError):
        rdm(np.ones((5, 3)))
    with pytest.raises(InvalidParameterError, match=r"n\(n − 1\)/2 entries for some n ≥ 2; got 9"):
        plot_rdm(np.zeros((3, 3)))
    with pytest.raises(InvalidParameterError, match="labels has 2 entries for an RDM of 3 samples"):
        plot_rdm(np.arange(3.0), labels=["a", "b"])


def test_plot_rdm_shows_the_square_on_the_canvas() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.spatial.distance import squareform

    from reprsim.measures import plot_rdm, rdm

    from .figures import overflow

    x = np.random.default_rng(5).normal(size=(12, 4))
    d = rdm(x)
    ax = plot_rdm(d, labels=[f"stimulus {i}" for i in range(12)])
    try:
        np.testing.assert_array_equal(ax.images[0].get_array(), squareform(d.numpy()))
        assert overflow(ax.figure) == []
    finally:
        plt.close(ax.figure)


# -- one rule for every squared distance -----------------------------------------------------------------


def twins_with_an_offset(dtype: torch.dtype) -> torch.Tensor:
    """Features with a large common offset in which rows 0, 7 and 19 are one sample and rows 3 and 25 another:
    data on which the expansion ‖a‖² + ‖b‖² − 2a·b leaves rounding residue between twins (in float32, 2⁻¹¹
    between rows 0 and 7, before the rule)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 384, generator=g, dtype=torch.float64) * 3.0 + 50.0
    x = x.to(dtype)
    x[7] = x[0]
    x[19] = x[0]
    x[25] = x[3]
    return x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_squared_distance_follows_one_rule(dtype: torch.dtype) -> None:
    from reprsim._kernels import squared_distances
    from reprsim.measures._strips import column_centred, sq_distance_rows, upper_sq_distances

    x = twins_with_an_offset(dtype)
    n = x.shape[0]
    x64 = x.to(torch.float64)
    reference = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)  # from the differences, in float64
    z = column_centred(x)
    sq = z.sq_norms()
    strips = {
        "dense": squared_distances(x),
        "rows": torch.cat([sq_distance_rows(z, sq, slice(s, min(n, s + 5))) for s in range(0, n, 5)]),
        "upper": torch.cat(
            [torch.cat([torch.zeros(1, s), upper_sq_distances(z, sq, slice(s, s + 1))], dim=1) for s in range(n)]
        ),
    }
    strips["upper"] = strips["upper"].to(dtype)
    strips["upper"] = torch.triu(strips["upper"]) + torch.triu(strips["upper"], 1).T
    # elsewhere, the expansion's rounding: a few ε of ‖a‖² + ‖b‖², the scale below which entries are recomputed
    scale = 64.0 * torch.finfo(dtype).eps * 2.0 * float(sq.max())
    for name, d2 in strips.items():
        assert d2.dtype == dtype, name
        # the diagonal and duplicates exactly 0
        assert torch.all(d2.diagonal() == 0), name
        for i, j in ((0, 7), (0, 19), (7, 19), (3, 25)):
            assert d2[i, j] == 0, (name, i, j)
            assert d2[j, i] == 0, (name, i, j)
        np.testing.assert_allclose(d2.to(torch.float64).numpy(), reference.numpy(), rtol=0, atol=scale, err_msg=name)


def test_twins_are_ties_in_an_rdm_and_zero_apart_in_distance_correlation() -> None:
    from reprsim.measures import rdm

    x = twins_with_an_offset(torch.float32)
    n = x.shape[0]
    square = torch.zeros(n, n)
    i, j = torch.triu_indices(n, n, 1)
    square[i, j] = rdm(x, kind="euclidean")
    assert float(square[0, 7]) == float(square[0, 19]) == float(square[7, 19]) == float(square[3, 25]) == 0.0
    # distance correlation of float32 twins against the float64 formula: no √ε residue from the twins
    y = torch.tanh(x - 50.0) * 3.0 + 50.0
    expected = rm.distance_correlation(x.to(torch.float64).numpy(), y.to(torch.float64).numpy(), False)
    assert float(distance_correlation(x, y)) == pytest.approx(expected, rel=1e-5)


def test_one_row_norm_helper_accumulates_in_float64() -> None:
    from reprsim.measures._strips import row_norms

    g = torch.Generator().manual_seed(9)
    low_rank = torch.randn(300, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 2000, generator=g).double()
    quantised = torch.round(low_rank * 4.0) / 4.0 + 1000.0  # offset, low rank, quantised
    x = quantised.to(torch.float32)
    x64 = x.to(torch.float64).numpy()
    squares = (x64 * x64).sum(axis=1)
    np.testing.assert_allclose(row_norms(x, squared=True).numpy(), squares, rtol=1e-14)
    np.testing.assert_allclose(row_norms(x).numpy(), np.sqrt(squares), rtol=1e-14)
    kept = row_norms(x, squared=True, dtype=torch.float32)
    assert kept.dtype == torch.float32
    np.testing.assert_allclose(kept.numpy(), squares, rtol=2**-24)  # rounded once, not accumulated in float32
