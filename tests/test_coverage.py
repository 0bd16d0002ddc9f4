"""Coverage of reprsim's intervals, by simulation: each documented target covered in 90–99% of seeded data sets.

Moment measures (linear CKA biased and unbiased, NBS, the Procrustes angle, mean CCA, predictivity): Gaussian
designs with closed-form population values (tests/coverage_sim.py), n ∈ {100, 400}, p ∈ {2, 10, 50}, q = p/2,
200 data sets per cell shared by the six measures; 95% delete-a-block jackknife intervals (20 blocks) from the
streamed per-block moments, checked equal to the functional form and to ``compare(uncertainty=...)`` on the first
data sets of every cell. Minibatch CKA: the jackknife over batches, 2 to 10 batches. The documented failures are tested
too: biased estimators' intervals do not cover the population value at p = 50, and say so. Sample-space measures
(no closed form): each by its declared resampling, against the estimator's mean over the data sets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from reprsim import Uncertainty, compare
from reprsim.inference import Interval, bootstrap, jackknife

from .coverage_sim import (
    CROSS_VALIDATED,
    EXTENSIVE,
    FURTHER,
    MOMENT_MEASURES,
    minibatch_coverage,
    moment_coverage,
    sample_coverage,
)

DATASETS = 200
#: Cells where the jackknife is conservative, as docs/uncertainty.md states: its variance estimate is biased upward
#: (Efron–Stein), and at p/n = 0.5 its standard error is 1.2–1.6× the true spread. Over 1,000 data sets at
#: n = 100, p = 50 the six measures covered their expectation in 97.9–99.7% of them, so 200 data sets may land
#: above 99% for any of them (predictivity did, at 99.5%).
CONSERVATIVE = {(100, 50)}
#: Estimators whose intervals target their expectation at this n: the population value only where p is small.
BIASED = ("cka", "nbs", "procrustes", "cca", "predictivity", "ensd", "eigenspace_overlap")
#: Where the jackknife sees only part of a bias larger than the half-width, as docs/uncertainty.md states: ENSD at
#: n = 100, p = 50, whose bias (+1.75 dimensions) is far from the 1/n regime the jackknife corrects (it sees +0.31).
UNDERSEEN = {("ensd", 100, 50)}


class _Columns(nn.Module):
    """A "model" whose output is some columns of its input: compare() on data sets given as arrays."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, self.lo : self.hi]


def _compare_intervals(x: np.ndarray, y: np.ndarray) -> dict[str, tuple[float, float]]:
    p, q = x.shape[1], y.shape[1]
    z = torch.tensor(np.hstack([x, y]))
    out = compare(
        nn.Sequential(_Columns(0, p)),
        nn.Sequential(_Columns(p, p + q)),
        list(z.split(37)),  # uneven batches: the blocks follow the sample index, not the batches
        layers_a=["0"],
        layers_b=["0"],
        measures=list(MOMENT_MEASURES),
        uncertainty=Uncertainty(ci=0.95),
        progress=False,
    )
    return {m: (float(out[m].low[0, 0]), float(out[m].high[0, 0])) for m in MOMENT_MEASURES}


def _same_interval(a: Interval | tuple[float, float], b: Interval, what: str) -> None:
    low, high = (a.low, a.high) if isinstance(a, Interval) else a
    assert low == pytest.approx(b.low, abs=1e-9), what
    assert high == pytest.approx(b.high, abs=1e-9), what


@pytest.mark.parametrize(("n", "p"), [(100, 2), (400, 10)])
def test_the_delete_a_fold_jackknife_of_cross_validated_measures_covers_their_expectation(n: int, p: int) -> None:
    """Five folds, so t with 4 degrees of freedom: docs/uncertainty.md has every cell (91.5–98.5%)."""
    cov = moment_coverage(n, p, DATASETS, seed=n + p, measures=tuple(CROSS_VALIDATED), blocks=5)
    for m, c in cov.items():
        assert 0.90 <= c.of_expectation <= 0.99, (m, c)
        assert 0.8 < c.half_width / 2.776 / c.spread < 1.4, (m, c)  # se ÷ the true spread of the estimates
    for m in ("predictivity_cv", "predictivity_pearsonr_cv"):
        if p == 2:  # the bias is small against the interval: the population value is covered too
            assert 0.90 <= cov[m].of_population <= 0.99, (m, cov[m])


@pytest.mark.parametrize(("n", "p"), [(100, 2), (100, 10)])
def test_the_unscaled_euclidean_forms_are_resampled_at_full_size(n: int, p: int) -> None:
    """They grow as √n (or n): each leave-one-block-out value is scaled to n samples, so the intervals cover the
    expectation at n (94–95.5% over 200 data sets, se ÷ sd 1.00–1.05; docs/uncertainty.md) and the bias the
    jackknife reports is the estimator's, not a twentieth of the samples' (it reported −37 on a value of 76)."""
    cov = moment_coverage(n, p, DATASETS, seed=n + p, measures=tuple(EXTENSIVE))
    for m, c in cov.items():
        assert 0.90 <= c.of_expectation <= 0.99, (m, c)
        assert 0.8 < c.half_width / 2.093 / c.spread < 1.3, (m, c)
        assert abs(c.bias_seen) < c.half_width, (m, c)


@pytest.mark.parametrize(("n", "p"), [(100, 2), (100, 10)])
def test_the_jackknife_of_gulp_and_the_pearson_and_pls_predictivities_covers_their_expectation(n: int, p: int) -> None:
    """docs/uncertainty.md has the other cells (95–99.5% everywhere)."""
    cov = moment_coverage(n, p, DATASETS, seed=n + p, measures=tuple(FURTHER))
    for m, c in cov.items():
        assert 0.90 <= c.of_expectation <= 0.99, (m, c)
    for m in ("gulp", "predictivity_pearsonr"):
        if p == 2:
            assert 0.90 <= cov[m].of_population <= 0.99, (m, cov[m])
        else:  # the documented failure: at p/n = 0.1 the bias moves the interval off the population value
            assert cov[m].of_population < 0.8, (m, cov[m])


@pytest.mark.parametrize(("n", "p"), [(100, 2), (100, 10), (100, 50), (400, 2), (400, 10), (400, 50)])
def test_jackknife_intervals_of_moment_measures_cover_their_documented_target(n: int, p: int) -> None:
    seen = [0]

    def check(x: np.ndarray, y: np.ndarray, intervals: dict[str, Any]) -> None:
        if seen[0] < 2:  # the functional forms give the streamed intervals (so their coverage is the same)
            for m, ci in intervals.items():
                _same_interval(bootstrap(x, y, m), ci, f"bootstrap {m}")
                _same_interval(jackknife(x, y, m), ci, f"jackknife {m}")
        if seen[0] == 0:  # and so does compare(uncertainty=...) over a stream of batches
            for m, ends in _compare_intervals(x, y).items():
                _same_interval(ends, intervals[m], f"compare {m}")
        seen[0] += 1
        # the repr warns where a biased measure's bias exceeds the half-width; never for the unbiased one
        assert intervals["cka_unbiased"].warning is None
        assert intervals["cka_lange"].warning is None
        if n == 100 and p == 50:
            assert "unbiased=True estimates that" in (intervals["cka"].warning or "")

    cov = moment_coverage(n, p, DATASETS, seed=n + p, check=check)
    for m, c in cov.items():
        top = 1.0 if (n, p) in CONSERVATIVE else 0.99
        assert 0.90 <= c.of_expectation <= top, (m, c)
    # unbiased CKA (Song's HSIC, and Lange's) estimates the population CKA: its intervals cover it at every width
    for m in ("cka_unbiased", "cka_lange"):
        assert 0.90 <= cov[m].of_population <= 0.99, cov[m]
    for m in BIASED:
        c = cov[m]
        if p == 2:  # bias small against the interval: the population value is covered too
            assert 0.90 <= c.of_population <= 0.99, (m, c)
        if p == 50:  # the documented failure: the bias moves the interval off the population value
            assert c.of_population < 0.5, (m, c)
            assert abs(c.bias_true) > c.half_width, (m, c)
        # the bias the jackknife sees has the sign and the size of the true bias where it matters
        if abs(c.bias_true) > c.half_width:
            low = 0.1 if (m, n, p) in UNDERSEEN else 0.5
            assert low * abs(c.bias_true) < abs(c.bias_seen) < 1.5 * abs(c.bias_true), (m, c)
            assert np.sign(c.bias_seen) == np.sign(c.bias_true), (m, c)


@pytest.mark.parametrize("p", [2, 10, 50])
@pytest.mark.parametrize("batch", [40, 100, 200])
def test_jackknife_over_batches_covers_the_population_minibatch_cka(p: int, batch: int) -> None:
    """n = 400 in 10, 4 or 2 batches: the t quantile with k − 1 degrees of freedom keeps the coverage."""
    c = minibatch_coverage(400, p, batch, DATASETS, seed=p + batch)
    assert 0.90 <= c.of_population <= 0.99, c


def test_the_bootstrap_over_few_batches_is_too_narrow_as_documented() -> None:
    """Why the jackknife is the default: resampling 4 batches with replacement covers about 78%."""
    c = minibatch_coverage(400, 10, 100, DATASETS, seed=7, method="percentile")
    assert c.of_population < 0.85, c


@pytest.mark.parametrize("p", [2, 50])
def test_sample_space_intervals_cover_the_estimators_mean_by_their_declared_resampling(p: int) -> None:
    """n = 60, 100 data sets. Distance correlation and RBF CKA: the jackknife over 20 blocks, whose standard error
    matches the true spread (the half-samples it replaced were 0.64× too narrow). Mutual k-NN and RSA: 50
    half-samples, conservative as documented. RSA on correlation RDMs is degenerate at p = 2 (binary RDMs), so it
    is checked at p = 50 only."""
    kernels = ("distance_correlation", "cka_rbf")
    halves = ("mutual_knn",) if p == 2 else ("mutual_knn", "rsa_pearson")
    cov = sample_coverage(60, p, 100, kernels + halves, halves=50, seed=p)
    t19 = 2.093
    for m in kernels:
        c = cov[m]
        assert 0.90 <= c.of_expectation <= 0.99, (m, c)
        assert 0.85 <= c.half_width / t19 / c.spread <= 1.3, (m, c)
    for m in halves:
        assert 0.90 <= cov[m].of_expectation <= 1.0, (m, cov[m])


def test_the_demos_paired_jackknife_covers_a_difference_of_minibatch_ckas() -> None:
    """The seed-study demo decides findings by differences of minibatch CKA between two pairs of models that saw
    the same test batches, with the jackknife leaving each batch out of both at once (reprsim.demo's
    batch_interval). Here x is shared, y₁ = xA₁ + ε₁ and y₂ = xA₂ + ε₂, so the population difference is known;
    per-batch unbiased HSIC from the reference; n = 400 in 10 batches, 200 data sets."""
    pytest.importorskip("matplotlib")
    from reprsim.demo._run import batch_interval

    from . import reference as ref
    from .coverage_sim import Design

    p, batch, k = 10, 40, 10
    d1, d2 = Design(p, p // 2, seed=0), Design(p, p // 2, seed=1)
    assert np.allclose(d1.sxx, d2.sxx)  # one x for both pairs
    truth = d1.population()["cka_minibatch"] - d2.population()["cka_minibatch"]
    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(200):
        x = rng.normal(size=(k * batch, p)) * np.sqrt(d1.lam)
        y1 = x @ d1.a + rng.normal(size=(k * batch, p // 2))
        y2 = x @ d2.a + rng.normal(size=(k * batch, p // 2))
        terms = np.zeros((k, 5))  # per batch: HSIC(K, L₁), HSIC(K, L₂), HSIC(K, K), HSIC(L₁, L₁), HSIC(L₂, L₂)
        for b in range(k):
            rows = slice(b * batch, (b + 1) * batch)
            kx, l1, l2 = (ref.linear_kernel(v[rows]) for v in (x, y1, y2))
            terms[b] = [ref.hsic_unbiased(kx, l1), ref.hsic_unbiased(kx, l2), ref.hsic_unbiased(kx, kx),
                        ref.hsic_unbiased(l1, l1), ref.hsic_unbiased(l2, l2)]  # fmt: skip
        t = torch.tensor(terms)

        def difference(w: torch.Tensor, t: torch.Tensor = t) -> torch.Tensor:
            s = w @ t  # (R, 5) batch-weighted sums: minibatch CKA is the ratio of the summed HSICs
            return s[:, 0] / (s[:, 2] * s[:, 3]).sqrt() - s[:, 1] / (s[:, 2] * s[:, 4]).sqrt()

        _, low, high = batch_interval(difference, k)
        covered += low <= truth <= high
    assert 0.90 <= covered / 200 <= 0.99, covered
