"""Bootstrap confidence intervals for any measure: paired resampling of samples, percentile and BCa intervals.

Both representations are resampled with the same rows (a paired bootstrap), so the interval reflects the
sampling variability of the measure over the population of samples. Measures that look at which samples sit
near which (neighbours, distances, kernels, RDMs) are not bootstrapped with replacement: a duplicated row sits
at distance 0 from its copy, becomes its nearest neighbour and its kernel's largest entry, and inflates the
score. For them the default is subsampling without replacement (Politis & Romano 1994): half-samples whose
spread, rescaled by √(m/n), estimates the spread at n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

import torch

from .._precision import full_precision_matmul
from .._validation import check_int, check_probability, check_seed, is_integer
from ..errors import InvalidParameterError
from ..measures._base import Measure, evaluate_validated, get_measure, measure_pair, on_arrays

__all__ = ["Interval", "bootstrap"]

_UNITS = {
    "pairs": "resamples",
    "subsample": "half-samples",
    "blocks": "blocks left out",
    "batches": "resamples of batches",
}

Method = Literal["bca", "percentile"]
IntervalMethod = Literal["bca", "percentile", "jackknife"]
IntervalScheme = Literal["pairs", "subsample", "blocks", "batches"]
Scheme = Literal["auto", "pairs", "subsample"]
JACKKNIFE_GROUPS = 100


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
    method : {"bca", "percentile", "jackknife"}
        How the ends were found: quantiles of resampled values (percentile, BCa), or θ̂ ± t·se with the
        jackknife's standard error.
    scheme : {"pairs", "subsample", "blocks", "batches"}
        What was resampled or left out: rows with replacement (``"pairs"``), half-samples without replacement
        (``"subsample"``), blocks of samples left out one at a time (``"blocks"``), or the batches of a minibatch
        estimator (``"batches"``).
    distribution : torch.Tensor
        The measure on each resample or with each block left out (float64, CPU).
    standard_error : float
        The standard error the interval implies: the resampled values' standard deviation (rescaled by √(m/n)
        for subsamples), or the jackknife's √((G − 1)/G · Σ(θ₍g₎ − θ̄)²).
    measure : dict
        The measure's ``describe()``.
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

    def __repr__(self) -> str:
        return (
            f"Interval({self.measure.get('id', 'measure')}: {self.estimate:.6g}, {self.confidence:.0%} "
            f"{self.method} interval [{self.low:.6g}, {self.high:.6g}], {self.distribution.numel()} "
            f"{_UNITS[self.scheme]})"
        )


def check_confidence(confidence: Any) -> float:
    return check_probability(confidence, "confidence", "the interval's nominal coverage, e.g. 0.95")


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


def bias_correction(distribution: torch.Tensor, estimate: float) -> float:
    """BCa's z₀ = Φ⁻¹(#{θ* < θ̂}/B); an error when every value lies on one side of the estimate."""
    below = float((distribution < estimate).double().mean())
    if not 0.0 < below < 1.0:
        raise InvalidParameterError(
            f"every resampled value lies on one side of the estimate ({below:.0%} below it), so BCa's bias "
            "correction is infinite (a measure at its bound, e.g. CKA of identical data); use "
            "method='percentile'"
        )
    return NormalDist().inv_cdf(below)


def quantile(sorted_values: torch.Tensor, q: float) -> float:
    """Linear interpolation between order statistics (NumPy's default ``percentile``)."""
    k = sorted_values.numel()
    pos = min(max(q, 0.0), 1.0) * (k - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, k - 1)
    return float(sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo]))


def acceleration(values: torch.Tensor) -> float:
    """BCa's acceleration from jackknife values: Σ(θ̄ − θᵢ)³ / (6 (Σ(θ̄ − θᵢ)²)^{3/2})."""
    d = values.mean() - values
    den = float((d * d).sum()) ** 1.5
    return float((d**3).sum()) / (6.0 * den) if den > 0 else 0.0


def _jackknife(measure: Measure, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Leave-one-out values (n ≤ 100), else leave-one-group-out over 100 random groups of rows."""
    n = x.shape[0]
    if n <= JACKKNIFE_GROUPS:
        groups = [torch.tensor([i]) for i in range(n)]
    else:
        order = torch.randperm(n, generator=generator)
        groups = list(torch.tensor_split(order, JACKKNIFE_GROUPS))
    out = []
    for g in groups:
        keep = torch.ones(n, dtype=torch.bool)
        keep[g] = False
        keep = keep.to(x.device)
        out.append(float(evaluate_validated(measure, x[keep], y[keep])))
    return torch.tensor(out, dtype=torch.float64)


@full_precision_matmul
def bootstrap(
    x: Any,
    y: Any,
    measure: str | Measure = "cka",
    *,
    resamples: int | Any = 1000,
    confidence: float = 0.95,
    method: Method = "bca",
    scheme: Scheme = "auto",
    seed: int = 0,
) -> Interval:
    """Confidence interval for a measure by a paired bootstrap over samples.

    Parameters
    ----------
    x, y : array_like or torch.Tensor, shape (n, ...)
        Two representations of the same n samples.
    measure : str or Measure, default "cka"
        Any measure defined on two arrays.
    resamples : int or array of shape (B, size), default 1000
        Number of resamples B; or the resamples themselves, one row of sample indices each (e.g. another
        package's draws, to reproduce its bootstrap distribution), of n indices for ``"pairs"`` and of
        distinct indices for ``"subsample"``.
    confidence : float, default 0.95
        Nominal coverage of the interval.
    method : {"bca", "percentile"}, default "bca"
        ``"percentile"``: the α/2 and 1 − α/2 quantiles of the resampled values. ``"bca"``: Efron's
        bias-corrected and accelerated interval, whose quantile levels are corrected for the resampled values'
        median bias (z₀ = Φ⁻¹(#{θ* < θ̂}/B)) and skewness (the acceleration, from a jackknife: leave-one-out for
        n ≤ 100, else leave-one-group-out over 100 random groups). With ``scheme="subsample"`` only the
        percentile form is defined.
    scheme : {"auto", "pairs", "subsample"}, default "auto"
        ``"pairs"``: rows drawn with replacement, the same rows for x and y. ``"subsample"``: m = ⌊n/2⌋ distinct
        rows without replacement; the interval is θ̂ minus √(m/n)-rescaled quantiles of the half-samples'
        deviations from their mean (it estimates the spread at n, not the bias of a smaller sample).
        ``"auto"``: pairs for measures of moments, subsamples for measures that need every sample
        (neighbours, distances, kernels, RDMs), which duplicated rows would inflate.
    seed : int, default 0
        Seeds the CPU ``torch.Generator`` that draws the resamples.

    Returns
    -------
    Interval

    Notes
    -----
    Each resample costs one evaluation of the measure on n rows (n/2 for subsamples). The interval assumes the
    samples are independent draws (exchangeable): resampling rows that share a source (tokens of one sequence,
    crops of one image) understates the uncertainty.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.inference import bootstrap
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 4))
    >>> y = x + rng.normal(size=(200, 4))
    >>> ci = bootstrap(x, y, "cka", resamples=200)
    >>> ci.low < ci.estimate < ci.high
    True
    """
    given: torch.Tensor | None = None
    seed = check_seed(seed)
    if not is_integer(resamples):
        try:
            given = torch.as_tensor(resamples)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InvalidParameterError(
                f"resamples must be a number or a (B, size) array of row indices; got {type(resamples).__name__}"
            ) from exc
        if given.ndim != 2 or given.shape[0] < 2 or given.is_floating_point():
            raise InvalidParameterError(
                f"resamples given as an array must be (B ≥ 2, size) integer row indices; got shape "
                f"{tuple(given.shape)} and dtype {given.dtype}"
            )
        given = given.long()
    else:
        resamples = check_int(resamples, "resamples", minimum=2)
    check_confidence(confidence)
    if method not in ("bca", "percentile"):
        raise InvalidParameterError(f"method must be 'bca' or 'percentile'; got {method!r}")
    if scheme not in ("auto", "pairs", "subsample"):
        raise InvalidParameterError(f"scheme must be 'auto', 'pairs' or 'subsample'; got {scheme!r}")
    m = on_arrays(get_measure(measure), "bootstrap a measure of whole arrays")
    chosen: Literal["pairs", "subsample"] = (
        ("subsample" if m.stream == "samples" else "pairs") if scheme == "auto" else scheme
    )
    if chosen == "subsample" and method == "bca":
        if scheme == "subsample":
            raise InvalidParameterError("BCa needs resamples of the full size; use method='percentile' with subsamples")
        method = "percentile"  # auto-chosen subsamples: the percentile form is the one defined
    xt, yt = measure_pair(m, x, y, m.min_samples)
    n = xt.shape[0]
    size = n if chosen == "pairs" else n // 2
    if size < m.min_samples:
        raise InvalidParameterError(f"{n} samples are too few to resample {m.label} (resamples of {size} rows)")
    generator = torch.Generator().manual_seed(int(seed))
    if given is not None:
        if bool((given < 0).any()) or bool((given >= n).any()):
            raise InvalidParameterError(f"resample indices must lie in 0 … n − 1 = {n - 1}")
        if chosen == "subsample":
            size = given.shape[1]
            if bool((torch.sort(given, dim=1).values.diff(dim=1) == 0).any()):
                raise InvalidParameterError("subsamples must not repeat a row; use scheme='pairs' for resamples")
        elif given.shape[1] != n:
            raise InvalidParameterError(f"each resample of scheme 'pairs' holds n = {n} indices; got {given.shape[1]}")
    estimate = float(evaluate_validated(m, xt, yt))
    values = []
    for b in range(resamples if given is None else given.shape[0]):
        if given is not None:
            idx = given[b]
        elif chosen == "pairs":
            idx = torch.randint(0, n, (n,), generator=generator)
        else:
            idx = torch.sort(torch.randperm(n, generator=generator)[:size]).values  # folds follow the row order
        idx = idx.to(xt.device)
        values.append(float(evaluate_validated(m, xt[idx], yt[idx])))  # validated once, above
    dist = torch.tensor(values, dtype=torch.float64)
    alpha = (1.0 - float(confidence)) / 2.0
    if chosen == "subsample":
        scale = math.sqrt(size / n)
        dev = torch.sort((dist - dist.mean()) * scale).values
        low, high = estimate - quantile(dev, 1 - alpha), estimate - quantile(dev, alpha)
        return Interval(
            estimate, low, high, float(confidence), "percentile", chosen, dist, float(dev.std()), m.describe()
        )
    ordered = torch.sort(dist).values
    levels = percentile_levels(float(confidence))
    if method == "bca":
        z0 = bias_correction(dist, estimate)
        levels = bca_levels(float(confidence), z0, acceleration(_jackknife(m, xt, yt, generator)))
    low, high = quantile(ordered, levels[0]), quantile(ordered, levels[1])
    return Interval(estimate, low, high, float(confidence), method, chosen, dist, float(dist.std()), m.describe())
