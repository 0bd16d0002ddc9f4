"""Intervals for a measure of two arrays: :func:`bootstrap` (the resampling the measure declares, or one asked for)
and :func:`jackknife` (delete-a-block).

No default duplicates a sample. A row drawn twice sits at distance 0 from its copy, becomes its nearest neighbour
and its kernel's largest entry, and doubles its weight in every moment: it inflates every measure here, moment
measures included (at n = 100 and p = 20 every resampled CKA lands above the estimate). Each measure's metadata
declares how it may be resampled (:attr:`reprsim.measures.Measure.resampling`), chosen by simulation
(docs/uncertainty.md): moment measures by a delete-a-block jackknife over 20 blocks, sample-space measures by
half-samples without replacement, whose spread at m = n/2 is the spread at n. Drawing rows with replacement
(``scheme="pairs"``) stays available when asked for, with the percentile and BCa intervals.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from .._precision import full_precision_matmul
from .._validation import check_int, check_seed, is_integer
from ..errors import InvalidParameterError
from ..measures._base import Measure, at_full_size, evaluate_validated, get_measure, measure_pair, on_arrays
from ._interval import (
    Interval,
    acceleration,
    bca_levels,
    bias_correction,
    check_confidence,
    half_interval,
    jackknife_interval,
    percentile_levels,
    quantile,
)

__all__ = ["JACKKNIFE_BLOCKS", "Interval", "bootstrap", "half_values", "jackknife"]

Method = Literal["bca", "percentile"]
Scheme = Literal["auto", "blocks", "subsample", "pairs"]
#: Blocks of the delete-a-block jackknife, by default (coverage checked by simulation at 20).
JACKKNIFE_BLOCKS = 20
JACKKNIFE_GROUPS = 100


def _groups_jackknife(measure: Measure, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Leave-one-out values (n ≤ 100), else leave-one-group-out over 100 random groups of rows (BCa's
    acceleration)."""
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


def half_values(
    measure: Measure, xt: torch.Tensor, yt: torch.Tensor, resamples: int | torch.Tensor, seed: int
) -> tuple[torch.Tensor, int]:
    """The measure on half-samples (m = ⌊n/2⌋ rows without replacement, in their original order: folds follow
    the row order), drawn from a seeded CPU generator, or given as a (H, m) array of distinct row indices."""
    n = xt.shape[0]
    if isinstance(resamples, torch.Tensor):
        subsets = [resamples[h] for h in range(resamples.shape[0])]
    else:
        generator = torch.Generator().manual_seed(seed)
        subsets = [torch.sort(torch.randperm(n, generator=generator)[: n // 2]).values for _ in range(resamples)]
    values = [float(evaluate_validated(measure, xt[i.to(xt.device)], yt[i.to(yt.device)])) for i in subsets]
    size = int(subsets[0].numel())
    return at_full_size(measure, torch.tensor(values, dtype=torch.float64), n, size), size


@full_precision_matmul
def bootstrap(
    x: Any,
    y: Any,
    measure: str | Measure = "cka",
    *,
    resamples: int | Any = 1000,
    confidence: float = 0.95,
    method: Method | None = None,
    scheme: Scheme = "auto",
    seed: int = 0,
) -> Interval:
    """Confidence interval for a measure by resampling the samples, never duplicating one unless asked to.

    Parameters
    ----------
    x, y : array_like or torch.Tensor, shape (n, ...)
        Two representations of the same n samples.
    measure : str or Measure, default "cka"
        Any measure defined on two arrays.
    resamples : int or array of shape (B, size), default 1000
        Number of resamples B (half-samples or bootstrap draws; unused by the jackknife); or the resamples
        themselves, one row of sample indices each (distinct indices for ``"subsample"``, n of them for
        ``"pairs"``), e.g. another package's draws.
    confidence : float, default 0.95
        Nominal coverage of the interval.
    method : {"percentile", "bca"}, optional
        For ``scheme="pairs"`` only: the quantiles of the resampled values (``"percentile"``) or Efron's
        bias-corrected and accelerated interval (``"bca"``, the default there). The other schemes have one form.
    scheme : {"auto", "blocks", "subsample", "pairs"}, default "auto"
        ``"auto"``: what the measure's metadata declares (:attr:`~reprsim.measures.Measure.resampling`): moment
        measures the delete-a-block jackknife over 20 blocks of samples (``"blocks"``, see :func:`jackknife`),
        sample-space measures half-samples (``"subsample"``): m = ⌊n/2⌋ rows without replacement, the interval
        θ̂ minus the quantiles of the half-samples' deviations from their mean times √(m/(n − m)) = 1 (among
        subsamples of n, the spread at m = n/2 is the spread at n). ``"pairs"``: rows drawn with replacement,
        which inflates every measure here (kept for reproducing other packages' bootstraps).
    seed : int, default 0
        Seeds the CPU ``torch.Generator`` that draws the resamples.

    Returns
    -------
    Interval
        With what it estimates (``target``: the population value for consistent estimators, else the estimator's
        expectation at this n) and the bias the resampling sees, which its repr flags when it exceeds the
        half-width.

    Notes
    -----
    The schemes and their coverage, measured by simulation at n = 100 and 400, p from 2 to 50, are in
    docs/uncertainty.md. All assume independent, exchangeable samples: rows that share a source (tokens of one
    sequence, crops of one image) understate the uncertainty.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.inference import bootstrap
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 4))
    >>> y = x + rng.normal(size=(200, 4))
    >>> ci = bootstrap(x, y, "cka")  # a moment measure: the delete-a-block jackknife
    >>> ci.scheme, ci.low < ci.estimate < ci.high
    ('blocks', True)
    >>> bootstrap(x, y, "mutual_knn", resamples=50).scheme  # a sample-space measure: half-samples
    'subsample'
    """
    seed = check_seed(seed)
    c = check_confidence(confidence)
    if scheme not in ("auto", "blocks", "subsample", "pairs"):
        raise InvalidParameterError(f"scheme must be 'auto', 'blocks', 'subsample' or 'pairs'; got {scheme!r}")
    if method is not None and method not in ("bca", "percentile"):
        raise InvalidParameterError(f"method must be 'bca' or 'percentile'; got {method!r}")
    m = on_arrays(get_measure(measure), "bootstrap a measure of whole arrays")
    chosen = ({"blocks": "blocks", "half": "subsample"}[m.resampling]) if scheme == "auto" else scheme
    if method is not None and chosen != "pairs":
        raise InvalidParameterError(
            f"method= applies to scheme='pairs' (rows drawn with replacement); the {chosen!r} scheme has one form"
        )
    given = _given(resamples)
    if chosen == "blocks":
        return jackknife(x, y, m, blocks=JACKKNIFE_BLOCKS, confidence=c)
    xt, yt = measure_pair(m, x, y, m.min_samples)
    n = xt.shape[0]
    estimate = float(evaluate_validated(m, xt, yt))
    if chosen == "subsample":
        if given is not None and bool((torch.sort(given, dim=1).values.diff(dim=1) == 0).any()):
            raise InvalidParameterError("subsamples must not repeat a row; use scheme='pairs' for resamples")
        _check_range(given, n)
        if n // 2 < m.min_samples:
            raise InvalidParameterError(f"{n} samples are too few to half-sample {m.label}")
        values, size = half_values(m, xt, yt, given if given is not None else resamples, seed)
        return half_interval(estimate, values, n, size, c, m.describe())
    _check_range(given, n)
    if given is not None and given.shape[1] != n:
        raise InvalidParameterError(f"each resample of scheme 'pairs' holds n = {n} indices; got {given.shape[1]}")
    generator = torch.Generator().manual_seed(seed)
    draws = [given[b] for b in range(given.shape[0])] if given is not None else [
        torch.randint(0, n, (n,), generator=generator) for _ in range(resamples)
    ]  # fmt: skip
    dist = torch.tensor([float(evaluate_validated(m, xt[i.to(xt.device)], yt[i.to(yt.device)])) for i in draws],
                        dtype=torch.float64)  # fmt: skip
    ordered = torch.sort(dist).values
    levels = percentile_levels(c)
    how: Method = method if method is not None else "bca"
    if how == "bca":
        z0 = bias_correction(dist, estimate, m.range)
        levels = bca_levels(c, z0, acceleration(_groups_jackknife(m, xt, yt, generator)))
    return Interval(
        estimate, quantile(ordered, levels[0]), quantile(ordered, levels[1]), c, how, "pairs", dist,
        float(dist.std()), m.describe(), m.target, float(dist.mean()) - estimate,
    )  # fmt: skip


def _given(resamples: Any) -> torch.Tensor | None:
    if is_integer(resamples):
        check_int(resamples, "resamples", minimum=2)
        return None
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
    return given.long()


def _check_range(given: torch.Tensor | None, n: int) -> None:
    if given is not None and (bool((given < 0).any()) or bool((given >= n).any())):
        raise InvalidParameterError(f"resample indices must lie in 0 … n − 1 = {n - 1}")


def jackknife(
    x: Any, y: Any, measure: str | Measure = "cka", *, blocks: int | None = JACKKNIFE_BLOCKS, confidence: float = 0.95
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
        (G = n). A cross-validated moment measure (``folds=K``) leaves out one of its own K folds at a time
        and cross-validates over the K − 1 that remain, whatever ``blocks`` says (re-drawing the folds of every
        leave-one-block-out sample would add the folds' noise, times G − 1, to the bias estimate), as
        :func:`stream_interval` does on a ``CrossMoments(folds=K)``.
    confidence : float, default 0.95

    Returns
    -------
    Interval
        With ``method="jackknife"``; ``distribution`` holds the G leave-one-block-out values, ``bias`` the
        jackknife's bias estimate (G − 1)(θ̄₍·₎ − θ̂).

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
    if m.stream == "moments" and m.folds > 1:
        from ..streaming import CrossMoments

        acc = CrossMoments(fourth=m.fourth, folds=m.folds)
        acc.update(xt, yt)
        folded = acc.jackknife_values(m).flatten()
        return jackknife_interval(float(acc.compute(m)), folded, c, m.describe())
    block_of = torch.arange(n, device=xt.device) % g
    values = torch.tensor(
        [float(evaluate_validated(m, xt[block_of != b], yt[block_of != b])) for b in range(g)], dtype=torch.float64
    )
    values = at_full_size(m, values, n, n - torch.bincount(block_of.cpu(), minlength=g))
    return jackknife_interval(float(evaluate_validated(m, xt, yt)), values, c, m.describe())
