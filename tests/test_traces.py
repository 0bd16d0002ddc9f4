"""Exact permutation moments of trace statistics (reprsim.measures._traces): every measure's trace form against
full enumeration of the n! permutations, the feature-space contractions of linear kernels against the dense ones,
and the layer-mean form."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from reprsim.measures import CKA, ENSD, RSA, DistanceCorrelation, Measure
from reprsim.measures._traces import (
    DenseTrace,
    LinearTrace,
    _scheme,
    combined_side,
    pair_moments,
    permutation_moments,
)

from . import reference as ref


def enumerated(values: np.ndarray) -> tuple[float, float, float]:
    mean = values.mean()
    sd = values.std()
    return float(mean), float(sd), float(np.mean((values - mean) ** 3) / sd**3)


def pair(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * np.array([2.0, 1.0, 0.3]) + 5.0
    y = np.tanh(x[:, :2]) + 0.7 * rng.normal(size=(n, 2))
    return torch.tensor(x), torch.tensor(y)


TRACE_MEASURES: list[Measure] = [
    CKA(),
    CKA(unbiased=True),
    CKA(kernel="rbf"),
    CKA(kernel="rbf", unbiased=True, sigma=1.5),
    CKA(kernel="laplace"),
    DistanceCorrelation(),
    DistanceCorrelation(unbiased=True),
    RSA(compare="pearson"),
    RSA(),
    RSA(rdm="euclidean", compare="pearson"),
    RSA(rdm="sqeuclidean", compare="spearman"),
    RSA(rdm="cosine", compare="pearson"),
    ENSD(),
]


CASES = [(m, 6) for m in TRACE_MEASURES] + [(m, 7) for m in (CKA(unbiased=True), DistanceCorrelation(), RSA())]


@pytest.mark.parametrize(("measure", "n"), CASES, ids=[f"{m!r}-n{n}" for m, n in CASES])
def test_moments_equal_full_enumeration(measure: Measure, n: int) -> None:
    """The mean, standard deviation and skewness of the measure over all n! permutations of y's rows, computed by
    evaluating the measure itself on every permutation, to 1e-12."""
    x, y = pair(n, seed=n)
    xs, ys = x.numpy(), y.numpy()
    a, b = measure.null_trace(x), measure.null_trace(y)
    values = np.array([float(measure(xs, ys[list(p)])) for p in itertools.permutations(range(n))])
    if a.transform == "sqrt":  # distance correlation is the square root of the trace ratio
        values = values**2
    want = enumerated(values)
    got = pair_moments(a, b)
    assert got.mean == pytest.approx(want[0], abs=1e-12)
    assert got.sd == pytest.approx(want[1], rel=1e-12, abs=1e-14)
    assert got.skewness == pytest.approx(want[2], rel=1e-10, abs=1e-12)


def test_linear_cka_moments_equal_enumeration_at_n_8() -> None:
    """All 40,320 permutations at n = 8, the CKA of each from its float64 formula (vectorised)."""
    x, y = pair(8, seed=8)
    xc, yc = x.numpy() - x.numpy().mean(0), y.numpy() - y.numpy().mean(0)
    perms = np.array(list(itertools.permutations(range(8))))
    cross = np.einsum("np,bnq->bpq", xc, yc[perms])
    values = (cross**2).sum(axis=(1, 2)) / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    want = enumerated(values)
    got = pair_moments(CKA().null_trace(x), CKA().null_trace(y))
    assert got.mean == pytest.approx(want[0], abs=1e-12)
    assert got.sd == pytest.approx(want[1], rel=1e-12)
    assert got.skewness == pytest.approx(want[2], rel=1e-10)


def test_unbiased_forms_have_a_universal_null_variance() -> None:
    """For U-centred matrices the trace ratio has mean 0 and variance 2 / (n(n − 3)) whatever the data (a check
    of the combinatorics independent of enumeration)."""
    for n in (12, 40, 90):
        x, y = pair(n, seed=n)
        for measure in (CKA(unbiased=True), DistanceCorrelation(unbiased=True)):
            m = pair_moments(measure.null_trace(x), measure.null_trace(y))
            assert abs(m.mean) < 1e-12
            assert m.sd == pytest.approx(math.sqrt(2.0 / (n * (n - 3))), rel=1e-10)


@pytest.mark.parametrize(("n", "p"), [(300, 5), (400, 60), (150, 400)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_feature_space_contractions_equal_the_dense_ones(n: int, p: int, unbiased: bool) -> None:
    """Linear kernels: every contraction from X (n × p) alone, the Gram never formed, against the dense matrix."""
    rng = np.random.default_rng(p)
    x = torch.tensor(rng.standard_t(6, size=(n, p)))
    x = x - x.mean(dim=0)
    k = x @ x.T
    if unbiased:
        kt = k.clone().fill_diagonal_(0.0)
        row = kt.sum(dim=1, keepdim=True)
        a = (kt - row / (n - 2) - row.T / (n - 2) + kt.sum() / ((n - 1) * (n - 2))).fill_diagonal_(0.0)
    else:
        c = float(k.trace()) / (n - 1)
        a = k - c * (torch.eye(n, dtype=k.dtype) - 1.0 / n)
    dense, linear = DenseTrace(a), LinearTrace(x, unbiased=unbiased)
    for k_ in (1, 2, 3):
        for (_, graph, _), want, got in zip(_scheme(k_), dense.exact_sums(k_), linear.exact_sums(k_)):
            scale = max(1.0, abs(want))
            assert abs(got - want) <= 1e-9 * scale, (graph, got, want)


def test_the_cube_sum_sampled_for_large_n_barely_moves_the_skewness() -> None:
    """Beyond max(4096, 4p) samples Σᵢⱼ Aᵢⱼ³ is estimated from a subset of rows (it enters the skewness alone):
    the moments then agree with the exact ones to 1e-3 in the skewness."""
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(3000, 16)))
    y = torch.tensor(rng.standard_t(8, size=(3000, 12)))
    xc, yc = x - x.mean(dim=0), y - y.mean(dim=0)
    exact = permutation_moments(LinearTrace(xc, unbiased=False), LinearTrace(yc, unbiased=False))
    sampled = permutation_moments(
        LinearTrace(xc, unbiased=False, sample=600), LinearTrace(yc, unbiased=False, sample=600)
    )
    assert sampled.sd == pytest.approx(exact.sd, rel=1e-12)
    assert abs(sampled.skewness - exact.skewness) < 1e-3


@pytest.mark.parametrize("measure", [CKA(), CKA(unbiased=True), CKA(kernel="rbf"), RSA(compare="pearson")], ids=repr)
def test_the_mean_over_a_layer_matrix_is_a_trace_statistic_too(measure: Measure) -> None:
    """The mean over 2 × 2 cells under one permutation of y's rows has exact moments from the summed sides."""
    n = 6
    rng = np.random.default_rng(3)
    xs = [torch.tensor(rng.normal(size=(n, 3))), torch.tensor(rng.normal(size=(n, 2)) ** 2)]
    ys = [torch.tensor(rng.normal(size=(n, 2))), torch.tensor(np.tanh(rng.normal(size=(n, 4))))]
    values = []
    for p in itertools.permutations(range(n)):
        perm = list(p)
        values.append(np.mean([float(measure(a.numpy(), b.numpy()[perm])) for a in xs for b in ys]))
    want = enumerated(np.array(values))
    total = pair_moments(
        combined_side([measure.null_trace(a) for a in xs]), combined_side([measure.null_trace(b) for b in ys])
    )
    assert total.mean / 4 == pytest.approx(want[0], abs=1e-12)
    assert total.sd / 4 == pytest.approx(want[1], rel=1e-12)
    assert total.skewness == pytest.approx(want[2], rel=1e-10, abs=1e-12)


def test_the_identity_permutation_gives_the_measure_itself() -> None:
    """The trace sides reproduce the observed value: tr(A B) / (norm_a norm_b) (+ the shift's constant) is the
    measure, so the null describes the same statistic."""
    x, y = pair(40, seed=1)
    for measure in (CKA(), CKA(unbiased=True)):
        a, b = measure.null_trace(x), measure.null_trace(y)
        assert isinstance(a.trace, LinearTrace)
        assert isinstance(b.trace, LinearTrace)
        ka = a.trace.x @ a.trace.x.T
        kb = b.trace.x @ b.trace.x.T
        if measure.unbiased:
            value = ref.cka_from_kernels(ka.numpy(), kb.numpy(), unbiased=True)
        else:
            value = float((ka * kb).sum()) / (a.norm * b.norm)
        assert value == pytest.approx(float(measure(x, y)), abs=1e-12)


def test_ensd_is_tested_as_linear_cka_rescaled() -> None:
    """ENSD is linear CKA times √(PR(X)·PR(Y)), which permuting y's rows leaves unchanged: both nulls, exact-moment
    and Monte Carlo, give it linear CKA's p-value."""
    from reprsim.inference import permutation_test

    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 5)) + 2.0
    y = np.tanh(x[:, :3]) + rng.normal(size=(80, 3))
    for permutations in ("moments", 199):
        got = permutation_test(x, y, "ensd", permutations=permutations, seed=0)
        want = permutation_test(x, y, "cka", permutations=permutations, seed=0)
        assert got.p_value == pytest.approx(want.p_value, rel=1e-10, abs=1e-12)
    assert got.observed == pytest.approx(
        want.observed * math.sqrt(rm_participation(x) * rm_participation(y)), rel=1e-10
    )


def rm_participation(z: np.ndarray) -> float:
    c = np.cov(z.T)
    return float(np.trace(c) ** 2 / (c**2).sum())
