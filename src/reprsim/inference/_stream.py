"""Intervals without a second pass over the data: delete-a-block jackknife of streamed moments, and bootstrap
over the batches of a minibatch estimator.

Exact moment measures: :class:`~reprsim.streaming.CrossMoments` with ``folds=G`` keeps the moments of G blocks
of samples (sample index % G), G times the memory of one set of moments. Leaving each block out in turn gives
G jackknife values, whose spread is the jackknife standard error se² = (G − 1)/G · Σ(θ₍g₎ − θ̄)²; the interval is
θ̂ ± t_{G−1} · se. Minibatch CKA keeps one (HSIC(K, L), HSIC(K, K), HSIC(L, L)) record per batch; leaving
each batch out in turn and recombining the records is the same jackknife over batches (θ̂ ± t_{k−1} · se), and
resampling the batches with replacement a bootstrap (opt-in: too narrow with few batches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from .._validation import check_int, check_seed
from ..errors import IncompatibleStateError, InvalidParameterError
from ..measures._base import Measure, get_measure
from ..streaming import CrossMoments, MinibatchCKA
from ._interval import (
    Interval,
    acceleration,
    bca_levels,
    bias_correction,
    check_confidence,
    jackknife_interval,
    jackknife_matrix,
    percentile_levels,
    quantile,
)

#: How :func:`stream_interval` reads an accumulator: the jackknife (blocks or batches), or a bootstrap over
#: batches.
StreamMethod = Literal["jackknife", "percentile", "bca"]

__all__ = ["batch_jackknife", "batch_jackknife_matrix", "stream_interval"]


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


def batch_jackknife(
    statistic: Callable[[torch.Tensor], torch.Tensor], k: int, confidence: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The delete-one-batch jackknife of any statistic of k batches' records: ``statistic`` maps (R, k) batch
    weights to (R, ...) values. Returns (estimate, low, high, bias, values): the estimate with every batch, the
    ends θ̂ ± t_{k−1} · se (per element), the bias estimate (k − 1)(θ̄₍·₎ − θ̂), and the k leave-one-out values.
    The t quantile with k − 1 degrees of freedom keeps the coverage with few batches (down to 2), where a
    bootstrap over the batches is too narrow (see docs/uncertainty.md)."""
    if k < 2:
        raise IncompatibleStateError(f"an interval over batches needs at least 2 batches; there were {k}")
    estimate = statistic(torch.ones(1, k, dtype=torch.float64))[0]
    values = statistic(1.0 - torch.eye(k, dtype=torch.float64))
    low, high, bias = jackknife_matrix(estimate, values, confidence)
    return estimate, low, high, bias, values


def batch_jackknife_matrix(
    kl: torch.Tensor, kk: torch.Tensor, ll: torch.Tensor, confidence: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-cell (low, high, bias) of minibatch CKA from per-batch records kl (k, A, B), kk (k, A), ll (k, B): the
    delete-one-batch jackknife (the same batches left out for every cell)."""
    _, low, high, bias, _ = batch_jackknife(
        lambda counts: _resampled_minibatch_cka(kl, kk, ll, counts), kl.shape[0], confidence
    )
    return low, high, bias


def stream_interval(
    accumulator: CrossMoments | MinibatchCKA,
    measure: str | Measure | None = None,
    *,
    confidence: float = 0.95,
    method: StreamMethod = "jackknife",
    resamples: int = 1000,
    seed: int = 0,
) -> Interval:
    """An interval from what an accumulator kept while streaming, without a second pass over the data.

    Parameters
    ----------
    accumulator : CrossMoments or MinibatchCKA
        ``CrossMoments(folds=G)`` (one pair of layers): delete-a-block jackknife over its G blocks of samples,
        for any exact moment measure; equal to :func:`jackknife` on the concatenated data with ``blocks=G``.
        ``MinibatchCKA``: the jackknife over its batches, leaving each batch's HSIC record out in turn.
    measure : str or Measure, optional
        For CrossMoments, the measure (default ``"cka"``).
    confidence : float, default 0.95
    method : {"jackknife", "percentile", "bca"}, default "jackknife"
        ``"jackknife"``: θ̂ ± t · se from leaving each block (CrossMoments) or batch (MinibatchCKA) out, t with
        G − 1 (or k − 1) degrees of freedom; its coverage of the population CKA is 93–97% from 2 to 10 batches
        in the simulations of docs/uncertainty.md. For MinibatchCKA only, ``"percentile"`` and ``"bca"`` read a
        bootstrap over the batches instead (BCa's acceleration from leaving each batch out); it is too narrow
        with few batches (78–79% coverage with 4 batches, 89–92% with 10, 49–57% with 2).
    resamples : int, default 1000
        For the bootstrap over batches, the number of resamples.
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
        if method == "jackknife":
            return _batch_jackknife(accumulator, c)
        return _batch_bootstrap(accumulator, c, method, resamples, seed)
    if not isinstance(accumulator, CrossMoments):
        raise InvalidParameterError(
            f"stream_interval takes a CrossMoments or a MinibatchCKA; got {type(accumulator).__name__}"
        )
    if method != "jackknife":
        raise InvalidParameterError(
            f"a CrossMoments interval is the delete-a-block jackknife (method='jackknife'); got method={method!r} "
            "(a bootstrap would duplicate rows, which changes these measures)"
        )
    m = get_measure(measure if measure is not None else "cka")
    values = accumulator.jackknife_values(m)
    if values.shape[1:] != (1, 1):
        raise InvalidParameterError(
            f"stream_interval takes one pair of layers; this accumulator holds {tuple(values.shape[1:])} pairs"
        )
    estimate = accumulator.compute_matrix(m)[0, 0]
    return jackknife_interval(float(estimate), values[:, 0, 0], c, m.describe())


def _records(acc: MinibatchCKA) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    records = acc.hsic_records.to(torch.float64).cpu()
    k = records.shape[0]
    if k < 2:
        raise IncompatibleStateError(
            f"an interval over batches needs at least 2 batches; this accumulator has seen {k}"
        )
    return records[:, 0].reshape(k, 1, 1), records[:, 1:2], records[:, 2:3]


def _batch_jackknife(acc: MinibatchCKA, confidence: float) -> Interval:
    kl, kk, ll = _records(acc)
    estimate, _, _, _, values = batch_jackknife(
        lambda counts: _resampled_minibatch_cka(kl, kk, ll, counts)[:, 0, 0], kl.shape[0], confidence
    )
    return jackknife_interval(float(estimate), values, confidence, get_measure("cka_minibatch").describe(), "batches")


def _batch_bootstrap(acc: MinibatchCKA, confidence: float, method: StreamMethod, resamples: int, seed: int) -> Interval:
    if method not in ("bca", "percentile"):
        raise InvalidParameterError(f"method must be 'jackknife', 'percentile' or 'bca'; got {method!r}")
    resamples = check_int(resamples, "resamples", minimum=2)
    kl, kk, ll = _records(acc)
    k = kl.shape[0]

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
