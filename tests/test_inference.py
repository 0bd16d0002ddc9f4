"""Permutation tests and calibrated scores: the null against a plain loop over the same permutations with the
float64 references, the add-one p-value and Gröger et al.'s calibrated score from their definitions, uniform
p-values under independence, small ones under dependence, and the layers × layers aggregate."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from reprsim import Uncertainty
from reprsim.errors import InvalidParameterError, ReprsimWarning, ShapeMismatchError
from reprsim.inference import permutation_test
from reprsim.measures import RSA, Predictivity, ShapeMetric

from . import reference as ref
from . import reference_measures as rm


def permutations(n: int, k: int, seed: int) -> list[np.ndarray]:
    """The k permutations a seeded CPU generator draws, one randperm(n) after another."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g).numpy() for _ in range(k)]


def summary(observed: float, null: np.ndarray, alpha: float, greater: bool, bound: float) -> tuple[float, ...]:
    """p-value, τ and calibrated score written from Gröger, Wen & Brbić's definitions."""
    k = len(null)
    p = (1 + np.sum(null >= observed if greater else null <= observed)) / (k + 1)
    combined = np.sort(np.append(null, observed))
    if not greater:
        combined = combined[::-1]
    tau = combined[min(max(math.ceil((1 - alpha) * (k + 1)) - 1, 0), k)]
    if greater:
        cal = min(max((observed - tau) / (bound - tau), 0.0), 1.0)
    else:
        cal = min(max((tau - observed) / (tau - bound), 0.0), 1.0)
    return float(p), float(tau), float(cal)


def data(n: int = 60, p: int = 5, q: int = 4, strength: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = strength * np.tanh(x[:, :q]) + rng.normal(size=(n, q))
    return x, y


CASES: dict[str, tuple[str | RSA, Callable[[np.ndarray, np.ndarray], float], bool, float]] = {
    "cka": ("cka", lambda a, b: ref.cka(a, b), True, 1.0),
    "cka_unbiased": ("cka_unbiased", lambda a, b: ref.cka(a, b, unbiased=True), True, 1.0),
    "procrustes": ("procrustes", lambda a, b: rm.procrustes(a, b, "angular"), False, 0.0),
    "cca": ("cca", lambda a, b: float(rm.canonical_correlations(a, b).mean()), True, 1.0),
    "mutual_knn": ("mutual_knn", lambda a, b: rm.mutual_knn(a, b, 10), True, 1.0),
    "rsa_sq_pearson": (
        RSA("sqeuclidean", "pearson"),
        lambda a, b: stats.pearsonr(
            rm.cdist_sq(a)[np.triu_indices(len(a), 1)], rm.cdist_sq(b)[np.triu_indices(len(b), 1)]
        )[0],
        True,
        1.0,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_null_p_value_and_calibrated_score_match_a_plain_loop(case: str) -> None:
    measure, reference, greater, bound = CASES[case]
    x, y = data()
    k = 40
    test = permutation_test(x, y, measure, permutations=k, alpha=0.1, seed=3)
    want_null = np.array([reference(x, y[perm]) for perm in permutations(len(x), k, 3)])
    np.testing.assert_allclose(test.null.numpy(), want_null, rtol=0, atol=1e-10)
    observed = reference(x, y)
    assert abs(test.observed - observed) < 1e-10
    p, tau, cal = summary(test.observed, test.null.numpy(), 0.1, greater, bound)
    assert test.p_value == p
    assert test.threshold == tau
    assert test.calibrated == pytest.approx(cal, abs=1e-15)
    assert test.alternative == ("greater" if greater else "less")


def test_p_values_are_uniform_under_independence_and_small_under_dependence() -> None:
    p_values = []
    for rep in range(200):
        x, y = data(n=30, p=3, q=3, strength=0.0, seed=rep)  # y independent of x
        p_values.append(permutation_test(x, y, "cka", permutations=49, seed=rep).p_value)
    # the add-one p-value of 49 permutations takes values i/50: uniform on that grid under the null
    assert stats.kstest(np.array(p_values) - 0.01, "uniform").pvalue > 0.01
    assert np.mean(np.array(p_values) <= 0.05) < 0.1
    strong = [permutation_test(*data(n=30, strength=3.0, seed=s), "cka", permutations=49, seed=s) for s in range(20)]
    assert all(t.p_value == 0.02 for t in strong)  # 1/(K + 1): no permutation reaches the observed value
    assert all(t.calibrated > 0 for t in strong)


@pytest.mark.parametrize(("p", "q"), [(12, 10), (64, 48)])
def test_p_values_are_uniform_under_independence_at_layer_widths(p: int, q: int) -> None:
    """The add-one p-value is exact for exchangeable samples at any width: the same check as above with layers of
    tens of features (wider than the samples, at p = 64 and q = 48, where biased CKA sits far above 0)."""
    p_values = np.array(
        [
            permutation_test(*data(n=30, p=p, q=q, strength=0.0, seed=rep), "cka", permutations=49, seed=rep).p_value
            for rep in range(200)
        ]
    )
    assert stats.kstest(p_values - 0.01, "uniform").pvalue > 0.01
    assert np.mean(p_values <= 0.05) < 0.1


def test_layers_aggregate_uses_one_permutation_for_every_layer() -> None:
    x, y = data(n=50)
    xs, ys = [x, x**2, np.sin(x)], [y, y[:, :2]]
    k = 30
    best = permutation_test(xs, ys, "cka", permutations=k, seed=1)
    perms = permutations(50, k, 1)
    cells = np.array([[[ref.cka(a, b[perm]) for perm in perms] for b in ys] for a in xs])  # (3, 2, K)
    observed = np.array([[ref.cka(a, b) for b in ys] for a in xs])
    np.testing.assert_allclose(best.matrix.numpy(), observed, atol=1e-10)
    np.testing.assert_allclose(best.null.numpy(), cells.max(axis=(0, 1)), atol=1e-10)
    assert best.observed == pytest.approx(observed.max(), abs=1e-10)
    assert best.p_value == summary(best.observed, best.null.numpy(), 0.05, True, 1.0)[0]
    cell_p = (1 + (cells >= observed[..., None]).sum(axis=2)) / (k + 1)
    np.testing.assert_array_equal(best.cell_p_values.numpy(), cell_p)
    mean = permutation_test(xs, ys, "cka", permutations=k, seed=1, aggregate="mean")
    np.testing.assert_allclose(mean.null.numpy(), cells.mean(axis=(0, 1)), atol=1e-10)
    distance = permutation_test(xs, ys, "procrustes", permutations=k, seed=1)
    assert distance.observed == pytest.approx(float(distance.matrix.min()), abs=1e-15)  # best = smallest distance
    # the maximum over cells is inflated by the search: its null sits above any single cell's
    assert best.threshold >= summary(observed[0, 0], cells[0, 0], 0.05, True, 1.0)[1]


def test_tensors_on_the_device_and_errors(device: str) -> None:
    x, y = data()
    xt, yt = torch.tensor(x, device=device), torch.tensor(y, device=device)
    test = permutation_test(xt, yt, "cka", permutations=20, seed=5)
    cpu = permutation_test(x, y, "cka", permutations=20, seed=5)
    torch.testing.assert_close(test.null, cpu.null, rtol=0, atol=1e-12)
    assert "p=" in repr(test)
    with pytest.raises(InvalidParameterError, match="permutations must be an integer ≥ 1"):
        permutation_test(x, y, permutations=0)
    with pytest.raises(InvalidParameterError, match=r"alpha must be a finite number in \(0, 1\)"):
        permutation_test(x, y, alpha=1.0)
    with pytest.raises(InvalidParameterError, match="defined over a stream of batches"):
        permutation_test(x, y, "cka_minibatch")
    with pytest.raises(InvalidParameterError, match="aggregate must be 'best'"):
        permutation_test([x], [y], aggregate="max")  # type: ignore[arg-type]
    with pytest.raises(ShapeMismatchError, match=r"x\[0\] and x\[1\] must hold the same samples .* and 30 in x\[1\]"):
        permutation_test([x, x[:30]], [y])


# -- bootstrap ---------------------------------------------------------------------------------------------


def resample_indices(n: int, b: int, seed: int, size: int | None = None) -> tuple[list[np.ndarray], torch.Generator]:
    """The rows a seeded CPU generator draws: randint(0, n, (n,)) per resample, or sorted randperm(n)[:size]."""
    g = torch.Generator().manual_seed(seed)
    if size is None:
        return [torch.randint(0, n, (n,), generator=g).numpy() for _ in range(b)], g
    return [np.sort(torch.randperm(n, generator=g)[:size].numpy()) for _ in range(b)], g


def bca_reference(estimate: float, dist: np.ndarray, jack: np.ndarray, confidence: float) -> tuple[float, float]:
    """Efron's BCa interval (Efron & Tibshirani 1993, §14.3) with NumPy's linear percentiles."""
    alpha = (1 - confidence) / 2
    z0 = stats.norm.ppf(np.mean(dist < estimate))
    d = jack.mean() - jack
    a = np.sum(d**3) / (6 * np.sum(d**2) ** 1.5)
    levels = [stats.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))) for z in stats.norm.ppf([alpha, 1 - alpha])]
    return float(np.percentile(dist, 100 * levels[0])), float(np.percentile(dist, 100 * levels[1]))


def test_bootstrap_distribution_percentile_and_bca_match_the_formulas() -> None:
    from reprsim.inference import bootstrap

    x, y = data(n=80, strength=1.0)
    b = 150
    ci = bootstrap(x, y, "cka", resamples=b, scheme="pairs", method="bca", seed=4)
    rows, _ = resample_indices(80, b, 4)
    dist = np.array([ref.cka(x[r], y[r]) for r in rows])
    np.testing.assert_allclose(ci.distribution.numpy(), dist, rtol=0, atol=1e-10)
    jack = np.array([ref.cka(np.delete(x, i, 0), np.delete(y, i, 0)) for i in range(80)])  # n ≤ 100: leave-one-out
    low, high = bca_reference(ref.cka(x, y), dist, jack, 0.95)
    assert ci.low == pytest.approx(low, abs=1e-10)
    assert ci.high == pytest.approx(high, abs=1e-10)
    pct = bootstrap(x, y, "cka", resamples=b, scheme="pairs", method="percentile", seed=4, confidence=0.9)
    assert pct.low == pytest.approx(float(np.percentile(dist, 5)), abs=1e-10)
    assert pct.high == pytest.approx(float(np.percentile(dist, 95)), abs=1e-10)
    assert pct.standard_error == pytest.approx(float(np.std(dist, ddof=1)), abs=1e-12)
    assert "95% bca interval" in repr(ci)


def test_half_samples_for_sample_space_measures_with_the_finite_population_factor() -> None:
    from reprsim.inference import bootstrap

    x, y = data(n=90, strength=1.0)
    ci = bootstrap(x, y, "mutual_knn", resamples=40, seed=2)
    assert ci.scheme == "subsample"
    assert ci.method == "half-sample"
    rows, _ = resample_indices(90, 40, 2, size=45)
    dist = np.array([rm.mutual_knn(x[r], y[r], 10) for r in rows])
    np.testing.assert_allclose(ci.distribution.numpy(), dist, atol=1e-12)
    # among subsamples of the observed n, the spread at m = n/2 is the spread at n: the factor √(m/(n − m)) is 1
    # (√(m/n) made the interval 0.64× too narrow for distance correlation: 75% coverage)
    dev = dist - dist.mean()
    estimate = rm.mutual_knn(x, y, 10)
    assert ci.low == pytest.approx(estimate - np.percentile(dev, 97.5), abs=1e-12)
    assert ci.high == pytest.approx(estimate - np.percentile(dev, 2.5), abs=1e-12)
    assert ci.bias == pytest.approx(dist.mean() - estimate, abs=1e-12)
    # why not resample with replacement: a duplicated row becomes its copy's nearest neighbour in both
    rows, _ = resample_indices(90, 1, 2)
    assert rm.mutual_knn(x[rows[0]], y[rows[0]], 10) > estimate + 0.05  # 0.25 against 0.19


def test_no_default_scheme_duplicates_a_row() -> None:
    """At n = 100 and p = q = 20 every row resample lands above the estimate (so BCa refused, and a percentile
    interval excluded the estimate itself); the default resampling of every measure never duplicates a row."""
    from reprsim.inference import bootstrap
    from reprsim.measures import ShapeMetric, available_measures, get_measure

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(100, 20)), rng.normal(size=(100, 20))  # independent
    nine = ["cka", "cka_unbiased", "procrustes", "nbs", "cca", "svcca", "pwcca", "predictivity", ShapeMetric(0.5)]
    for measure in nine:
        pairs = bootstrap(x, y, measure, scheme="pairs", method="percentile", resamples=40, seed=0)
        inflated = pairs.distribution > pairs.estimate if pairs.measure["direction"] == "similarity" else (
            pairs.distribution < pairs.estimate
        )  # fmt: skip
        assert bool(inflated.all()), measure  # the inflation the default avoids
        assert not pairs.low <= pairs.estimate <= pairs.high
    with pytest.raises(InvalidParameterError, match="resampling shifts the measure"):
        bootstrap(x, y, "cka", scheme="pairs", resamples=40)
    for name in available_measures():
        m = get_measure(name)
        if m.stream == "minibatch":
            continue
        assert m.resampling in ("blocks", "half"), name
        ci = bootstrap(x[:60, :6], y[:60, :5], m, resamples=8, seed=0)
        assert ci.scheme in ("blocks", "subsample"), name
        assert ci.low <= ci.estimate <= ci.high, name


def population_cka(a: np.ndarray, noise: float) -> float:
    """Linear CKA of x ~ N(0, I) and y = x Aᵀ + noise·ε in the population: ‖Σxy‖² / (‖Σxx‖ ‖Σyy‖)."""
    sxy, sxx, syy = a.T, np.eye(a.shape[1]), a @ a.T + noise**2 * np.eye(a.shape[0])
    return float(np.sum(sxy**2) / (np.linalg.norm(sxx) * np.linalg.norm(syy)))


def coverage(interval: Callable[[np.ndarray, np.ndarray, int], Any], first_seed: int) -> float:
    """How often 95% intervals cover the population linear CKA, over 200 data sets of n = 100 Gaussian samples."""
    a = np.array([[1.0, 0.5], [0.0, 0.8]])
    truth = population_cka(a, 1.0)
    covered = 0
    for rep in range(200):
        rng = np.random.default_rng(first_seed + rep)
        x = rng.normal(size=(100, 2))
        y = x @ a.T + rng.normal(size=(100, 2))
        ci = interval(x, y, rep)
        covered += ci.low <= truth <= ci.high
    return covered / 200


def test_bootstrap_errors() -> None:
    from reprsim.inference import bootstrap

    x, y = data()
    with pytest.raises(InvalidParameterError, match="resamples must be an integer ≥ 2"):
        bootstrap(x, y, resamples=1)
    with pytest.raises(InvalidParameterError, match=r"confidence must be a finite number in \(0, 1\)"):
        bootstrap(x, y, confidence=95)
    with pytest.raises(InvalidParameterError, match="method= applies to scheme='pairs'"):
        bootstrap(x, y, "cka", scheme="subsample", method="bca")
    with pytest.raises(InvalidParameterError, match="BCa's bias correction is infinite: the estimate 1 is at a bound"):
        bootstrap(x, 2 * x, "mutual_knn", scheme="pairs", resamples=20)  # exactly 1 on every resample
    with pytest.raises(InvalidParameterError, match="defined over a stream of batches"):
        bootstrap(x, y, "cka_minibatch")


# -- jackknife and intervals from streams --------------------------------------------------------------------


def test_t_quantile_matches_scipy() -> None:
    from reprsim.inference._interval import t_quantile

    for df in (1, 2, 4, 9, 19, 99, 1000):
        for q in (0.5, 0.9, 0.975, 0.995, 0.025):
            assert t_quantile(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize(
    ("measure", "fourth"),
    [("cka", True), ("cka", False), ("cka_unbiased", True), ("procrustes", False), ("cca", False),
     ("predictivity", True)],
)  # fmt: skip
def test_streamed_jackknife_equals_the_in_memory_one_for_the_same_blocks(measure: str, fourth: bool) -> None:
    """The stream keeps second-order moments only (pooled and downdated by their own short path) or the
    fourth-order ones too (re-expressed about each new mean): the same leave-one-block-out values either way."""
    from reprsim.inference import jackknife, stream_interval
    from reprsim.measures import get_measure
    from reprsim.streaming import CrossMoments

    x, y = data(n=130, strength=1.0)
    g = 10
    acc = CrossMoments(folds=g, fourth=fourth)
    for s in (slice(0, 1), slice(1, 57), slice(57, 130)):  # uneven batches: blocks follow the sample index
        acc.update(torch.tensor(x[s]), torch.tensor(y[s]))
    streamed = stream_interval(acc, measure, confidence=0.9)
    in_memory = jackknife(x, y, measure, blocks=g, confidence=0.9)
    m = get_measure(measure)
    block = np.arange(130) % g
    values = np.array([float(m(x[block != b], y[block != b])) for b in range(g)])
    se = np.sqrt((g - 1) / g * np.sum((values - values.mean()) ** 2))
    t = stats.t.ppf(0.95, g - 1)
    estimate = float(m(x, y))
    for ci in (streamed, in_memory):
        np.testing.assert_allclose(ci.distribution.numpy(), values, rtol=0, atol=1e-10)
        assert ci.standard_error == pytest.approx(se, abs=1e-10)
        assert ci.low == pytest.approx(estimate - t * se, abs=1e-9)
        assert ci.high == pytest.approx(estimate + t * se, abs=1e-9)
        assert ci.method == "jackknife"


class _Columns(torch.nn.Module):
    """A "model" whose output is some columns of its input: compare() on arrays."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, self.lo : self.hi]


CROSS_VALIDATED = {
    "r2": (Predictivity(ridge=0.5, folds=5), lambda x, y, f: rm.predictivity(x, y, 0.5, f, "variance_weighted")),
    "pearsonr": (Predictivity(folds=4, scoring="pearsonr"), lambda x, y, f: rm.predictivity_r(x, y, 0.0, f)),
    "shape": (ShapeMetric(0.5, folds=5), lambda x, y, f: rm.shape_metric_cv(x, y, 0.5, f)),
}


@pytest.mark.parametrize("case", list(CROSS_VALIDATED))
def test_the_jackknife_of_a_cross_validated_measure_leaves_out_its_folds(case: str) -> None:
    """Leaving out fold b, the rest cross-validate over their own K − 1 folds: the reference refits on the data
    without fold b with those labels. The functional form, a stream and compare() give that interval (a stream
    gave a zero-width interval for predictivity and failed for the shape metric; the functional form re-drew
    the folds of every leave-one-block-out sample, which put the folds' noise, times G − 1, into the bias)."""
    from reprsim import compare
    from reprsim.inference import bootstrap, jackknife, stream_interval
    from reprsim.streaming import CrossMoments

    m, reference = CROSS_VALIDATED[case]
    x, y = data(n=131, strength=1.0)
    k = m.folds
    fold = np.arange(131) % k
    values = np.array([reference(x[fold != b], y[fold != b], fold[fold != b]) for b in range(k)])
    se = np.sqrt((k - 1) / k * np.sum((values - values.mean()) ** 2))
    estimate = reference(x, y, k)
    t = stats.t.ppf(0.975, k - 1)
    acc = CrossMoments(folds=k)
    for s in (slice(0, 50), slice(50, 131)):
        acc.update(torch.tensor(x[s]), torch.tensor(y[s]))
    z = torch.tensor(np.hstack([x, y]))
    out = compare(
        torch.nn.Sequential(_Columns(0, x.shape[1])),
        torch.nn.Sequential(_Columns(x.shape[1], z.shape[1])),
        list(z.split(40)),
        layers_a=["0"],
        layers_b=["0"],
        measures=[m],
        uncertainty=Uncertainty(ci=0.95),
        progress=False,
    )[m.id]
    assert float(out.low[0, 0]) == pytest.approx(estimate - t * se, abs=1e-9)
    assert float(out.high[0, 0]) == pytest.approx(estimate + t * se, abs=1e-9)
    for ci in (stream_interval(acc, m), jackknife(x, y, m), jackknife(x, y, m, blocks=7), bootstrap(x, y, m)):
        np.testing.assert_allclose(ci.distribution.numpy(), values, rtol=0, atol=1e-10)
        assert ci.estimate == pytest.approx(estimate, abs=1e-10)
        assert ci.standard_error == pytest.approx(se, abs=1e-10)
        assert ci.low == pytest.approx(estimate - t * se, abs=1e-9)
        assert ci.high - ci.low > 0.01


def test_values_of_the_unscaled_euclidean_forms_are_taken_to_n_samples() -> None:
    """√(‖Xc‖² + ‖Yc‖² − 2‖Xc‖‖Yc‖ s) grows as √n: a value on m of n samples is scaled by √(n/m) (its square by
    n/m) in the functional jackknife, a stream's, half-samples and compare()'s sample-space path alike."""
    from reprsim.inference import bootstrap, jackknife, stream_interval
    from reprsim.measures import CKA, Derived, Procrustes
    from reprsim.streaming import CrossMoments

    x, y = data(n=130, strength=1.0)
    block = np.arange(130) % 10
    for m, power in ((Derived(CKA(), "euclidean"), 0.5), (Derived(Procrustes("nbs"), "squared_euclidean"), 1.0)):
        raw = np.array([float(m(x[block != b], y[block != b])) for b in range(10)])
        want = raw * (130 / (130 - np.bincount(block))) ** power
        acc = CrossMoments(folds=10)
        acc.update(torch.tensor(x), torch.tensor(y))
        for ci in (jackknife(x, y, m, blocks=10), stream_interval(acc, m)):
            np.testing.assert_allclose(ci.distribution.numpy(), want, rtol=1e-12)
        halves = torch.stack([torch.arange(0, 130, 2), torch.arange(1, 130, 2)])
        ci = bootstrap(x, y, m, scheme="subsample", resamples=halves)
        want = [float(m(x[h.numpy()], y[h.numpy()])) * 2**power for h in halves]
        np.testing.assert_allclose(ci.distribution.numpy(), want, rtol=1e-12)


def test_jackknife_intervals_cover_the_population_cka() -> None:
    from reprsim.inference import jackknife

    rate = coverage(lambda x, y, rep: jackknife(x, y, "cka", blocks=20), 5000)
    assert 0.90 <= rate <= 0.99, rate


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_minibatch_cka_bootstrap_over_batches_recombines_the_records(method: str) -> None:
    from reprsim.inference import stream_interval
    from reprsim.streaming import MinibatchCKA

    gen = torch.Generator().manual_seed(0)
    acc = MinibatchCKA()
    for _ in range(12):
        x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
        acc.update(x, torch.tanh(x[:, :4]) + torch.randn(40, 4, generator=gen, dtype=torch.float64))
    ci = stream_interval(acc, method=method, resamples=300, seed=9)  # type: ignore[arg-type]
    rec = acc.hsic_records.numpy()
    idx = torch.randint(0, 12, (300, 12), generator=torch.Generator().manual_seed(9)).numpy()
    sums = rec[idx].sum(axis=1)
    dist = sums[:, 0] / np.sqrt(sums[:, 1] * sums[:, 2])
    np.testing.assert_allclose(ci.distribution.numpy(), dist, atol=1e-12)
    estimate = rec[:, 0].sum() / np.sqrt(rec[:, 1].sum() * rec[:, 2].sum())
    assert ci.estimate == pytest.approx(acc.compute(), abs=1e-12)
    if method == "percentile":
        assert ci.low == pytest.approx(float(np.percentile(dist, 2.5)), abs=1e-12)
        assert ci.high == pytest.approx(float(np.percentile(dist, 97.5)), abs=1e-12)
    else:
        kept = [rec[np.arange(12) != b].sum(axis=0) for b in range(12)]
        jack = np.array([s[0] / np.sqrt(s[1] * s[2]) for s in kept])
        low, high = bca_reference(estimate, dist, jack, 0.95)
        assert ci.low == pytest.approx(low, abs=1e-12)
        assert ci.high == pytest.approx(high, abs=1e-12)
    assert ci.scheme == "batches"
    # the default: the jackknife over batches, θ̂ ± t_{k−1}·se from leaving each batch's record out
    jk = stream_interval(acc)
    kept = [rec[np.arange(12) != b].sum(axis=0) for b in range(12)]
    loo = np.array([s[0] / np.sqrt(s[1] * s[2]) for s in kept])
    se = np.sqrt(11 / 12 * np.sum((loo - loo.mean()) ** 2))
    t = stats.t.ppf(0.975, 11)
    assert (jk.method, jk.scheme, jk.target) == ("jackknife", "batches", "population")
    assert jk.low == pytest.approx(estimate - t * se, abs=1e-12)
    assert jk.high == pytest.approx(estimate + t * se, abs=1e-12)
    assert jk.standard_error == pytest.approx(se, abs=1e-12)
    assert jk.bias == pytest.approx(11 * (loo.mean() - estimate), abs=1e-12)
    np.testing.assert_allclose(jk.distribution.numpy(), loo, atol=1e-12)
    assert "12 batches left out" in repr(jk)


def test_stream_interval_errors() -> None:
    from reprsim.errors import IncompatibleStateError
    from reprsim.inference import jackknife, stream_interval
    from reprsim.streaming import CrossMoments, MinibatchCKA

    x, y = data()
    acc = CrossMoments()
    acc.update(torch.tensor(x), torch.tensor(y))
    with pytest.raises(InvalidParameterError, match=r"create CrossMoments\(folds=K\) with K ≥ 2"):
        stream_interval(acc)
    one = MinibatchCKA()
    one.update(torch.tensor(x), torch.tensor(y))
    with pytest.raises(IncompatibleStateError, match="at least 2 batches"):
        stream_interval(one)
    with pytest.raises(InvalidParameterError, match="takes a CrossMoments or a MinibatchCKA"):
        stream_interval(object())  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="blocks must be an integer from 2 to 60"):
        jackknife(x, y, blocks=1)
    layers = CrossMoments(folds=3)
    layers.update([torch.tensor(x), torch.tensor(x**2)], torch.tensor(y))
    with pytest.raises(InvalidParameterError, match="takes one pair of layers"):
        stream_interval(layers)
    with pytest.raises(InvalidParameterError, match="a CrossMoments interval is the delete-a-block jackknife"):
        stream_interval(layers, method="percentile")
    with pytest.raises(InvalidParameterError, match="method must be 'jackknife', 'percentile' or 'bca'"):
        stream_interval(one, method="normal")  # type: ignore[arg-type]


# -- compare(uncertainty=Uncertainty(...)) and SimilarityResult ----------------------------------------------------


def test_compare_attaches_intervals_and_permutation_tests_to_every_cell(tmp_path: Any) -> None:
    from reprsim import SimilarityResult, compare
    from reprsim.inference import bootstrap, jackknife

    from .toys import batches, hand_extract, mlp

    net, other = mlp(0), mlp(1)
    data_ = batches(n=160)
    layers = ["1", "3"]
    out = compare(
        net,
        other,
        data_,
        layers_a=layers,
        measures=["cka", "mutual_knn"],
        uncertainty=Uncertainty(ci=0.9, blocks=8, permutations=30, seed=2),
        progress=False,
    )
    a, b = hand_extract(net, layers, data_), hand_extract(other, layers, data_)
    for key in ("cka", "mutual_knn"):
        r = out[key]
        for i, la in enumerate(layers):
            for j, lb in enumerate(layers):
                # each measure's declared resampling: the jackknife over 8 blocks for CKA, 100 half-samples (the
                # same for every cell, seeded) for mutual k-NN
                if key == "cka":
                    want = jackknife(a[la], b[lb], key, blocks=8, confidence=0.9)
                else:
                    want = bootstrap(a[la], b[lb], key, resamples=100, seed=2, confidence=0.9)
                assert float(r.low[i, j]) == pytest.approx(want.low, abs=1e-9)
                assert float(r.high[i, j]) == pytest.approx(want.high, abs=1e-9)
                assert want.bias is not None
                assert float(r.bias[i, j]) == pytest.approx(want.bias, abs=1e-9)
        test = permutation_test([a[k] for k in layers], [b[k] for k in layers], key, permutations=30, seed=2)
        torch.testing.assert_close(r.p_values, test.cell_p_values)
        torch.testing.assert_close(r.calibrated, test.cell_calibrated)
        assert r.metadata["permutation"]["best"]["p_value"] == test.p_value
    assert out["cka"].metadata["ci"] == {"confidence": 0.9, "method": "jackknife", "blocks": 8, "target": "expectation"}
    assert out["mutual_knn"].metadata["ci"] == {
        "confidence": 0.9, "method": "half-sample", "resamples": 100, "target": "expectation"
    }  # fmt: skip
    mb = compare(
        net, other, data_, layers_a=layers, measure="cka_minibatch", uncertainty=Uncertainty(ci=0.9), progress=False
    )
    assert mb.metadata["ci"]["method"] == "jackknife over batches"
    assert mb.metadata["ci"]["batches"] == 5
    assert bool((mb.low <= mb.matrix).all())
    assert bool((mb.matrix <= mb.high).all())
    assert mb.p_values is None
    text = repr(out["cka"])
    assert "[low, high]: 90% jackknife interval" in text
    assert "*: p ≤ 0.05 (30 permutations, per cell)" in text
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    r = out["mutual_knn"]
    ax = r.plot()
    hatched = [p for p in ax.patches if p.get_hatch() == "///"]
    assert len(hatched) == int((r.p_values > 0.05).sum())
    assert "hatched: p > 0.05" in ax.get_title()
    assert "±" in ax.texts[0].get_text()
    saved = SimilarityResult.load(out["cka"].save(tmp_path / "r"))
    for name in ("low", "high", "bias", "p_values", "calibrated"):
        torch.testing.assert_close(getattr(saved, name), getattr(out["cka"], name))
    assert saved.metadata["permutation"] == out["cka"].metadata["permutation"]


def test_compare_uncertainty_options_are_checked() -> None:
    from reprsim import compare

    from .toys import batches, mlp

    net = mlp(0)
    data_ = batches(n=64)
    with pytest.raises(InvalidParameterError, match="has no permutation test"):
        compare(
            net,
            None,
            data_,
            layers_a=["1"],
            measure="cka_minibatch",
            uncertainty=Uncertainty(permutations=10),
            progress=False,
        )
    # among other measures, minibatch CKA is left untested with the reason; the others are tested
    with pytest.warns(ReprsimWarning, match=r"\['cka_minibatch'\] is not tested"):
        out = compare(net, None, data_, layers_a=["1", "3"], measures=["cka", "cka_minibatch"],
                      uncertainty=Uncertainty(permutations="moments"), progress=False)  # fmt: skip
    assert out["cka"].p_values is not None
    assert out["cka_minibatch"].p_values is None
    assert out["cka_minibatch"].metadata["permutation"]["method"] is None
    assert "defined over batches" in out["cka_minibatch"].metadata["permutation"]["reason"]
    with pytest.raises(InvalidParameterError, match=r"ci must be a finite number in \(0, 1\)"):
        compare(net, None, data_, layers_a=["1"], measure="cka", uncertainty=Uncertainty(ci=95), progress=False)
    with pytest.raises(InvalidParameterError, match="blocks= sets the jackknife of ci="):
        compare(net, None, data_, layers_a=["1"], measure="cka", uncertainty=Uncertainty(blocks=5), progress=False)
    with pytest.raises(InvalidParameterError, match="pass blocks=3"):
        compare(
            net,
            None,
            data_,
            layers_a=["1"],
            measures=["cka", Predictivity(folds=3)],
            uncertainty=Uncertainty(ci=0.9, blocks=5),
            progress=False,
        )


def test_uncertainty_is_one_checked_frozen_value_and_the_old_keywords_name_it(tmp_path: Any) -> None:
    """compare() and compare_stores() take intervals and tests as one Uncertainty value; the keywords of 0.2
    (ci=, blocks=, permutations=, alpha=, seed=) are refused with the replacement, their values filled in."""
    import dataclasses

    from reprsim import StoreWriter, compare, compare_stores

    from .toys import batches, mlp

    net, data_ = mlp(0), batches(n=64)
    u = Uncertainty(ci=0.9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        u.ci = 0.5  # type: ignore[misc]
    # one value serves several comparisons: the default blocks are filled in per run, the value is not changed
    first = compare(net, None, data_, layers_a=["1", "3"], measure="cka", uncertainty=u, progress=False)
    again = compare(net, None, data_, layers_a=["1", "3"], measure="cka", uncertainty=u, progress=False)
    assert u.blocks is None
    assert first.metadata["ci"]["blocks"] == 20
    assert first.low is not None
    assert again.low is not None
    torch.testing.assert_close(first.low, again.low, rtol=0, atol=0)
    # Uncertainty() asks for values only, as None does
    plain = compare(net, None, data_, layers_a=["1", "3"], measure="cka", progress=False)
    empty = compare(net, None, data_, layers_a=["1", "3"], measure="cka", uncertainty=Uncertainty(), progress=False)
    torch.testing.assert_close(plain.matrix, empty.matrix, rtol=0, atol=0)
    torch.testing.assert_close(plain.matrix, first.matrix, rtol=0, atol=1e-12)  # per-block sums round differently
    assert empty.low is None
    assert empty.p_values is None
    for bad, message in (
        (dict(permutations=0), "permutations must be"),
        (dict(permutations="moment"), "permutations must be"),
        (dict(ci=0.9, alpha=1.5), "alpha must be a finite number in"),
        (dict(ci=0.9, seed=-1), "seed must be"),
        (dict(ci=0.9, blocks=1), "blocks must be"),
    ):
        with pytest.raises(InvalidParameterError, match=message):
            Uncertainty(**bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match=r"uncertainty= takes an Uncertainty .* got float"):
        compare(net, None, data_, layers_a=["1"], uncertainty=0.95, progress=False)  # type: ignore[call-overload]
    with pytest.raises(InvalidParameterError) as caught:
        compare(net, None, data_, layers_a=["1"], ci=0.95, seed=3, progress=False)  # type: ignore[call-overload]
    assert "instead of ci=, seed=, pass uncertainty=reprsim.Uncertainty(ci=0.95, seed=3)" in str(caught.value)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['confidence'\]"):
        compare(net, None, data_, layers_a=["1"], confidence=0.95, progress=False)  # type: ignore[call-overload]
    with StoreWriter(tmp_path / "s") as w:
        w.write({"x": np.random.default_rng(0).normal(size=(40, 3))})
    with pytest.raises(InvalidParameterError, match=r"instead of permutations=, pass uncertainty=reprsim\.Uncertainty"):
        compare_stores(tmp_path / "s", permutations=99, progress=False)
    stored = compare_stores(tmp_path / "s", uncertainty=Uncertainty(permutations=19, seed=1), progress=False)
    assert stored.p_values is not None
    assert stored.metadata["permutation"]["permutations"] == 19


def test_compare_refuses_more_blocks_than_samples_before_the_cost() -> None:
    """blocks=10⁴ on 64 samples took 620 s and 8.9 GiB: the jackknife needs a sample per block."""
    from reprsim import compare

    from .toys import batches, mlp

    net = mlp(0)
    with pytest.raises(InvalidParameterError, match="blocks=10000 exceeds the 64 samples of data"):
        compare(
            net,
            None,
            batches(n=64),
            layers_a=["1"],
            measure="cka",
            uncertainty=Uncertainty(ci=0.9, blocks=10_000),
            progress=False,
        )
    # a stream of unknown length: refused once its samples are counted, before any interval is computed
    stream = (b for b in batches(n=64))
    with pytest.raises(InvalidParameterError, match="blocks=100 exceeds the 64 samples seen"):
        compare(
            net,
            None,
            stream,
            layers_a=["1"],
            measure="procrustes",
            uncertainty=Uncertainty(ci=0.9, blocks=100),
            progress=False,
        )
    # and blocks whose copies of the moments would not fit are refused at the first batch
    wide = torch.nn.Sequential(torch.nn.Linear(10, 4000)).double()
    with pytest.raises(InvalidParameterError, match=r"5000 blocks \(or folds\) keep 5000 sets of moments"):
        compare(wide, None, (b for b in batches(n=64)), layers_a=["0"], measure="cka",
                uncertainty=Uncertainty(ci=0.9, blocks=5000), progress=False)  # fmt: skip


def test_batch_jackknife_of_a_layers_matrix_matches_per_cell_leave_one_batch_out() -> None:
    from reprsim.inference._stream import batch_jackknife_matrix
    from reprsim.streaming import MinibatchCKAMatrix

    gen = torch.Generator().manual_seed(1)
    acc = MinibatchCKAMatrix(records=True)
    for _ in range(9):
        a = torch.randn(32, 6, generator=gen, dtype=torch.float64)
        acc.update([a, a.tanh()], [a[:, :3] + torch.randn(32, 3, generator=gen, dtype=torch.float64), a**2])
    kl_t, kk_t, ll_t = acc.hsic_records
    low, high, bias = batch_jackknife_matrix(kl_t, kk_t, ll_t, 0.8)
    kl, kk, ll = kl_t.numpy(), kk_t.numpy(), ll_t.numpy()
    t = stats.t.ppf(0.9, 8)
    for i in range(2):
        for j in range(2):
            full = kl[:, i, j].sum() / np.sqrt(kk[:, i].sum() * ll[:, j].sum())
            keep = [np.arange(9) != b for b in range(9)]
            loo = np.array([kl[k, i, j].sum() / np.sqrt(kk[k, i].sum() * ll[k, j].sum()) for k in keep])
            se = np.sqrt(8 / 9 * np.sum((loo - loo.mean()) ** 2))
            assert float(low[i, j]) == pytest.approx(full - t * se, abs=1e-12)
            assert float(high[i, j]) == pytest.approx(full + t * se, abs=1e-12)
            assert float(bias[i, j]) == pytest.approx(8 * (loo.mean() - full), abs=1e-12)
    torch.testing.assert_close(kl_t.sum(0) / torch.sqrt(torch.outer(kk_t.sum(0), ll_t.sum(0))), acc.compute())
    with pytest.raises(InvalidParameterError, match="create it with records=True"):
        _ = MinibatchCKAMatrix().hsic_records


def test_explicit_permutations_are_used_as_given() -> None:
    x, y = data(n=40)
    rows = np.stack(permutations(40, 25, 8))
    given = permutation_test(x, y, "cka", permutations=rows)
    drawn = permutation_test(x, y, "cka", permutations=25, seed=8)
    torch.testing.assert_close(given.null, drawn.null, rtol=0, atol=0)
    assert given.p_value == drawn.p_value
    # restricted permutations: only within two halves (e.g. exchangeable groups)
    halves = np.stack(
        [np.concatenate([np.random.default_rng(s).permutation(20), 20 + np.arange(20)]) for s in range(9)]
    )
    test = permutation_test(x, y, "cka", permutations=halves)
    np.testing.assert_allclose(test.null.numpy(), [ref.cka(x, y[r]) for r in halves], atol=1e-10)
    with pytest.raises(InvalidParameterError, match=r"\(K, n = 40\) integer row orders"):
        permutation_test(x, y, permutations=np.zeros((3, 39), dtype=int))
    with pytest.raises(InvalidParameterError, match="must be a permutation of 0"):
        permutation_test(x, y, permutations=np.zeros((3, 40), dtype=int))


def test_bootstrap_takes_the_resamples_themselves() -> None:
    from reprsim.inference import bootstrap

    x, y = data(n=50)
    rows = np.random.default_rng(3).integers(0, 50, size=(30, 50))
    ci = bootstrap(x, y, "cka", resamples=rows, scheme="pairs", method="percentile")
    np.testing.assert_allclose(ci.distribution.numpy(), [ref.cka(x[r], y[r]) for r in rows], atol=1e-10)
    halves = np.stack([np.random.default_rng(s).permutation(50)[:25] for s in range(20)])
    sub = bootstrap(x, y, "mutual_knn", resamples=halves)
    np.testing.assert_allclose(sub.distribution.numpy(), [rm.mutual_knn(x[r], y[r], 10) for r in halves], atol=1e-12)
    with pytest.raises(InvalidParameterError, match="must not repeat a row"):
        bootstrap(x, y, "mutual_knn", resamples=rows[:, :25])
    with pytest.raises(InvalidParameterError, match="holds n = 50 indices"):
        bootstrap(x, y, "cka", resamples=rows[:, :40], scheme="pairs")
    with pytest.raises(InvalidParameterError, match=r"lie in 0 … n − 1 = 49"):
        bootstrap(x, y, "cka", resamples=rows + 1, scheme="pairs")


# -- the exact-moment permutation null -------------------------------------------------------------------------


def _numpy_permuted_cka(x: np.ndarray, y: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Linear CKA under ``count`` random permutations of y's rows, from the formula in NumPy (batched)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    den = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    rng = np.random.default_rng(seed)
    out = np.empty(count)
    for start in range(0, count, 5000):
        perms = np.argsort(rng.random((min(5000, count - start), len(x))), axis=1)
        cross = np.einsum("np,bnq->bpq", xc, yc[perms])
        out[start : start + len(perms)] = (cross**2).sum(axis=(1, 2)) / den
    return out


def check_tail_against_permutations(x: np.ndarray, y: np.ndarray, seed: int, design: str) -> tuple[np.ndarray, Any]:
    """At the 0.95, 0.99 and 0.999 quantiles of 10⁵ exact permutations of linear CKA, the fitted Pearson III
    tail's p-value is within 4 Monte Carlo standard errors (sqrt(p(1 − p)/10⁵)) of the permutations' own.
    Returns the permuted values and the null's moments."""
    from reprsim.inference._analytic import pearson3_sf
    from reprsim.measures import get_measure
    from reprsim.measures._traces import pair_moments

    m = get_measure("cka")
    null = pair_moments(m.null_trace(torch.tensor(x)), m.null_trace(torch.tensor(y)))
    drawn = _numpy_permuted_cka(x, y, 100_000, seed=seed)
    for level in (0.05, 0.01, 0.001):
        value = float(np.quantile(drawn, 1 - level))
        frequency = float(np.mean(drawn >= value))
        error = math.sqrt(frequency * (1 - frequency) / 100_000)
        assert abs(pearson3_sf(value, null) - frequency) <= 4 * error, (design, level)
    return drawn, null


DESIGNS = {
    "gaussian": lambda rng, n: (rng.normal(size=(n, 6)), rng.normal(size=(n, 4))),
    "heavy-tailed (t5)": lambda rng, n: (rng.standard_t(5, size=(n, 6)), rng.standard_t(5, size=(n, 4))),
    "low-rank": lambda rng, n: (
        rng.normal(size=(n, 2)) @ rng.normal(size=(2, 12)) + 0.05 * rng.normal(size=(n, 12)),
        rng.normal(size=(n, 3)) @ rng.normal(size=(3, 8)),
    ),
}


WIDE_DESIGNS = {
    "gaussian (p = 40, q = 30)": lambda rng, n: (rng.normal(size=(n, 40)), rng.normal(size=(n, 30))),
    "heavy-tailed t5 (p = 24, q = 16)": lambda rng, n: (
        rng.standard_t(5, size=(n, 24)),
        rng.standard_t(5, size=(n, 16)),
    ),
}


@pytest.mark.parametrize("design", sorted(WIDE_DESIGNS))
def test_moment_p_values_at_layer_widths_of_tens(design: str) -> None:
    """The same tail check at widths of tens (the null is narrower and less skewed there): within 4 Monte Carlo
    standard errors of 10⁵ exact permutations at p = 0.05, 0.01 and 0.001."""
    check_tail_against_permutations(*WIDE_DESIGNS[design](np.random.default_rng(20261204), 150), 8, design)


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_moment_p_values_are_within_monte_carlo_error_of_100000_permutations(design: str) -> None:
    """At the 0.95, 0.99 and 0.999 quantiles of 10⁵ exact permutations, the fitted tail's p-value is within 4
    Monte Carlo standard errors of the permutations' own (sqrt(p(1 − p)/10⁵): 1e-4 at p = 0.001)."""
    from reprsim.inference._analytic import pearson3_sf
    from reprsim.measures import get_measure

    rng = np.random.default_rng(20261203)
    x, y = DESIGNS[design](rng, 150)
    drawn, null = check_tail_against_permutations(x, y, 7, design)
    m = get_measure("cka")
    # the same through the public function: a moments test at the data's own CKA
    test = permutation_test(x, y, "cka", permutations="moments")
    assert test.method == "moments"
    assert test.null.numel() == 0
    assert test.null_moments is not None
    assert test.null_moments[0] == pytest.approx(float(drawn.mean()), abs=4 * float(drawn.std()) / math.sqrt(1e5))
    assert test.null_moments[1] == pytest.approx(float(drawn.std()), rel=0.02)
    observed = float(m(x, y))
    assert test.p_value == pytest.approx(pearson3_sf(observed, null), abs=1e-15)


def test_moments_critical_value_and_calibrated_score_agree_with_many_permutations() -> None:
    x, y = data(n=120, strength=0.25, seed=5)
    exact = permutation_test(x, y, "cka", permutations="moments", alpha=0.05)
    drawn = permutation_test(x, y, "cka", permutations=20_000, alpha=0.05, seed=1)
    assert exact.threshold == pytest.approx(drawn.threshold, rel=0.01)
    assert exact.calibrated == pytest.approx(drawn.calibrated, abs=0.01)
    assert exact.p_value == pytest.approx(drawn.p_value, abs=4 * math.sqrt(drawn.p_value / 20_000) + 1e-4)
    assert "exact permutation moments" in repr(exact)


def test_moments_fall_back_to_monte_carlo_with_the_reason() -> None:
    from reprsim import ReprsimWarning

    x, y = data(n=25)
    with pytest.warns(ReprsimWarning, match=r"n = 25 < 30"):
        small = permutation_test(x, y, "cka", permutations="moments")
    assert small.method == "monte_carlo"
    assert small.note is not None
    assert "n = 25 < 30" in small.note
    assert "Monte Carlo with 999 permutations" in small.note
    assert small.null.numel() == 999  # as compare() falls back
    x, y = data(n=100)
    with pytest.warns(ReprsimWarning, match="not a trace statistic"):
        other = permutation_test(x, y, "procrustes", permutations="moments")
    assert other.method == "monte_carlo"
    rng = np.random.default_rng(0)
    heavy = rng.exponential(size=(100, 3)) ** 3  # a few rows dominate the Gram
    with pytest.warns(ReprsimWarning, match="a few samples dominate"):
        lumpy = permutation_test(heavy, y, "cka", permutations="moments")
    assert lumpy.method == "monte_carlo"
    assert permutation_test(x, y, "cka", permutations="moments").method == "moments"
    with pytest.raises(InvalidParameterError, match="permutations must be a number K, 'moments'"):
        permutation_test(x, y, "cka", permutations="exact")
    # 0.2's method= names the permutations= that replaces it, value by value
    for method, instead in (
        ("moments", "permutations='moments'"),
        ("auto", "permutations='moments' (a warning"),
        ("monte_carlo", "permutations=K"),
    ):
        with pytest.raises(InvalidParameterError, match=re.escape(f"instead of method={method!r}, pass {instead}")):
            permutation_test(x, y, "cka", method=method)
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        permutation_test(x, y, "cka", permutation=10)


def test_holm_adjusted_p_values_follow_the_step_down_definition() -> None:
    from reprsim.inference._permutation import holm

    p = torch.tensor([[0.01, 0.04], [0.03, 0.005], [0.5, float("nan")]], dtype=torch.float64)
    tested = [0.005, 0.01, 0.03, 0.04, 0.5]  # sorted, m = 5
    adjusted = []
    running = 0.0
    for i, value in enumerate(tested):
        running = max(running, min(1.0, (5 - i) * value))
        adjusted.append(running)
    want = {0.005: adjusted[0], 0.01: adjusted[1], 0.03: adjusted[2], 0.04: adjusted[3], 0.5: adjusted[4]}
    got = holm(p)
    for i in range(3):
        for j in range(2):
            if math.isnan(float(p[i, j])):
                assert math.isnan(float(got[i, j]))
            else:
                assert float(got[i, j]) == pytest.approx(want[float(p[i, j])], abs=1e-15)


def test_layer_matrices_from_moments_best_cell_by_holm_and_the_exact_mean() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(90, 5))
    xs = [x, np.tanh(x[:, :3])]
    ys = [x[:, :2] + rng.normal(size=(90, 2)), rng.normal(size=(90, 4))]
    best = permutation_test(xs, ys, "cka", permutations="moments", aggregate="best")
    assert best.cell_p_values is not None
    assert best.cell_p_values_holm is not None
    assert best.matrix is not None
    assert best.p_value == pytest.approx(min(1.0, 4 * float(best.cell_p_values.min())), rel=1e-12)
    for i in range(2):
        for j in range(2):
            alone = permutation_test(xs[i], ys[j], "cka", permutations="moments")
            assert float(best.cell_p_values[i, j]) == pytest.approx(alone.p_value, rel=1e-12, abs=1e-300)
    mean = permutation_test(xs, ys, "cka", permutations="moments", aggregate="mean")
    drawn = permutation_test(xs, ys, "cka", permutations=4000, aggregate="mean", seed=3)
    assert mean.observed == pytest.approx(float(best.matrix.mean()), abs=1e-12)
    assert mean.null_moments is not None
    assert mean.null_moments[0] == pytest.approx(float(drawn.null.mean()), abs=4 * float(drawn.null.std()) / 60)
    assert mean.null_moments[1] == pytest.approx(float(drawn.null.std()), rel=0.06)


@pytest.mark.parametrize("unbiased", [False, True])
def test_the_exact_moment_tests_observed_matrix_is_the_cka_of_every_cell(unbiased: bool) -> None:
    """The observed cells come from each layer's moments computed once (shared with its trace side): each equals
    the Gram-space CKA of the reference, on offset data of different widths."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(70, 6))
    xs = [x + 50.0, np.tanh(x[:, :3]) * 1e-3, rng.normal(size=(70, 9))]
    ys = [x[:, :2] @ rng.normal(size=(2, 5)) + rng.normal(size=(70, 5)) - 7.0, rng.normal(size=(70, 4))]
    test = permutation_test(xs, ys, "cka_unbiased" if unbiased else "cka", permutations="moments")
    assert test.matrix is not None
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            assert float(test.matrix[i, j]) == pytest.approx(ref.cka(a, b, unbiased=unbiased), abs=1e-10)


def test_compare_uses_the_exact_moment_null_per_cell() -> None:
    from reprsim import compare

    from .toys import batches, hand_extract, mlp

    net, other = mlp(0), mlp(1)
    data_ = batches(n=128)
    layers = ["1", "3"]
    out = compare(net, other, data_, layers_a=layers, measures=["cka", "cka_unbiased"],
                  uncertainty=Uncertainty(permutations="moments"), progress=False)  # fmt: skip
    a, b = hand_extract(net, layers, data_), hand_extract(other, layers, data_)
    for key in ("cka", "cka_unbiased"):
        test = permutation_test([a[k] for k in layers], [b[k] for k in layers], key, permutations="moments")
        r = out[key]
        torch.testing.assert_close(r.p_values, test.cell_p_values)
        assert test.cell_null_moments is not None
        torch.testing.assert_close(r.chance, test.cell_null_moments[..., 0])
        assert r.metadata["permutation"]["method"] == "moments"
        assert r.metadata["permutation"]["holm"] == test.cell_p_values_holm.tolist()  # type: ignore[union-attr]
    # the chance level of biased CKA is tr A tr B / ((n − 1)‖A‖‖B‖); of unbiased CKA 0
    xa, yb = a["1"].numpy(), b["3"].numpy()
    xc, yc = xa - xa.mean(0), yb - yb.mean(0)
    chance = np.trace(xc.T @ xc) * np.trace(yc.T @ yc) / (127 * np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert float(out["cka"].chance[0, 1]) == pytest.approx(chance, rel=1e-10)
    assert float(out["cka_unbiased"].chance.abs().max()) < 1e-12
    assert "exact permutation moments" in repr(out["cka"])
    # the heatmap's colour bar marks the cells' mean chance level, on the measure's declared range
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    ax = out["cka"].plot()
    bar = ax.figure.axes[-1]
    assert ax.images[0].get_clim() == pytest.approx((0.0, 1.0))
    assert [line.get_ydata()[0] for line in bar.lines] == pytest.approx([float(out["cka"].chance.mean())])
    assert [t.get_text() for t in bar.texts] == ["chance"]
