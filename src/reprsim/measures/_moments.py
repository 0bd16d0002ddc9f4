"""Cross moments: the sufficient statistics every moment-based measure is an exact function of.

For a set of layers (each an (n, p_l) matrix over the same samples) and a set of *blocks* (pairs of layer
groups whose cross moments are wanted), the state holds, per fold of the samples:

- ``n`` (K,): the sample count; ``mean`` (K, P): every layer's column means, concatenated;
- ``m2.l`` (K, p_l, p_l): layer l's centred co-moment XcᵀXc (sums, not divided by n);
- ``cross.b`` (K, P_a, P_b): the centred cross co-moment of block b's two groups;
- with ``fourth=True``, the row-norm moments that unbiased linear CKA needs, with R_l = ‖x_i − μ_l‖² per row:
  ``r2`` (K, L) ΣR_l², ``ur`` (K, P) Σ(x − μ_l)R_l, and per block ``rr.b`` ΣR_aR_bᵀ, ``ua.b`` Σ(x_a − μ)R_bᵀ,
  ``ub.b`` Σ(x_b − μ)R_aᵀ.

Every statistic is centred at its own chunk's mean, and two chunks combine with the parallel update of
Chan, Golub & LeVeque (1979): shift both to the combined mean (XcᵀXc gains n·δδᵀ; the fourth-order terms
expand likewise) and add. One function, :func:`shift_state`, holds that algebra; merging, all-reduce, fold
pooling and per-batch updates all go through it, so streaming, merged and one-shot results agree to
rounding. This module is pure tensor algebra: validation and the accumulator protocol live in
:mod:`reprsim.streaming`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "Layout",
    "Moments",
    "chunk_state",
    "combine_states",
    "fold",
    "pair_moments",
    "pool_folds",
    "remove_part",
    "shift_state",
]

State = dict[str, torch.Tensor]
Block = tuple[tuple[int, ...], tuple[int, ...]]
EPS64 = float(torch.finfo(torch.float64).eps)


@dataclass(frozen=True)
class Layout:
    """Which layers (by width), which blocks of cross moments, fourth-order terms or not, how many folds."""

    widths: tuple[int, ...]
    blocks: tuple[Block, ...]
    fourth: bool = False
    folds: int = 1

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for w in self.widths:
            out.append(acc)
            acc += w
        return tuple(out)

    def cols(self, layer: int) -> slice:
        o = self.offsets[layer]
        return slice(o, o + self.widths[layer])

    def group_cols(self, group: Sequence[int]) -> torch.Tensor:
        """The columns of the concatenated layers ``group`` (a CPU index tensor, cached)."""
        return _group_cols(self, tuple(group))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        k, p = self.folds, sum(self.widths)
        s: dict[str, tuple[int, ...]] = {"n": (k,), "mean": (k, p)}
        for l, w in enumerate(self.widths):
            s[f"m2.{l}"] = (k, w, w)
        for b, (ga, gb) in enumerate(self.blocks):
            pa, pb = sum(self.widths[l] for l in ga), sum(self.widths[l] for l in gb)
            s[f"cross.{b}"] = (k, pa, pb)
            if self.fourth:
                s[f"rr.{b}"] = (k, len(ga), len(gb))
                s[f"ua.{b}"] = (k, pa, len(gb))
                s[f"ub.{b}"] = (k, pb, len(ga))
        if self.fourth:
            s["r2"] = (k, len(self.widths))
            s["ur"] = (k, p)
        return s


@functools.lru_cache(maxsize=256)
def _group_cols(layout: Layout, group: tuple[int, ...]) -> torch.Tensor:
    offsets = layout.offsets
    return torch.cat([torch.arange(offsets[l], offsets[l] + layout.widths[l]) for l in group])


def _outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def _block_diag_columns(d: torch.Tensor, layout: Layout, group: Sequence[int]) -> torch.Tensor:
    """(K, P_g, L_g): column j holds layer group[j]'s slice of ``d`` in that layer's rows, zeros elsewhere."""
    widths = [layout.widths[l] for l in group]
    out = d.new_zeros((d.shape[0], sum(widths), len(group)))
    row = 0
    for j, l in enumerate(group):
        out[:, row : row + widths[j], j] = d[:, layout.cols(l)]
        row += widths[j]
    return out


def _layer_sums(d: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(K, L): Σ over each layer's columns of a (K, P) tensor."""
    return torch.stack([d[:, layout.cols(l)].sum(dim=1) for l in range(len(layout.widths))], dim=1)


def shift_state(state: State, target: torch.Tensor, layout: Layout) -> State:
    """Re-express a state's statistics about ``target`` (K, P) instead of its own means.

    With u = x − μ (Σu = 0) and u' = u − d, d = target − μ: Σu'u'ᵀ = Σuuᵀ + n·ddᵀ, and with R = ‖u‖²,
    R' = R − 2u·d + ‖d‖², every fourth-order sum expands into sums the state already holds. The ``mean``
    entry is set to ``target`` (so the result is no longer centred: only combine it by adding).
    """
    n, d = state["n"], target - state["mean"]
    nn = n.view(-1, 1, 1)
    out: State = {"n": n, "mean": target}
    for l in range(len(layout.widths)):
        dl = d[:, layout.cols(l)]
        out[f"m2.{l}"] = state[f"m2.{l}"] + nn * _outer(dl, dl)
    group_d = {}
    for b, (ga, gb) in enumerate(layout.blocks):
        ia, ib = layout.group_cols(ga).to(d.device), layout.group_cols(gb).to(d.device)
        da, db = d[:, ia], d[:, ib]
        group_d[b] = (da, db)
        out[f"cross.{b}"] = state[f"cross.{b}"] + nn * _outer(da, db)
    if not layout.fourth:
        return out
    # fourth order: ΣR_l = tr(m2_l) and ‖d_l‖² per layer
    tr = torch.stack([state[f"m2.{l}"].diagonal(dim1=1, dim2=2).sum(dim=1) for l in range(len(layout.widths))], 1)
    dd = _layer_sums(d * d, layout)
    n1 = n.view(-1, 1)
    r2 = state["r2"].clone()
    ur = state["ur"].clone()
    for l in range(len(layout.widths)):
        c = layout.cols(l)
        dl, m2 = d[:, c], state[f"m2.{l}"]
        m2d = torch.einsum("kij,kj->ki", m2, dl)
        r2[:, l] = (
            state["r2"][:, l]
            - 4 * (dl * state["ur"][:, c]).sum(1)
            + 4 * (dl * m2d).sum(1)
            + 2 * dd[:, l] * tr[:, l]
            + n * dd[:, l] ** 2
        )
        ur[:, c] = state["ur"][:, c] - 2 * m2d - dl * tr[:, l : l + 1] - n1 * dd[:, l : l + 1] * dl
    out["r2"], out["ur"] = r2, ur
    for b, (ga, gb) in enumerate(layout.blocks):
        da, db = group_d[b]
        ga_t, gb_t = torch.tensor(ga, device=d.device), torch.tensor(gb, device=d.device)
        dda, ddb, tra, trb = dd[:, ga_t], dd[:, gb_t], tr[:, ga_t], tr[:, gb_t]
        cross, ua, ub = state[f"cross.{b}"], state[f"ua.{b}"], state[f"ub.{b}"]
        bda, bdb = _block_diag_columns(d, layout, ga), _block_diag_columns(d, layout, gb)  # (K,Pa,La), (K,Pb,Lb)
        cross_db = cross @ bdb  # (K, Pa, Lb): column j is M_{a, b_j} d_{b_j}
        crossT_da = cross.transpose(1, 2) @ bda  # (K, Pb, La)
        out[f"rr.{b}"] = (
            state[f"rr.{b}"]
            - 2 * (ub.transpose(1, 2) @ bdb)
            - 2 * (bda.transpose(1, 2) @ ua)
            + 4 * (bda.transpose(1, 2) @ cross_db)
            + _outer(tra, ddb)
            + _outer(dda, trb)
            + nn * _outer(dda, ddb)
        )
        out[f"ua.{b}"] = ua - 2 * cross_db - _outer(da, trb) - nn * _outer(da, ddb)
        out[f"ub.{b}"] = ub - 2 * crossT_da - _outer(db, tra) - nn * _outer(db, dda)
    return out


def combine_states(a: State, b: State, layout: Layout) -> State:
    """The state of two disjoint chunks together, fold by fold (Chan et al.'s parallel update)."""
    n = a["n"] + b["n"]
    w = torch.where(n > 0, n, torch.ones_like(n)).unsqueeze(1)
    mean = (a["n"].unsqueeze(1) * a["mean"] + b["n"].unsqueeze(1) * b["mean"]) / w
    sa, sb = shift_state(a, mean, layout), shift_state(b, mean, layout)
    out = {k: sa[k] + sb[k] for k in sa if k not in ("n", "mean")}
    out["n"], out["mean"] = n, mean
    return out


def _second_order_items(layout: Layout) -> list[tuple[str, Any, Any]]:
    """Each second-order statistic's name with its row and column indices into the concatenated means."""
    items: list[tuple[str, Any, Any]] = [(f"m2.{l}", layout.cols(l), layout.cols(l)) for l in range(len(layout.widths))]
    items += [(f"cross.{b}", layout.group_cols(ga), layout.group_cols(gb)) for b, (ga, gb) in enumerate(layout.blocks)]
    return items


def remove_part(total: State, part: State, layout: Layout) -> State:
    """The one-fold state of a total without one of its disjoint parts (both one-fold states): both re-expressed
    about the rest's mean, where the rest's sums are the total's minus the part's (the parallel update run
    backwards). A jackknife's leave-one-block-out states cost one such step each instead of pooling every other
    block again."""
    n = total["n"] - part["n"]
    safe = torch.where(n > 0, n, torch.ones_like(n)).unsqueeze(1)
    mean = (total["n"].unsqueeze(1) * total["mean"] - part["n"].unsqueeze(1) * part["mean"]) / safe
    if not layout.fourth:
        # second order: M_total = M_rest + M_part + (n_rest·n_part / n_total)·(μ_rest − μ_part)(…)ᵀ, so the rest
        # costs one subtraction and one rank-one term per statistic, without re-expressing both states
        d = mean - part["mean"]
        scaled = d * (n * part["n"] / torch.where(total["n"] > 0, total["n"], 1.0)).unsqueeze(1)
        out: State = {"n": n, "mean": mean}
        device = d.device
        for key, rows, cols in _second_order_items(layout):
            rows = rows if isinstance(rows, slice) else rows.to(device)
            cols = cols if isinstance(cols, slice) else cols.to(device)
            out[key] = total[key] - part[key] - _outer(scaled[:, rows], d[:, cols])
        return out
    st, sp = shift_state(total, mean, layout), shift_state(part, mean, layout)
    out = {k: st[k] - sp[k] for k in st if k not in ("n", "mean")}
    out["n"], out["mean"] = n, mean
    return out


def fold(state: State, k: int) -> State:
    """Fold ``k`` of a state, as a one-fold state."""
    return {key: value[k : k + 1] for key, value in state.items()}


def pool_folds(state: State, layout: Layout, keep: torch.Tensor | None = None) -> State:
    """One fold holding the folds selected by the boolean (K,) mask ``keep`` (all by default)."""
    everything = keep is None
    if keep is None:
        keep = torch.ones_like(state["n"], dtype=torch.bool)
    n = torch.where(keep, state["n"], torch.zeros_like(state["n"]))
    total = n.sum()
    mean = (n.unsqueeze(1) * state["mean"]).sum(0, keepdim=True) / torch.where(total > 0, total, 1.0)
    if not layout.fourth:
        # second order: Σ_k M_k + Σ_k n_k (μ_k − μ)(μ_k − μ)ᵀ, the second sum one (P, K) × (K, P) product, with
        # no K-sized temporaries
        d = state["mean"] - mean  # (K, P)
        weighted = d * n.unsqueeze(1)
        pooled: State = {"n": total.reshape(1), "mean": mean}
        for key, rows, cols in _second_order_items(layout):
            rows = rows if isinstance(rows, slice) else rows.to(d.device)
            cols = cols if isinstance(cols, slice) else cols.to(d.device)
            mask = keep.view(-1, 1, 1).to(state[key].dtype)
            kept = state[key].sum(0) if everything else (state[key] * mask).sum(0)
            pooled[key] = (kept + weighted[:, rows].T @ d[:, cols]).unsqueeze(0)
        return pooled
    shifted = shift_state(state, mean.expand_as(state["mean"]), layout)
    out: State = {}
    for k, v in shifted.items():
        if k in ("n", "mean"):
            continue
        mask = keep.view(-1, *([1] * (v.ndim - 1))).to(v.dtype)
        out[k] = (v * mask).sum(0, keepdim=True)
    out["n"], out["mean"] = total.reshape(1), mean
    return out


def chunk_state(layers: Sequence[torch.Tensor], layout: Layout, fold_of_rows: torch.Tensor | None = None) -> State:
    """The state of one chunk of rows: ``layers`` are (b, p_l) tensors in the state dtype.

    ``fold_of_rows`` (b,) assigns each row to a fold in ``range(layout.folds)``; every fold's statistics are
    centred at that fold's own mean. Folds without rows get zeros.
    """
    k = layout.folds
    if k == 1 or fold_of_rows is None:
        return _one_fold(layers, layout)
    # only the folds the chunk has rows in are computed (a chunk of b rows touches at most b of them); the others
    # stay zero
    present = torch.unique(fold_of_rows).tolist()
    one = Layout(layout.widths, layout.blocks, layout.fourth, 1)
    ref = layers[0]
    out = {key: ref.new_zeros((k, *shape[1:])) for key, shape in one.shapes().items()}
    for f in present:
        rows = (fold_of_rows == f).nonzero().flatten()
        part = _one_fold([x.index_select(0, rows) for x in layers], layout)
        for key, value in part.items():
            out[key][f] = value[0]
    return out


def _one_fold(layers: Sequence[torch.Tensor], layout: Layout) -> State:
    ref = layers[0]
    b = ref.shape[0]
    out: State = {"n": torch.full((1,), float(b), dtype=ref.dtype, device=ref.device)}
    if b == 0:
        one = Layout(layout.widths, layout.blocks, layout.fourth, 1)
        out.update({k: ref.new_zeros(s) for k, s in one.shapes().items() if k != "n"})
        return out
    means = [x.mean(dim=0) for x in layers]
    centred = [x - m for x, m in zip(layers, means)]
    out["mean"] = torch.cat(means).unsqueeze(0)
    for l, u in enumerate(centred):
        out[f"m2.{l}"] = (u.T @ u).unsqueeze(0)
    rows = torch.stack([(u * u).sum(dim=1) for u in centred], dim=1) if layout.fourth else None  # (b, L)
    for bi, (ga, gb) in enumerate(layout.blocks):
        ua = centred[ga[0]] if len(ga) == 1 else torch.cat([centred[l] for l in ga], dim=1)
        ub = centred[gb[0]] if len(gb) == 1 else torch.cat([centred[l] for l in gb], dim=1)
        out[f"cross.{bi}"] = (ua.T @ ub).unsqueeze(0)
        if rows is not None:
            ra, rb = rows[:, list(ga)], rows[:, list(gb)]
            out[f"rr.{bi}"] = (ra.T @ rb).unsqueeze(0)
            out[f"ua.{bi}"] = (ua.T @ rb).unsqueeze(0)
            out[f"ub.{bi}"] = (ub.T @ ra).unsqueeze(0)
    if rows is not None:
        out["r2"] = (rows * rows).sum(dim=0).unsqueeze(0)
        out["ur"] = torch.cat([u.T @ rows[:, l] for l, u in enumerate(centred)]).unsqueeze(0)
    return out


@dataclass
class Fourth:
    """Row-norm moments of a pair about its means (a = ‖x − μx‖², b = ‖y − μy‖² per sample)."""

    aa: torch.Tensor  # Σa²
    bb: torch.Tensor  # Σb²
    ab: torch.Tensor  # Σab
    xa: torch.Tensor  # Σ(x − μx)a, (p,)
    yb: torch.Tensor  # Σ(y − μy)b, (q,)
    xb: torch.Tensor  # Σ(x − μx)b, (p,)
    ya: torch.Tensor  # Σ(y − μy)a, (q,)


@dataclass
class Moments:
    """The centred moments of one pair of representations, X (n, p) and Y (n, q).

    ``cxx = XcᵀXc``, ``cyy = YcᵀYc``, ``cxy = XcᵀYc`` are sums (not divided by n or n − 1), in float64 or
    the state dtype. ``folds`` holds each fold's own moments when the stream kept folds (for
    cross-validated measures); ``cache_x``/``cache_y`` are per-layer scratch dicts that a measure may fill
    (e.g. with an eigendecomposition) so that a layer compared with many others is factorised once.
    """

    n: int
    mean_x: torch.Tensor
    mean_y: torch.Tensor
    cxx: torch.Tensor
    cyy: torch.Tensor
    cxy: torch.Tensor
    fourth: Fourth | None = None
    folds: tuple[Moments, ...] = ()
    cache_x: dict[Any, Any] = field(default_factory=dict)
    cache_y: dict[Any, Any] = field(default_factory=dict)
    #: The machine epsilon of the coarsest dtype the data came in (float32 activations summed in float64 carry
    #: float32's rounding): it sets when a representation counts as constant and which eigenvalues count as 0.
    eps: float = EPS64

    def about(self, mean_x: torch.Tensor, mean_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cxx, cyy, cxy) taken about other means (e.g. a training split's): Σ(x − m)(y − m')ᵀ."""
        d, e = self.mean_x - mean_x, self.mean_y - mean_y
        return self.cxx + self.n * _outer(d, d), self.cyy + self.n * _outer(e, e), self.cxy + self.n * _outer(d, e)

    def swapped(self) -> Moments:
        """The moments of (Y, X)."""
        f = self.fourth
        g = None if f is None else Fourth(f.bb, f.aa, f.ab, f.yb, f.xa, f.ya, f.xb)
        return Moments(
            self.n,
            self.mean_y,
            self.mean_x,
            self.cyy,
            self.cxx,
            self.cxy.T,
            g,
            tuple(m.swapped() for m in self.folds),
            self.cache_y,
            self.cache_x,
            self.eps,
        )


def pool_moments(parts: Sequence[Moments]) -> Moments:
    """Second-order moments of several disjoint chunks together (e.g. the training folds)."""
    n = sum(m.n for m in parts)
    mx = torch.stack([m.n * m.mean_x for m in parts]).sum(0) / n
    my = torch.stack([m.n * m.mean_y for m in parts]).sum(0) / n
    cxx, cyy, cxy = (torch.zeros_like(t) for t in (parts[0].cxx, parts[0].cyy, parts[0].cxy))
    for m in parts:
        a, b, c = m.about(mx, my)
        cxx, cyy, cxy = cxx + a, cyy + b, cxy + c
    return Moments(n, mx, my, cxx, cyy, cxy, eps=max(m.eps for m in parts))


def pair_moments(
    state: State,
    layout: Layout,
    block: int,
    i: int,
    j: int,
    fold: int = 0,
    caches: dict[int, dict[Any, Any]] | None = None,
) -> Moments:
    """Moments of group a's i-th layer against group b's j-th layer of ``block``, for one fold of ``state``."""
    ga, gb = layout.blocks[block]
    lx, ly = ga[i], gb[j]
    ra = sum(layout.widths[l] for l in ga[:i])
    rb = sum(layout.widths[l] for l in gb[:j])
    px, py = layout.widths[lx], layout.widths[ly]
    k = fold
    fourth = None
    if layout.fourth:
        cx, cy = layout.cols(lx), layout.cols(ly)
        fourth = Fourth(
            aa=state["r2"][k, lx],
            bb=state["r2"][k, ly],
            ab=state[f"rr.{block}"][k, i, j],
            xa=state["ur"][k, cx],
            yb=state["ur"][k, cy],
            xb=state[f"ua.{block}"][k, ra : ra + px, j],
            ya=state[f"ub.{block}"][k, rb : rb + py, i],
        )
    caches = caches if caches is not None else {}
    return Moments(
        n=round(float(state["n"][k])),
        mean_x=state["mean"][k, layout.cols(lx)],
        mean_y=state["mean"][k, layout.cols(ly)],
        cxx=state[f"m2.{lx}"][k],
        cyy=state[f"m2.{ly}"][k],
        cxy=state[f"cross.{block}"][k, ra : ra + px, rb : rb + py],
        fourth=fourth,
        cache_x=caches.setdefault(lx, {}),
        cache_y=caches.setdefault(ly, {}),
        eps=float(state["eps"].max()) if "eps" in state else EPS64,
    )
