"""Row strips of n × n matrices: the blockwise machinery of the measures that need every sample.

A strip is ``rows`` consecutive rows of an n × n similarity, distance or kernel matrix, built from one matrix
product on the inputs' device and reduced before the next is built, so memory is O(rows · n), never O(n²).
This module holds the strip sizes, squared distances by strips, exact order statistics of the n(n − 1)/2
pairwise distances without holding them (for the median bandwidth), and the HSIC terms of two RBF kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from .._kernels import distances_from_products
from .._validation import check_int

__all__ = [
    "STRIP_BYTES",
    "Prepared",
    "rbf_hsic_terms",
    "row_norms",
    "sq_distance_rows",
    "strip_rows",
    "strips",
    "triangle_median",
    "upper_entries",
]

#: The default memory of one float64 strip (rows × n × 8 bytes).
STRIP_BYTES = 64 * 2**20
_BINS = 1 << 16
_COLLECT = 1 << 22  # values of one histogram bin gathered for an exact sort (32 MiB in float64)


#: The largest prepared copy of an input (n × p, centred or normalised) that is held whole; beyond it, prepared
#: rows are rebuilt from the input block by block, so the measures' memory beyond the inputs stays O(strips).
COPY_BYTES = 256 * 2**20
#: Rows of the input rebuilt at a time when the prepared copy is not held (small enough to stay in cache).
COL_BLOCK = 2048


class Prepared:
    """The rows of z = ((x − col_shift) − row_shift) / row_norm − post_shift in ``dtype``, without necessarily
    holding z.

    The strip measures multiply prepared rows: column-centred for distances (translation invariant, and
    centred rows keep ‖a‖² + ‖b‖² − 2a·b accurate when the features share a large offset); normalised (after
    row-centring, for correlations) and then column-centred for cosine and correlation distances, which are
    half the squared distances of normalised rows: with a common offset the normalised rows nearly coincide, and
    only their centred differences keep the digits (the rows are then built in float64 and rounded once, so a
    float32 strip loses nothing to the normalisation). A copy of z costs as much memory as the input; up to
    :data:`COPY_BYTES` it is held, beyond it every product rebuilds the rows it needs from ``x``, block by
    block, at the cost of a few operations per element and strip, small beside the product's multiply-adds.
    """

    def __init__(
        self,
        x: torch.Tensor,
        dtype: torch.dtype,
        *,
        col_shift: torch.Tensor | None = None,
        row_shift: torch.Tensor | None = None,
        row_norm: torch.Tensor | None = None,
        post_shift: torch.Tensor | None = None,
        hold: bool | None = None,
    ) -> None:
        self.x, self.dtype = x, dtype
        self.col_shift, self.row_shift, self.row_norm = col_shift, row_shift, row_norm
        self.post_shift = post_shift
        # rows as x·scale + offset: one fused pass over each block instead of a subtraction and a division
        self.scale = None if row_norm is None else row_norm.reciprocal()
        self.offset = None if row_shift is None else -row_shift * (self.scale if self.scale is not None else 1.0)
        n, p = x.shape
        if hold is None:
            hold = n * p * torch.empty((), dtype=dtype).element_size() <= COPY_BYTES
        self.whole = self._build(slice(0, n)) if hold else None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.x.shape[0]), int(self.x.shape[1]))

    @property
    def device(self) -> torch.device:
        return self.x.device

    def _build(self, index: slice | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Prepared rows ``index``, written into ``out`` when given (a reused buffer: rebuilding a block then
        costs no allocation), else into a fresh tensor; ``x`` itself is never written."""
        picked = self.x[index]
        if out is None:
            out = torch.empty(picked.shape, dtype=self.dtype, device=picked.device)
        if self.scale is not None or self.post_shift is not None:
            # normalised rows: computed in float64 and rounded once (see the class notes)
            wide = picked.to(torch.float64)
            if self.col_shift is not None:
                wide = wide - self.col_shift.to(torch.float64)
            if self.scale is not None:
                wide = wide * self.scale[index].unsqueeze(1).to(torch.float64)
            if self.offset is not None:
                wide = wide + self.offset[index].unsqueeze(1).to(torch.float64)
            if self.post_shift is not None:
                wide = wide - self.post_shift.to(torch.float64)
            out.copy_(wide)
            return out
        if self.col_shift is not None:
            torch.sub(picked, self.col_shift, out=out)
            picked = out
        if self.offset is not None:
            torch.add(picked, self.offset[index].unsqueeze(1), out=out)
        elif picked is not out:
            out.copy_(picked)
        return out

    def rows(self, index: slice | torch.Tensor) -> torch.Tensor:
        """Prepared rows ``index`` (a slice or an index tensor)."""
        return self.whole[index] if self.whole is not None else self._build(index)

    def products(self, rows: slice, cols: slice) -> torch.Tensor:
        """(len(rows), len(cols)): the inner products of prepared rows ``rows`` with prepared rows ``cols``."""
        a = self.rows(rows)
        if self.whole is not None:
            return a @ self.whole[cols].T
        out = torch.empty(a.shape[0], cols.stop - cols.start, dtype=self.dtype, device=a.device)
        buffer = torch.empty(COL_BLOCK, self.shape[1], dtype=self.dtype, device=a.device)
        for start in range(cols.start, cols.stop, COL_BLOCK):
            stop = min(cols.stop, start + COL_BLOCK)
            block = self._build(slice(start, stop), buffer[: stop - start])
            out[:, start - cols.start : stop - cols.start] = a @ block.T
        return out

    def blocks(self) -> Iterator[torch.Tensor]:
        """The prepared rows, :data:`COL_BLOCK` at a time."""
        n = self.shape[0]
        for s in range(0, n, COL_BLOCK):
            yield self.rows(slice(s, min(n, s + COL_BLOCK)))

    def sq_norms(self) -> torch.Tensor:
        """‖z_i‖² of every prepared row, block by block, accumulated in float64, returned in ``dtype``."""
        return torch.cat([row_norms(b, squared=True) for b in self.blocks()]).to(self.dtype)

    def column_means(self) -> torch.Tensor:
        """The mean of the prepared rows (float64), block by block."""
        total = torch.zeros(self.shape[1], dtype=torch.float64, device=self.device)
        for b in self.blocks():
            total += b.sum(dim=0, dtype=torch.float64)
        return total / max(self.shape[0], 1)


def normalised_centred(
    x: torch.Tensor, dtype: torch.dtype, name: str, *, correlation: bool = False, what: str = "cosine"
) -> Prepared:
    """Rows of ``x`` scaled to unit norm (after subtracting each row's mean, for ``correlation``), then centred
    on their mean: 1 − cos(x_i, x_j) (or 1 − Pearson r) is half the squared distance of rows i and j, computed
    from these rows without the cancellation of 1 − x̂_i·x̂_j when the rows nearly coincide."""
    from ..errors import ConstantRepresentationError

    shift = x.mean(dim=1, dtype=torch.float64) if correlation else None
    norms = Prepared(x, torch.float64, row_shift=shift, hold=False).sq_norms().sqrt_()
    zero = norms == 0
    if bool(zero.any()):
        kind = "constant across features" if correlation else "all zero"
        raise ConstantRepresentationError(
            f"{name} has {int(zero.sum())} rows that are {kind} (e.g. row {int(zero.nonzero()[0])}); their {what} "
            "distance is undefined. Drop them, or use a Euclidean geometry"
        )
    centre = Prepared(x, torch.float64, row_shift=shift, row_norm=norms, hold=False).column_means()
    return Prepared(x, dtype, row_shift=shift, row_norm=norms, post_shift=centre)


def column_centred(x: torch.Tensor, dtype: torch.dtype | None = None) -> Prepared:
    """``x`` column-centred (means accumulated in float64), for distances."""
    dtype = x.dtype if dtype is None else dtype
    return Prepared(x, dtype, col_shift=x.mean(dim=0, dtype=torch.float64).to(dtype))


def row_norms(x: torch.Tensor, *, squared: bool = False, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """‖x_i‖ (or ‖x_i‖² with ``squared``) of every row, the one row-norm helper: a strip of rows at a time in
    float64 (never a float64 copy of ``x``), returned in ``dtype``."""
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for r in strips(x.shape[0], max(1, STRIP_BYTES // (8 * max(1, x.shape[1])))):
        wide = x[r].to(torch.float64)
        out[r] = wide.square().sum(dim=1) if squared else torch.linalg.vector_norm(wide, dim=1)
    return out.to(dtype)


def strip_rows(n: int, chunk_rows: int | None) -> int:
    """Rows per strip: ``chunk_rows`` when given, else as many as fit :data:`STRIP_BYTES` in float64."""
    if chunk_rows is not None:
        return check_int(chunk_rows, "chunk_rows", minimum=1, hint="the number of rows per strip")
    return max(1, min(n, STRIP_BYTES // (8 * max(n, 1))))


def strips(n: int, rows: int) -> Iterator[slice]:
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def upper_sq_distances(xc: Prepared, sq: torch.Tensor, rows: slice) -> torch.Tensor:
    """(len(rows), n − rows.start): squared distances from the samples ``rows`` of the column-centred ``xc`` to
    the samples ``rows.start:`` (the caller keeps the strict upper triangle, j > i, with :func:`upper_entries`),
    by :func:`reprsim._kernels.distances_from_products`."""
    cols = slice(rows.start, xc.shape[0])
    return distances_from_products(xc.products(rows, cols), sq, rows, cols, xc.rows)


def sq_distance_rows(z: Prepared, sq: torch.Tensor, rows: slice) -> torch.Tensor:
    """(len(rows), n): squared distances from the samples ``rows`` of the column-centred ``z`` to every sample,
    by :func:`reprsim._kernels.distances_from_products` (built in the one product's memory)."""
    every = slice(0, z.shape[0])
    return distances_from_products(z.products(rows, every), sq, rows, every, z.rows)


def upper_entries(strip: torch.Tensor, rows: slice, first_col: int = 0) -> torch.Tensor:
    """The entries (i, j) with j > i of a strip of rows whose columns start at sample ``first_col``: the strict
    upper triangle of the strip's diagonal block, then every column right of it (one fixed order, so two
    strips of the same rows give their entries in the same order), without an n-wide mask."""
    s, e = rows.start - first_col, rows.stop - first_col
    local = torch.arange(e - s, device=strip.device)
    block = strip[:, s:e][local[None, :] > local[:, None]]
    return torch.cat([block, strip[:, e:].reshape(-1)])


def _select(
    values: Callable[[], Iterator[torch.Tensor]], ranks: Sequence[int], lo: torch.Tensor, hi: torch.Tensor
) -> list[torch.Tensor]:
    """The values of 1-based ``ranks`` among every value that ``values()`` yields (all within [lo, hi]).

    One pass histograms the values into 65,536 bins (with each bin's minimum and maximum); a second gathers the
    bins that hold the wanted ranks and sorts them. A bin too full to gather (more than 2^22 values) is
    searched again within its own minimum and maximum, and a bin whose values are all equal answers at once.
    The values are recomputed on each pass, identically, so the bins are consistent.
    """
    if not bool(hi > lo):
        return [lo for _ in ranks]
    scale = _BINS / (hi - lo)

    def bins(v: torch.Tensor) -> torch.Tensor:
        return ((v - lo) * scale).floor_().clamp_(0, _BINS - 1).long()

    device = lo.device
    counts = torch.zeros(_BINS, dtype=torch.long, device=device)
    low = torch.full((_BINS,), torch.inf, dtype=lo.dtype, device=device)
    high = torch.full((_BINS,), -torch.inf, dtype=lo.dtype, device=device)
    for v in values():
        idx = bins(v)
        counts += torch.bincount(idx, minlength=_BINS)
        low.scatter_reduce_(0, idx, v, reduce="amin")
        high.scatter_reduce_(0, idx, v, reduce="amax")
    cum = torch.cumsum(counts, 0)
    chosen = [int(torch.searchsorted(cum, torch.tensor(r, device=device))) for r in ranks]
    gather = sorted({b for b in chosen if int(counts[b]) <= _COLLECT and bool(low[b] < high[b])})
    found: dict[int, list[torch.Tensor]] = {b: [] for b in gather}
    if gather:
        wanted = torch.tensor(gather, device=device)
        for v in values():
            idx = bins(v)
            keep = torch.isin(idx, wanted)
            for g in gather:
                found[g].append(v[keep & (idx == g)])
    out = []
    for r, b in zip(ranks, chosen):
        before = int(cum[b] - counts[b])
        if not bool(low[b] < high[b]):
            out.append(low[b])
        elif b in found:
            out.append(torch.sort(torch.cat(found[b])).values[r - before - 1])
        else:

            def within(chosen_bin: int = b) -> Iterator[torch.Tensor]:
                for v in values():
                    yield v[bins(v) == chosen_bin]

            out.extend(_select(within, [r - before], low[b], high[b]))
    return out


def triangle_median(xc: Prepared, sq: torch.Tensor, rows: int) -> torch.Tensor:
    """The median of all n² squared distances (the zero diagonal included, NumPy's mean of the two middle values
    for an even count), exactly, without holding them: the convention of :func:`reprsim._kernels.median_sigma`."""
    n = xc.shape[0]
    m = n * n
    wanted = [(m + 1) // 2] if m % 2 == 1 else [m // 2, m // 2 + 1]
    ranks = [(k - n + 1) // 2 for k in wanted if k > n]  # ranks in the triangle; the others are diagonal zeros

    def values() -> Iterator[torch.Tensor]:
        for r in strips(n, rows):
            yield upper_entries(upper_sq_distances(xc, sq, r), r, first_col=r.start).to(torch.float64)

    zero = torch.zeros((), dtype=torch.float64, device=xc.device)
    top = 4.0 * sq.max().to(torch.float64) * (1.0 + 1e-6)  # ‖a − b‖² ≤ (‖a‖ + ‖b‖)² ≤ 4 max‖·‖²
    found = _select(values, ranks, zero, top) if ranks else []
    picked = [zero] * (len(wanted) - len(found)) + found
    return picked[0] if len(picked) == 1 else 0.5 * (picked[0] + picked[1])


def rbf_hsic_terms(
    xc: Prepared,
    sqx: torch.Tensor,
    yc: Prepared,
    sqy: torch.Tensor,
    gx: torch.Tensor,
    gy: torch.Tensor,
    unbiased: bool,
    rows: int,
    laplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sums HSIC needs of the RBF kernels K_ij = exp(−gx·d²_X(i, j)) and L (likewise), or with ``laplace``
    of exp(−gx·d_X(i, j)), by strips of the upper triangle (half the products and exponentials of the full
    matrices), in float64.

    Returns (ΣK∘L, ΣK∘K, ΣL∘L) over all n² entries, and the row sums K1 and L1; with ``unbiased`` the kernels'
    diagonals count as zero (K̃, L̃ of Song et al.), else as exp(0) = 1.
    """
    n = xc.shape[0]
    dev = xc.device
    f64 = torch.float64
    sums = torch.zeros(3, dtype=f64, device=dev)  # over the strict upper triangle
    rk = torch.zeros(n, dtype=f64, device=dev)
    rl = torch.zeros(n, dtype=f64, device=dev)
    for r in strips(n, rows):
        # in place, and dot products rather than elementwise temporaries: two float64 strips at a time; the
        # diagonal block's lower triangle and diagonal are zeroed (columns start at the strip's first row)
        w = r.stop - r.start
        k, l = upper_sq_distances(xc, sqx, r).to(f64), upper_sq_distances(yc, sqy, r).to(f64)
        if laplace:
            k, l = k.clamp_min_(0.0).sqrt_(), l.clamp_min_(0.0).sqrt_()
        k, l = k.mul_(-gx).exp_(), l.mul_(-gy).exp_()
        k[:, :w].triu_(1)
        l[:, :w].triu_(1)
        fk, fl = k.view(-1), l.view(-1)
        sums += torch.stack([fk @ fl, fk @ fk, fl @ fl])
        rk[r] += k.sum(dim=1)
        rk[r.start :] += k.sum(dim=0)
        rl[r] += l.sum(dim=1)
        rl[r.start :] += l.sum(dim=0)
    sums = 2.0 * sums
    if not unbiased:
        sums += n
        rk += 1.0
        rl += 1.0
    return sums, rk, rl
