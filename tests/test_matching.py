"""Measures that match units: the permutation metric (netrep's PermutationMetric) and hard and soft correlation
matching (ReSi's), against references written here from the definitions, with brute force over every matching
where the widths are small."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from reprsim import compare, correlation_match, permutation_metric
from reprsim.errors import ConstantRepresentationError, InvalidParameterError
from reprsim.measures import CorrelationMatch, Derived, PermutationMetric

from .toys import batches, hand_extract, mlp


def pair(n: int = 90, p: int = 6, q: int = 4, seed: int = 0, offset: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) * rng.uniform(0.5, 2.0, size=p) + offset
    y = np.tanh(x[:, :q] - offset) @ np.diag(rng.uniform(0.5, 2, size=q)) + 0.4 * rng.normal(size=(n, q)) - offset
    return x, y[:, rng.permutation(q)]


def centred(a: np.ndarray) -> np.ndarray:
    return a - a.mean(axis=0)


def padded(a: np.ndarray, width: int) -> np.ndarray:
    return np.hstack([a, np.zeros((a.shape[0], width - a.shape[1]))])


def permutation_reference(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """netrep's recipe: centre, zero-pad to one width, match units by linear_sum_assignment on XᵀY; the angle, and
    the Euclidean distance ‖X[:, Px] − Y[:, Py]‖_F."""
    xc, yc = centred(x), centred(y)
    w = max(xc.shape[1], yc.shape[1])
    xc, yc = padded(xc, w), padded(yc, w)
    px, py = linear_sum_assignment(xc.T @ yc, maximize=True)
    a, b = xc[:, px], yc[:, py]
    cos = np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return math.acos(min(cos, 1.0)), float(np.linalg.norm(a - b))


def correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r between every unit of x and of y; 0 with a constant unit (the cosine of a zero vector in
    scikit-learn, which ReSi uses)."""
    xc, yc = centred(x), centred(y)
    nx, ny = np.linalg.norm(xc, axis=0), np.linalg.norm(yc, axis=0)
    nx[nx < 1e-12 * (1 + np.abs(x).max())] = np.inf
    ny[ny < 1e-12 * (1 + np.abs(y).max())] = np.inf
    return (xc / nx).T @ (yc / ny)


def correlation_match_reference(x: np.ndarray, y: np.ndarray, match: str) -> float:
    r = correlations(x, y)
    if match == "soft":
        return float((r.max(axis=1).mean() + r.max(axis=0).mean()) / 2)
    rows, cols = linear_sum_assignment(r, maximize=True)
    return float(r[rows, cols].mean())


@pytest.mark.parametrize(("p", "q"), [(6, 4), (4, 6), (5, 5), (1, 3)])
def test_permutation_metric_matches_netreps_recipe_and_brute_force(p: int, q: int) -> None:
    x, y = pair(p=p, q=min(p, q), seed=p + q)
    if q > p:
        y = np.hstack([y, np.random.default_rng(1).normal(size=(len(y), q - p))])
    angle, euclidean = permutation_reference(x, y)
    assert abs(permutation_metric(x, y) - angle) < 1e-10
    assert abs(Derived(PermutationMetric(), "euclidean")(x, y) - euclidean) < 1e-9
    # brute force: the best of every one-to-one matching of the narrower side's units
    xc, yc = centred(x), centred(y)
    c = xc.T @ yc if p <= q else yc.T @ xc
    best = max(
        sum(c[i, j] for i, j in enumerate(perm)) for perm in itertools.permutations(range(c.shape[1]), c.shape[0])
    )
    assert abs(math.cos(permutation_metric(x, y)) - best / (np.linalg.norm(xc) * np.linalg.norm(yc))) < 1e-10


def test_permutation_metric_is_zero_for_shuffled_units_and_at_least_the_procrustes_angle() -> None:
    from reprsim import procrustes

    x, y = pair()
    assert permutation_metric(x, 2.5 * x[:, [3, 1, 0, 5, 2, 4]] - 7.0) < 1e-7
    assert permutation_metric(x, y) >= procrustes(x, y) - 1e-12  # permutations are a subset of the rotations
    # one unit against its negation: the only matching pairs them, at the angle π
    assert permutation_metric(x[:, :1], -x[:, :1]) == pytest.approx(math.pi, abs=1e-7)


@pytest.mark.parametrize("match", ["hard", "soft"])
@pytest.mark.parametrize(("p", "q"), [(6, 4), (4, 6), (5, 5)])
def test_correlation_match_matches_resis_definition(match: str, p: int, q: int) -> None:
    x, y = pair(p=p, q=min(p, q), seed=3 * p + q)
    if q > p:
        y = np.hstack([y, np.random.default_rng(2).normal(size=(len(y), q - p))])
    want = correlation_match_reference(x, y, match)
    assert abs(correlation_match(x, y, match=match) - want) < 1e-10
    got32 = correlation_match(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), match=match)
    assert got32.dtype == torch.float32
    assert abs(float(got32) - want) < 1e-5


def test_a_dead_unit_correlates_zero_with_every_unit() -> None:
    x, y = pair()
    x[:, 2] = 3.0  # a dead unit: constant over the samples
    for match in ("hard", "soft"):
        assert abs(correlation_match(x, y, match=match) - correlation_match_reference(x, y, match)) < 1e-10
    with pytest.raises(ConstantRepresentationError):
        correlation_match(np.ones((20, 3)), y[:20])


def test_hard_matching_is_one_to_one() -> None:
    """Two x units copy one y unit: soft matching gives both 1, hard matching only one."""
    rng = np.random.default_rng(4)
    y = rng.normal(size=(200, 2))
    x = np.hstack([y[:, :1], y[:, :1] + 1e-3 * rng.normal(size=(200, 1))])
    assert correlation_match(x, y, match="soft") > 0.7
    assert correlation_match(x, y, match="hard") == pytest.approx(correlation_match_reference(x, y, "hard"), abs=1e-10)
    assert correlation_match(x, y, match="hard") < 0.6


def test_matching_measures_in_compare_equal_the_functional_forms() -> None:
    net, other = mlp(0), mlp(1)
    data = batches(n=160)
    layers = ["1", "3"]
    measures = [
        PermutationMetric(),
        CorrelationMatch(),
        CorrelationMatch("soft"),
        Derived("permutation_metric", "score"),
    ]
    out = compare(net, other, data, layers_a=layers, layers_b=layers, measures=measures, progress=False)
    a, b = hand_extract(net, layers, data), hand_extract(other, layers, data)
    for m in measures:
        want = torch.tensor([[float(m(a[i], b[j])) for j in layers] for i in layers], dtype=torch.float64)
        torch.testing.assert_close(out[m.id].matrix, want, rtol=0, atol=1e-10)


def test_match_must_be_hard_or_soft() -> None:
    with pytest.raises(InvalidParameterError, match="match must be 'hard' or 'soft'"):
        CorrelationMatch("greedy")  # type: ignore[arg-type]


def test_the_permutation_metric_has_gradients_for_the_matching_found() -> None:
    x = torch.randn(40, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(40, 4, dtype=torch.float64)
    permutation_metric(x, y).backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()


# -- aligned cosine similarity ------------------------------------------------------------------------------------


def aligned_cosine_reference(x: np.ndarray, y: np.ndarray) -> float:
    """ReSi's recipe: zero-pad to one width, rotate x onto y with scipy's orthogonal Procrustes (uncentred data),
    then the mean of the samples' cosines."""
    from scipy.linalg import orthogonal_procrustes

    w = max(x.shape[1], y.shape[1])
    xp, yp = padded(x, w), padded(y, w)
    rotation, _ = orthogonal_procrustes(xp, yp)
    a = xp @ rotation
    return float(np.mean(np.sum(a * yp, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(yp, axis=1))))


@pytest.mark.parametrize(("p", "q"), [(6, 4), (4, 6), (5, 5)])
def test_aligned_cosine_matches_resis_recipe(p: int, q: int) -> None:
    from reprsim import aligned_cosine

    x, y = pair(p=p, q=min(p, q), seed=5 * p + q, offset=2.0)
    if q > p:
        y = np.hstack([y, np.random.default_rng(3).normal(size=(len(y), q - p))])
    want = aligned_cosine_reference(x, y)
    assert abs(aligned_cosine(x, y) - want) < 1e-10
    assert abs(aligned_cosine(y, x) - want) < 1e-10  # symmetric: the rotation of y onto x is the transpose
    got32 = aligned_cosine(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert abs(float(got32) - want) < 1e-5


def test_aligned_cosine_counts_a_zero_sample_as_zero_and_warns() -> None:
    from reprsim import aligned_cosine
    from reprsim.errors import ReprsimWarning

    x, y = pair(offset=2.0)
    x[7] = 0.0
    with pytest.warns(ReprsimWarning, match="1 samples are zero"):
        got = aligned_cosine(x, y)
    keep = np.arange(len(x)) != 7
    from scipy.linalg import orthogonal_procrustes

    w = max(x.shape[1], y.shape[1])
    rotation, _ = orthogonal_procrustes(padded(x, w), padded(y, w))
    a, b = (padded(x, w) @ rotation)[keep], padded(y, w)[keep]
    want = np.sum(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))) / len(x)
    assert abs(got - want) < 1e-10


def test_aligned_cosine_in_compare_equals_the_functional_form() -> None:
    from reprsim.measures import AlignedCosine

    net, other = mlp(0), mlp(1)
    data = batches(n=128)
    out = compare(net, other, data, layers_a=["1"], layers_b=["1", "3"], measures=["aligned_cosine"], progress=False)
    a, b = hand_extract(net, ["1"], data), hand_extract(other, ["1", "3"], data)
    want = torch.tensor([[float(AlignedCosine()(a["1"], b[j])) for j in ("1", "3")]], dtype=torch.float64)
    torch.testing.assert_close(out["aligned_cosine"].matrix, want, rtol=0, atol=1e-10)
