"""Intervals without a second pass over the data: delete-a-block jackknife of streamed moments, and bootstrap
over the batches of a minibatch estimator.

Exact moment measures: :class:`~reprsim.streaming.CrossMoments` with ``folds=G`` keeps the moments of G blocks
of samples (sample index % G), G times the memory of one set of moments. Leaving each block out in turn gives
G jackknife values, whose spread is the jackknife standard error se² = (G − 1)/G · Σ(θ₍g₎ − θ̄)²; the interval is
θ̂ ± t_{G−1} · se. Minibatch CKA keeps one (HSIC(K, L), HSIC(K, K), HSIC(L, L)) record per batch; resampling
the batches with replacement and recombining the records is a bootstrap of the estimator itself.
"""

from __future__ import annotations

import torch

from .._validation import check_int, check_seed
from ..errors import IncompatibleStateError, InvalidParameterError
from ..measures._base import Measure, get_measure
from ..streaming import CrossMoments, MinibatchCKA
from ._bootstrap import Method
from ._interval import (
    Interval,
    acceleration,
    bca_levels,
    bias_correction,
    check_confidence,
    jackknife_interval,
    percentile_levels,
    quantile,
)

__all__ = ["batch_bootstrap_matrix", "stream_interval"]


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
    return jackknife_interval(float(estimate), values[:, 0, 0], c, m.describe())


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
        z0 = bias_correction(dist, estimate, (-1.0, 1.0))
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
        measure.target,
    )
