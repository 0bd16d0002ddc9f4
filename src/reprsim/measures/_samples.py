"""Measures that need every sample, computed blockwise: nearest-neighbour alignment (:func:`mutual_knn`,
:func:`cknna`, :func:`jaccard_knn`, :func:`second_order_cosine`, :func:`rank_similarity`), distance correlation
(:func:`distance_correlation`) and representational similarity analysis (:func:`rsa`).

None of them reduces to covariance statistics: they compare which samples sit near which. Each is computed in
row strips of the n × n similarity or distance matrix, so memory is O(chunk_rows · n), never O(n²):
``chunk_rows`` rows at a time (by default as many as fit a budget of about 64 MiB per n × chunk_rows float64
strip). The strips run on the inputs' device at the matrix-multiply rate.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Literal

import torch

from .._precision import full_precision_matmul
from .._pyplot import pyplot
from .._validation import check_bool, check_int, format_bytes
from ..errors import (
    ConstantRepresentationError,
    InsufficientSamplesError,
    InvalidParameterError,
    MemoryBudgetError,
    ReprsimWarning,
)
from ._base import Cache, Measure, NoTraceForm, as_result, cached, evaluate, measure_pair, refuse_renamed, register
from ._cka import inner, unbiased_hsic_from_terms
from ._linalg import check_variance
from ._moments import Moments
from ._strips import (
    STRIP_BYTES,
    Prepared,
    column_centred,
    normalised_centred,
    row_norms,
    sq_distance_rows,
    strip_rows,
    strips,
    upper_entries,
)
from ._traces import DENSE_NULL_MAX, TraceSide, dense_side

__all__ = [
    "CKNNA",
    "LCSKNN",
    "RSA",
    "CycleKNN",
    "DistanceCorrelation",
    "EditDistanceKNN",
    "JaccardKNN",
    "MutualKNN",
    "RankSimilarity",
    "SecondOrderCosine",
    "cknna",
    "distance_correlation",
    "jaccard_knn",
    "mutual_knn",
    "plot_rdm",
    "rank_similarity",
    "rdm",
    "rsa",
    "second_order_cosine",
]

Neighbours = Literal["cosine", "inner_product", "euclidean"]
NEIGHBOURS = ("cosine", "inner_product", "euclidean")
#: The neighbour rule as an ID writes it: the cosine, every scheme code's default, is left unsaid.
_SUFFIX = {"cosine": "", "inner_product": "-neighbours=inner_product", "euclidean": "-neighbours=euclidean"}


# -- nearest neighbours ----------------------------------------------------------------------------------


#: Similarities within this many float64 epsilons (times the width and the rows' squared norms) of each other
#: count as tied: the rounding of a float64 product is below it, and the gaps between distinct distances of
#: quantised data (integers, 8-bit levels) far above it, so the same samples tie in x and in 3x.
TIE_EPS = 4.0


class _Geometry:
    """What ranks one representation's neighbours: float64 prepared rows z, and per row i the similarity of
    every sample j as a product (the larger, the nearer) with the tolerance within which two are tied.

    ``euclidean``: z the centred rows, similarity 2z_i·z_j − ‖z_j‖² (−‖z_i − z_j‖² up to a per-row constant);
    ``cosine``: the same on the rows scaled to unit norm and centred (:func:`normalised_centred`: 1 − cos is
    half their squared distance, without the cancellation of 1 − x̂_i·x̂_j for nearly parallel rows);
    ``inner_product``: z the rows themselves, similarity z_i·z_j. Float64 throughout: products of float32 data
    are then exact but for the sums' rounding, so exact ties (quantised data) stay ties.
    """

    def __init__(self, x: torch.Tensor, neighbours: str, name: str) -> None:
        f64 = torch.float64
        if neighbours == "cosine":
            self.z = normalised_centred(x, f64, name)
        elif neighbours == "euclidean":
            self.z = column_centred(x, f64)
        else:
            self.z = Prepared(x, f64)
        norms = self.z.sq_norms()
        self.sq = None if neighbours == "inner_product" else norms
        width = TIE_EPS * x.shape[1] * torch.finfo(f64).eps
        top = norms.max()
        # the rounding of 2z_i·z_j − ‖z_j‖² is below width·(‖z_i‖² + ‖z_j‖²); of z_i·z_j below width·‖z_i‖‖z_j‖
        self.tol = width * (2.0 * (norms + top) if self.sq is not None else (norms * top).sqrt())

    def similarities(self, rows: slice) -> torch.Tensor:
        sim = self.z.products(rows, slice(0, self.z.shape[0]))
        if self.sq is not None:
            sim.mul_(2.0).sub_(self.sq[None, :])
        return sim


def _neighbour_mask(g: _Geometry, rows: slice, k: int, include_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(rows), n) boolean: the k nearest neighbours of each row among the others (self excluded unless
    ``include_self``), with the strip of similarities that ranked them.

    The tie rule: similarities within the row's tolerance of the k-th largest count as tied with it, and ties
    are broken towards the lower sample index. Exact ties (duplicates, quantised data) are then broken the same
    way in x and in any transformation of x the measure is invariant to, whatever the products' rounding.
    """
    sim = g.similarities(rows)
    if not include_self:
        local = torch.arange(rows.stop - rows.start, device=sim.device)
        sim[local, local + rows.start] = -torch.inf
    tol = g.tol[rows].unsqueeze(1)
    kth = torch.topk(sim, k, dim=1).values[:, -1:]
    above = sim > kth + tol
    tied = (sim >= kth - tol) & ~above
    need = k - above.sum(dim=1, keepdim=True)
    return above | (tied & (torch.cumsum(tied, dim=1) <= need)), sim


def _ranked(idx: torch.Tensor, values: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """``idx`` (rows, k) reordered by ``values`` (descending) with the tie rule of :func:`_neighbour_mask`:
    values that differ from their neighbour in the sorted order by at most the row's ``tol`` form one group,
    and a group is ordered by sample index."""
    order = torch.argsort(-values, dim=1, stable=True)
    v, i = values.gather(1, order), idx.gather(1, order)
    new_group = torch.ones_like(v, dtype=torch.long)
    new_group[:, 1:] = (v[:, :-1] - v[:, 1:] > tol.unsqueeze(1)).long()
    group = torch.cumsum(new_group, dim=1)
    key = group * (int(idx.max()) + 1 if idx.numel() else 1) + i
    return i.gather(1, torch.argsort(key, dim=1))


@full_precision_matmul
def _neighbour_indices(
    x: torch.Tensor, k: int, neighbours: str, chunk_rows: int | None, name: str, include_self: bool = False
) -> torch.Tensor:
    """(n, k): each sample's k nearest neighbours, nearest first (the tie rule of :func:`_neighbour_mask`),
    strip by strip."""
    n = x.shape[0]
    g = _Geometry(x, neighbours, name)
    out = torch.empty((n, k), dtype=torch.long, device=x.device)
    for rows in strips(n, strip_rows(n, chunk_rows)):
        mask, sim = _neighbour_mask(g, rows, k, include_self)
        # every row of the mask holds exactly k neighbours, so its nonzero columns reshape to (rows, k)
        idx = mask.nonzero()[:, 1].reshape(-1, k)
        out[rows] = _ranked(idx, sim.gather(1, idx), g.tol[rows])
    return out


def _check_k(k: Any, n: int | None = None, include_self: bool = False) -> int:
    """k as an int ≥ 1 (NumPy integers accepted); with ``n``, enough samples for k neighbours."""
    count = check_int(k, "k", minimum=1, hint="the number of neighbours per sample, e.g. k=10")
    if n is None:
        return count
    if include_self and count > n:
        raise InsufficientSamplesError(f"k = {count} neighbours (self included) need at least {count} samples; got {n}")
    if not include_self and count > n - 1:
        raise InsufficientSamplesError(
            f"k = {count} neighbours need at least k + 1 = {count + 1} samples (a sample is not its own neighbour); "
            f"got {n}"
        )
    return count


def _dense_null(n: int, what: str) -> None:
    if n > DENSE_NULL_MAX:
        raise NoTraceForm(
            f"the exact null of {what} holds n × n matrices and their cube; n = {n} is beyond {DENSE_NULL_MAX}"
        )


def _check_chunk_rows(chunk_rows: Any) -> None:
    if chunk_rows is not None:
        strip_rows(1, chunk_rows)  # validates it


def _neighbour_sets(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    neighbours: str,
    chunk_rows: int | None,
    cache_x: Cache,
    cache_y: Cache,
    include_self: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides' ranked (n, k) neighbour indices, each computed once per cache (in ``compare``, once per
    layer however many layers it is compared with)."""
    _check_k(k, x.shape[0], include_self)
    if neighbours not in NEIGHBOURS:
        raise InvalidParameterError(f"neighbours must be one of {NEIGHBOURS}; got {neighbours!r}")
    key = ("neighbours", k, neighbours, include_self)
    ix = cached(cache_x, key, lambda: _neighbour_indices(x, k, neighbours, chunk_rows, "x", include_self))
    iy = cached(cache_y, key, lambda: _neighbour_indices(y, k, neighbours, chunk_rows, "y", include_self))
    return ix, iy


def _overlaps(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    neighbours: str,
    chunk_rows: int | None,
    cache_x: Cache = None,
    cache_y: Cache = None,
) -> torch.Tensor:
    """|N_k^X(i) ∩ N_k^Y(i)| for every sample i (float64, on the inputs' device)."""
    sets = _neighbour_sets(x, y, k, neighbours, chunk_rows, cache_x, cache_y)
    # each set holds k distinct indices, so a shared neighbour is a pair of equal neighbours after sorting
    merged = torch.sort(torch.cat(sets, dim=1), dim=1).values
    return (merged[:, 1:] == merged[:, :-1]).sum(dim=1).to(torch.float64)


class MutualKNN(Measure):
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024): the mean over samples of |N_k^X(i) ∩ N_k^Y(i)| / k.

    Parameters
    ----------
    k : int, default 10
        Neighbours per sample (self excluded; needs n ≥ k + 1).
    neighbours : {"cosine", "inner_product", "euclidean"}, default "cosine"
        What ranks neighbours. The platonic-rep code L2-normalises features, which makes its inner product the
        cosine; ``"inner_product"`` ranks by raw inner products, ``"euclidean"`` by distance (deep-reps'
        convention). No other pre-processing is applied.
    chunk_rows : int, optional
        Rows per strip of the n × n similarity matrix (memory O(chunk_rows · n)); by default a 64 MiB strip.

    Notes
    -----
    Ties in similarity are broken towards the lower sample index, so duplicated samples give well-defined sets.
    """

    name = "mutual_knn"
    #: The family's name in the similarity-repository scheme.
    scheme: ClassVar[str] = "mutual_knn"
    differentiable = False
    stream = "samples"
    symmetric = True

    def __init__(
        self, k: int = 10, neighbours: Neighbours = "cosine", chunk_rows: int | None = None, **removed: Any
    ) -> None:
        refuse_renamed(type(self).__name__, removed)
        k = _check_k(k)
        _check_chunk_rows(chunk_rows)
        if neighbours not in NEIGHBOURS:
            raise InvalidParameterError(f"neighbours must be one of {NEIGHBOURS}; got {neighbours!r}")
        self.k, self.neighbours, self.chunk_rows = k, neighbours, chunk_rows
        self.min_samples = 2  # n ≥ k + 1 is checked with its own message
        inv = {"orthogonal", "permutation", "isotropic_scaling"}
        if neighbours == "euclidean":
            inv.add("translation")
        self.invariances = frozenset(inv)

    @property
    def id(self) -> str:
        return f"{self.scheme}-topk={self.k}" + _SUFFIX[self.neighbours]

    @property
    def label(self) -> str:
        return f"mutual {self.k}-NN alignment"

    def config(self) -> dict[str, Any]:
        return {"k": self.k, "neighbours": self.neighbours}

    def from_samples(
        self, x: torch.Tensor, y: torch.Tensor, cache_x: Cache = None, cache_y: Cache = None
    ) -> torch.Tensor:
        return self._summary(_overlaps(x, y, self.k, self.neighbours, self.chunk_rows, cache_x, cache_y))

    def _summary(self, shared: torch.Tensor) -> torch.Tensor:
        """The score from each sample's count of shared neighbours."""
        return shared.mean() / self.k


class JaccardKNN(MutualKNN):
    """k-NN Jaccard similarity (ReSi, Klabunde et al.): the mean over samples of |∩| / |∪| of the two
    k-nearest-neighbour sets, i.e. |∩| / (2k − |∩|). Cosine neighbours and k = 10 by default, as the ReSi code."""

    name = "jaccard_knn"
    scheme = "jaccard_similarity"

    @property
    def label(self) -> str:
        return f"{self.k}-NN Jaccard similarity"

    def _summary(self, shared: torch.Tensor) -> torch.Tensor:
        return (shared / (2 * self.k - shared)).mean()


def _gathered_values(
    z: torch.Tensor,
    idx: torch.Tensor,
    how: Literal["dot", "halfsq"],
    chunk_rows: int | None,
    norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, m) float64: z_i·z_j (``"dot"``) or ‖z_i − z_j‖²/2 (``"halfsq"``, from differences: exactly 0 between
    equal rows) for every sample i and each of its m listed samples j = idx[i], in strips of rows. With
    ``norms``, each row is first divided by its norm (the cosine geometry without a normalised copy of z)."""
    n, m = idx.shape
    out = torch.empty((n, m), dtype=torch.float64, device=z.device)
    budget = max(1, STRIP_BYTES // (8 * max(1, m * z.shape[1])))
    rows_per = budget if chunk_rows is None else min(chunk_rows, budget)
    for r in strips(n, rows_per):
        other = z[idx[r]].to(torch.float64)  # (rows, m, p)
        mine = z[r].to(torch.float64).unsqueeze(1)
        if norms is not None:
            other = other / norms[idx[r]].unsqueeze(-1)
            mine = mine / norms[r].view(-1, 1, 1)
        if how == "dot":
            out[r] = (other * mine).sum(-1)
        else:
            out[r] = ((other - mine) ** 2).sum(-1) / 2.0
    return out


def _member(idx: torch.Tensor, of: torch.Tensor) -> torch.Tensor:
    """(n, k) boolean: whether idx[i, a] is among of[i, :]."""
    return (idx.unsqueeze(2) == of.unsqueeze(1)).any(dim=2)


def _sparse_hsic(idx: torch.Tensor, p: torch.Tensor, q: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """HSIC of two n × n matrices P and Q that are zero except at (i, idx[i, a]), where they hold p[i, a] and
    q[i, a] (neither need be symmetric): the biased tr(PHQH) or the unbiased estimator of Song et al. (2012),
    as the platonic-rep code computes them from dense matrices, in O(n·k)."""
    n, k = idx.shape
    rows = torch.arange(n, device=idx.device).repeat_interleave(k)
    cols = idx.reshape(-1)
    pv, qv = p.reshape(-1), q.reshape(-1)
    # tr(PQ) = Σ P_ij Q_ji: look each entry's transpose up among the sorted keys i·n + j
    keys = rows * n + cols
    order = torch.argsort(keys)
    sorted_keys = keys[order]
    want = cols * n + rows
    pos = torch.searchsorted(sorted_keys, want).clamp_(max=keys.numel() - 1)
    found = sorted_keys[pos] == want
    t1 = (pv * torch.where(found, qv[order][pos], torch.zeros_like(qv))).sum()
    row_p, row_q = p.sum(dim=1), q.sum(dim=1)
    col_p = torch.zeros(n, dtype=p.dtype, device=p.device).index_add_(0, cols, pv)
    col_q = torch.zeros(n, dtype=q.dtype, device=q.device).index_add_(0, cols, qv)
    sp, sq = row_p.sum(), row_q.sum()
    if unbiased:  # the masks exclude self, so P and Q have zero diagonals, as Song et al.'s estimator needs
        return unbiased_hsic_from_terms(t1, sp, sq, col_p @ row_q, n)
    return t1 - (row_p @ col_q + col_p @ row_q) / n + sp * sq / n**2


class CKNNA(Measure):
    """Centered kernel nearest-neighbour alignment (Huh et al. 2024): CKA of the two kernels restricted to
    the pairs that are k-nearest neighbours in both representations.

    With K and L the kernels and M_X, M_Y the k-NN masks (row i marks i's k nearest neighbours by the same
    kernel), CKNNA = HSIC(M∘K, M∘L) / sqrt(HSIC(M_X∘K, M_X∘K) · HSIC(M_Y∘L, M_Y∘L)), M = M_X∘M_Y, as the
    platonic-rep code defines it. The masked kernels have k entries per row, so the whole computation after the
    neighbour search is O(n·k).

    Parameters
    ----------
    k : int, default 10
        Neighbours per sample.
    neighbours : {"cosine", "inner_product"}, default "cosine"
        The similarity that ranks the neighbours, as in the other k-NN measures, and here also the kernel:
        K = XXᵀ of the L2-normalised rows (the platonic-rep pipeline normalises features first) or of the raw
        rows. Euclidean neighbours define no kernel and are refused. No other pre-processing (platonic-rep's
        optional outlier clipping) is applied.
    unbiased : bool, default True
        True (platonic-rep's default): self excluded from the neighbours, Song et al.'s unbiased HSIC (n ≥ 4).
        False: a sample may be its own neighbour, biased HSIC tr(KHLH).
    chunk_rows : int, optional
        Rows per strip of the n × n kernel (memory O(chunk_rows · n)).

    Notes
    -----
    platonic-rep adds 1e-6 to the denominator; reprsim does not, so its value is the ratio itself (they differ
    noticeably when the HSIC terms are small, e.g. for normalised features and small k). A masked kernel's HSIC
    with itself can be ≤ 0 (degenerate neighbourhoods); CKNNA is then undefined and an error says so. The
    value is usually in [−1, 1] but, unlike CKA, is not bounded by Cauchy–Schwarz (the masks in the numerator
    and denominator differ). The masked kernels are not symmetric (i may be j's neighbour but not the reverse),
    and the unbiased estimator's 1ᵀK̃L̃1 term then depends on the order: unbiased CKNNA(X, Y) ≠ CKNNA(Y, X) in
    general (the biased one is symmetric).
    """

    name = "cknna"
    differentiable = False
    stream = "samples"
    range = (-1.0, 1.0)
    invariances = frozenset({"orthogonal", "isotropic_scaling", "permutation"})

    def __init__(
        self,
        k: int = 10,
        neighbours: Neighbours = "cosine",
        unbiased: bool = True,
        chunk_rows: int | None = None,
        **removed: Any,
    ) -> None:
        refuse_renamed(type(self).__name__, removed)
        k = _check_k(k)
        _check_chunk_rows(chunk_rows)
        unbiased = check_bool(unbiased, "unbiased")
        if neighbours not in ("cosine", "inner_product"):
            raise InvalidParameterError(
                f"CKNNA's neighbours must be 'cosine' or 'inner_product' (the similarity is also its kernel; "
                f"Euclidean distances define none); got {neighbours!r}"
            )
        self.k, self.neighbours, self.unbiased, self.chunk_rows = k, neighbours, bool(unbiased), chunk_rows
        self.min_samples = 4 if self.unbiased else 2
        # the unbiased HSIC's 1ᵀK̃L̃1 term differs from 1ᵀL̃K̃1 for the masked kernels, which are not symmetric
        self.symmetric = not self.unbiased

    @property
    def id(self) -> str:
        return f"cknna-topk={self.k}" + _SUFFIX[self.neighbours] + ("" if self.unbiased else "-hsic=gretton")

    @property
    def label(self) -> str:
        return f"CKNNA (k = {self.k})"

    def config(self) -> dict[str, Any]:
        return {"k": self.k, "neighbours": self.neighbours, "unbiased": self.unbiased}

    @full_precision_matmul
    def from_samples(
        self, x: torch.Tensor, y: torch.Tensor, cache_x: Cache = None, cache_y: Cache = None
    ) -> torch.Tensor:
        own = not self.unbiased
        ix, iy = _neighbour_sets(x, y, self.k, self.neighbours, self.chunk_rows, cache_x, cache_y, include_self=own)
        # kernel values at the neighbours, from the raw rows (and their norms, for the cosine): no n × p copy
        nx = cached(cache_x, ("norms",), lambda: row_norms(x)) if self.neighbours == "cosine" else None
        ny = cached(cache_y, ("norms",), lambda: row_norms(y)) if self.neighbours == "cosine" else None
        key = ("kernel_at_neighbours", self.k, self.neighbours, own)
        kx = cached(cache_x, key, lambda: _gathered_values(x, ix, "dot", self.chunk_rows, nx))
        ly = cached(cache_y, key, lambda: _gathered_values(y, iy, "dot", self.chunk_rows, ny))
        both = _member(ix, iy).to(torch.float64)
        kl = _sparse_hsic(ix, kx * both, _gathered_values(y, ix, "dot", self.chunk_rows, ny) * both, self.unbiased)
        kk = cached(cache_x, ("self_hsic", *key), lambda: _sparse_hsic(ix, kx, kx, self.unbiased))
        ll = cached(cache_y, ("self_hsic", *key), lambda: _sparse_hsic(iy, ly, ly, self.unbiased))
        for side, v in (("x", kk), ("y", ll)):
            if not bool(v > 0):
                raise ConstantRepresentationError(
                    f"the HSIC of {side}'s k-NN-restricted kernel with itself is {float(v):.3g} ≤ 0, so CKNNA is "
                    "undefined (a degenerate neighbourhood structure, e.g. a constant representation); try a "
                    "larger k"
                )
        result: torch.Tensor = kl / (kk * ll).sqrt()
        return result


class SecondOrderCosine(Measure):
    """Second-order cosine similarity (Hamilton et al. 2016), as the ReSi benchmark code defines it.

    For each sample i, U_i = N_k^X(i) ∪ N_k^Y(i) (cosine neighbours, self excluded); the score is the mean over
    samples of the cosine similarity between the vectors (d_X(i, j))_{j ∈ U_i} and (d_Y(i, j))_{j ∈ U_i} of
    cosine *distances* d = 1 − cos (ReSi's code uses distances where Hamilton et al. use similarities).

    Parameters
    ----------
    k : int, default 10
        Neighbours per sample (needs n ≥ k + 1).
    chunk_rows : int, optional
        Rows per strip of the n × n similarity matrix.

    Notes
    -----
    A sample whose union neighbours all sit at cosine distance 0 from it in one representation (exact
    duplicates in direction) has a zero distance vector, whose cosine is undefined: it contributes 0 and a
    warning gives the count (the ReSi code returns NaN for the whole measure then: scipy's cosine of a zero
    vector is NaN). Cosine distances are computed as ‖ẑ_i − ẑ_j‖²/2 from the
    differences of normalised rows, so duplicates are exactly 0 apart.
    """

    name = "second_order_cosine"
    differentiable = False
    stream = "samples"
    symmetric = True
    invariances = frozenset({"orthogonal", "isotropic_scaling", "permutation"})

    def __init__(self, k: int = 10, chunk_rows: int | None = None, **removed: Any) -> None:
        refuse_renamed(type(self).__name__, removed)
        k = _check_k(k)
        _check_chunk_rows(chunk_rows)
        self.k, self.chunk_rows = k, chunk_rows

    @property
    def id(self) -> str:
        return f"second_order_cosine_similarity-topk={self.k}"

    @property
    def label(self) -> str:
        return f"second-order cosine (k = {self.k})"

    def config(self) -> dict[str, Any]:
        return {"k": self.k}

    @full_precision_matmul
    def from_samples(
        self, x: torch.Tensor, y: torch.Tensor, cache_x: Cache = None, cache_y: Cache = None
    ) -> torch.Tensor:
        ix, iy = _neighbour_sets(x, y, self.k, "cosine", self.chunk_rows, cache_x, cache_y)
        nx = cached(cache_x, ("norms",), lambda: row_norms(x))
        ny = cached(cache_y, ("norms",), lambda: row_norms(y))
        union = torch.cat([ix, iy], dim=1)
        weight = torch.cat([torch.ones_like(ix, dtype=torch.bool), ~_member(iy, ix)], dim=1).to(torch.float64)
        a = _gathered_values(x, union, "halfsq", self.chunk_rows, nx)
        b = _gathered_values(y, union, "halfsq", self.chunk_rows, ny)
        aa, bb = (weight * a * a).sum(1), (weight * b * b).sum(1)
        defined = (aa > 0) & (bb > 0)
        undefined = int((~defined).sum())
        if undefined:
            warnings.warn(
                f"{undefined} samples have all their union neighbours at cosine distance 0 in one representation "
                "(duplicates); their second-order cosine is undefined and counts as 0 (the ReSi code returns NaN)",
                ReprsimWarning,
                stacklevel=3,
            )
        cos = torch.where(defined, (weight * a * b).sum(1) / (aa * bb).sqrt().clamp(min=1e-300), 0.0)
        return cos.mean()


class CycleKNN(MutualKNN):
    """Cycle k-NN (platonic-rep's ``cycle_knn``): the share of samples i that a round trip through the two
    neighbour graphs brings back, i ∈ ⋃_{j ∈ N_k^Y(i)} N_k^X(j): y's neighbours of i, then x's neighbours of those.
    Not symmetric: x and y swap roles in the round trip. Parameters as :class:`MutualKNN`."""

    name = "cycle_knn"
    scheme = "cycle_knn"
    symmetric = False

    @property
    def label(self) -> str:
        return f"cycle {self.k}-NN"

    def from_samples(
        self, x: torch.Tensor, y: torch.Tensor, cache_x: Cache = None, cache_y: Cache = None
    ) -> torch.Tensor:
        ix, iy = _neighbour_sets(x, y, self.k, self.neighbours, self.chunk_rows, cache_x, cache_y)
        n = ix.shape[0]
        back = (ix[iy] == torch.arange(n, device=ix.device).view(n, 1, 1)).flatten(1).any(dim=1)
        return back.to(torch.float64).mean()


class LCSKNN(MutualKNN):
    """Longest-common-subsequence k-NN (platonic-rep's ``lcs_knn``): the mean over samples of the length of the
    longest common subsequence of the two neighbour lists, each ordered nearest first; in [0, k] (k when the two
    rank the same neighbours in the same order). Parameters as :class:`MutualKNN`."""

    name = "lcs_knn"
    scheme = "lcs_knn"

    def __init__(
        self, k: int = 10, neighbours: Neighbours = "cosine", chunk_rows: int | None = None, **removed: Any
    ) -> None:
        super().__init__(k, neighbours, chunk_rows, **removed)
        self.range = (0.0, float(self.k))

    @property
    def label(self) -> str:
        return f"{self.k}-NN longest common subsequence"

    def from_samples(
        self, x: torch.Tensor, y: torch.Tensor, cache_x: Cache = None, cache_y: Cache = None
    ) -> torch.Tensor:
        ix, iy = _neighbour_sets(x, y, self.k, self.neighbours, self.chunk_rows, cache_x, cache_y)
        return _sequence_table(ix, iy, "lcs").to(torch.float64).mean()


class EditDistanceKNN(MutualKNN):
    """Edit-distance k-NN (platonic-rep's ``edit_distance_knn``): 1 − the mean over samples of the Levenshtein
    distance between the two neighbour lists (nearest first; insertions, deletions and substitutions cost 1) over
    k. Parameters as :class:`MutualKNN`."""

    name = "edit_distance_knn"
    scheme = "edit_distance_knn"

    @property
    def label(self) -> str:
        return f"{self.k}-NN edit-distance similarity"

    def from_samples(
        self, x: torch.Tensor, y: torch.Tensor, cache_x: Cache = None, cache_y: Cache = None
    ) -> torch.Tensor:
        ix, iy = _neighbour_sets(x, y, self.k, self.neighbours, self.chunk_rows, cache_x, cache_y)
        return 1.0 - _sequence_table(ix, iy, "edit").to(torch.float64).mean() / self.k


def _sequence_table(a: torch.Tensor, b: torch.Tensor, kind: Literal["lcs", "edit"]) -> torch.Tensor:
    """Row by row, the longest-common-subsequence length or the Levenshtein distance of a[i] and b[i] (both
    (n, k)): the classic dynamic programme over the k × k table, every row at once."""
    n, k = a.shape
    equal = a.unsqueeze(2) == b.unsqueeze(1)  # (n, k, k)
    steps = torch.arange(k + 1, device=a.device)
    prev = torch.zeros(n, k + 1, dtype=torch.long, device=a.device) if kind == "lcs" else steps.expand(n, -1)
    for i in range(1, k + 1):
        row = [torch.zeros(n, dtype=torch.long, device=a.device) if kind == "lcs" else torch.full_like(prev[:, 0], i)]
        for j in range(1, k + 1):
            match = equal[:, i - 1, j - 1]
            if kind == "lcs":
                row.append(torch.where(match, prev[:, j - 1] + 1, torch.maximum(prev[:, j], row[j - 1])))
            else:
                row.append(torch.minimum(torch.minimum(prev[:, j], row[j - 1]) + 1, prev[:, j - 1] + (~match).long()))
        prev = torch.stack(row, dim=1)
    return prev[:, k]


class RankSimilarity(MutualKNN):
    """k-NN rank similarity (Wang et al. 2020), as the ReSi benchmark code defines it.

    For sample i with shared neighbours J = N_k^X(i) ∩ N_k^Y(i) and ranks r_X(j), r_Y(j) ∈ 1..k (1 = nearest),
    the score is Σ_{j ∈ J} 2 / ((1 + |r_X(j) − r_Y(j)|)(r_X(j) + r_Y(j))), divided by Σ_{m=1}^{|J|} 1/m (ReSi
    normalises by the size of J, so one shared neighbour at rank 1 in both scores 1); a sample with no shared
    neighbour scores 0. The measure is the mean over samples, in [0, 1].

    Parameters
    ----------
    k : int, default 10
        Neighbours per sample (self excluded; needs n ≥ k + 1).
    neighbours : {"cosine", "inner_product", "euclidean"}, default "cosine"
        What ranks neighbours (ReSi's default is cosine).
    chunk_rows : int, optional
        Rows per strip of the n × n similarity matrix.

    Notes
    -----
    Ties in similarity are ranked by sample index (lower first), so duplicates have well-defined ranks.
    """

    name = "rank_similarity"
    scheme = "rank_similarity"

    @property
    def label(self) -> str:
        return f"{self.k}-NN rank similarity"

    def from_samples(
        self, x: torch.Tensor, y: torch.Tensor, cache_x: Cache = None, cache_y: Cache = None
    ) -> torch.Tensor:
        ix, iy = _neighbour_sets(x, y, self.k, self.neighbours, self.chunk_rows, cache_x, cache_y)
        n, k = ix.shape
        score = torch.zeros(n, dtype=torch.float64, device=x.device)
        shared = torch.zeros(n, dtype=torch.long, device=x.device)
        for r in strips(n, max(1, STRIP_BYTES // (k * k))):
            i, a, b = (ix[r].unsqueeze(2) == iy[r].unsqueeze(1)).nonzero(as_tuple=True)
            a64, b64 = a.to(torch.float64), b.to(torch.float64)
            terms = 2.0 / ((1.0 + (a64 - b64).abs()) * (a64 + b64 + 2.0))
            score[r] = torch.zeros(r.stop - r.start, dtype=torch.float64, device=x.device).index_add_(0, i, terms)
            shared[r] = torch.bincount(i, minlength=r.stop - r.start)
        harmonic = torch.cat(
            [torch.zeros(1, dtype=torch.float64), torch.cumsum(1.0 / torch.arange(1, k + 1, dtype=torch.float64), 0)]
        ).to(x.device)
        h = harmonic[shared]
        return torch.where(shared > 0, score / h.clamp(min=1.0), 0.0).mean()


# -- distance correlation --------------------------------------------------------------------------------


def _distances(x: Prepared, sq: torch.Tensor, rows: slice) -> torch.Tensor:
    """Euclidean distances (float64) from the samples ``rows`` to every sample, from squared norms and one
    product in the data's dtype.

    The square root magnifies the rounding of ‖a‖² + ‖b‖² − 2a·b near zero (about √ε·‖a‖ for twins), so the
    diagonal and near-duplicates are computed from differences (see :func:`sq_distance_rows`).
    """
    return sq_distance_rows(x, sq, rows).sqrt_().to(torch.float64)


@full_precision_matmul
def _dcov_terms(x: torch.Tensor, y: torch.Tensor, unbiased: bool, chunk_rows: int | None) -> torch.Tensor:
    """(Σ A∘B, Σ A∘A, Σ B∘B) of the double-centred (or U-centred) distance matrices, in float64, in two
    passes over row strips: the first for row sums, the second for the products."""
    n = x.shape[0]
    # centring first: distances are translation invariant, and centred rows keep the squared-norm formula
    # accurate; the data stay in their dtype (float32 data would double in memory as float64: 600 MiB per
    # 100,000 × 768 input), a large input is not copied (see Prepared), the strips' sums are float64
    x64, y64 = column_centred(x), column_centred(y)
    sx, sy = x64.sq_norms(), y64.sq_norms()
    rows = strip_rows(n, chunk_rows)
    ra = torch.zeros(n, dtype=torch.float64, device=x.device)
    rb = torch.zeros_like(ra)
    for r in strips(n, rows):
        ra[r] = _distances(x64, sx, r).sum(1)
        rb[r] = _distances(y64, sy, r).sum(1)
    ta, tb = ra.sum(), rb.sum()
    if unbiased:
        ca, cb = ra / (n - 2), rb / (n - 2)
        ga, gb = ta / ((n - 1) * (n - 2)), tb / ((n - 1) * (n - 2))
    else:
        ca, cb = ra / n, rb / n
        ga, gb = ta / n**2, tb / n**2
    totals = torch.zeros(3, dtype=torch.float64, device=x.device)
    for r in strips(n, rows):
        a = _distances(x64, sx, r) - ca[r, None] - ca[None, :] + ga
        b = _distances(y64, sy, r) - cb[r, None] - cb[None, :] + gb
        if unbiased:
            local = torch.arange(r.stop - r.start, device=x.device)
            a[local, local + r.start] = 0.0
            b[local, local + r.start] = 0.0
        totals += torch.stack([(a * b).sum(), (a * a).sum(), (b * b).sum()])
    return totals


class DistanceCorrelation(Measure):
    """Distance correlation (Székely, Rizzo & Bakirov 2007), blockwise.

    Parameters
    ----------
    unbiased : bool, default False
        False: the V-statistic dCor = sqrt(dCov²(X, Y) / sqrt(dVar²(X) dVar²(Y))) from double-centred Euclidean
        distance matrices, in [0, 1] (``dcor.distance_correlation``). True: the bias-corrected *squared*
        distance correlation of Székely & Rizzo (2014) from U-centred matrices (``dcor.u_distance_correlation_sqr``),
        which can be negative and is not clamped; needs n ≥ 4.
    chunk_rows : int, optional
        Rows per strip of the n × n distance matrices (memory O(chunk_rows · n)).
    """

    name = "distance_correlation"
    differentiable = False
    stream = "samples"
    # a smooth function of V/U-statistics: the delete-a-block jackknife covers (half-samples under-cover at p ≫ 2)
    sample_resampling = "blocks"
    symmetric = True
    invariances = frozenset({"orthogonal", "isotropic_scaling", "translation", "permutation"})

    def __init__(self, unbiased: bool = False, chunk_rows: int | None = None, **removed: Any) -> None:
        refuse_renamed(type(self).__name__, removed)
        _check_chunk_rows(chunk_rows)
        self.unbiased, self.chunk_rows = check_bool(unbiased, "unbiased"), chunk_rows
        self.min_samples = 4 if self.unbiased else 2
        if self.unbiased:
            self.range = (-1.0, 1.0)

    @property
    def id(self) -> str:
        return "distance_correlation-unbiased" if self.unbiased else "distance_correlation"

    @property
    def label(self) -> str:
        return "bias-corrected dCor²" if self.unbiased else "distance correlation"

    def config(self) -> dict[str, Any]:
        return {"unbiased": self.unbiased}

    def from_samples(
        self, x: torch.Tensor, y: torch.Tensor, cache_x: Cache = None, cache_y: Cache = None
    ) -> torch.Tensor:
        ab, aa, bb = _dcov_terms(x, y, self.unbiased, self.chunk_rows)
        for side, v in (("x", aa), ("y", bb)):
            if not bool(v > 0):
                raise ConstantRepresentationError(
                    f"{side} has zero distance variance (every sample the same), so distance correlation is undefined"
                )
        r2: torch.Tensor = ab / (aa * bb).sqrt()
        # the V-statistic's dCov² is a sum of squares' inner product, ≥ 0 up to rounding; the U-statistic's
        # can be negative and is returned as it is
        return r2 if self.unbiased else r2.clamp(min=0.0).sqrt()

    def null_trace(self, t: torch.Tensor) -> TraceSide:
        n = t.shape[0]
        _dense_null(n, "distance correlation")
        z = column_centred(t.to(torch.float64))  # the distances of from_samples, by the same rule
        d = _distances(z, z.sq_norms(), slice(0, n))
        return dense_side(d, "u" if self.unbiased else "double", "identity" if self.unbiased else "sqrt")


def mutual_knn(
    x: Any, y: Any, *, k: int = 10, neighbours: Neighbours = "cosine", chunk_rows: int | None = None, **removed: Any
) -> Any:
    """Mutual k-NN alignment of Huh et al. (2024); see :class:`MutualKNN`.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import mutual_knn
    >>> x = np.random.default_rng(0).normal(size=(200, 8))
    >>> mutual_knn(x, 3 * x, k=5)  # scaling changes no neighbour
    1.0
    """
    refuse_renamed("mutual_knn", removed)
    return evaluate(MutualKNN(k, neighbours, chunk_rows), x, y)


def jaccard_knn(
    x: Any, y: Any, *, k: int = 10, neighbours: Neighbours = "cosine", chunk_rows: int | None = None, **removed: Any
) -> Any:
    """k-NN Jaccard similarity (ReSi); see :class:`JaccardKNN`.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import jaccard_knn
    >>> rng = np.random.default_rng(0)
    >>> 0.0 <= jaccard_knn(rng.normal(size=(100, 5)), rng.normal(size=(100, 5))) < 0.2
    True
    """
    refuse_renamed("jaccard_knn", removed)
    return evaluate(JaccardKNN(k, neighbours, chunk_rows), x, y)


def distance_correlation(
    x: Any, y: Any, *, unbiased: bool = False, chunk_rows: int | None = None, **removed: Any
) -> Any:
    """Distance correlation of ``x`` (n, p) and ``y`` (n, q), blockwise; see :class:`DistanceCorrelation`.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import distance_correlation
    >>> x = np.random.default_rng(0).normal(size=(300, 4))
    >>> round(distance_correlation(x, 2 * x + 1), 10)
    1.0
    """
    refuse_renamed("distance_correlation", removed)
    return evaluate(DistanceCorrelation(unbiased, chunk_rows), x, y)


def cknna(
    x: Any,
    y: Any,
    *,
    k: int = 10,
    neighbours: Neighbours = "cosine",
    unbiased: bool = True,
    chunk_rows: int | None = None,
    **removed: Any,
) -> Any:
    """Centered kernel nearest-neighbour alignment of Huh et al. (2024); see :class:`CKNNA`.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import cknna
    >>> x = np.random.default_rng(0).normal(size=(200, 8))
    >>> round(cknna(x, 3 * x, k=10), 10)
    1.0
    """
    refuse_renamed("cknna", removed)
    return evaluate(CKNNA(k, neighbours, unbiased, chunk_rows), x, y)


def second_order_cosine(x: Any, y: Any, *, k: int = 10, chunk_rows: int | None = None, **removed: Any) -> Any:
    """Second-order cosine similarity (ReSi's definition); see :class:`SecondOrderCosine`.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import second_order_cosine
    >>> x = np.random.default_rng(0).normal(size=(100, 6))
    >>> round(second_order_cosine(x, 2 * x), 10)
    1.0
    """
    refuse_renamed("second_order_cosine", removed)
    return evaluate(SecondOrderCosine(k, chunk_rows), x, y)


def rank_similarity(
    x: Any, y: Any, *, k: int = 10, neighbours: Neighbours = "cosine", chunk_rows: int | None = None, **removed: Any
) -> Any:
    """k-NN rank similarity (ReSi's definition); see :class:`RankSimilarity`.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import rank_similarity
    >>> x = np.random.default_rng(0).normal(size=(100, 6))
    >>> rank_similarity(x, 2 * x)
    1.0
    """
    refuse_renamed("rank_similarity", removed)
    return evaluate(RankSimilarity(k, neighbours, chunk_rows), x, y)


register("mutual_knn", lambda: MutualKNN())
register("cycle_knn", lambda: CycleKNN())
register("lcs_knn", lambda: LCSKNN())
register("edit_distance_knn", lambda: EditDistanceKNN())
register("jaccard_knn", lambda: JaccardKNN())
register("cknna", lambda: CKNNA())
register("second_order_cosine", lambda: SecondOrderCosine())
register("rank_similarity", lambda: RankSimilarity())
register("distance_correlation", lambda: DistanceCorrelation())
register("distance_correlation_unbiased", lambda: DistanceCorrelation(unbiased=True))


# -- representational similarity analysis ------------------------------------------------------------------

RDMKind = Literal["correlation", "cosine", "euclidean", "sqeuclidean", "sqeuclidean_per_feature", "gaussian", "poisson"]
RDM_KINDS = ("correlation", "cosine", "euclidean", "sqeuclidean", "sqeuclidean_per_feature", "gaussian", "poisson")
#: rsatoolbox's Poisson prior: rates (x + λw) / (1 + w) with λ = 1, w = 0.1
POISSON_PRIOR = (1.0, 0.1)
#: Each RDM's name in the similarity-repository scheme, whose ``_normalized`` RDMs are divided by the width.
_RDM_IDS = dict(
    zip(
        RDM_KINDS,
        (
            "correlation",
            "cosine",
            "euclidean",
            "squared_euclidean",
            "squared_euclidean_normalized",
            "gaussian",
            "poisson",
        ),
    )
)
RSACompare = Literal["pearson", "spearman", "kendall", "cosine", "rho_a", "tau_a"]
RSA_COMPARES = ("pearson", "spearman", "kendall", "cosine", "rho_a", "tau_a")
RANK_TIE_RTOL = 1e-12
#: The default budget of exact rank-based RSA (bytes); see :class:`RSA`'s ``max_memory``.
RANK_MEMORY = 8 * 2**30
#: Peak bytes per triangle entry of exact rank-based RSA, measured on CPU (n = 6,000 to 12,000: 58 for Spearman,
#: 93 to 116 for Kendall) and rounded up; the budget check multiplies them by N = n(n − 1)/2.
RANK_BYTES_PER_ENTRY = {"spearman": 64, "rho_a": 64, "kendall": 128, "tau_a": 128}
#: Entries per chunk of the tie comparisons of :func:`_average_ranks`.
RANK_CHUNK = 1 << 22


def _rdm_rows(z: Prepared, sq: torch.Tensor, rows: slice, kind: str) -> torch.Tensor:
    """Rows ``rows`` of the representational dissimilarity matrix of the prepared data ``z`` (built in place in
    the one product's memory): every kind is a function of the squared distances of prepared rows."""
    if kind == "poisson":
        # z = [m̃, l̃] (rates and their logs, each column-centred), sq the rows' m̃ᵢ·l̃ᵢ: the symmetrised KL is
        # (m̃ᵢ − m̃ⱼ)·(l̃ᵢ − l̃ⱼ) = sqᵢ + sqⱼ − m̃ᵢ·l̃ⱼ − l̃ᵢ·m̃ⱼ, over the width
        half = z.shape[1] // 2
        every = z.rows(slice(0, z.shape[0]))
        a = z.rows(rows)
        cross = a[:, :half] @ every[:, half:].T
        cross += a[:, half:] @ every[:, :half].T
        return cross.neg_().add_(sq[rows, None]).add_(sq[None, :]).div_(half)
    d2 = sq_distance_rows(z, sq, rows)
    if kind in ("correlation", "cosine"):
        return d2.mul_(0.5)  # 1 − r = ‖ẑ_i − ẑ_j‖² / 2 for rows normalised to unit norm
    if kind == "euclidean":
        return d2.sqrt_()
    if kind == "sqeuclidean_per_feature":
        return d2.div_(z.shape[1])
    if kind == "gaussian":
        # 1 − exp(−d²/μ), μ the mean squared distance over all n² pairs: 2Σ‖zᵢ‖²/n for column-centred rows
        mu = 2 * sq.sum() / z.shape[0]
        return d2 if not bool(mu > 0) else d2.div_(-mu).exp_().neg_().add_(1.0)
    return d2


def _rdm_prepared(
    x: torch.Tensor, kind: str, name: str, dtype: torch.dtype = torch.float64
) -> tuple[Prepared, torch.Tensor]:
    """The rows whose squared distances give the RDM, in ``dtype``, and their squared norms: row-centred (for
    correlation), scaled to unit norm and column-centred (correlation, cosine; see :func:`normalised_centred`),
    or column-centred (distances); held whole when small, else rebuilt block by block (see :class:`Prepared`),
    so a large input is not copied."""
    if kind in ("correlation", "cosine"):
        z = normalised_centred(x, dtype, name, correlation=kind == "correlation", what=kind)
    elif kind == "poisson":
        return _poisson_prepared(x, name, dtype)
    else:
        z = column_centred(x, dtype)  # distances are translation invariant; centring keeps the products accurate
    return z, z.sq_norms()


def _poisson_prepared(x: torch.Tensor, name: str, dtype: torch.dtype) -> tuple[Prepared, torch.Tensor]:
    """rsatoolbox's Poisson RDM: rates m = (x + λw) / (1 + w), l = log m, both column-centred in float64 (the
    symmetrised KL only sees differences) and held side by side, with each row's m̃ᵢ·l̃ᵢ."""
    lam, weight = POISSON_PRIOR
    wide = x.to(torch.float64)
    low = float(wide.min())
    if not low > -lam * weight:
        raise InvalidParameterError(
            f"the Poisson RDM of {name} needs rates above −{lam * weight:g} (counts or non-negative "
            f"activations, as rsatoolbox's prior λ = {lam:g}, w = {weight:g} assumes); its smallest value is "
            f"{low:.4g}. Use another RDM, or shift the data"
        )
    m = (wide + lam * weight) / (1 + weight)
    both = torch.cat([m, m.log()], dim=1)
    both -= both.mean(dim=0)
    p = x.shape[1]
    dots = (both[:, :p] * both[:, p:]).sum(dim=1)
    return Prepared(both.to(dtype), dtype, hold=True), dots.to(dtype)


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..N of ``v`` with ties given their average rank (as scipy.stats.rankdata).

    Values within RANK_TIE_RTOL of the largest magnitude of each other count as tied: the RDMs come from the
    product formula, whose rounding (a few ulps) would otherwise split exactly equal dissimilarities (e.g. of
    integer-valued data) into arbitrary orders. This runs on whole triangles, so every intermediate is freed as
    soon as it is used and the differences are taken in chunks: at most five N-long 8-byte arrays are alive at
    once, besides ``v`` (which the caller may drop by passing its only reference).
    """
    sorted_v, order = torch.sort(v, stable=True)
    del v
    n = sorted_v.numel()
    if n == 0:
        return sorted_v
    tol = RANK_TIE_RTOL * float(sorted_v.abs().max())
    starts = torch.empty(n, dtype=torch.bool, device=sorted_v.device)
    starts[0] = True
    for lo in range(0, n - 1, RANK_CHUNK):
        hi = min(n - 1, lo + RANK_CHUNK)
        torch.gt(sorted_v[lo + 1 : hi + 1] - sorted_v[lo:hi], tol, out=starts[lo + 1 : hi + 1])
    del sorted_v
    if bool(starts.all()):  # no ties (the rule for continuous data): the ranks are the positions
        del starts
        ranks = torch.empty(n, dtype=torch.float64, device=order.device)
        ranks[order] = torch.arange(1, n + 1, dtype=torch.float64, device=order.device)
        return ranks
    inverse = torch.cumsum(starts, 0).sub_(1)
    del starts
    counts = torch.bincount(inverse)
    average = counts.to(torch.float64).sub_(1.0).mul_(-0.5).add_(torch.cumsum(counts, 0))
    del counts
    in_order = average[inverse]
    del average, inverse
    ranks = torch.empty_like(in_order)
    ranks[order] = in_order
    return ranks


def _tie_pairs(changes: torch.Tensor) -> int:
    """Σ t(t − 1)/2 over the runs of a sorted sequence, given where consecutive entries differ (length N − 1)."""
    ends = torch.cat([changes.nonzero().flatten() + 1, changes.new_full((1,), changes.numel() + 1, dtype=torch.long)])
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    return int((counts * (counts - 1) // 2).sum())


def _discordant(v: torch.Tensor) -> int:
    """The number of pairs p < q with v[p] > v[q] (strictly), by a bottom-up merge sort. At each level two
    batched binary searches place every element of each pair of sorted runs: a right element's count of
    larger left elements is its inversions, and its position in the merged run follows from the same count."""
    n = v.numel()
    size = 1 << max(0, (n - 1).bit_length())
    run = torch.cat([v, v.new_full((size - n,), torch.inf)])  # trailing +inf pads add no inversions
    total = 0
    width = 1
    while width < size:
        pairs = run.view(-1, 2, width)
        left, right = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
        left_not_above = torch.searchsorted(left, right, right=True)  # left elements ≤ each right element
        total += int((width - left_not_above).sum())
        right_below = torch.searchsorted(right, left, right=False)  # right elements < each left element
        own = torch.arange(width, device=v.device)
        merged = torch.empty_like(pairs.reshape(-1, 2 * width))
        merged.scatter_(1, own + right_below, left)  # equal values: left first, so the merge is stable
        merged.scatter_(1, own + left_not_above, right)
        run = merged.reshape(-1)
        width *= 2
    return total


def _kendall_counts(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, int, int]:
    """Kendall's pair counts of two equally long vectors (Knight's O(N log² N) algorithm, as
    scipy.stats.kendalltau): sort by (a, b), count the tied pairs in a, in b and in both, and the discordant pairs
    as inversions of b. Returns (concordant − discordant, all pairs N(N − 1)/2, pairs tied in a, pairs tied in b)."""
    order = torch.argsort(b, stable=True)
    order = order[torch.argsort(a[order], stable=True)]
    a_s, b_s = a[order], b[order]
    n = a.numel()
    n0 = n * (n - 1) // 2
    new_a = torch.diff(a_s) != 0
    ties_a = _tie_pairs(new_a)
    ties_ab = _tie_pairs(new_a | (torch.diff(b_s) != 0))
    ties_b = _tie_pairs(torch.diff(torch.sort(b_s).values) != 0)
    numerator = n0 - ties_a - ties_b + ties_ab - 2 * _discordant(b_s)
    return numerator, n0, ties_a, ties_b


def _kendall_tau_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's τ-b: concordant minus discordant pairs over the geometric mean of the pairs untied in a and in b."""
    numerator, n0, ties_a, ties_b = _kendall_counts(a, b)
    tau = numerator / ((n0 - ties_a) * (n0 - ties_b)) ** 0.5
    return torch.tensor(tau, dtype=torch.float64, device=a.device)


def _kendall_tau_a(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's τ-a: concordant minus discordant pairs over all N(N − 1)/2 pairs, no tie correction (rsatoolbox's
    ``tau-a``, which clips rounding to [−1, 1])."""
    numerator, n0, _, _ = _kendall_counts(a, b)
    return torch.tensor(min(1.0, max(-1.0, numerator / n0)), dtype=torch.float64, device=a.device)


def _constant_rdm(side: str) -> ConstantRepresentationError:
    return ConstantRepresentationError(f"the RDM of {side} is constant, so its correlation is undefined")


def _rank_correlation(a: torch.Tensor, b: torch.Tensor, tie_corrected: bool = True) -> torch.Tensor:
    """Pearson correlation of two average-rank vectors of length N, whose mean is exactly (N + 1)/2 (ties keep
    the sum of ranks), centred chunk by chunk so that no N-long temporary is made. Without ``tie_corrected``, the
    denominator is the variance of N untied ranks, (N³ − N)/12: rsatoolbox's ρ-a (Spearman's ρ under random tie
    breaking, in expectation)."""
    centre = (a.numel() + 1) / 2
    saa = sbb = sab = torch.zeros((), dtype=torch.float64, device=a.device)
    for lo in range(0, a.numel(), RANK_CHUNK):
        da, db = a[lo : lo + RANK_CHUNK] - centre, b[lo : lo + RANK_CHUNK] - centre
        saa, sbb, sab = saa + torch.dot(da, da), sbb + torch.dot(db, db), sab + torch.dot(da, db)
    if not tie_corrected:
        n = float(a.numel())
        return sab * 12.0 / (n**3 - n)
    return sab / (saa * sbb).sqrt()


class RSA(Measure):
    """Representational similarity analysis (Kriegeskorte et al. 2008): the correlation of the two
    representational dissimilarity matrices (RDMs) over their upper triangles (i < j).

    Parameters
    ----------
    rdm : {"correlation", "cosine", "euclidean", "sqeuclidean", "sqeuclidean_per_feature", "gaussian"}, optional
        Dissimilarity of two samples: 1 − Pearson correlation of their feature vectors (the default), 1 − cosine,
        the Euclidean distance, its square, its square divided by the width (what rsatoolbox calls "euclidean"),
        1 − exp(−d²/μ), μ the mean of the squared distances over all n² pairs (thingsvision's "gaussian"), or
        rsatoolbox's "poisson": the symmetrised KL divergence of Poisson rates m = (x + 0.1)/1.1,
        Σ_c (mᵢ − mⱼ)(log mᵢ − log mⱼ) / p (counts: every value must exceed −0.1).
    compare : {"pearson", "spearman", "kendall", "cosine", "rho_a", "tau_a"}, default "spearman"
        How the RDMs are compared. Pearson is computed exactly in row strips (memory O(chunk_rows · n)), and so is
        the cosine of the two triangles (uncentred: rsatoolbox's ``cosine``); Spearman ranks all N = n(n − 1)/2
        entries of each triangle (ties get average ranks, as ``scipy.stats.spearmanr``), so it holds the two
        triangles in memory (8 bytes per entry each); Kendall's τ-b (ties corrected, as
        ``scipy.stats.kendalltau``) also holds them and counts discordant pairs by a merge sort of batched
        binary searches, O(N log² N) time. ``rho_a`` and ``tau_a`` are rsatoolbox's comparisons without tie
        correction: the covariance of the average ranks over the variance of N untied ranks, (N³ − N)/12, and
        (concordant − discordant pairs) / (N(N − 1)/2).
    chunk_rows : int, optional
        Rows per strip of the RDMs.
    max_memory : int, default 8 GiB
        The memory budget (bytes) of exact Spearman or Kendall RSA. Their need, about 64 bytes per triangle
        entry for Spearman and 128 for Kendall (N = n(n − 1)/2 entries, so 12.8 GB for Spearman at n = 20,000),
        is compared with it before anything is allocated; over it, a :class:`~reprsim.errors.MemoryBudgetError`
        gives the bytes needed and the alternatives. Pearson RSA needs no budget: it works in strips.

    Notes
    -----
    Pearson on squared-Euclidean RDMs is an exact function of streamed moments, so it streams like CKA (any n,
    merged, all-reduced; ``stream="moments"`` with the fourth-order terms): with u the centred rows, R_i = ‖u_i‖²,
    T = Σ R_i and N = n(n − 1) ordered pairs, the RDM D_ij = (R_i − R̄) + (R_j − R̄) + 2R̄ − 2u_i·u_j splits into
    parts orthogonal over all n² entries, whence
    N·cov(D^X, D^Y) = 2nΣR^X_iR^Y_i + 4‖XcᵀYc‖²_F − 2T_XT_Y(n + 1)/(n − 1) over the off-diagonal entries (the
    same correlation as over the upper triangle). Cosine and correlation RDMs reduce likewise to the moments of
    the row-normalised features, which ``compare`` does not stream yet: they are computed in strips.
    """

    name = "rsa"
    differentiable = False
    stream: Literal["moments", "minibatch", "samples"] = "samples"
    symmetric = True

    def __init__(
        self,
        rdm: RDMKind = "correlation",
        compare: RSACompare = "spearman",
        chunk_rows: int | None = None,
        max_memory: int = RANK_MEMORY,
        **removed: Any,
    ) -> None:
        refuse_renamed(type(self).__name__, removed)
        self.max_memory = check_int(max_memory, "max_memory", minimum=1, hint="a number of bytes, e.g. 16 * 2**30")
        if rdm not in RDM_KINDS:
            raise InvalidParameterError(f"rdm must be one of {RDM_KINDS}; got {rdm!r}")
        if compare not in RSA_COMPARES:
            raise InvalidParameterError(f"compare must be one of {RSA_COMPARES}; got {compare!r}")
        _check_chunk_rows(chunk_rows)
        self.rdm, self.compare, self.chunk_rows = rdm, compare, chunk_rows
        self.range = (-1.0, 1.0)
        self.min_samples = 3
        if compare == "pearson" and rdm in ("sqeuclidean", "sqeuclidean_per_feature"):
            # an exact function of the second moments and the row-norm (fourth-order) moments: streamed
            self.stream = "moments"
            self.fourth = True
            self.differentiable = True
        inv = {"isotropic_scaling", "permutation"}
        if rdm not in ("correlation", "poisson"):
            inv.add("orthogonal")
        if rdm not in ("correlation", "cosine", "poisson"):
            inv.add("translation")
        if rdm == "poisson":  # rates: the prior fixes their scale and origin
            inv.discard("isotropic_scaling")
        self.invariances = frozenset(inv)

    @property
    def id(self) -> str:
        return f"rsa-rdm={_RDM_IDS[self.rdm]}-compare={self.compare}"

    @property
    def label(self) -> str:
        return f"RSA ({self.rdm} RDM, {self.compare})"

    def config(self) -> dict[str, Any]:
        return {"rdm": self.rdm, "compare": self.compare}

    def from_moments(self, m: Moments) -> torch.Tensor:
        f = m.fourth
        if f is None:
            raise InvalidParameterError("RSA from moments needs the fourth-order moments; stream with fourth=True")
        n = m.n
        tx, ty = check_variance(m, "x", "RSA"), check_variance(m, "y", "RSA")
        # in units of the traces, so that fourth powers of large activations cannot overflow
        c = 2.0 * (n + 1) / (n - 1)
        cov = 2 * n * f.ab / (tx * ty) + 4 * inner(m.cxy, m.cxy) / (tx * ty) - c
        terms = []
        for side, r2, cc, t in (("x", f.aa, m.cxx, tx), ("y", f.bb, m.cyy, ty)):
            big = 2 * n * r2 / (t * t) + 4 * inner(cc, cc) / (t * t)
            var = big - c
            if not bool(var > 64 * torch.finfo(var.dtype).eps * big):
                raise _constant_rdm(side)
            terms.append(var)
        result: torch.Tensor = cov / (terms[0] * terms[1]).sqrt()
        return result

    @full_precision_matmul
    def from_samples(
        self, x: torch.Tensor, y: torch.Tensor, cache_x: Cache = None, cache_y: Cache = None
    ) -> torch.Tensor:
        n = x.shape[0]
        # ranks hold the triangles in float64 anyway (and need float64 RDMs for their 1e-12 tie tolerance);
        # Pearson's strips stay in the data's dtype, accumulated in float64
        pieces = list(strips(n, strip_rows(n, self.chunk_rows)))
        if self.compare == "cosine":
            return self._cosine(x, y, pieces)
        if self.compare != "pearson":
            # one triangle at a time, ranked before the next is built (ranks with the tie tolerance give τ-b exact
            # ties too); each layer's ranked triangle is kept, within the caller's budget, for the other pairs
            # it takes part in
            nbytes = 8 * (n * (n - 1) // 2)
            self._check_memory(n)
            key = ("rsa_ranks", self.rdm)
            a = cached(cache_x, key, lambda: self._ranks(x, "x", pieces), nbytes)
            b = cached(cache_y, key, lambda: self._ranks(y, "y", pieces), nbytes)
            self._checked(a, b)
            if self.compare in ("spearman", "rho_a"):
                return _rank_correlation(a, b, tie_corrected=self.compare == "spearman")
            return _kendall_tau_b(a, b) if self.compare == "kendall" else _kendall_tau_a(a, b)
        zx, sx = _rdm_prepared(x, self.rdm, "x", x.dtype)
        zy, sy = _rdm_prepared(y, self.rdm, "y", x.dtype)
        # Pearson: strip-centred sums combined with Chan's update, so no triangle is ever held
        count = torch.zeros((), dtype=torch.float64, device=x.device)
        ma = mb = caa = cbb = cab = torch.zeros((), dtype=torch.float64, device=x.device)
        for r in pieces:
            a = upper_entries(_rdm_rows(zx, sx, r, self.rdm), r).to(torch.float64)
            b = upper_entries(_rdm_rows(zy, sy, r, self.rdm), r).to(torch.float64)
            if a.numel() == 0:
                continue
            m = torch.tensor(float(a.numel()), dtype=torch.float64, device=x.device)
            sa, sb = a.mean(), b.mean()
            da, db = a.sub_(sa), b.sub_(sb)  # centred in place; dot products need no further temporaries
            total = count + m
            delta_a, delta_b = sa - ma, sb - mb
            caa = caa + torch.dot(da, da) + delta_a * delta_a * count * m / total
            cbb = cbb + torch.dot(db, db) + delta_b * delta_b * count * m / total
            cab = cab + torch.dot(da, db) + delta_a * delta_b * count * m / total
            ma, mb, count = ma + delta_a * m / total, mb + delta_b * m / total, total
        for side, v in (("x", caa), ("y", cbb)):
            if not bool(v > 0):
                raise _constant_rdm(side)
        result: torch.Tensor = cab / (caa * cbb).sqrt()
        return result

    def _cosine(self, x: torch.Tensor, y: torch.Tensor, pieces: list[slice]) -> torch.Tensor:
        """The cosine of the two triangles (uncentred), in strips."""
        zx, sx = _rdm_prepared(x, self.rdm, "x", x.dtype)
        zy, sy = _rdm_prepared(y, self.rdm, "y", x.dtype)
        sums = torch.zeros(3, dtype=torch.float64, device=x.device)
        for r in pieces:
            a = upper_entries(_rdm_rows(zx, sx, r, self.rdm), r).to(torch.float64)
            b = upper_entries(_rdm_rows(zy, sy, r, self.rdm), r).to(torch.float64)
            sums += torch.stack([torch.dot(a, b), torch.dot(a, a), torch.dot(b, b)])
        for side, v in (("x", sums[1]), ("y", sums[2])):
            if not bool(v > 0):
                raise ConstantRepresentationError(f"the RDM of {side} is zero, so its cosine is undefined")
        result: torch.Tensor = sums[0] / (sums[1] * sums[2]).sqrt()
        return result

    def _check_memory(self, n: int) -> None:
        entries = n * (n - 1) // 2
        need = RANK_BYTES_PER_ENTRY[self.compare] * entries + STRIP_BYTES
        if need > self.max_memory:
            raise MemoryBudgetError(
                f"exact {self.compare.capitalize()} RSA of {n:,} samples ranks two triangles of {entries:,} "
                f"dissimilarities each and needs about {format_bytes(need)}, over its budget of "
                f"{format_bytes(self.max_memory)} (max_memory); raise max_memory if the memory is there, or use "
                "compare='pearson' (computed in strips, O(n) memory per strip row; with a 'sqeuclidean' RDM it "
                "also streams), or compare a random subsample of the stimuli"
            )

    def _ranks(self, x: torch.Tensor, name: str, pieces: list[slice]) -> torch.Tensor:
        """Average ranks of the upper triangle of ``x``'s RDM, built in float64 (the 1e-12 tie tolerance of the
        ranks needs float64 dissimilarities), one strip at a time into one preallocated triangle, which the
        ranking then owns (and frees once sorted)."""
        return _average_ranks(self._triangle(x, name, pieces))

    def _triangle(self, x: torch.Tensor, name: str, pieces: list[slice]) -> torch.Tensor:
        z, sq = _rdm_prepared(x, self.rdm, name, torch.float64)
        n = x.shape[0]
        triangle = torch.empty(n * (n - 1) // 2, dtype=torch.float64, device=x.device)
        at = 0
        for r in pieces:
            entries = upper_entries(_rdm_rows(z, sq, r, self.rdm), r)
            triangle[at : at + entries.numel()] = entries
            at += entries.numel()
            del entries
        return triangle

    def null_trace(self, t: torch.Tensor) -> TraceSide:
        if self.compare not in ("pearson", "spearman"):
            raise NoTraceForm(
                f"RSA with compare={self.compare!r} is not a centred trace statistic; its permutation null is "
                "Monte Carlo"
            )
        n = t.shape[0]
        _dense_null(n, "RSA")
        z, sq = _rdm_prepared(t, self.rdm, "x", torch.float64)
        rdm = _rdm_rows(z, sq, slice(0, n), self.rdm)
        if self.compare == "spearman":  # the Mantel statistic of the ranked RDMs (ranks commute with permutations)
            upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=t.device), 1)
            ranks = torch.zeros_like(rdm)
            ranks[upper] = _average_ranks(upper_entries(rdm, slice(0, n)))
            rdm = ranks + ranks.T
        return dense_side(rdm, "offdiagonal")

    @staticmethod
    def _checked(a: torch.Tensor, b: torch.Tensor) -> None:
        for side, v in (("x", a), ("y", b)):
            if not bool(v.max() > v.min()):
                raise _constant_rdm(side)


def rsa(
    x: Any,
    y: Any,
    *,
    rdm: RDMKind = "correlation",
    compare: RSACompare = "spearman",
    chunk_rows: int | None = None,
    max_memory: int = RANK_MEMORY,
    **removed: Any,
) -> Any:
    """Representational similarity analysis: correlation of the two RDMs' upper triangles; see :class:`RSA`.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import rsa
    >>> x = np.random.default_rng(0).normal(size=(50, 6))
    >>> round(rsa(x, 2 * x + 1, rdm="euclidean", compare="pearson"), 10)
    1.0
    """
    refuse_renamed("rsa", removed)
    return evaluate(RSA(rdm, compare, chunk_rows, max_memory), x, y)


def rdm(x: Any, *, kind: RDMKind = "correlation", chunk_rows: int | None = None, **removed: Any) -> Any:
    """The representational dissimilarity matrix of ``x`` (n, p), condensed: its upper triangle (i < j), row by
    row, n(n − 1)/2 entries, in the order of ``scipy.spatial.distance.pdist`` (``squareform`` unpacks it).

    The RDM that :class:`RSA` compares, built in row strips into one preallocated triangle: memory is the
    triangle (8 bytes per entry) plus one strip (``chunk_rows`` rows × n), never the n × n square.

    Parameters
    ----------
    x : array-like or torch.Tensor, shape (n, p)
    kind : {"correlation", "cosine", "euclidean", "sqeuclidean", "sqeuclidean_per_feature", "gaussian"}, optional
        As :class:`RSA`'s ``rdm``: 1 − Pearson correlation of two samples' feature vectors (pdist's
        "correlation", the default), 1 − cosine, the Euclidean distance, its square, its square divided by the width
        (rsatoolbox's "euclidean"), 1 − exp(−d²/μ) with μ the mean squared distance (thingsvision's
        "gaussian"), or rsatoolbox's "poisson" (the symmetrised KL of Poisson rates; see :class:`RSA`).
    chunk_rows : int, optional
        Rows per strip.

    Returns
    -------
    float64 CPU tensor when ``x`` is not a tensor; otherwise a tensor of ``x``'s dtype on its device. Entries are
    computed in float64 and rounded once to that dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import rdm
    >>> x = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    >>> rdm(x, kind="euclidean").tolist()
    [5.0, 10.0, 5.0]
    """
    refuse_renamed("rdm", removed)
    if kind not in RDM_KINDS:
        raise InvalidParameterError(f"kind must be one of {RDM_KINDS}; got {kind!r}")
    _check_chunk_rows(chunk_rows)
    xt, _ = measure_pair(RSA(kind, "pearson", chunk_rows), x, x)
    n = xt.shape[0]
    z, sq = _rdm_prepared(xt.detach(), kind, "x", torch.float64)
    triangle = torch.empty(n * (n - 1) // 2, dtype=torch.float64, device=xt.device)
    columns = torch.arange(n, device=xt.device)
    at = 0
    for r in strips(n, strip_rows(n, chunk_rows)):
        # row-major within the strip (pdist's order), unlike upper_entries' order, which RSA only needs to match
        # between its two sides
        entries = _rdm_rows(z, sq, r, kind)[columns[None, :] > columns[r, None]]
        triangle[at : at + entries.numel()] = entries
        at += entries.numel()
    return as_result(triangle, xt.new_empty(0), x)


def plot_rdm(dissimilarities: Any, ax: Any = None, *, labels: Any = None, title: str | None = None) -> Any:
    """Image of a condensed RDM (as :func:`rdm` returns it), square, with the sample order kept (needs matplotlib).

    Parameters
    ----------
    dissimilarities : array-like or tensor, shape (n(n − 1)/2,)
        A condensed RDM; n ≤ 4,096 (a larger square is more pixels than a figure shows: plot a subset's RDM).
    ax : matplotlib Axes, optional
        Where to draw; a new figure by default.
    labels : sequence of str, optional
        One per sample, written on both axes (for up to 60 samples).
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    plt = pyplot("plot_rdm")
    v = torch.as_tensor(dissimilarities).detach().to("cpu", torch.float64).flatten()
    entries = v.numel()
    n = round((1 + (1 + 8 * entries) ** 0.5) / 2)
    if n * (n - 1) // 2 != entries or n < 2:
        raise InvalidParameterError(
            f"a condensed RDM has n(n − 1)/2 entries for some n ≥ 2; got {entries}. Pass what reprsim.measures.rdm "
            "returns (or scipy's pdist), not the square matrix"
        )
    if n > 4096:
        raise InvalidParameterError(
            f"an RDM of {n} samples has more cells than a figure shows; plot the RDM of a subset, e.g. "
            "rdm(x[:2000]) (or of class means)"
        )
    if labels is not None and len(labels) != n:
        raise InvalidParameterError(f"labels has {len(labels)} entries for an RDM of {n} samples")
    square = torch.zeros((n, n), dtype=torch.float64)
    i, j = torch.triu_indices(n, n, offset=1)
    square[i, j] = v
    square[j, i] = v
    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 4.0), layout="constrained")
    image = ax.imshow(square.numpy(), cmap="viridis", interpolation="nearest")
    if labels is not None and n <= 60:
        ax.set_xticks(range(n), [str(t) for t in labels], fontsize=6, rotation=90)
        ax.set_yticks(range(n), [str(t) for t in labels], fontsize=6)
    else:
        ax.set_xlabel("sample")
        ax.set_ylabel("sample")
    ax.figure.colorbar(image, ax=ax, label="dissimilarity")
    ax.set_title(title if title is not None else f"RDM of {n} samples")
    return ax


register("rsa", lambda: RSA())
register("rsa_pearson", lambda: RSA(compare="pearson"))
