"""Intervals without a second pass over the data: delete-a-block jackknife of streamed moments, and bootstrap
over the batches of a minibatch estimator.

Exact moment measures: :class:`~reprsim.streaming.CrossMoments` with ``folds=G`` keeps the moments of G blocks
of samples (sample index % G), G times the memory of one set of moments. Leaving each block out in turn gives
G jackknife values, whose spread is the jackknife standard error se² = (G − 1)/G · Σ(θ₍g₎ − θ̄)²; the interval is
θ̂ ± t_{G−1} · se. Minibatch CKA keeps one (HSIC(K, L), HSIC(K, K), HSIC(L, L)) record per batch; resampling
the batches with replacement and recombining the records is a bootstrap of the estimator itself.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validation import check_int, check_seed
from ..errors import IncompatibleStateError, InvalidParameterError
from ..measures._base import Measure, evaluate_validated, get_measure, measure_pair
from ..streaming import CrossMoments, MinibatchCKA
from ._bootstrap import (
    Interval,
    Method,
    acceleration,
    bca_levels,
    bias_correction,
    check_confidence,
    percentile_levels,
    quantile,
)

__all__ = ["batch_bootstrap_matrix", "jackknife", "jackknife_matrix", "stream_interval", "t_quantile"]


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


def jackknife_matrix(
    estimate: torch.Tensor, values: torch.Tensor, confidence: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell jackknife intervals (low, high) of an (A, B) estimate from its (G, A, B) leave-one-block-out
    values."""
    g = values.shape[0]
    d = values - values.mean(dim=0)
    se = ((g - 1) / g * (d * d).sum(dim=0)).sqrt()
    t = t_quantile(1.0 - (1.0 - confidence) / 2.0, g - 1)
    return estimate - t * se, estimate + t * se


def _resampled_minibatch_cka(
    kl: torch.Tensor, kk: torch.Tensor, ll: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """(R, A, B) minibatch CKA of every cell when batch i counts counts[r, i] times, from the per-batch records
    kl (k, A, B), kk (k, A), ll (k, B): one product per term for all resamples and cells."""
    k = kl.shape[0]
    f64 = torch.float64
    skl = (counts @ kl.reshape(k, -1).to(f64).cpu()).reshape(counts.shape[0], *kl.shape[1:])
    skk, sll = counts @ kk.to(f64).cpu(), counts @ ll.to(f64).cpu()
    return skl / (skk.unsqueeze(2) * sll.unsqueeze(1)).sqrt()


def _batch_counts(k: int, resamples: int, seed: int) -> torch.Tensor:
    """(resamples, k) how often each of k batches is drawn, B resamples with replacement from a seeded generator."""
    idx = torch.randint(0, k, (resamples, k), generator=torch.Generator().manual_seed(int(seed)))
    ones = torch.ones(resamples, k, dtype=torch.float64)
    return torch.zeros(resamples, k, dtype=torch.float64).scatter_add_(1, idx, ones)


def batch_bootstrap_matrix(
    kl: torch.Tensor, kk: torch.Tensor, ll: torch.Tensor, confidence: float, resamples: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell percentile intervals of minibatch CKA from per-batch records kl (k, A, B), kk (k, A), ll (k, B):
    the batches resampled with replacement (the same resamples for every cell)."""
    dist = _resampled_minibatch_cka(kl, kk, ll, _batch_counts(kl.shape[0], resamples, seed))
    ends = torch.quantile(dist, torch.tensor(percentile_levels(confidence), dtype=torch.float64), dim=0)
    return ends[0], ends[1]


def _jackknife_interval(estimate: float, values: torch.Tensor, confidence: float, measure: Measure) -> Interval:
    g = values.numel()
    d = values - values.mean()
    se = math.sqrt((g - 1) / g * float((d * d).sum()))
    t = t_quantile(1.0 - (1.0 - confidence) / 2.0, g - 1)
    return Interval(
        estimate,
        estimate - t * se,
        estimate + t * se,
        confidence,
        "jackknife",
        "blocks",
        values,
        se,
        measure.describe(),
    )


def jackknife(
    x: Any, y: Any, measure: str | Measure = "cka", *, blocks: int | None = 20, confidence: float = 0.95
) -> Interval:
    """Delete-a-block jackknife interval for a measure of two arrays: θ̂ ± t_{G−1} · se.

    Parameters
    ----------
    x, y : array_like or torch.Tensor, shape (n, ...)
        Two representations of the same n samples.
    measure : str or Measure, default "cka"
        Any measure defined on two arrays.
    blocks : int or None, default 20
        G, the number of blocks; sample i belongs to block i % G (the blocks :class:`CrossMoments` keeps with
        ``folds=G``, so :func:`stream_interval` of a stream gives the same interval). None: leave-one-out
        (G = n).
    confidence : float, default 0.95

    Returns
    -------
    Interval
        With ``method="jackknife"``; ``distribution`` holds the G leave-one-block-out values.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.inference import jackknife
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 4))
    >>> ci = jackknife(x, x + rng.normal(size=(300, 4)), "procrustes")
    >>> ci.low < ci.estimate < ci.high
    True
    """
    c = check_confidence(confidence)
    m = get_measure(measure)
    if m.stream == "minibatch":
        raise InvalidParameterError(
            f"{m!r} is defined over a stream of batches; use stream_interval on its accumulator"
        )
    xt, yt = measure_pair(m, x, y, m.min_samples)
    n = xt.shape[0]
    g = n if blocks is None else check_int(blocks, "blocks", minimum=2, maximum=n, hint="or None for leave-one-out")
    block_of = torch.arange(n, device=xt.device) % g
    values = torch.tensor(
        [float(evaluate_validated(m, xt[block_of != b], yt[block_of != b])) for b in range(g)], dtype=torch.float64
    )
    return _jackknife_interval(float(evaluate_validated(m, xt, yt)), values, c, m)


def stream_interval(
    accumulator: CrossMoments | MinibatchCKA,
    measure: str | Measure | None = None,
    *,
    confidence: float = 0.95,
    method: Method = "percentile",
    resamples: int = 1000,
    seed: int = 0,
) -> Interval:
    """An interval from what an accumulator kept while streaming, without a second pass over the data.

    Parameters
    ----------
    accumulator : CrossMoments or MinibatchCKA
        ``CrossMoments(folds=G)`` (one pair of layers): delete-a-block jackknife over its G blocks of samples,
        for any exact moment measure; equal to :func:`jackknife` on the concatenated data with ``blocks=G``.
        ``MinibatchCKA``: bootstrap over its batches, resampling the per-batch HSIC records.
    measure : str or Measure, optional
        For CrossMoments, the measure (default ``"cka"``).
    confidence : float, default 0.95
    method : {"percentile", "bca"}, default "percentile"
        For MinibatchCKA, how the bootstrap interval is read (BCa's acceleration from leaving each batch out).
    resamples : int, default 1000
        For MinibatchCKA, the number of resamples of the batches.
    seed : int, default 0

    Returns
    -------
    Interval

    Notes
    -----
    Both assume exchangeable blocks: for CrossMoments the blocks interleave the samples (index % G), so they
    are exchangeable whenever the samples are; for MinibatchCKA the batches must be independent draws, i.e.
    the data loader shuffles (consecutive unshuffled batches of one class are not exchangeable).

    Examples
    --------
    >>> import torch
    >>> from reprsim.streaming import CrossMoments
    >>> from reprsim.inference import stream_interval
    >>> g = torch.Generator().manual_seed(0)
    >>> acc = CrossMoments(folds=10)
    >>> for _ in range(5):
    ...     x = torch.randn(100, 8, generator=g, dtype=torch.float64)
    ...     acc.update(x, x + torch.randn(100, 8, generator=g, dtype=torch.float64))
    >>> ci = stream_interval(acc, "cka")
    >>> ci.low < ci.estimate < ci.high, ci.distribution.numel()
    (True, 10)
    """
    c = check_confidence(confidence)
    seed = check_seed(seed)
    if isinstance(accumulator, MinibatchCKA):
        if measure is not None and get_measure(measure).stream != "minibatch":
            raise InvalidParameterError(
                f"a MinibatchCKA accumulator holds minibatch CKA only; it cannot give an interval for "
                f"{get_measure(measure)!r}. Stream that measure with CrossMoments(folds=G), or drop measure="
            )
        return _batch_bootstrap(accumulator, c, method, resamples, seed)
    if not isinstance(accumulator, CrossMoments):
        raise InvalidParameterError(
            f"stream_interval takes a CrossMoments or a MinibatchCKA; got {type(accumulator).__name__}"
        )
    m = get_measure(measure if measure is not None else "cka")
    values = accumulator.jackknife_values(m)
    if values.shape[1:] != (1, 1):
        raise InvalidParameterError(
            f"stream_interval takes one pair of layers; this accumulator holds {tuple(values.shape[1:])} pairs"
        )
    estimate = accumulator.compute_matrix(m)[0, 0]
    return _jackknife_interval(float(estimate), values[:, 0, 0], c, m)


def _batch_bootstrap(acc: MinibatchCKA, confidence: float, method: Method, resamples: int, seed: int) -> Interval:
    if method not in ("bca", "percentile"):
        raise InvalidParameterError(f"method must be 'bca' or 'percentile'; got {method!r}")
    resamples = check_int(resamples, "resamples", minimum=2)
    records = acc.hsic_records.to(torch.float64).cpu()
    k = records.shape[0]
    if k < 2:
        raise IncompatibleStateError(
            f"a bootstrap over batches needs at least 2 batches; this accumulator has seen {k}"
        )
    kl, kk, ll = records[:, 0].reshape(k, 1, 1), records[:, 1:2], records[:, 2:3]

    def cka_for(counts: torch.Tensor) -> torch.Tensor:
        return _resampled_minibatch_cka(kl, kk, ll, counts)[:, 0, 0]

    dist = cka_for(_batch_counts(k, resamples, seed))
    estimate = float(cka_for(torch.ones(1, k, dtype=torch.float64))[0])
    levels = percentile_levels(confidence)
    if method == "bca":
        z0 = bias_correction(dist, estimate)
        leave_out = cka_for(1.0 - torch.eye(k, dtype=torch.float64))  # row b: every batch but b
        levels = bca_levels(confidence, z0, acceleration(leave_out))
    ordered = torch.sort(dist).values
    measure = get_measure("cka_minibatch")
    return Interval(
        estimate,
        quantile(ordered, levels[0]),
        quantile(ordered, levels[1]),
        confidence,
        method,
        "batches",
        dist,
        float(dist.std()),
        measure.describe(),
    )
