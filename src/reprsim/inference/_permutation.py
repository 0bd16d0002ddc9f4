"""Permutation tests and null-calibrated scores for any measure.

Permuting the rows of Y breaks the sample correspondence while keeping each representation's own geometry, so
the measure's values over random permutations are its distribution under "no shared structure". From K such
values: the add-one p-value (1 + #{null at least as extreme as observed}) / (K + 1), which is valid (never below
the level it claims) for any K, and the calibrated score of Gröger, Wen & Brbić (2026): the observed value's
excess over the null's (1 − α) critical value τ, scaled by the room left above τ, so that it is 0 when the
observed value is not significant at level α. For a layers × layers matrix the same permutation is applied to
every layer of Y and the reported aggregate (the maximum or the mean over cells) is calibrated against the
null of that aggregate, since a maximum over many cells is inflated by the search alone.

The measure's structure makes each permutation cheap: for moment measures only the cross co-moment (and, for
fourth-order measures, three row-norm sums) changes, X's and Y's own moments and their factorisations are
computed once; for sample-space measures X's neighbour sets are found once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .._precision import full_precision_matmul
from .._validation import as_matrix
from ..errors import InvalidParameterError, ShapeMismatchError
from ..measures._base import Measure, get_measure, sample_pair
from ..measures._moments import Fourth, Moments

__all__ = ["PermutationTest", "permutation_test", "summary"]

Aggregate = Literal["best", "mean"]
_PRODUCT_BYTES = 256 * 2**20  # permuted copies of Y multiplied at once


@dataclass(frozen=True)
class PermutationTest:
    """The result of :func:`permutation_test`.

    Attributes
    ----------
    observed : float
        The measure on the data as given (for layers, the aggregate of ``matrix``).
    p_value : float
        Add-one permutation p-value, (1 + #{null values at least as extreme}) / (K + 1), in (0, 1]: "at least as
        extreme" is ≥ for similarities and ≤ for distances.
    threshold : float
        τ, the ⌈(1 − α)(K + 1)⌉-th order statistic of the observed value and the K null values together (from
        the top for similarities, from the bottom for distances): the critical value at level α.
    calibrated : float
        Gröger et al.'s calibrated score: (observed − τ) / (bound − τ) clipped to [0, 1] for a similarity
        (bound = the largest value the measure can take; without a finite bound, max(observed − τ, 0));
        for a distance the mirror image, (τ − observed) / (τ − bound) with bound the smallest value. 0 means
        not distinguishable from the null at level α.
    null : torch.Tensor
        The K values under permutation (float64, CPU), in the order the permutations were drawn.
    alpha : float
        The level of ``threshold`` and ``calibrated``.
    alternative : {"greater", "less"}
        Which tail counts as extreme: "greater" for similarities, "less" for distances.
    measure : dict
        The measure's ``describe()``.
    aggregate : {"best", "mean"} or None
        For layers × layers tests, what was aggregated.
    matrix : torch.Tensor or None
        For layers × layers tests, the observed matrix.
    cell_p_values : torch.Tensor or None
        For layers × layers tests, each cell's own p-value from the same permutations (not corrected for the
        number of cells; the aggregate's p-value is the corrected statement).
    cell_calibrated : torch.Tensor or None
        For layers × layers tests, each cell's own calibrated score against its own null.
    cell_null : torch.Tensor or None
        For layers × layers tests, every cell's null values, (layers of x, layers of y, K).
    """

    observed: float
    p_value: float
    threshold: float
    calibrated: float
    null: torch.Tensor
    alpha: float
    alternative: Literal["greater", "less"]
    measure: dict[str, Any] = field(repr=False)
    aggregate: Aggregate | None = None
    matrix: torch.Tensor | None = field(default=None, repr=False)
    cell_p_values: torch.Tensor | None = field(default=None, repr=False)
    cell_calibrated: torch.Tensor | None = field(default=None, repr=False)
    cell_null: torch.Tensor | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        what = self.measure.get("id", "measure")
        if self.aggregate is not None:
            what = f"{self.aggregate} over {tuple(self.matrix.shape) if self.matrix is not None else '?'} of {what}"
        return (
            f"PermutationTest({what}: observed={self.observed:.6g}, p={self.p_value:.4g} "
            f"({self.null.numel()} permutations), calibrated={self.calibrated:.4g} at α={self.alpha})"
        )


def _check_alpha(alpha: Any) -> None:
    if not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
        raise InvalidParameterError(f"alpha must be in (0, 1); got {alpha!r}")


def _permutation_list(permutations: Any, n: int, seed: int, device: torch.device) -> list[torch.Tensor]:
    """K permutations: drawn from a seeded generator for an integer K, or the rows of a given (K, n) array."""
    if isinstance(permutations, int) and not isinstance(permutations, bool):
        if permutations < 1:
            raise InvalidParameterError(f"permutations must be a positive integer; got {permutations!r}")
        generator = torch.Generator().manual_seed(int(seed))
        return [torch.randperm(n, generator=generator).to(device) for _ in range(permutations)]
    try:
        given = torch.as_tensor(permutations)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidParameterError(
            f"permutations must be a number K or a (K, n) array of row orders; got {type(permutations).__name__}"
        ) from exc
    if given.ndim != 2 or given.shape[1] != n or given.shape[0] < 1 or given.is_floating_point():
        raise InvalidParameterError(
            f"permutations given as an array must be (K, n = {n}) integer row orders; got shape "
            f"{tuple(given.shape)} and dtype {given.dtype}"
        )
    given = given.long()
    if not bool((torch.sort(given, dim=1).values == torch.arange(n)).all()):
        raise InvalidParameterError("every row of permutations must be a permutation of 0 … n − 1")
    return [row.to(device) for row in given]


def summary(
    observed: float, null: torch.Tensor, alpha: float, measure: Measure
) -> tuple[float, float, float, Literal["greater", "less"]]:
    """(p-value, τ, calibrated score, tail) of an observed value against its permutation null."""
    k = null.numel()
    greater = measure.direction == "similarity"
    extreme = (null >= observed) if greater else (null <= observed)
    p_value = (1.0 + float(extreme.sum())) / (k + 1)
    combined = torch.sort(torch.cat([null, torch.tensor([observed], dtype=null.dtype)])).values
    idx = min(max(math.ceil((1.0 - alpha) * (k + 1)) - 1, 0), k)
    tau = float(combined[idx] if greater else combined[k - idx])
    low, high = measure.range
    if greater:
        calibrated = (
            max(observed - tau, 0.0) if math.isinf(high) else min(max((observed - tau) / max(high - tau, 1e-12), 0), 1)
        )
    else:
        calibrated = (
            max(tau - observed, 0.0) if math.isinf(low) else min(max((tau - observed) / max(tau - low, 1e-12), 0), 1)
        )
    return p_value, tau, float(calibrated), "greater" if greater else "less"


class _Pair:
    """One (x, y) pair prepared for many permutations of y's rows: everything that does not depend on the
    correspondence is computed once."""

    def __init__(self, measure: Measure, x: torch.Tensor, y: torch.Tensor, cache_x: dict[Any, Any]) -> None:
        self.measure = measure
        self.x, self.y = x, y
        self.cache_x = cache_x
        self.cache_y: dict[Any, Any] = {}
        self.moments = measure.stream == "moments" and measure.folds == 1
        if measure.stream == "minibatch":
            raise InvalidParameterError(
                f"{measure!r} is defined over a stream of batches, not on two arrays; permutation tests take a "
                "measure of whole arrays (e.g. 'cka' or 'cka_unbiased')"
            )
        if self.moments:
            f64 = torch.float64
            xd, yd = x.to(f64), y.to(f64)
            self.mx, self.my = xd.mean(dim=0), yd.mean(dim=0)
            self.xc, self.yc = xd - self.mx, yd - self.my
            self.cxx, self.cyy = self.xc.T @ self.xc, self.yc.T @ self.yc
            if measure.fourth:
                self.ra, self.rb = (self.xc * self.xc).sum(1), (self.yc * self.yc).sum(1)
                self.xa, self.yb = self.xc.T @ self.ra, self.yc.T @ self.rb
                self.aa, self.bb = self.ra @ self.ra, self.rb @ self.rb

    def value(self, perm: torch.Tensor | None) -> float:
        """The measure with y's rows in the order ``perm`` (None: as given)."""
        if not self.moments:
            y = self.y if perm is None else self.y[perm]
            # y's per-layer work depends on its order: only the unpermuted y may use (and fill) its cache
            cache_y = self.cache_y if perm is None else None
            return (
                float(self.measure.from_samples(self.x, y, self.cache_x, cache_y))
                if self.measure.stream == ("samples")
                else float(self.measure(self.x, y))
            )
        yc = self.yc if perm is None else self.yc[perm]
        return self._from_cross(self.xc.T @ yc, perm)

    def values(self, perms: Sequence[torch.Tensor]) -> list[float]:
        """The measure under each permutation; for moment measures the cross products of several
        permutations share one matrix product."""
        if not self.moments:
            return [self.value(p) for p in perms]
        n, q = self.yc.shape
        per = max(1, _PRODUCT_BYTES // (8 * n * q))
        out: list[float] = []
        for start in range(0, len(perms), per):
            chunk = perms[start : start + per]
            stacked = torch.cat([self.yc[p] for p in chunk], dim=1)  # (n, q · B)
            crosses = torch.split(self.xc.T @ stacked, q, dim=1)
            out.extend(self._from_cross(c, p) for c, p in zip(crosses, chunk))
        return out

    def _from_cross(self, cxy: torch.Tensor, perm: torch.Tensor | None) -> float:
        fourth = None
        if self.measure.fourth:
            rb = self.rb if perm is None else self.rb[perm]
            yc = self.yc if perm is None else self.yc[perm]
            fourth = Fourth(
                aa=self.aa,
                bb=self.bb,
                ab=self.ra @ rb,
                xa=self.xa,
                yb=self.yb,
                xb=self.xc.T @ rb,
                ya=yc.T @ self.ra,
            )
        m = Moments(self.x.shape[0], self.mx, self.my, self.cxx, self.cyy, cxy, fourth, (), self.cache_x, self.cache_y)
        return float(self.measure.from_moments(m))


def _layers(v: Any, name: str) -> list[torch.Tensor]:
    if isinstance(v, (list, tuple)):
        if not v:
            raise InvalidParameterError(f"{name} is an empty list of layers")
        return [as_matrix(t, f"{name}[{i}]") for i, t in enumerate(v)]
    return [as_matrix(v, name)]


@full_precision_matmul
def permutation_test(
    x: Any,
    y: Any,
    measure: str | Measure = "cka",
    *,
    permutations: int | Any = 1000,
    alpha: float = 0.05,
    aggregate: Aggregate = "best",
    seed: int = 0,
) -> PermutationTest:
    """Permutation test of a measure: is x's and y's similarity more than their shapes alone produce?

    Parameters
    ----------
    x, y : array_like or torch.Tensor, shape (n, ...), or lists of them
        Two representations of the same n samples; or two lists of layers (every layer of x compared with
        every layer of y), for a test of the aggregate over the layers × layers matrix.
    measure : str or Measure, default "cka"
        Any measure defined on two arrays (a registry name or a configured object).
    permutations : int or array of shape (K, n), default 1000
        K, the number of random permutations of y's rows (the same permutation for all of y's layers); or the
        K permutations themselves, one row order per row (e.g. restricted to exchangeable groups of samples,
        or another package's draws to reproduce its null).
    alpha : float, default 0.05
        Level of the critical value τ and of the calibrated score.
    aggregate : {"best", "mean"}, default "best"
        For lists of layers: what is reported and calibrated. ``"best"``: the most similar cell (the maximum
        of a similarity, the minimum of a distance; Gröger et al.'s "max"); ``"mean"``: the mean over cells.
    seed : int, default 0
        Seeds a CPU ``torch.Generator``; the k-th permutation is its k-th ``torch.randperm(n)``, so a given seed
        draws the same permutations as any code that draws them so (e.g. the ``calibrated-similarity``
        package with that generator).

    Returns
    -------
    PermutationTest
        The observed value, add-one p-value, critical value, calibrated score and the null values.

    Notes
    -----
    Cost per permutation: for moment measures one p × n × q product (several permutations share one matrix
    product), plus the measure's small computation from moments, with X's and Y's own moments and
    factorisations done once; for sample-space measures one evaluation on the permuted y, X's neighbour sets
    found once. The test is exact for exchangeable samples: each permutation is equally likely under the null
    that the rows of y are unrelated to those of x. Samples that are not exchangeable (repeated measures,
    tokens of the same sequence) need permutations that respect their grouping.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.inference import permutation_test
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(100, 5))
    >>> test = permutation_test(x, x @ rng.normal(size=(5, 5)), "cka", permutations=99)
    >>> test.p_value  # no permutation reaches the observed CKA: the smallest p-value 99 permutations allow
    0.01
    >>> unrelated = permutation_test(x, rng.normal(size=(100, 5)), "cka", permutations=99)
    >>> unrelated.p_value > 0.05, unrelated.calibrated
    (True, 0.0)
    """
    _check_alpha(alpha)
    if aggregate not in ("best", "mean"):
        raise InvalidParameterError(f"aggregate must be 'best' (the most similar cell) or 'mean'; got {aggregate!r}")
    m = get_measure(measure)
    layered = isinstance(x, (list, tuple)) or isinstance(y, (list, tuple))
    xs, ys = _layers(x, "x"), _layers(y, "y")
    n = xs[0].shape[0]
    for i, t in enumerate([*xs, *ys]):
        if t.shape[0] != n:
            raise ShapeMismatchError(
                f"every layer must hold the same samples; layer {i} has {t.shape[0]} rows where the first has {n}"
            )
    caches: list[dict[Any, Any]] = [{} for _ in xs]
    pairs = [[_Pair(m, *sample_pair(a, b, m.min_samples), caches[i]) for b in ys] for i, a in enumerate(xs)]
    perms = _permutation_list(permutations, n, seed, xs[0].device)
    observed = torch.tensor([[p.value(None) for p in row] for row in pairs], dtype=torch.float64)
    null = torch.tensor([[p.values(perms) for p in row] for row in pairs], dtype=torch.float64)  # (a, b, K)
    description = m.describe()
    if not layered:
        obs, values = float(observed[0, 0]), null[0, 0]
        p_value, tau, calibrated, tail = summary(obs, values, float(alpha), m)
        return PermutationTest(obs, p_value, tau, calibrated, values, float(alpha), tail, description)
    similarity = m.direction == "similarity"
    if aggregate == "mean":
        obs, values = float(observed.mean()), null.mean(dim=(0, 1))
    elif similarity:
        obs, values = float(observed.max()), null.amax(dim=(0, 1))
    else:  # for a distance the best cell is the smallest
        obs, values = float(observed.min()), null.amin(dim=(0, 1))
    p_value, tau, calibrated, tail = summary(obs, values, float(alpha), m)
    extreme = null >= observed[..., None] if similarity else null <= observed[..., None]
    cells = (1.0 + extreme.sum(dim=2).double()) / (len(perms) + 1)
    cell_calibrated = torch.tensor(
        [
            [summary(float(observed[i, j]), null[i, j], float(alpha), m)[2] for j in range(len(ys))]
            for i in range(len(xs))
        ],
        dtype=torch.float64,
    )
    return PermutationTest(
        obs, p_value, tau, calibrated, values, float(alpha), tail, description, aggregate, observed, cells,
        cell_calibrated, null,
    )  # fmt: skip
