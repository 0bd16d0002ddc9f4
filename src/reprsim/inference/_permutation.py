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

Measures that are trace statistics tr(A Π B Πᵀ) (linear and RBF CKA, HSIC-based, distance correlation, Pearson
and Spearman RSA) also have an exact-moment null (``permutations="moments"``): the first three moments of the measure
over all n! permutations are exact (:mod:`reprsim.measures._traces`) and a Pearson type III fitted to them gives
p-values, critical values and calibrated scores without drawing a permutation (:mod:`._analytic`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .._precision import full_precision_matmul
from .._validation import (
    as_matrix,
    check_finite,
    check_int,
    check_probability,
    check_same_device,
    check_same_samples,
    check_seed,
    is_integer,
    refuse_keywords,
)
from ..errors import InsufficientSamplesError, InvalidParameterError, ReprsimWarning
from ..measures._base import Measure, NoTraceForm, evaluate_validated, get_measure, on_arrays, prepared_side
from ..measures._moments import Fourth, Moments
from ..measures._traces import LinearTrace, NullMoments, TraceSide, combined_side, pair_moments
from ._analytic import pearson3_quantile, pearson3_sf

__all__ = ["PermutationTest", "holm", "permutation_test", "summary"]

Aggregate = Literal["best", "mean"]
#: Permutations of the Monte Carlo test that answers when permutations="moments" cannot (the reason is reported).
FALLBACK_PERMUTATIONS = 999
#: Below this many samples the permutation distribution is too discrete for a fitted Pearson type III tail.
MIN_MOMENT_SAMPLES = 30
#: Beyond this skewness the fitted gamma is J-shaped (shape < 1) and its tail is not trusted.
MAX_MOMENT_SKEWNESS = 2.0
#: Below this effective share of samples (a few rows dominating the Gram: heavy-tailed data) the permutation
#: distribution is too lumpy for a three-moment fit (the simulations in tests/test_inference.py find the fitted
#: p-values within Monte Carlo error of 10⁵ permutations above it).
MIN_MOMENT_SPREAD = 0.1
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
        For layers × layers tests, every cell's null values, (layers of x, layers of y, K) (Monte Carlo).
    method : {"monte_carlo", "moments"}
        Which null answered: K random permutations, or the exact first three moments over all permutations with a
        fitted Pearson type III tail (then ``null`` is empty and the p-value is the tail probability, not the
        add-one count).
    null_moments : (float, float, float) or None
        The null's mean, standard deviation and skewness for one pair: exact with ``permutations="moments"``, from the
        drawn values otherwise.
    cell_null_moments : torch.Tensor or None
        For layers × layers tests, each cell's (mean, sd, skewness), (layers of x, layers of y, 3).
    cell_p_values_holm : torch.Tensor or None
        For layers × layers tests, each cell's p-value after Holm's step-down correction for the number of cells
        (family-wise error at the nominal level, any dependence between cells).
    note : str or None
        Why Monte Carlo answered when moments were asked for, or what the exact moments approximated.
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
    method: Literal["monte_carlo", "moments"] = "monte_carlo"
    null_moments: tuple[float, float, float] | None = None
    cell_null_moments: torch.Tensor | None = field(default=None, repr=False)
    cell_p_values_holm: torch.Tensor | None = field(default=None, repr=False)
    note: str | None = None

    def __repr__(self) -> str:
        what = self.measure.get("id", "measure")
        if self.aggregate is not None:
            what = f"{self.aggregate} over {tuple(self.matrix.shape) if self.matrix is not None else '?'} of {what}"
        how = f"{self.null.numel()} permutations" if self.method == "monte_carlo" else "exact permutation moments"
        return (
            f"PermutationTest({what}: observed={self.observed:.6g}, p={self.p_value:.4g} ({how}), "
            f"calibrated={self.calibrated:.4g} at α={self.alpha})"
        )


def _check_alpha(alpha: Any) -> None:
    check_probability(alpha, "alpha", "the test's level, e.g. 0.05")


def _permutation_list(
    permutations: Any, n: int, seed: int, device: torch.device, keep: range | None = None
) -> list[torch.Tensor]:
    """K permutations: drawn from a seeded generator for an integer K, or the rows of a given (K, n) array;
    ``keep`` selects some of them by index (the same draws, so that processes can share the work)."""
    if is_integer(permutations):
        permutations = check_int(permutations, "permutations", minimum=1)
        generator = torch.Generator().manual_seed(check_seed(seed))
        wanted = set(range(permutations) if keep is None else keep)
        drawn = (torch.randperm(n, generator=generator) for _ in range(permutations))  # every draw, in order
        return [d.to(device) for k, d in enumerate(drawn) if k in wanted]
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
    rows = range(given.shape[0]) if keep is None else keep
    return [given[k].to(device) for k in rows if k < given.shape[0]]


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
    return p_value, tau, calibrated_score(observed, tau, measure), "greater" if greater else "less"


def calibrated_score(observed: float, tau: float, measure: Measure) -> float:
    """Gröger et al.'s calibrated score of ``observed`` against the critical value τ (see :class:`PermutationTest`)."""
    low, high = measure.range
    if measure.direction == "similarity":
        if math.isinf(high):
            return max(observed - tau, 0.0)
        return float(min(max((observed - tau) / max(high - tau, 1e-12), 0), 1))
    if math.isinf(low):
        return max(tau - observed, 0.0)
    return float(min(max((tau - observed) / max(tau - low, 1e-12), 0), 1))


def holm(p_values: torch.Tensor) -> torch.Tensor:
    """Holm's step-down adjusted p-values (same shape): the i-th smallest of m is multiplied by m − i + 1, the
    running maximum taken so the order is kept, and capped at 1. Rejecting where the adjusted value is ≤ α holds
    the family-wise error at α whatever the dependence between the tests. NaN cells (untested) are left out."""
    flat = p_values.reshape(-1).to(torch.float64)
    out = torch.full_like(flat, float("nan"))
    tested = (~torch.isnan(flat)).nonzero().flatten()
    if tested.numel():
        values = flat[tested]
        order = torch.argsort(values, stable=True)
        m = values.numel()
        scaled = values[order] * torch.arange(m, 0, -1, dtype=torch.float64)
        adjusted = torch.cummax(scaled, dim=0).values.clamp(max=1.0)
        out[tested[order]] = adjusted
    return out.reshape(p_values.shape)


def _moments_summary(
    observed: float, null: NullMoments, transform: str, alpha: float, measure: Measure
) -> tuple[float, float, float]:
    """(p-value, τ, calibrated score) of an observed value against the fitted Pearson type III null of the trace
    ratio (the measure is ``transform`` of it, an increasing map)."""
    stat = observed * abs(observed) if transform == "sqrt" else observed
    p_value = pearson3_sf(stat, null)
    q = pearson3_quantile(1.0 - alpha, null)
    tau = math.copysign(math.sqrt(abs(q)), q) if transform == "sqrt" else q
    return p_value, tau, calibrated_score(observed, tau, measure)


def _null_mean(null: NullMoments, transform: str) -> float:
    """The measure's chance level: the null mean of the trace ratio (its square root for distance correlation)."""
    return math.sqrt(max(null.mean, 0.0)) if transform == "sqrt" else null.mean


class _Side:
    """One layer, prepared once for every pair it takes part in: for moment measures its float64 centred rows,
    mean, co-moment and (fourth order) row norms; ``cache`` holds the measure's factorisations of it, which
    no permutation changes."""

    def __init__(
        self, t: torch.Tensor, measure: Measure, moments: bool, centred: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> None:
        """``centred``: the float64 centred rows and their co-moment, where already computed (the exact-moment
        null's linear trace holds both)."""
        self.t = t
        self.cache: dict[Any, Any] = {}
        if moments:
            td = t.to(torch.float64)
            self.mean = td.mean(dim=0)
            if centred is None:
                self.c = td - self.mean
                self.cov = self.c.T @ self.c
            else:
                self.c, self.cov = centred
            if measure.fourth:
                self.r = (self.c * self.c).sum(1)
                self.cr = self.c.T @ self.r  # Σ(x − μ)‖x − μ‖²
                self.rr = self.r @ self.r


class _Pair:
    """One (x, y) pair of prepared layers, evaluated with y's rows in any order."""

    def __init__(self, measure: Measure, x: _Side, y: _Side, moments: bool) -> None:
        self.measure, self.x, self.y, self.moments = measure, x, y, moments

    def value(self, perm: torch.Tensor | None) -> float:
        """The measure with y's rows in the order ``perm`` (None: as given)."""
        x, y = self.x, self.y
        if not self.moments:
            yt = y.t if perm is None else y.t[perm]
            if self.measure.stream != "samples":  # cross-validated moment measures: folds follow the row order
                return float(self.measure(x.t, yt))
            # y's per-layer work depends on its order: only the unpermuted y may use (and fill) its cache
            return float(self.measure.from_samples(x.t, yt, x.cache, y.cache if perm is None else None))
        return self._from_cross(x.c.T @ (y.c if perm is None else y.c[perm]), perm)

    def values(self, perms: Sequence[torch.Tensor]) -> list[float]:
        """The measure under each permutation; for moment measures the cross products of several
        permutations share one matrix product."""
        if not self.moments:
            return [self.value(p) for p in perms]
        n, q = self.y.c.shape
        per = max(1, _PRODUCT_BYTES // (8 * n * q))
        out: list[float] = []
        for start in range(0, len(perms), per):
            chunk = perms[start : start + per]
            stacked = torch.cat([self.y.c[p] for p in chunk], dim=1)  # (n, q · B)
            crosses = torch.split(self.x.c.T @ stacked, q, dim=1)
            out.extend(self._from_cross(c, p) for c, p in zip(crosses, chunk))
        return out

    def _from_cross(self, cxy: torch.Tensor, perm: torch.Tensor | None) -> float:
        x, y = self.x, self.y
        fourth = None
        if self.measure.fourth:
            rb = y.r if perm is None else y.r[perm]
            yc = y.c if perm is None else y.c[perm]
            fourth = Fourth(aa=x.rr, bb=y.rr, ab=x.r @ rb, xa=x.cr, yb=y.cr, xb=x.c.T @ rb, ya=yc.T @ x.r)
        m = Moments(x.t.shape[0], x.mean, y.mean, x.cov, y.cov, cxy, fourth, (), x.cache, y.cache)
        return float(self.measure.from_moments(m))


def _layers(v: Any, name: str) -> list[torch.Tensor]:
    if isinstance(v, (list, tuple)):
        if not v:
            raise InvalidParameterError(f"{name} is an empty list of layers")
        return [as_matrix(t, f"{name}[{i}]") for i, t in enumerate(v)]
    return [as_matrix(v, name)]


def _checked_layers(xs: list[torch.Tensor], ys: list[torch.Tensor], need: int) -> list[torch.Tensor]:
    """Every layer validated once (same samples, one device, finite, enough rows), in one common dtype."""
    named = {f"x[{i}]": t for i, t in enumerate(xs)} | {f"y[{j}]": t for j, t in enumerate(ys)}
    n = check_same_samples(named)
    for name, t in named.items():
        check_finite(t, name)
    check_same_device(named)
    if n < need:
        raise InsufficientSamplesError(f"this measure needs at least {need} samples; got {n}")
    common = functools.reduce(torch.promote_types, (t.dtype for t in named.values()))
    return [t.to(common) for t in named.values()]


@full_precision_matmul
def _moved_method(given: dict[str, Any]) -> None:
    """permutation_test's ``method=`` before 0.3, refused with the ``permutations=`` that replaces it (the null is
    named as in :class:`~reprsim.Uncertainty`)."""
    advice = []
    if "method" in given:
        method = given["method"]
        instead = {
            "monte_carlo": "permutations=K (a number of random permutations, as before)",
            "moments": "permutations='moments'",
            "auto": "permutations='moments' (a warning, which warnings.filterwarnings silences, says when it falls "
            "back to Monte Carlo)",
        }.get(method, "permutations='moments' or a number K")
        advice.append(
            f"the null is chosen with permutations=, as in Uncertainty: instead of method={method!r}, pass {instead}"
        )
    refuse_keywords("permutation_test", given, advice)


def permutation_test(
    x: Any,
    y: Any,
    measure: str | Measure = "cka",
    *,
    permutations: int | Literal["moments"] | Any = 1000,
    alpha: float = 0.05,
    aggregate: Aggregate = "best",
    seed: int = 0,
    **removed: Any,
) -> PermutationTest:
    """Permutation test of a measure: is x's and y's similarity more than their shapes alone produce?

    Parameters
    ----------
    x, y : array_like or torch.Tensor, shape (n, ...), or lists of them
        Two representations of the same n samples; or two lists of layers (every layer of x compared with
        every layer of y), for a test of the aggregate over the layers × layers matrix.
    measure : str or Measure, default "cka"
        Any measure defined on two arrays (a registry name or a configured object).
    permutations : int, "moments", or array of shape (K, n), default 1000
        The null, named as in :class:`~reprsim.Uncertainty`. K, the number of random permutations of y's rows
        (the same permutation for all of y's layers; the add-one p-value is exact for any K); or the K
        permutations themselves, one row order per row (e.g. restricted to exchangeable groups of samples, or
        another package's draws to reproduce its null). ``"moments"``: the exact mean, variance and skewness of
        the measure over all n! permutations and a Pearson type III tail fitted to them, for trace statistics
        (linear and RBF CKA, distance correlation, Pearson and Spearman RSA); the cost of about one evaluation
        per layer, whatever the precision asked of the p-value. Where the fitted tail is not trusted (n < 30, a
        skewness beyond 2, a measure without the trace form, RBF or RDM forms beyond n = 4096) it falls back to
        Monte Carlo with 999 permutations, as :func:`~reprsim.compare` does, and says why (a
        :class:`~reprsim.ReprsimWarning` and ``note``). For layers, the aggregate "best" is then corrected by
        Holm (its Monte Carlo test uses the null of the best cell itself, which no moment formula gives);
        "mean" is a trace statistic too.
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
        The observed value, p-value, critical value, calibrated score and the null (its values, or its moments).

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
    seed = check_seed(seed)
    if aggregate not in ("best", "mean"):
        raise InvalidParameterError(f"aggregate must be 'best' (the most similar cell) or 'mean'; got {aggregate!r}")
    if removed:
        _moved_method(removed)
    m = on_arrays(get_measure(measure), "permutation tests take a measure of whole arrays (e.g. 'cka')")
    layered = isinstance(x, (list, tuple)) or isinstance(y, (list, tuple))
    note = None
    if isinstance(permutations, str):
        if permutations != "moments":
            raise InvalidParameterError(
                f"permutations must be a number K, 'moments' (the exact-moment null) or a (K, n) array of row "
                f"orders; got {permutations!r}"
            )
        try:
            return moments_test(x, y, m, float(alpha), aggregate, layered)
        except NoTraceForm as exc:
            note = f"Monte Carlo with {FALLBACK_PERMUTATIONS} permutations: {exc}"
            warnings.warn(f"the exact-moment null is not used: {exc}; {note}", ReprsimWarning, stacklevel=2)
            permutations = FALLBACK_PERMUTATIONS
    observed, null = null_values(x, y, m, permutations, seed)
    test = assemble(observed, null, m, float(alpha), aggregate, layered)
    return dataclasses.replace(test, note=note) if note is not None else test


@full_precision_matmul
def null_values(
    x: Any, y: Any, m: Measure, permutations: Any, seed: int, keep: range | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The observed (layers of x, layers of y) matrix and the null values (layers of x, layers of y, K) under the
    permutations that ``keep`` selects (all by default) among those :func:`permutation_test` would draw."""
    xs, ys = _layers(x, "x"), _layers(y, "y")
    checked = _checked_layers(xs, ys, m.min_samples)
    names = [f"x[{i}]" for i in range(len(xs))] + [f"y[{j}]" for j in range(len(ys))]
    checked = [prepared_side(m, t, name) for t, name in zip(checked, names)]
    moments = m.stream == "moments" and m.folds == 1
    sides = [_Side(t, m, moments) for t in checked]
    sx, sy = sides[: len(xs)], sides[len(xs) :]
    pairs = [[_Pair(m, a, b, moments) for b in sy] for a in sx]
    n = xs[0].shape[0]
    perms = _permutation_list(permutations, n, seed, checked[0].device, keep)
    observed = torch.tensor([[p.value(None) for p in row] for row in pairs], dtype=torch.float64)
    null = torch.tensor([[p.values(perms) for p in row] for row in pairs], dtype=torch.float64)  # (a, b, K)
    return observed, null.reshape(len(xs), len(ys), len(perms))


def assemble(
    observed: torch.Tensor, null: torch.Tensor, m: Measure, alpha: float, aggregate: Aggregate, layered: bool
) -> PermutationTest:
    """The test from the observed matrix and every cell's null values (see :func:`null_values`)."""
    description = m.describe()
    xs, ys = range(observed.shape[0]), range(observed.shape[1])
    if not layered:
        obs, values = float(observed[0, 0]), null[0, 0]
        p_value, tau, calibrated, tail = summary(obs, values, alpha, m)
        return PermutationTest(
            obs, p_value, tau, calibrated, values, alpha, tail, description, null_moments=_drawn_moments(values)
        )
    similarity = m.direction == "similarity"
    if aggregate == "mean":
        obs, values = float(observed.mean()), null.mean(dim=(0, 1))
    elif similarity:
        obs, values = float(observed.max()), null.amax(dim=(0, 1))
    else:  # for a distance the best cell is the smallest
        obs, values = float(observed.min()), null.amin(dim=(0, 1))
    p_value, tau, calibrated, tail = summary(obs, values, alpha, m)
    per_cell = torch.tensor(
        [[summary(float(observed[i, j]), null[i, j], alpha, m)[:3] for j in ys] for i in xs],
        dtype=torch.float64,
    )  # fmt: skip  # (a, b, 3): p-value, τ, calibrated score of each cell against its own null
    drawn = torch.tensor([[_drawn_moments(null[i, j]) for j in ys] for i in xs], dtype=torch.float64)
    return PermutationTest(
        obs, p_value, tau, calibrated, values, alpha, tail, description, aggregate, observed,
        per_cell[..., 0], per_cell[..., 2], null, cell_null_moments=drawn, cell_p_values_holm=holm(per_cell[..., 0]),
    )  # fmt: skip


def _drawn_moments(values: torch.Tensor) -> tuple[float, float, float]:
    """(mean, sd, skewness) of drawn null values."""
    mean = float(values.mean())
    d = values - mean
    sd = float(d.square().mean().sqrt())
    return mean, sd, float(d.pow(3).mean()) / sd**3 if sd > 0 else 0.0


@full_precision_matmul
def moments_test(x: Any, y: Any, m: Measure, alpha: float, aggregate: Aggregate, layered: bool) -> PermutationTest:
    """The permutation test from the exact permutation moments (see :func:`permutation_test`); raises
    :class:`~reprsim.measures._base.NoTraceForm` with the reason where the fitted tail is not to be trusted."""
    return moments_tests(x, y, m, alpha, (aggregate,), layered)[0]


def moments_tests(
    x: Any, y: Any, m: Measure, alpha: float, aggregates: Sequence[Aggregate], layered: bool
) -> list[PermutationTest]:
    """:func:`moments_test` for several aggregates of one layers × layers matrix, from one computation of every
    layer's trace side and of the observed cells."""
    xs, ys = _layers(x, "x"), _layers(y, "y")
    checked = _checked_layers(xs, ys, m.min_samples)
    names = [f"x[{i}]" for i in range(len(xs))] + [f"y[{j}]" for j in range(len(ys))]
    checked = [prepared_side(m, t, name) for t, name in zip(checked, names)]
    n = checked[0].shape[0]
    if n < MIN_MOMENT_SAMPLES:
        raise NoTraceForm(
            f"n = {n} < {MIN_MOMENT_SAMPLES}: so few samples give too discrete a permutation distribution for a "
            "fitted tail"
        )
    sides = [m.null_trace(t) for t in checked]
    if m.stream == "moments" and m.folds == 1:  # each layer's own moments once: one p × n × q product per cell
        prepared = [
            _Side(t, m, True, (s.trace.x, s.trace.gram) if isinstance(s.trace, LinearTrace) else None)
            for t, s in zip(checked, sides)
        ]
        cells = [[_Pair(m, a, b, True).value(None) for b in prepared[len(xs) :]] for a in prepared[: len(xs)]]
    else:
        cells = [[float(evaluate_validated(m, a, b)) for b in checked[len(xs) :]] for a in checked[: len(xs)]]
    observed = torch.tensor(cells, dtype=torch.float64)
    return [moments_assemble(observed, sides[: len(xs)], sides[len(xs) :], m, alpha, a, layered) for a in aggregates]


def moments_assemble(
    observed: torch.Tensor,
    sides_x: Sequence[TraceSide],
    sides_y: Sequence[TraceSide],
    m: Measure,
    alpha: float,
    aggregate: Aggregate,
    layered: bool,
) -> PermutationTest:
    """The test from the observed matrix and each layer's trace side (see :func:`moments_test`)."""
    description = m.describe()
    lumpy = min(s.spread for s in (*sides_x, *sides_y))
    if lumpy < MIN_MOMENT_SPREAD:
        raise NoTraceForm(
            f"a few samples dominate the Gram (an effective share of {lumpy:.2g} of the samples, below "
            f"{MIN_MOMENT_SPREAD}: heavy-tailed rows), which makes the permutation distribution too lumpy for a "
            "fitted Pearson type III tail"
        )
    nulls = [[pair_moments(a, b) for b in sides_y] for a in sides_x]
    worst = max(abs(null.skewness) for row in nulls for null in row)
    if worst > MAX_MOMENT_SKEWNESS:
        raise NoTraceForm(
            f"the null is too skewed (skewness {worst:.3g} > {MAX_MOMENT_SKEWNESS}, e.g. heavy-tailed rows "
            "dominating the kernels) for a fitted Pearson type III tail"
        )
    transform = sides_x[0].transform
    approximated = {s.approximated for s in (*sides_x, *sides_y) if s.approximated}
    note = "; ".join(sorted(approximated)) or None
    per_cell = torch.tensor(
        [[_moments_summary(float(observed[i, j]), nulls[i][j], transform, alpha, m) for j in range(len(sides_y))]
         for i in range(len(sides_x))], dtype=torch.float64,
    )  # fmt: skip
    cell_moments = torch.tensor(
        [[(_null_mean(null, transform), null.sd, null.skewness) for null in row] for row in nulls], dtype=torch.float64
    )
    tail: Literal["greater", "less"] = "greater" if m.direction == "similarity" else "less"
    if not layered:
        null = nulls[0][0]
        p_value, tau, calibrated = (float(v) for v in per_cell[0, 0])
        return PermutationTest(
            float(observed[0, 0]), p_value, tau, calibrated, torch.empty(0, dtype=torch.float64), alpha, tail,
            description, method="moments", null_moments=(_null_mean(null, transform), null.sd, null.skewness),
            note=note,
        )  # fmt: skip
    cells = observed.numel()
    holm_p = holm(per_cell[..., 0])
    if aggregate == "mean":
        total = pair_moments(combined_side(sides_x), combined_side(sides_y))
        mean = NullMoments(total.mean / cells, total.sd / cells, total.skewness)
        obs = float(observed.mean())
        p_value, tau, calibrated = _moments_summary(obs, mean, "identity", alpha, m)
        null_moments = (mean.mean, mean.sd, mean.skewness)
    else:  # the best cell, with Holm's (here Bonferroni's) correction for the search over cells
        flat = int(observed.argmax()) if tail == "greater" else int(observed.argmin())
        i, j = divmod(flat, observed.shape[1])
        obs = float(observed[i, j])
        p_value = float(holm_p[i, j])
        _, tau, calibrated = _moments_summary(obs, nulls[i][j], transform, alpha / cells, m)
        null_moments = tuple(float(v) for v in cell_moments[i, j])  # type: ignore[assignment]
    return PermutationTest(
        obs, p_value, tau, calibrated, torch.empty(0, dtype=torch.float64), alpha, tail, description, aggregate,
        observed, per_cell[..., 0], per_cell[..., 2], None, method="moments", null_moments=null_moments,
        cell_null_moments=cell_moments, cell_p_values_holm=holm_p, note=note,
    )  # fmt: skip
