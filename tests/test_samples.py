"""Sample-space measures (mutual k-NN, k-NN Jaccard, distance correlation): dense float64 references, blockwise
equal to dense for every strip size, the defined behaviour of ties, duplicates, n ≤ k and constant inputs, and
their use in compare."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reprsim import compare
from reprsim.errors import ConstantRepresentationError, InsufficientSamplesError, InvalidParameterError
from reprsim.measures import DistanceCorrelation, MutualKNN, distance_correlation, jaccard_knn, mutual_knn, rsa

from . import reference_measures as rm
from .test_compare import batches, hand_extract, mlp


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
    assert mutual_knn(x, y, k=7, block=block) == mutual_knn(x, y, k=7, block=10_000)
    assert jaccard_knn(x, y, k=7, block=block) == jaccard_knn(x, y, k=7, block=10_000)
    for unbiased in (False, True):
        dense = rm.distance_correlation(x, y, unbiased)
        assert abs(distance_correlation(x, y, unbiased=unbiased, block=block) - dense) < 1e-10


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
    with pytest.raises(InvalidParameterError, match="k must be a positive integer"):
        MutualKNN(k=0)
    zero = x.copy()
    zero[4] = 0.0
    with pytest.raises(ConstantRepresentationError, match=r"1 all-zero rows \(e.g. row 4\)"):
        mutual_knn(zero, y, k=3)
    assert 0.0 <= mutual_knn(zero, y, k=3, neighbours="inner_product") <= 1.0
    with pytest.raises(ConstantRepresentationError, match="zero distance variance"):
        distance_correlation(np.ones((10, 2)), y)
    with pytest.raises(InvalidParameterError, match="block must be a positive number"):
        distance_correlation(x, y, block=0)


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
        measures=["mutual_knn", DistanceCorrelation(unbiased=True), "cka"],
        progress=False,
    )
    a, b = hand_extract(net, layers, data_), hand_extract(other, layers, data_)
    for key, fn in (
        ("mutual_knn", lambda u, v: mutual_knn(u, v)),
        ("distance_correlation-u_sqr", lambda u, v: distance_correlation(u, v, unbiased=True)),
    ):
        expected = torch.tensor([[float(fn(a[i], b[j])) for j in layers] for i in layers], dtype=torch.float64)
        torch.testing.assert_close(out[key].matrix, expected, rtol=0, atol=1e-10)
        assert out[key].metadata["samples"] == 192


def test_sample_measures_on_the_device(device: str) -> None:
    """The same numbers on CPU and CUDA, strips on the inputs' device."""
    x, y = data(120, 5, 3)
    xt, yt = torch.tensor(x, device=device), torch.tensor(y, device=device)
    got = mutual_knn(xt, yt, k=5, block=17)
    assert got.device.type == device
    assert float(got) == pytest.approx(rm.mutual_knn(x, y, 5), abs=1e-12)
    assert float(jaccard_knn(xt, yt, k=5, neighbours="euclidean")) == pytest.approx(
        rm.jaccard_knn(x, y, 5, "euclidean"), abs=1e-12
    )
    for unbiased in (False, True):
        value = distance_correlation(xt, yt, unbiased=unbiased, block=33)
        assert abs(float(value) - rm.distance_correlation(x, y, unbiased)) < 1e-10


RDMS = {"correlation": "correlation", "cosine": "cosine", "euclidean": "euclidean", "sqeuclidean": "sqeuclidean"}


@pytest.mark.parametrize("rdm", [*RDMS, "sqeuclidean_per_feature"])
@pytest.mark.parametrize("how", ["pearson", "spearman"])
def test_rsa_matches_scipy_on_the_upper_triangles(rdm: str, how: str) -> None:
    from scipy.spatial.distance import pdist
    from scipy.stats import pearsonr, spearmanr

    x, y = data(80, 6, 4)
    metric = RDMS.get(rdm, "sqeuclidean")
    a, b = pdist(x, metric), pdist(y, metric)
    if rdm == "sqeuclidean_per_feature":  # rsatoolbox's "euclidean": squared, divided by the width
        a, b = a / x.shape[1], b / y.shape[1]
    want = (pearsonr if how == "pearson" else spearmanr)(a, b)[0]
    for block in (None, 1, 13, 80):
        assert abs(rsa(x, y, rdm=rdm, compare=how, block=block) - want) < 1e-10, block


def test_rsa_spearman_gives_ties_their_average_rank() -> None:
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(40, 3)).astype(float)  # many equal distances: ties in the RDM
    y = x + rng.integers(0, 2, size=(40, 3))
    want = spearmanr(pdist(x, "sqeuclidean"), pdist(y, "sqeuclidean"))[0]
    assert abs(rsa(x, y, rdm="sqeuclidean", compare="spearman") - want) < 1e-12


def test_rsa_errors() -> None:
    x, y = data(30)
    flat = x.copy()
    flat[2] = 5.0  # constant across its features: no correlation distance
    with pytest.raises(ConstantRepresentationError, match="constant across features"):
        rsa(flat, y)
    with pytest.raises(InvalidParameterError, match="rdm must be one of"):
        rsa(x, y, rdm="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ConstantRepresentationError, match="RDM of x is constant"):
        rsa(np.eye(4), y[:4], rdm="euclidean", compare="pearson")  # every pair at distance √2
