"""Intervals from resampled values: the :class:`Interval` result, and the three constructions every entry point
shares (the delete-a-block jackknife, half-sampling without replacement, quantiles of bootstrap values),
each with what the interval estimates and the bias it sees. No resampling happens here: :mod:`._bootstrap` draws
from arrays, :mod:`._stream` from accumulators, :func:`reprsim.compare` from a stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

import torch

from .._validation import check_probability
from ..errors import InvalidParameterError

__all__ = [
    "Interval",
    "check_confidence",
    "half_interval",
    "jackknife_interval",
    "jackknife_matrix",
    "quantile",
    "t_quantile",
]

IntervalMethod = Literal["bca", "percentile", "jackknife", "half-sample"]
IntervalScheme = Literal["pairs", "subsample", "blocks", "batches"]
_UNITS = {
    "pairs": "resamples",
    "subsample": "half-samples",
    "blocks": "blocks left out",
    "batches": "resamples of batches",
}


def _unit(scheme: str, method: str) -> str:
    return "batches left out" if scheme == "batches" and method == "jackknife" else _UNITS[scheme]


_TARGETS = {
    "population": "the population value",
    "expectation": "the estimator's expectation at this n",
}


@dataclass(frozen=True)
class Interval:
    """A confidence interval for a measure: the result of :func:`bootstrap`, :func:`jackknife` and
    :func:`stream_interval`.

    Attributes
    ----------
    estimate : float
        The measure on all samples.
    low, high : float
        The interval's ends.
    confidence : float
        Its nominal coverage, e.g. 0.95.
    method : {"jackknife", "half-sample", "percentile", "bca"}
        How the ends were found: θ̂ ± t·se with the jackknife's standard error; θ̂ minus the quantiles of the
        half-samples' deviations from their mean (their spread at m = n/2 is the spread at n); quantiles of
        resampled values (percentile, BCa).
    scheme : {"blocks", "subsample", "batches", "pairs"}
        What was left out or resampled: blocks of samples left out one at a time (``"blocks"``), half-samples
        without replacement (``"subsample"``), the batches of a minibatch estimator (``"batches"``: left out one
        at a time by the jackknife, or resampled by the opt-in bootstrap over batches), or rows with
        replacement (``"pairs"``, only when asked for: a duplicated row inflates every measure here).
    distribution : torch.Tensor
        The measure on each resample or with each block left out (float64, CPU).
    standard_error : float
        The standard error the interval implies.
    measure : dict
        The measure's ``describe()``.
    target : {"population", "expectation"}
        What the interval estimates: the population value (consistent, nearly unbiased estimators), or the
        estimator's expectation at this sample size (biased estimators; see docs/uncertainty.md).
    bias : float or None
        The estimator's bias at this n as the resampling sees it: (G − 1)(θ̄₍·₎ − θ̂) for the jackknife, the
        half-samples' mean minus θ̂ (a bias ∝ 1/n doubles at n/2) for half-sampling; None where not estimated.
        When it exceeds the half-width for a biased measure, :attr:`warning` says so and the repr shows it.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    method: IntervalMethod
    scheme: IntervalScheme
    distribution: torch.Tensor = field(repr=False)
    standard_error: float
    measure: dict[str, Any] = field(repr=False)
    target: Literal["population", "expectation"] = "expectation"
    bias: float | None = None

    @property
    def warning(self) -> str | None:
        """A caution when the interval cannot cover the population value: a biased measure whose bias at this n
        exceeds the interval's half-width."""
        half = (self.high - self.low) / 2
        if self.target != "expectation" or self.bias is None or not abs(self.bias) > half:
            return None
        return (
            f"the estimator is biased by about {self.bias:+.3g} at this n (more than the interval's half-width "
            f"{half:.3g}): the interval covers its expectation at this n, not the population value"
            + (" (unbiased=True estimates that)" if self.measure.get("name") == "cka" else "")
        )

    def __repr__(self) -> str:
        text = (
            f"Interval({self.measure.get('id', 'measure')}: {self.estimate:.6g}, {self.confidence:.0%} "
            f"{self.method} interval [{self.low:.6g}, {self.high:.6g}] for {_TARGETS[self.target]}, "
            f"{self.distribution.numel()} {_unit(self.scheme, self.method)})"
        )
        return text + (f"\n  warning: {self.warning}" if self.warning else "")


def check_confidence(confidence: Any) -> float:
    return check_probability(confidence, "confidence", "the interval's nominal coverage, e.g. 0.95")


def quantile(sorted_values: torch.Tensor, q: float) -> float:
    """Linear interpolation between order statistics (NumPy's default ``percentile``)."""
    k = sorted_values.numel()
    pos = min(max(q, 0.0), 1.0) * (k - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, k - 1)
    return float(sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo]))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    x, y = df / (df + t * t), t * t / (df + t * t)
    # P(T > |t|) = I_x(df/2, 1/2)/2 = (1 − I_y(1/2, df/2))/2; the second keeps its digits where x rounds to 1
    tail = 0.5 * _betainc(df / 2.0, 0.5, x) if x < 0.5 else 0.5 * (1.0 - _betainc(0.5, df / 2.0, y))
    return 1.0 - tail if t > 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t distribution with ``df`` degrees of freedom (bisection on its CDF, from
    the incomplete beta function; no SciPy)."""
    if not 0.0 < q < 1.0:
        raise InvalidParameterError(f"a quantile level must be in (0, 1); got {q}")
    lo, hi = -1.0, 1.0
    while _t_cdf(lo, df) > q:
        lo *= 2.0
    while _t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


def jackknife_interval(
    estimate: float, values: torch.Tensor, confidence: float, measure: dict[str, Any], scheme: IntervalScheme = "blocks"
) -> Interval:
    """θ̂ ± t_{G−1} · se from G leave-one-out values (blocks of samples, or the batches of a minibatch
    estimator), se² = (G − 1)/G · Σ(θ₍g₎ − θ̄)²; the bias estimate (G − 1)(θ̄ − θ̂)."""
    g = values.numel()
    mean = float(values.mean())
    se = math.sqrt((g - 1) / g * float((values - mean).square().sum()))
    t = t_quantile(1.0 - (1.0 - confidence) / 2.0, g - 1)
    return Interval(
        estimate, estimate - t * se, estimate + t * se, confidence, "jackknife", scheme, values, se, measure,
        measure.get("target", "expectation"), (g - 1) * (mean - estimate),
    )  # fmt: skip


def jackknife_matrix(
    estimate: torch.Tensor, values: torch.Tensor, confidence: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-cell jackknife intervals (low, high) of an (A, B) estimate from its (G, A, B) leave-one-block-out
    values, and each cell's bias estimate."""
    g = values.shape[0]
    mean = values.mean(dim=0)
    d = values - mean
    se = ((g - 1) / g * (d * d).sum(dim=0)).sqrt()
    t = t_quantile(1.0 - (1.0 - confidence) / 2.0, g - 1)
    return estimate - t * se, estimate + t * se, (g - 1) * (mean - estimate)


def half_interval(
    estimate: float, values: torch.Tensor, n: int, m: int, confidence: float, measure: dict[str, Any]
) -> Interval:
    """The half-sampling interval: θ̂ minus the α/2 and 1 − α/2 quantiles of the half-samples' deviations from
    their mean, scaled by the finite-population factor √(m/(n − m)) (1 at m = n/2: among subsamples of the
    observed n, the spread at m is the spread at n of a statistic whose variance falls as 1/n); the bias
    estimate is the half-samples' mean minus θ̂ (a bias ∝ 1/n is twice as large at n/2)."""
    scale = math.sqrt(m / (n - m))
    mean = float(values.mean())
    dev = torch.sort((values - mean) * scale).values
    alpha = (1.0 - confidence) / 2.0
    low, high = estimate - quantile(dev, 1 - alpha), estimate - quantile(dev, alpha)
    se = float(dev.std()) if values.numel() > 1 else 0.0
    bias = (mean - estimate) * (m / (n - m))
    return Interval(
        estimate, low, high, confidence, "half-sample", "subsample", values, se, measure,
        measure.get("target", "expectation"), bias,
    )  # fmt: skip


def half_matrix(
    estimate: torch.Tensor, values: torch.Tensor, n: int, m: int, confidence: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`half_interval` for every cell of an (A, B) estimate from its (H, A, B) half-sample values."""
    scale = math.sqrt(m / (n - m))
    mean = values.mean(dim=0)
    dev = (values - mean) * scale
    alpha = (1.0 - confidence) / 2.0
    q = torch.quantile(dev, torch.tensor([alpha, 1 - alpha], dtype=dev.dtype), dim=0)
    return estimate - q[1], estimate - q[0], (mean - estimate) * (m / (n - m))


def percentile_levels(confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    return alpha, 1.0 - alpha


def bca_levels(confidence: float, z0: float, acceleration: float) -> tuple[float, float]:
    """The quantile levels of Efron's BCa interval for bias correction z₀ and acceleration a."""
    normal = NormalDist()
    low, high = percentile_levels(confidence)
    zl, zh = normal.inv_cdf(low), normal.inv_cdf(high)
    a = acceleration
    return normal.cdf(z0 + (z0 + zl) / (1.0 - a * (z0 + zl))), normal.cdf(z0 + (z0 + zh) / (1.0 - a * (z0 + zh)))


def bias_correction(distribution: torch.Tensor, estimate: float, bounds: tuple[float, float]) -> float:
    """BCa's z₀ = Φ⁻¹(#{θ* < θ̂}/B); an error naming the cause when every value lies on one side of the estimate:
    the measure at a bound of its range, or a resampling that shifts it (rows drawn with replacement)."""
    below = float((distribution < estimate).double().mean())
    if 0.0 < below < 1.0:
        return NormalDist().inv_cdf(below)
    at_bound = any(math.isfinite(b) and abs(estimate - b) <= 1e-12 * max(1.0, abs(b)) for b in bounds)
    if at_bound:
        cause = (
            f"the estimate {estimate:.6g} is at a bound of the measure's range {bounds} (e.g. CKA of identical data)"
        )
    else:
        side = "above" if below == 0.0 else "below"
        cause = (
            f"every resampled value lies {side} the estimate {estimate:.6g}: the resampling shifts the measure "
            "(a row drawn twice sits at distance 0 from its copy and doubles its weight, which inflates every "
            "measure here); use the default scheme='auto', which never duplicates a row"
        )
    raise InvalidParameterError(f"BCa's bias correction is infinite: {cause}; or use method='percentile'")


def acceleration(values: torch.Tensor) -> float:
    """BCa's acceleration from jackknife values: Σ(θ̄ − θᵢ)³ / (6 (Σ(θ̄ − θᵢ)²)^{3/2})."""
    d = values.mean() - values
    den = float((d * d).sum()) ** 1.5
    return float((d**3).sum()) / (6.0 * den) if den > 0 else 0.0
