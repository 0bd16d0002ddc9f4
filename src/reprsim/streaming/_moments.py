"""The one exact streaming state that serves every moment-based measure: :class:`CrossMoments`.

It keeps, for every layer, the sample count, the means and the centred co-moment XcᵀXc, and for every pair
of layers that will be compared, the centred cross co-moment XcᵀYc (plus, when unbiased CKA is wanted, the
row-norm moments, and with ``folds`` one set per fold). Batches, merges and all-reduces combine with the
parallel update of Chan et al. (:mod:`reprsim.measures._moments`), so after any sequence of batches the
statistics, and every measure computed from them, equal the one-shot result on the concatenated data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .._precision import full_precision_matmul
from .._validation import check_bool, check_finite, check_int
from ..errors import (
    IncompatibleStateError,
    InvalidParameterError,
    ReprsimError,
    ShapeMismatchError,
)
from ..measures._base import Measure, at_full_size, get_measure, refuse_renamed
from ..measures._moments import (
    EPS64,
    Layout,
    Moments,
    chunk_state,
    combine_states,
    fold,
    pair_moments,
    pool_folds,
    remove_part,
    shift_state,
)
from ._protocol import Dims, DimsError, Pending, _Accumulator, _StateSpec, batch_layers

__all__ = ["CrossMoments"]


def _guard(layers: Sequence[torch.Tensor], centred: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """0, or infinite when a batch's products could overflow the state dtype: a centred value so large that
    b·u² could, or a raw value so large that the parallel update's shift term (at most b·δ², with δ the
    distance between the batch's means and the state's) could. The raw bound, √(max / 2⁴⁰) (about 10¹⁴⁸ in
    float64, 10¹³ in float32), does not depend on the batch: a one-row batch centres to zero but still moves the
    means."""
    b = layers[0].shape[0]
    big = torch.finfo(dtype).max
    bound = (big / (4.0 * b * max(x.shape[1] for x in layers))) ** 0.5
    centred_max = torch.stack([u.abs().amax() for u in centred]).amax()
    raw_max = torch.stack([x.abs().amax() for x in layers]).amax()
    ok = (centred_max < bound) & (raw_max < (big / 2.0**40) ** 0.5)
    return torch.where(ok, 0.0, float("inf")).to(dtype)


def _deferred(layers: Sequence[torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A batch's count, means and centred rows, with its products left for commit time.

    ``guard`` is 0, or infinite when a centred value is so large that b·u² could overflow the state dtype:
    checking it (with the batch's other flags, in one host synchronisation) before anything is added keeps the
    promise that a rejected batch changes nothing, without holding the products themselves.
    """
    b = layers[0].shape[0]
    means = [x.mean(dim=0) for x in layers]
    centred = [x - m for x, m in zip(layers, means)]
    out = {
        "n": torch.full((1,), float(b), dtype=dtype, device=layers[0].device),
        "mean": torch.cat(means).unsqueeze(0),
        "guard": _guard(layers, centred, dtype),
    }
    out.update({f"u.{l}": u.unsqueeze(0) for l, u in enumerate(centred)})  # one fold: (1, b, p)
    return out


def _deferred_folds(
    layers: Sequence[torch.Tensor], dtype: torch.dtype, folds: int, start: int
) -> dict[str, torch.Tensor]:
    """:func:`_deferred` for a stream that keeps ``folds`` folds (sample i of the stream in fold i mod K).

    The batch's rows of fold f are rows r, r + K, r + 2K, … with r = (f − start) mod K: strided slices, so the
    rows are laid out as (K, m, p) per layer, fold by fold (m = ⌈b/K⌉, short folds padded with zero rows, which
    add nothing to a product), each fold centred at its own mean. Commit adds every fold's products with one
    batched multiply into the state, instead of building K zero-filled copies of the moments per batch.
    """
    b, k = layers[0].shape[0], folds
    m = -(-b // k)
    slot = torch.arange(m * k, device=layers[0].device).view(m, k).T  # slot r holds rows r, r + K, …
    valid = (slot < b).to(dtype)  # (K, m)
    shift = start % k  # fold f is slot (f − start) mod K: roll the slots by start
    valid = torch.roll(valid, shift, 0)
    counts = valid.sum(dim=1)  # (K,)
    safe = torch.where(counts > 0, counts, torch.ones_like(counts)).unsqueeze(1)
    out: dict[str, torch.Tensor] = {"n": counts}
    means, centred = [], []
    for x in layers:
        padded = torch.cat([x, x.new_zeros((m * k - b, x.shape[1]))]) if m * k > b else x
        rows = torch.roll(padded.view(m, k, -1).transpose(0, 1), shift, 0)  # (K, m, p), fold order
        mean = rows.sum(dim=1) / safe  # padded rows are zero
        means.append(mean)
        centred.append((rows - mean.unsqueeze(1)) * valid.unsqueeze(2))
    out["mean"] = torch.cat(means, dim=1)
    out["guard"] = _guard(layers, centred, dtype)
    out.update({f"u.{l}": u for l, u in enumerate(centred)})
    return out


#: CrossMoments' keywords renamed in 0.3: "blocks" now means only the jackknife's blocks of samples.
GROUPS_RENAMED = {
    "blocks": ("groups", "the pairs of layer groups whose cross moments are kept; blocks= is the jackknife's"),
    "block": ("group", "the index of one such pair of layer groups"),
}


def _checked_groups(blocks: Any) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Explicit groups: pairs (layers a, layers b) of layer indices, each a non-empty list of integers."""
    hint = "groups is a list of pairs of layer-index lists, e.g. [([0, 1], [2, 3])]"
    try:
        pairs = [tuple(pair) for pair in blocks]
    except TypeError as exc:
        raise InvalidParameterError(f"{hint}; got {blocks!r}") from exc
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise InvalidParameterError(f"{hint}; got the entry {pair!r}")
        groups = []
        for group in pair:
            if isinstance(group, (str, bytes)) or not hasattr(group, "__iter__"):
                raise InvalidParameterError(f"{hint}; got the group {group!r}")
            items = list(group)
            if not items:
                raise InvalidParameterError(f"{hint}; a group is empty")
            groups.append(tuple(check_int(i, "a layer index in groups", minimum=0) for i in items))
        out.append((groups[0], groups[1]))
    if not out:
        raise InvalidParameterError(f"{hint}; got no groups")
    return tuple(out)


def _as_layers(v: Any, side: str) -> tuple[list[Any], bool]:
    if isinstance(v, (list, tuple)):
        if not v:
            raise ShapeMismatchError(f"{side} is an empty sequence; pass a tensor or a list of tensors (one per layer)")
        return list(v), True
    return [v], False


class _MomentState(_Accumulator):
    """The state and its arithmetic, shared by :class:`CrossMoments` (any layers, any moment measure) and
    :class:`~reprsim.streaming.LinearCKA` (one pair, CKA): the sample count, means and centred co-moments of
    every layer and every compared pair, per fold, merged with Chan et al.'s parallel update."""

    _version = 4
    # version 2 had no "eps" entry (its data are taken to be float64); versions 2 and 3 named the groups "blocks"
    _readable = (2, 3)

    def __init__(
        self,
        *,
        fourth: bool = False,
        folds: int = 1,
        dtype: torch.dtype = torch.float64,
        groups: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None,
        **removed: Any,
    ) -> None:
        refuse_renamed(type(self).__name__, removed, GROUPS_RENAMED)
        super().__init__(dtype)
        self.fourth = check_bool(fourth, "fourth")
        self.folds = check_int(folds, "folds", minimum=1)
        self._blocks = None if groups is None else _checked_groups(groups)
        self._layout_cache: tuple[Dims, Layout] | None = None
        # states derived from the current one (the pooled folds, the leave-one-fold-out states), by generation
        self._derived: dict[str, tuple[Any, Any]] = {}

    # -- layout ------------------------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        blocks = None if self._blocks is None else [[list(a), list(b)] for a, b in self._blocks]
        return {"fourth": self.fourth, "folds": self.folds, "groups": blocks, "dtype": str(self._dtype)}

    def _layout(self, dims: Dims) -> Layout:
        """dims = (x-layer count (0 with explicit groups), width of every layer...)."""
        if self._layout_cache is not None and self._layout_cache[0] == dims:
            return self._layout_cache[1]
        layout = self._build_layout(dims)
        self._layout_cache = (dims, layout)
        return layout

    def _build_layout(self, dims: Dims) -> Layout:
        split, widths = dims[0], tuple(dims[1:])
        if self._blocks is not None:
            blocks = self._blocks
        else:
            blocks = ((tuple(range(split)), tuple(range(split, len(widths)))),)
        return Layout(widths, blocks, self.fourth, self.folds)

    def _specs_for(self, dims: Dims) -> dict[str, _StateSpec]:
        if len(dims) < 2:
            raise DimsError("no layers")
        if self._blocks is not None and any(l >= len(dims) - 1 for a, b in self._blocks for l in (*a, *b)):
            raise DimsError("its groups name layers beyond these widths")
        shapes = self._layout(dims).shapes()

        def fixed(s: tuple[int, ...]) -> Callable[[Dims], tuple[int, ...]]:
            return lambda _d: s

        specs = {k: _StateSpec(fixed(s), "sum") for k, s in shapes.items()}
        # the machine epsilon of the coarsest dtype the batches came in (see Moments.eps)
        specs["eps"] = _StateSpec(fixed((1,)), "max")
        return specs

    def _upgrade_config(self, version: int, config: dict[str, Any]) -> dict[str, Any]:
        if "blocks" in config:  # versions 2 and 3
            config["groups"] = config.pop("blocks")
        return config

    def _upgrade(self, version: int, state: dict[str, Any]) -> dict[str, Any]:
        if version != 2:
            return state
        n = state.get("n")
        like = n if isinstance(n, torch.Tensor) else torch.zeros(1, dtype=torch.float64)
        return {**state, "eps": torch.full((1,), EPS64, dtype=like.dtype, device=like.device)}

    def _check_invariants(self, state: Mapping[str, torch.Tensor], dims: Dims) -> None:
        """Sums of squares are non-negative and every centred cross sum obeys Cauchy–Schwarz,
        |Σ uᵢvⱼ|² ≤ Σ uᵢ² · Σ vⱼ² (up to rounding); the means are finite; ``eps`` is a machine epsilon."""
        layout = self._layout(dims)
        diagonals = [state[f"m2.{l}"].diagonal(dim1=1, dim2=2) for l in range(len(layout.widths))]
        eps = state["eps"]
        if not bool(((eps >= 0) & (eps < 1)).all()):
            raise IncompatibleStateError(f"state entry 'eps' must be a machine epsilon in [0, 1); got {eps.tolist()}")
        for l, d in enumerate(diagonals):
            if bool((d < 0).any()):
                raise IncompatibleStateError(
                    f"state entry 'm2.{l}' has negative sums of squares on its diagonal; no data produce that"
                )
        tol = 1024 * float(torch.finfo(self._dtype).eps)  # rounding of the parallel updates, with room
        for b, (ga, gb) in enumerate(layout.blocks):
            da = torch.cat([diagonals[l] for l in ga], dim=1)  # (K, Pa)
            db = torch.cat([diagonals[l] for l in gb], dim=1)
            cross = state[f"cross.{b}"]
            bound = (da.unsqueeze(2) * db.unsqueeze(1)).sqrt() * (1 + tol) + tol * (
                da.amax(dim=1, keepdim=True).unsqueeze(2).sqrt() * db.amax(dim=1, keepdim=True).unsqueeze(1).sqrt()
            )
            if bool((cross.abs() > bound).any()):
                raise IncompatibleStateError(
                    f"state entry 'cross.{b}' holds cross sums larger than Cauchy–Schwarz allows "
                    "(|Σuv| > sqrt(Σu² Σv²)); the state is not one that data produce"
                )
        if layout.fourth and bool((state["r2"] < 0).any()):
            raise IncompatibleStateError("state entry 'r2' has negative sums of squares; no data produce that")

    def _describe(self, dims: Dims) -> str:
        if self._blocks is None:
            xs, ys = list(dims[1 : dims[0] + 1]), list(dims[dims[0] + 1 :])
            return f"x: {xs[0] if len(xs) == 1 else xs}, y: {ys[0] if len(ys) == 1 else ys}"
        return str(list(dims[1:]))

    # -- updates -----------------------------------------------------------------------------------------
    @full_precision_matmul
    def prepare(self, x: Any, y: Any = None, *, checked: bool = False, start: int | None = None) -> Pending:
        """Check a batch and compute its contribution without touching the state (see :meth:`commit`).

        ``x`` and ``y``: each a tensor (b, ...) or a list of them (layers). With explicit ``groups``, ``x`` is
        the list of every layer and ``y`` is omitted. ``checked=True`` skips the NaN/inf scan of the inputs
        (for callers that have already made it). ``start``: the index of the batch's first sample in the whole
        stream, which places its samples in folds (by default the samples this accumulator has seen; a process
        that handles every other batch of a stream passes the global index, so that its folds are the ones a
        single process would make).
        """
        with torch.no_grad():
            xs, x_list = _as_layers(x, "x")
            if self._blocks is None:
                if y is None:
                    raise InvalidParameterError("update(x, y) needs both sides; y is missing")
                ys, y_list = _as_layers(y, "y")
                names = [f"x[{i}]" if x_list else "x" for i in range(len(xs))]
                names += [f"y[{i}]" if y_list else "y" for i in range(len(ys))]
                layers, split = xs + ys, len(xs)
            else:
                if y is not None:
                    raise InvalidParameterError("with explicit groups, pass every layer as one list: update(layers)")
                names = [f"layer {i}" for i in range(len(xs))]
                layers, split = xs, 0
            tensors, b, on = batch_layers(layers, names)
            device = on.device
            self._prepare_device(device)
            if not checked:
                for nm, t in zip(names, tensors):
                    check_finite(t, nm)
            dims: Dims = (split, *(t.shape[1] for t in tensors))
            if self._dims is not None and dims != self._dims:
                raise ShapeMismatchError(
                    f"this batch has feature widths {self._describe(dims)} but earlier batches had "
                    f"{self._describe(self._dims)}; every batch must come from the same layers"
                )
            layout = self._layout(dims)
            try:
                layout.shapes()
                self._specs_for(dims)
            except (DimsError, IndexError) as exc:  # IndexError: the layout indexing a width the batch lacks
                raise ShapeMismatchError(f"the groups {self._blocks} name layers this batch does not have") from exc
            cast = [t.to(self._dtype) for t in tensors]
            eps = torch.full((1,), max(float(torch.finfo(t.dtype).eps) for t in tensors), dtype=self._dtype,
                             device=device)  # fmt: skip
            if not layout.fourth and layout.folds == 1 and b > 0:
                return Pending(self, dims, device, {**_deferred(cast, self._dtype), "eps": eps})
            seen = self.num_samples if start is None else int(start)
            if not layout.fourth and b > 0:
                return Pending(self, dims, device, {**_deferred_folds(cast, self._dtype, self.folds, seen), "eps": eps})
            folds = (torch.arange(b, device=device) + seen) % self.folds if self.folds > 1 else None
            # the products are checked as they are (flags); the guard covers the shift of the means, which combining
            # with the state applies later (a one-row batch's own products are all zero)
            guard = _guard(cast, cast, self._dtype) if b > 0 else torch.zeros((), dtype=self._dtype, device=device)
            return Pending(self, dims, device, {**chunk_state(cast, layout, folds), "eps": eps, "guard": guard})

    def _update(self, x: Any, y: Any = None) -> None:
        pending = self.prepare(x, y)
        if pending.contribution["n"].sum() == 0:
            return  # an empty batch adds nothing
        self.commit(pending)

    @full_precision_matmul  # the deferred products are taken here, at commit time
    def _add(self, contribution: Mapping[str, torch.Tensor]) -> None:
        self._generation += 1
        layout = self.layout
        eps = torch.maximum(self._state["eps"], contribution["eps"].to(self._state["eps"].device))
        if layout.fourth:
            self._state = {**combine_states(self._state, dict(contribution), layout), "eps": eps}
            return
        self._state["eps"] = eps
        # Second order only: Chan's update in place, M += M_b + (n_a n_b / n) δ_x δ_yᵀ, so a batch costs no copy
        # of the (possibly large) state. Same algebra as combine_states, which the fourth-order terms need.
        # M_b is either held (a merge, a fourth-order chunk) or, for a batch prepared by _deferred or
        # _deferred_folds, its centred rows fold by fold, (K, m, p), whose products go straight into the state: the
        # cross blocks are never held twice. Either way the rank-one shift is one batched multiply of (K, p, 1)
        # by (K, 1, q), written in place (an outer product would allocate a temporary as large as the block), and
        # with rows it rides along as one more row per fold, so each block is read and written once per batch.
        s, c = self._state, contribution
        n_a, n_b = s["n"], c["n"]
        n = n_a + n_b
        safe = torch.where(n > 0, n, torch.ones_like(n))
        delta = c["mean"] - s["mean"]
        scaled = delta * (n_a * n_b / safe).unsqueeze(1)
        rows = [c[f"u.{l}"] for l in range(len(layout.widths))] if "u.0" in c else None

        def update(name: str, group_a: Sequence[int], group_b: Sequence[int], ia: Any, ib: Any) -> None:
            target = s[name]
            shift_a, shift_b = scaled[:, ia].unsqueeze(1), delta[:, ib].unsqueeze(1)  # (K, 1, p), (K, 1, q)
            if rows is None:
                target.add_(c[name])
                target.baddbmm_(shift_a.transpose(1, 2), shift_b)
                return
            ua, ub = (
                torch.cat([rows[g[0]] if len(g) == 1 else torch.cat([rows[l] for l in g], dim=2), shift], dim=1)
                for g, shift in ((group_a, shift_a), (group_b, shift_b))
            )
            target.baddbmm_(ua.transpose(1, 2), ub)

        for l in range(len(layout.widths)):
            update(f"m2.{l}", (l,), (l,), layout.cols(l), layout.cols(l))
        for b, (ga, gb) in enumerate(layout.blocks):
            update(f"cross.{b}", ga, gb, layout.group_cols(ga).to(delta.device), layout.group_cols(gb).to(delta.device))
        s["mean"].add_(delta * (n_b / safe).unsqueeze(1))
        s["n"] = n

    def _reduce_states(self, dist: Any, group: Any, rank: int, world: int, has_data: bool) -> None:
        # Chan's update across ranks: the total count and mean first, then every rank's statistics shifted to
        # that mean (ranks without data contribute zeros), then one sum.
        layout = self.layout
        n = self._state["n"].clone()
        dist.all_reduce(n, op=dist.ReduceOp.SUM, group=group)
        weighted = self._state["n"].unsqueeze(1) * self._state["mean"]
        dist.all_reduce(weighted, op=dist.ReduceOp.SUM, group=group)
        mean = weighted / torch.where(n > 0, n, torch.ones_like(n)).unsqueeze(1)
        shifted = shift_state(self._state, mean, layout)
        for name, t in shifted.items():
            if name not in ("n", "mean"):
                dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        eps = self._state["eps"].clone()
        dist.all_reduce(eps, op=dist.ReduceOp.MAX, group=group)
        shifted["n"], shifted["mean"], shifted["eps"] = n, mean, eps
        self._state = shifted

    # -- results -----------------------------------------------------------------------------------------
    @property
    def layout(self) -> Layout:
        """The layers' widths and the groups of cross moments (after the first batch)."""
        if self._dims is None:
            raise IncompatibleStateError(f"{type(self).__name__} has seen no batch yet, so its layers are not known")
        return self._layout(self._dims)

    @full_precision_matmul
    def moments(
        self,
        i: int = 0,
        j: int = 0,
        *,
        group: int = 0,
        caches: dict[int, dict[Any, Any]] | None = None,
        **removed: Any,
    ) -> Moments:
        """The pooled moments of x-layer ``i`` and y-layer ``j`` of ``group`` (with per-fold moments when
        ``folds > 1``)."""
        refuse_renamed("moments", removed, GROUPS_RENAMED)
        block = self._block(group)
        ga, gb = self.layout.blocks[block]
        i = check_int(i, "i", minimum=0, maximum=len(ga) - 1)
        j = check_int(j, "j", minimum=0, maximum=len(gb) - 1)
        return self._all_moments(block, [(i, j)], caches if caches is not None else {})[0]

    def _block(self, group: Any) -> int:
        """A group index of this accumulator (0 unless groups were given)."""
        count = len(self.layout.blocks)
        return check_int(group, "group", minimum=0, maximum=count - 1, hint=f"this accumulator has {count} group(s)")

    def _all_moments(
        self,
        block: int,
        pairs: Sequence[tuple[int, int]],
        caches: dict[int, dict[Any, Any]],
        left_out: int | None = None,
        folds: bool = False,
    ) -> list[Moments]:
        """Each pair's pooled moments, with every fold's own (all folds pooled), or pooled over every fold but
        ``left_out`` (a jackknife's leave-one-block-out moments), then with the other folds' own only where
        ``folds`` asks (a cross-validated measure, which cross-validates over the folds that remain)."""
        layout = self.layout
        one = Layout(layout.widths, layout.blocks, layout.fourth, 1)
        if layout.folds == 1:
            pooled = self._state
        else:
            pooled = self._pooled() if left_out is None else self._left_out()[left_out]
        eps = float(self._state["eps"].max())
        out = []
        for i, j in pairs:
            m = pair_moments(pooled, one, block, i, j, caches=caches)
            m.eps = eps
            if layout.folds > 1 and (left_out is None or folds):
                kept = [k for k in range(layout.folds) if k != left_out]
                m.folds = tuple(pair_moments(self._state, layout, block, i, j, fold=k) for k in kept)
                for f in m.folds:
                    f.eps = eps
            out.append(m)
        return out

    def _pooled(self) -> dict[str, torch.Tensor]:
        """Every fold pooled into one (computed once per state)."""
        key = ("pooled", self._generation)
        if self._derived.get("pooled", (None,))[0] != key:
            self._derived["pooled"] = (key, pool_folds(self._state, self.layout))
        return self._derived["pooled"][1]  # type: ignore[no-any-return]

    def _left_out(self) -> list[dict[str, torch.Tensor]]:
        """For each fold, the pooled state of every other fold: the total minus that fold (one backward parallel
        update each), computed once per state and shared by every measure."""
        key = ("left_out", self._generation)
        if self._derived.get("left_out", (None,))[0] != key:
            layout, total = self.layout, self._pooled()
            parts = [remove_part(total, fold(self._state, g), layout) for g in range(layout.folds)]
            self._derived["left_out"] = (key, parts)
        return self._derived["left_out"][1]  # type: ignore[no-any-return]


class CrossMoments(_MomentState):
    """Exact streaming cross moments of representations, from which any moment-based measure is computed.

    Feed batches of two sides, each one tensor or a list of tensors (layers), with the same samples in the
    same order; then compute any measure (CKA, Procrustes, shape metrics, the CCA family, predictivity) for
    every pair of an x-layer and a y-layer. Memory is O(Σp² + Σp·Σq) whatever the number of samples.

    Parameters
    ----------
    fourth : bool, default False
        Also keep the row-norm moments that unbiased linear CKA needs (O(p + q) more per layer pair).
    folds : int, default 1
        Keep one set of moments per fold (sample i of the stream, counted on this process, belongs to fold
        i mod folds), which cross-validated measures need.
    dtype : {torch.float64, torch.float32}, default torch.float64
        The state's dtype; batches of any floating dtype are accepted.
    groups : sequence of (x-layer indices, y-layer indices), optional
        Which cross moments to keep, for layers fed as one list (``update(layers)``): for each pair of groups
        (A, B), those of every layer in A with every layer in B (e.g. ``[([0, 1], [2, 3])]``, or one pair per
        pair of models of a comparison, whose layers share one list). By default one pair: the layers of ``x``
        with those of ``y``. Measures of group g come from ``compute_matrix(measure, group=g)``.

    Examples
    --------
    >>> import torch
    >>> from reprsim.measures import Procrustes, procrustes
    >>> from reprsim.streaming import CrossMoments
    >>> x, y = torch.randn(1000, 16, dtype=torch.float64), torch.randn(1000, 8, dtype=torch.float64)
    >>> acc = CrossMoments()
    >>> for xb, yb in zip(x.split(100), y.split(100)):
    ...     acc.update(xb, yb)
    >>> abs(acc.compute("procrustes") - float(procrustes(x, y))) < 1e-12
    True
    """

    def update(self, x: Any, y: Any = None) -> None:
        """Add a batch: ``x`` and ``y`` each a tensor (b, ...) or a list of tensors (layers), same b samples."""
        self._update(x, y)

    def _values(
        self,
        m: Measure,
        block: int,
        caches: dict[int, dict[Any, Any]],
        names_a: Sequence[str] | None = None,
        names_b: Sequence[str] | None = None,
        left_out: int | None = None,
    ) -> torch.Tensor:
        """(L_x, L_y) float64 CPU: ``m`` of every pair of ``block``; an error names the pair it failed on."""
        ga, gb = self.layout.blocks[block]
        pairs = [(i, j) for i in range(len(ga)) for j in range(len(gb))]
        values = []
        for (i, j), mm in zip(pairs, self._all_moments(block, pairs, caches, left_out, m.folds > 1)):
            try:
                values.append(m.from_moments(mm))
            except ReprsimError as exc:
                a = names_a[i] if names_a is not None else f"x[{i}]"
                b = names_b[j] if names_b is not None else f"y[{j}]"
                raise type(exc)(f"{m.label} of {a} and {b}: {exc}") from exc
        return torch.stack(values).reshape(len(ga), len(gb)).to(torch.float64).cpu()

    @full_precision_matmul
    def compute_matrix(
        self,
        measure: str | Measure,
        *,
        group: int = 0,
        caches: dict[int, dict[Any, Any]] | None = None,
        names_a: Sequence[str] | None = None,
        names_b: Sequence[str] | None = None,
        **removed: Any,
    ) -> torch.Tensor:
        """``measure`` for every (x-layer, y-layer) pair of ``group``: a (L_x, L_y) float64 tensor on the CPU.

        A layer's own factorisations (eigendecompositions, whitening) are computed once and shared by all
        pairs it takes part in (and, through ``caches``, by several measures: pass the same dict to each call
        while the state does not change). ``names_a``/``names_b`` name the layers in error messages.
        """
        refuse_renamed("compute_matrix", removed, GROUPS_RENAMED)
        m = get_measure(measure)
        self._check_measure(m)
        self._require_samples(m.min_samples, m.label)
        block = self._block(group)
        return self._values(m, block, caches if caches is not None else {}, names_a, names_b)

    @full_precision_matmul
    def jackknife_values(self, measure: str | Measure, *, group: int = 0, **removed: Any) -> torch.Tensor:
        """``measure`` of every pair of ``group`` with each fold left out in turn: a (K, L_x, L_y) float64 CPU
        tensor, row g from the pooled moments of every fold but g (the delete-a-block jackknife's values; the
        folds are the blocks of samples ``index % K``)."""
        refuse_renamed("jackknife_values", removed, GROUPS_RENAMED)
        m = get_measure(measure)
        self._check_measure(m)
        layout = self.layout
        block = self._block(group)
        if layout.folds < 2:
            raise InvalidParameterError(
                "a jackknife needs the samples in blocks: create CrossMoments(folds=K) with K ≥ 2 (each fold is "
                "one block of samples, index % K)"
            )
        # each left-out block changes every layer's moments: no factorisation cache is shared between them
        values = torch.stack([self._values(m, block, {}, left_out=g) for g in range(layout.folds)])
        counts = self._state["n"].to(torch.float64).cpu().reshape(-1)
        return at_full_size(m, values, float(counts.sum()), counts.sum() - counts)

    def compute(self, measure: str | Measure = "cka") -> float | torch.Tensor:
        """``measure`` of everything seen: a float when each side has one layer, else a (L_x, L_y)
        tensor (one value per pair of an x-layer and a y-layer)."""
        matrix = self.compute_matrix(measure)
        dims = self._dims or ()
        single = self._blocks is None and len(dims) == 3 and dims[0] == 1
        return float(matrix[0, 0]) if single else matrix

    def _check_measure(self, m: Measure) -> None:
        if m.stream != "moments":
            raise InvalidParameterError(
                f"{m!r} is not computed from cross moments (it streams as {m.stream!r}); call it on the arrays, or "
                "use reprsim.compare"
            )
        if m.fourth and not self.fourth:
            raise InvalidParameterError(f"{m!r} needs the fourth-order moments: create CrossMoments(fourth=True)")
        if m.folds > 1 and m.folds != self.folds:
            raise InvalidParameterError(
                f"{m!r} cross-validates over {m.folds} folds but this accumulator keeps {self.folds}; "
                f"create CrossMoments(folds={m.folds})"
            )
