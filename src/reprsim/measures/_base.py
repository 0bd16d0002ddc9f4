"""The measure protocol: :class:`Measure` (metadata + the function of streamed moments), the registry that
maps names such as ``"procrustes"`` to configured measures, and :func:`evaluate`, which every functional form
(``procrustes(x, y)``, ``cca(x, y)``, ...) goes through.

A measure computes its value from :class:`~reprsim.measures._moments.Moments`, so the same code serves the
functional form on two arrays (moments of the whole data at once) and every streamed, merged or all-reduced
accumulator. Nothing here knows any particular measure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Optional

import torch

from .._precision import full_precision_matmul
from .._validation import (
    as_matrix,
    check_bool,
    check_finite,
    check_magnitude,
    check_same_device,
    check_same_samples,
    check_spread,
    refuse_keywords,
    relative_spread,
    rescaled,
)
from ..errors import InsufficientSamplesError, InvalidParameterError
from ._moments import Layout, Moments, chunk_state, pair_moments, pool_folds
from ._traces import TraceSide

__all__ = [
    "BUDGET",
    "INVARIANCES",
    "CacheBudget",
    "Measure",
    "available_measures",
    "cached",
    "evaluate",
    "get_measure",
    "num",
    "register",
]

Invariance = Literal["orthogonal", "isotropic_scaling", "translation", "invertible_linear", "permutation"]
#: A per-layer scratch dict that measures may fill with work shared by every pair the layer is in.
Cache = Optional[dict[Any, Any]]


class NoTraceForm(Exception):
    """A measure (or these data) without the trace form of an exact-moment permutation null; the message is the
    reason, which a permutation test reports when it falls back to Monte Carlo."""


class CacheBudget:
    """Bytes that large per-layer results (ranked RDM triangles) may still take in the caches of one run; a caller
    comparing many layers puts the same budget into every layer's cache under :data:`BUDGET`."""

    def __init__(self, nbytes: int) -> None:
        self.left = nbytes


#: The cache key of a shared :class:`CacheBudget`.
BUDGET = "__budget__"


def cached(cache: Cache, key: tuple[Any, ...], make: Callable[[], Any], nbytes: int | None = None) -> Any:
    """``make()``, kept in ``cache`` under ``key`` (computed once per layer when the caller shares caches). A
    result of ``nbytes`` is kept only while the cache's shared budget has room; otherwise it is recomputed
    when next needed."""
    if cache is None:
        return make()
    if key in cache:
        return cache[key]
    value = make()
    budget = cache.get(BUDGET)
    if nbytes is not None and isinstance(budget, CacheBudget):
        if budget.left < nbytes:
            return value
        budget.left -= nbytes
    cache[key] = value
    return value


#: The transformations a measure's metadata may claim invariance to (applied to one side's features).
INVARIANCES: tuple[str, ...] = ("orthogonal", "isotropic_scaling", "translation", "invertible_linear", "permutation")


class Measure:
    """A similarity or distance between two representations of the same samples, with its metadata.

    Subclasses set the class attributes below (or instance attributes where they depend on options) and
    implement :meth:`from_moments`. Calling a measure on two arrays computes it on the whole data:
    ``Procrustes()(x, y)``.

    Attributes
    ----------
    name : str
        The registry name (``"procrustes"``, ``"cca"``, ...).
    id : str
        The measure's name in the naming scheme of the similarity-repository meta-package
        (``procrustes-distance=angular``), so reprsim's numbers can be matched with other packages'. It names the
        whole configuration: two measures with equal IDs compute the same value, and
        :func:`reprsim.measures.from_id` builds the measure back from it. Configurations the scheme has no name
        for get one in its grammar (``family-key=value-...-form``; docs/measures.md lists them).
    form : {"score", "angular"} or None
        Whether the value is one of the scheme's scores s (``-score``) or its angle arccos s
        (``-distance=angular``), from which :class:`reprsim.measures.Derived` gives the other forms; None when it
        is neither.
    label : str
        A human-readable label, used on plots.
    direction : {"similarity", "distance"}
        Whether larger values mean more similar (similarity) or less (distance).
    range : (float, float)
        The values the measure can take.
    metric : bool
        Whether it satisfies the axioms of a metric (only distances can).
    symmetric : bool
        Whether ``m(x, y) == m(y, x)``.
    invariances : frozenset of str
        Transformations of either representation's features that leave the value unchanged, among
        :data:`INVARIANCES`; the property tests check every claim.
    stream : {"moments", "minibatch", "samples"}
        How :func:`reprsim.compare` accumulates it: from the shared cross moments, per batch, or from every
        sample's pooled features (neighbour and distance measures, computed blockwise at the end).
    resampling : {"blocks", "half", "batches"}
        How an interval resamples it, never duplicating a sample (a duplicated row inflates every measure here),
        chosen per family by simulation (docs/uncertainty.md): ``"blocks"``, a delete-a-block jackknife over G
        blocks of samples, from per-block moments (moment measures) or recomputed without each block (the
        smooth kernel statistics: RBF CKA, distance correlation); ``"half"``, half-samples without replacement,
        whose spread at m = n/2 is the spread at n (the finite-population factor √(m/(n − m)) is 1; RSA and the
        neighbour measures, where the jackknife is unreliable); ``"batches"``, the jackknife over the batches of
        a minibatch estimator.
    target : {"population", "expectation"}
        What an interval of it estimates: the population value (consistent, nearly unbiased estimators: unbiased
        and minibatch linear CKA), or the estimator's expectation at this n (every biased estimator: biased CKA,
        Procrustes, the CCA family, predictivity, the sample-space measures), which equals the population value
        only where the bias is small against the interval (see docs/uncertainty.md).
    """

    name: ClassVar[str] = ""
    stream: Literal["moments", "minibatch", "samples"] = "moments"
    target: Literal["population", "expectation"] = "expectation"
    direction: Literal["similarity", "distance"] = "similarity"
    range: tuple[float, float] = (0.0, 1.0)
    metric: bool = False
    symmetric: bool = True
    invariances: frozenset[str] = frozenset()
    form: Literal["score", "angular"] | None = None
    fourth: bool = False
    folds: int = 1
    min_samples: int = 2
    #: False for measures that read only Cxy in full and the diagonals of Cxx and Cyy (their traces): on two
    #: arrays they then cost one product instead of three.
    full_second_order: bool = True
    #: Whether the functional form is differentiable in its inputs (the strip measures, which reduce row
    #: strips in place or rank, are not: torch inputs that require gradients are refused with the fix).
    differentiable: bool = True

    #: How a sample-space measure is resampled ("half" or "blocks"); moment measures always use blocks and
    #: minibatch ones batches.
    sample_resampling: Literal["blocks", "half"] = "half"
    #: The power of n the value grows with (0 for every scale-free measure; 1/2 for the unscaled Euclidean forms
    #: of :class:`Derived`, 1 for their squares): a resampled value on m of the n samples is multiplied by
    #: (n/m)^extensive (:func:`at_full_size`), so that it estimates the value at n and an interval's bias is
    #: the estimator's, not the sample count's.
    extensive: float = 0.0

    @property
    def resampling(self) -> Literal["blocks", "half", "batches"]:
        """See the class notes: read from how the measure is computed."""
        if self.stream == "samples":
            return self.sample_resampling
        return "blocks" if self.stream == "moments" else "batches"

    # -- what subclasses provide -------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.name

    @property
    def label(self) -> str:
        return self.name

    def config(self) -> dict[str, Any]:
        """The options that distinguish this measure from others of its class (plain values)."""
        return {}

    def from_moments(self, m: Moments) -> torch.Tensor:
        """The measure's value (a 0-d float64 tensor) from the moments of one pair (``stream="moments"``)."""
        raise NotImplementedError

    def check_samples(self, n: int, p: int, q: int) -> None:
        """Raise :class:`~reprsim.errors.InsufficientSamplesError` when n samples of widths p and q cannot give a
        value whatever the data (e.g. exact CCA needs p + q ≤ n − 1): what :func:`reprsim.compare` checks at the
        first batch when the data's length is known. Nothing by default."""

    def from_samples(
        self, x: torch.Tensor, y: torch.Tensor, cache_x: Cache = None, cache_y: Cache = None
    ) -> torch.Tensor:
        """The measure's value from every sample of both representations (``stream="samples"``): validated
        (n, p) and (n, q) tensors of one dtype and device. ``cache_x``/``cache_y`` are per-layer scratch dicts
        (as ``Moments.cache_x``) for work a layer compared with many others needs only once."""
        raise NotImplementedError

    def null_trace(self, t: torch.Tensor) -> TraceSide:
        """One representation's part in the measure as a trace statistic tr(A Π B Πᵀ) (validated, prepared (n, p)
        data), whose permutation moments are exact (:mod:`reprsim.measures._traces`). Measures that are not one
        raise :class:`NoTraceForm` with the reason, and their permutation tests are Monte Carlo."""
        raise NoTraceForm(
            f"{self.label} is not a trace statistic tr(AΠBΠᵀ), so its permutation null has no exact moments"
        )

    # -- shared ------------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Everything a result needs to present this measure, as plain values (saved with results)."""
        return {
            "name": self.name,
            "id": self.id,
            "label": self.label,
            "direction": self.direction,
            "range": list(self.range),
            "metric": self.metric,
            "symmetric": self.symmetric,
            "invariances": sorted(self.invariances),
            "resampling": self.resampling,
            "target": self.target,
            "config": self.config(),
        }

    def __call__(self, x: Any, y: Any) -> Any:
        """The measure of ``x`` (n, ...) and ``y`` (n, ...): a float for NumPy inputs, a 0-d tensor when either
        input is a tensor."""
        return evaluate(self, x, y)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.config() == self.config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(sorted(self.config().items()))))


_REGISTRY: dict[str, Callable[[], Measure]] = {}


#: Keywords of the measures renamed in 0.3, and their names now: one name per idea across the API.
RENAMED = {
    "block": ("chunk_rows", "rows processed at a time, as compare_stores' chunk_rows"),
    "kernel": (
        "neighbours",
        "the similarity that ranks the neighbours, as in the other k-NN measures; kernel= is CKA's",
    ),
}


def num(value: float) -> str:
    """A number as an ID writes it: the shortest text that reads back as the same float, without a trailing
    ``.0`` (``1.0`` → ``"1"``, ``0.985`` → ``"0.985"``), so that IDs of different settings differ."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def refuse_renamed(function: str, given: dict[str, Any], renamed: Mapping[str, tuple[str, str]] = RENAMED) -> None:
    """Raise for keywords ``function`` does not take: the migration error for the renamed ones (``renamed``: old
    name to (new name, what it is); the value given is shown under its new name), Python's TypeError for any
    other. Nothing when ``given`` is empty."""
    advice = [
        f"{k}= is now {renamed[k][0]}= ({renamed[k][0]}={v!r}): {renamed[k][1]}"
        for k, v in given.items()
        if k in renamed
    ]
    refuse_keywords(function, given, advice)


def register(name: str, factory: Callable[[], Measure], *, replace: bool = False) -> None:
    """Make ``name`` usable wherever a measure is accepted (``compare(measures=[name])``).

    Parameters
    ----------
    name : str
        The new name (lower case, as every registered name; lookups ignore case).
    factory : callable
        Called without arguments, it returns a configured :class:`Measure` (e.g. ``lambda: ShapeMetric(0.5)``).
    replace : bool, default False
        Replace a measure already registered under ``name``; without it a taken name is refused, so that
        ``register("cka", ...)`` cannot silently change what ``"cka"`` means everywhere.

    Examples
    --------
    >>> from reprsim.measures import ShapeMetric, register
    >>> register("cka", lambda: ShapeMetric(alpha=0.5))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    reprsim.errors.InvalidParameterError: the measure name 'cka' is taken (by CKA(...)); choose another name, ...
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise InvalidParameterError(
            f"a measure name must be a non-empty string without surrounding spaces; got {name!r}"
        )
    replace = check_bool(replace, "replace")
    if not callable(factory) or isinstance(factory, Measure):
        raise InvalidParameterError(
            f"factory must be a callable that returns a Measure (e.g. lambda: ShapeMetric(0.5)); got "
            f"{type(factory).__name__}"
        )
    key = name.lower()
    if key in _REGISTRY and not replace:
        raise InvalidParameterError(
            f"the measure name {name!r} is taken (by {_REGISTRY[key]()!r}); choose another name, or pass "
            "replace=True to replace it everywhere"
        )
    made = factory()
    if not isinstance(made, Measure):
        raise InvalidParameterError(f"factory must return a Measure; it returned {type(made).__name__}")
    _REGISTRY[key] = factory


def available_measures() -> list[str]:
    """The names :func:`get_measure` accepts, sorted."""
    return sorted(_REGISTRY)


def get_measure(spec: str | Measure) -> Measure:
    """A configured measure from a registry name (any case), a measure ID (:func:`reprsim.measures.from_id`:
    any name of the similarity-repository scheme whose family reprsim has) or a :class:`Measure` instance
    (returned as is).

    Examples
    --------
    >>> from reprsim.measures import get_measure
    >>> get_measure("procrustes")
    Procrustes(score='angular')
    >>> get_measure("CKA")
    CKA(unbiased=False, estimator='exact', kernel='linear')
    >>> get_measure("cka-kernel=linear-hsic=song-score")
    CKA(unbiased=True, estimator='exact', kernel='linear')
    """
    if isinstance(spec, Measure):
        return spec
    if isinstance(spec, str) and spec.strip().lower() in _REGISTRY:
        return _REGISTRY[spec.strip().lower()]()
    if isinstance(spec, str):
        from ._ids import from_id

        try:
            return from_id(spec)
        except InvalidParameterError as exc:
            if "-" in spec or "does not provide" in str(exc):
                raise
    import difflib

    close = difflib.get_close_matches(str(spec).lower(), list(_REGISTRY), n=3)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise InvalidParameterError(
        f"unknown measure {spec!r}{hint} Known names: {available_measures()}; or a measure ID (measure.id, e.g. "
        "'procrustes-distance=angular'), or a measure object such as reprsim.measures.ShapeMetric(alpha=0.5)"
    )


def sample_pair(x: Any, y: Any, need: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two validated (n, p) and (n, q) representations of the same samples, in their promoted dtype."""
    xt, yt = as_matrix(x, "x"), as_matrix(y, "y")
    check_same_samples({"x": xt, "y": yt})
    check_same_device({"x": xt, "y": yt})
    check_finite(xt, "x")
    check_finite(yt, "y")
    if xt.shape[0] < need:
        raise InsufficientSamplesError(f"this measure needs at least {need} samples; got {xt.shape[0]}")
    dtype = torch.promote_types(xt.dtype, yt.dtype)
    return xt.to(dtype), yt.to(dtype)


def side_stats(t: torch.Tensor) -> tuple[float, float]:
    """(relative spread, largest magnitude) of one representation, with one host synchronisation: what
    :func:`prepared_side` decides from (a caller comparing a layer with many others computes them once)."""
    amax = t.detach().abs().amax()
    spread, top = torch.stack([relative_spread(t, amax), amax.double()]).tolist()
    return spread, top


def prepared_side(
    measure: Measure, t: torch.Tensor, name: str, stats: tuple[float, float] | None = None
) -> torch.Tensor:
    """One representation made ready for ``measure``: refused when it counts as constant
    (:func:`reprsim._validation.check_spread`, the one rule for every measure), divided by a power of two when
    its magnitude would overflow or underflow the products and the measure is scale invariant (its metadata says
    so), and refused with the fix when it is not. ``stats``: :func:`side_stats` of ``t``, when known."""
    spread, top = side_stats(t) if stats is None else stats
    check_spread(spread, t.dtype, name, t.shape[0], measure.label)
    if "isotropic_scaling" in measure.invariances:
        return rescaled(t, top)
    # moment measures compute in float64; the others in the data's dtype
    check_magnitude(t, top, name, torch.float64 if measure.stream == "moments" else t.dtype)
    return t


@full_precision_matmul
def moments_of(
    xt: torch.Tensor, yt: torch.Tensor, *, fourth: bool = False, folds: int = 1, cross_only: bool = False
) -> Moments:
    """The moments of two validated (n, p) and (n, q) tensors of one device (see :func:`pair_of`), summed in
    float64 whatever their dtype (float32 products would leave eigenvalues of 1e-7 · λ_max where the data have
    none); ``eps`` records the inputs' own precision."""
    n = xt.shape[0]
    eps = max(float(torch.finfo(xt.dtype).eps), float(torch.finfo(yt.dtype).eps))
    f64 = torch.float64
    xt, yt = xt.to(f64), yt.to(f64)
    if cross_only and folds == 1 and not fourth:
        mx, my = xt.mean(dim=0), yt.mean(dim=0)
        xc, yc = xt - mx, yt - my
        return Moments(n, mx, my, torch.diag((xc * xc).sum(0)), torch.diag((yc * yc).sum(0)), xc.T @ yc, eps=eps)
    layout = Layout((xt.shape[1], yt.shape[1]), (((0,), (1,)),), fourth=fourth, folds=folds)
    fold_of_rows = torch.arange(n, device=xt.device) % folds if folds > 1 else None
    state = chunk_state([xt, yt], layout, fold_of_rows)
    if folds > 1:
        pooled = pool_folds(state, layout)
        m = pair_moments(pooled, Layout(layout.widths, layout.blocks, fourth, 1), 0, 0, 0)
        m.folds = tuple(pair_moments(state, layout, 0, 0, 0, fold=k) for k in range(folds))
        for f in m.folds:
            f.eps = eps
    else:
        m = pair_moments(state, layout, 0, 0, 0)
    m.eps = eps
    return m


def pair_of(
    x: Any,
    y: Any,
    *,
    fourth: bool = False,
    folds: int = 1,
    need: int = 2,
    cross_only: bool = False,
    measure: Measure | None = None,
) -> tuple[Moments, torch.Tensor]:
    """Validated moments of two whole representations, and an empty tensor of the result's dtype.

    ``cross_only``: compute Cxy in full but only the diagonals of Cxx and Cyy (returned as diagonal
    matrices), for measures that read nothing else of them (one product instead of three). With ``measure``,
    each side is first prepared for it (:func:`prepared_side`: constant inputs refused, extreme magnitudes
    rescaled).
    """
    xt, yt = sample_pair(x, y, max(need, folds if folds > 1 else 0))
    like = xt.new_empty(0)
    if measure is not None:
        xt, yt = prepared_side(measure, xt, "x"), prepared_side(measure, yt, "y")
    return moments_of(xt, yt, fourth=fourth, folds=folds, cross_only=cross_only), like


def on_arrays(
    measure: Measure, hint: str = "use it in reprsim.compare or with reprsim.streaming.MinibatchCKA"
) -> Measure:
    """``measure`` itself, if it is defined on two arrays; an error naming ``hint`` if it is defined over a stream
    of batches (minibatch CKA)."""
    if measure.stream == "minibatch":
        raise InvalidParameterError(f"{measure!r} is defined over a stream of batches, not on two arrays; {hint}")
    return measure


def evaluate_validated(measure: Measure, xt: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
    """``measure`` of tensors already validated by :func:`sample_pair` (one dtype and device, finite, enough
    rows), as a 0-d tensor: for callers that evaluate many row subsets of one validated pair (resampling),
    which need not check every subset again."""
    if on_arrays(measure).stream == "samples":
        return measure.from_samples(xt, yt)
    m = moments_of(xt, yt, fourth=measure.fourth, folds=measure.folds, cross_only=not measure.full_second_order)
    return measure.from_moments(m)


def measure_pair(measure: Measure, x: Any, y: Any, need: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two representations validated (:func:`sample_pair`) and prepared (:func:`prepared_side`) for
    ``measure``: the common entry of every function that evaluates a measure on two arrays."""
    if need is None:
        need = measure.min_samples if measure.stream == "samples" else max(measure.min_samples, measure.folds)
    xt, yt = sample_pair(x, y, need)
    return prepared_side(measure, xt, "x"), prepared_side(measure, yt, "y")


def evaluate(measure: Measure, x: Any, y: Any) -> Any:
    """``measure`` of two whole representations (the functional forms' common body)."""
    on_arrays(measure)
    if not measure.differentiable and torch.is_grad_enabled():
        wants = [n for n, v in (("x", x), ("y", y)) if isinstance(v, torch.Tensor) and v.requires_grad]
        if wants:
            raise InvalidParameterError(
                f"{measure.label} is computed in row strips (or from ranks) and is not differentiable, but "
                f"{' and '.join(wants)} require gradients; pass detached tensors "
                f"({wants[0]}.detach()), or use a moment-based measure such as CKA for gradients"
            )
    xt, yt = measure_pair(measure, x, y)
    return as_result(evaluate_validated(measure, xt, yt), xt.new_empty(0), x, y)


def as_result(value: torch.Tensor, like: torch.Tensor, *inputs: Any) -> Any:
    """The return rule: when no input is a tensor, a Python float (scalars) or a CPU tensor (vectors);
    otherwise a tensor of the inputs' floating dtype, on their device, differentiable."""
    if not any(isinstance(v, torch.Tensor) for v in inputs):
        return float(value) if value.ndim == 0 else value.detach().cpu()
    return value.to(like.dtype)


def at_full_size(m: Measure, values: torch.Tensor, n: float, kept: Any) -> torch.Tensor:
    """Values of ``m`` on ``kept`` of ``n`` samples (a number or one per value, along the first dimension) scaled
    to n samples: × (n/kept)^m.extensive, unchanged for scale-free measures."""
    if not m.extensive:
        return values
    ratio = n / torch.as_tensor(kept, dtype=torch.float64)
    factor = ratio.pow(m.extensive).to(values.dtype)
    return values * factor.reshape(-1, *([1] * (values.dim() - 1))) if factor.dim() else values * factor
