"""The exact permutation moments of trace statistics: the null distribution of CKA, HSIC, distance covariance and
the Mantel statistic over every permutation of one side's samples, without Monte Carlo.

Linear and RBF CKA, HSIC, distance covariance and the Mantel (Pearson RSA) statistic are all
T(Π) = tr(A Π B Πᵀ) = Σᵢⱼ Aᵢⱼ B_π(i)π(j) for two fixed symmetric n × n matrices A and B (centred Grams,
U-centred Grams, centred distance matrices, centred RDMs) when the rows of y are permuted by Π; their
denominators do not change. The first three moments of T over all n! permutations are exact functions of a few
contractions of A and of B (Kazi-Aoual, Hitier, Sabatier & Lebreton 1995; Josse, Pagès & Husson 2008 for the RV
coefficient, i.e. linear CKA):

    E[Tᵏ] = Σ_σ E_A(σ) E_B(σ) / (n)_{|σ|}

over the set partitions σ of the 2k index positions of Tᵏ, where E_A(σ) sums the products of A's entries over
index tuples whose equalities are exactly those of σ (a permutation maps such a tuple to a uniformly drawn one of
the same pattern, of which there are (n)_{|σ|}). Each E_A(σ) follows by Möbius inversion over the partition
lattice from the unrestricted sums, which are contractions of a multigraph (the blocks of σ its vertices, the k
factors its edges): for k ≤ 3 these are traces, sums of powers and row sums, and one sum over pairs, Σᵢⱼ Aᵢⱼ³.

For linear kernels every contraction but Σᵢⱼ Aᵢⱼ³ is a feature-space statistic; that one takes a pass over pairs
of samples in strips (or, when that pass would cost more than the layer's own moments, an unbiased estimate from a
random subset of rows). This module holds the combinatorics and the contractions (dense, or from the features of a
linear kernel); measures build their :class:`TraceSide` from them, and :mod:`reprsim.inference` fits the tail.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._strips import row_norms

__all__ = [
    "DenseTrace",
    "LinearTrace",
    "NullMoments",
    "TraceSide",
    "combined_side",
    "dense_side",
    "linear_side",
    "pair_moments",
    "permutation_moments",
    "shifted",
]

Edges = tuple[tuple[int, int], ...]


# -- the combinatorics of the moments (independent of the data; computed once) ---------------------------------


def _set_partitions(items: Sequence[int]) -> list[list[list[int]]]:
    if not items:
        return [[]]
    first, rest = items[0], items[1:]
    out = []
    for p in _set_partitions(rest):
        out.append([[first], *p])
        for i in range(len(p)):
            out.append([*p[:i], [first, *p[i]], *p[i + 1 :]])
    return out


def _graph(blocks: Sequence[Sequence[int]], k: int) -> Edges:
    """The multigraph of a partition of the 2k positions: vertex b for block b, edge f between the blocks of
    positions 2f and 2f + 1 (the row and column index of the f-th factor)."""
    where = {pos: b for b, block in enumerate(blocks) for pos in block}
    return tuple((where[2 * f], where[2 * f + 1]) for f in range(k))


@functools.lru_cache(maxsize=3)
def _scheme(k: int) -> tuple[tuple[int, Edges, tuple[tuple[float, Edges], ...]], ...]:
    """For each partition σ of the 2k positions: its block count, its graph, and the Möbius expansion of the
    exact sum E(σ) into unrestricted contractions, Σ_τ μ(σ, τ) C(G(τ)) over the coarsenings τ of σ, with
    μ(σ, τ) = Π_B (−1)^(|B|−1) (|B| − 1)! over the blocks B of τ (|B|: how many blocks of σ it merges)."""
    out = []
    for sigma in _set_partitions(list(range(2 * k))):
        terms: dict[Edges, float] = {}
        for merge in _set_partitions(list(range(len(sigma)))):
            mu = 1.0
            for group in merge:
                mu *= (-1) ** (len(group) - 1) * math.factorial(len(group) - 1)
            tau = [[pos for b in group for pos in sigma[b]] for group in merge]
            key = _canonical(_graph(tau, k))
            terms[key] = terms.get(key, 0.0) + mu
        out.append((len(sigma), _canonical(_graph(sigma, k)), tuple((c, g) for g, c in terms.items() if c != 0)))
    return tuple(out)


def _canonical(edges: Edges) -> Edges:
    """A label-independent form of a small multigraph (the lexicographically least relabelling)."""
    vertices = sorted({v for e in edges for v in e})
    best: Edges | None = None
    for order in itertools.permutations(range(len(vertices))):
        relabel = dict(zip(vertices, order))
        form: Edges = tuple(sorted((min(relabel[u], relabel[v]), max(relabel[u], relabel[v])) for u, v in edges))
        if best is None or form < best:
            best = form
    return best if best is not None else ()


def _components(edges: Edges) -> list[Edges]:
    parent: dict[int, int] = {}

    def find(v: int) -> int:
        while parent.setdefault(v, v) != v:
            v = parent[v]
        return v

    for u, v in edges:
        parent[find(u)] = find(v)
    groups: dict[int, list[tuple[int, int]]] = {}
    for e in edges:
        groups.setdefault(find(e[0]), []).append(e)
    return [_canonical(tuple(g)) for g in groups.values()]


def _falling(n: int, m: int) -> float:
    out = 1.0
    for i in range(m):
        out *= n - i
    return out


# -- contractions of one matrix ----------------------------------------------------------------------------------


class _Trace:
    """The contractions C(G) = Σ over vertex labellings of Π_edges A_(u,v) of one matrix, for the multigraphs of
    up to three edges (a product over connected components)."""

    n: int

    def component(self, edges: Edges) -> float:
        raise NotImplementedError

    @functools.cached_property
    def _memo(self) -> dict[Edges, float]:
        return {}

    def contract(self, edges: Edges) -> float:
        if edges not in self._memo:
            value = 1.0
            for comp in _components(edges):
                if comp not in self._memo:
                    self._memo[comp] = self.component(comp)
                value *= self._memo[comp]
            self._memo[edges] = value
        return self._memo[edges]

    @functools.cached_property
    def _sums(self) -> dict[int, list[float]]:
        return {}

    def exact_sums(self, k: int) -> list[float]:
        """E(σ) for every partition σ of the 2k positions (in :func:`_scheme`'s order); kept, since one layer's
        side enters every cell of its row or column of a layers × layers matrix."""
        if k not in self._sums:
            self._sums[k] = [sum(c * self.contract(g) for c, g in terms) for _, _, terms in _scheme(k)]
        return self._sums[k]


def _leaf(edges: Edges) -> bool:
    degree: dict[int, int] = {}
    for u, v in edges:
        degree[u] = degree.get(u, 0) + 1
        degree[v] = degree.get(v, 0) + 1
    return any(d == 1 for d in degree.values())


class DenseTrace(_Trace):
    """Contractions of a dense symmetric (n, n) float64 matrix: a tree of edges by passing messages (O(n²)),
    the one cycle three edges allow, a triangle, as tr(A³) (O(n³))."""

    def __init__(self, a: torch.Tensor) -> None:
        self.a = a.to(torch.float64)
        self.n = int(a.shape[0])
        self.diag = self.a.diagonal()
        self.powers: dict[int, torch.Tensor] = {1: self.a}

    def _power(self, m: int) -> torch.Tensor:
        if m not in self.powers:
            self.powers[m] = self.a**m
        return self.powers[m]

    def component(self, edges: Edges) -> float:
        vertices = sorted({v for e in edges for v in e})
        weight = {v: torch.ones_like(self.diag) for v in vertices}
        pairs: dict[tuple[int, int], int] = {}
        for u, v in edges:
            if u == v:
                weight[u] = weight[u] * self.diag
            else:
                key = (min(u, v), max(u, v))
                pairs[key] = pairs.get(key, 0) + 1
        if len(pairs) >= len(vertices):  # a cycle: with three edges, a simple triangle
            a = self.a
            return float(((a @ a) * a).sum())
        neighbours: dict[int, list[tuple[int, int]]] = {v: [] for v in vertices}
        for (u, v), m in pairs.items():
            neighbours[u].append((v, m))
            neighbours[v].append((u, m))

        def message(v: int, parent: int | None) -> torch.Tensor:
            out = weight[v]
            for w, m in neighbours[v]:
                if w != parent:
                    out = out * (self._power(m) @ message(w, v))
            return out

        return float(message(vertices[0], None).sum())


@dataclass
class _LinearStats:
    n: int
    sum_r: float  # Σ R_i = tr A
    r: torch.Tensor  # R_i = ‖x_i‖² (the diagonal of A = XXᵀ)
    q: torch.Tensor  # q_i = x_iᵀ C x_i = (A²)_ii
    tr2: float  # tr A² = ‖C‖²
    tr3: float  # tr A³ = tr C³
    cube: float  # Σ_ij (x_i·x_j)³


class LinearTrace(_Trace):
    """Contractions of A = XXᵀ − c·H for column-centred X (n, p), H = I − 11ᵀ/n, from feature-space statistics and
    one strip pass for Σᵢⱼ (xᵢ·xⱼ)³; with ``unbiased``, of the U-centred Gram Ũ(XXᵀ) instead (zero diagonal).

    Both A's rows sum to zero, so every graph with a vertex of degree one contracts to 0; the few others (loops,
    double and triple edges, a loop-edge-loop path, a triangle) have closed forms in R_i = ‖x_i‖²,
    q_i = x_iᵀ(XᵀX)x_i, tr (XᵀX)², tr (XᵀX)³ and Σ (x_i·x_j)³. ``c = tr A / (n − 1)`` makes the trace zero and so
    the mean of T zero: the central moments then come without subtracting large raw moments.
    """

    def __init__(
        self, x: torch.Tensor, *, unbiased: bool, shift: bool = True, block: int = 1024, sample: int | None = None
    ) -> None:
        x = x.to(torch.float64)
        n = int(x.shape[0])
        self.n = n
        c = x.T @ x
        r = (x * x).sum(dim=1)
        xc = x @ c
        q = (xc * x).sum(dim=1)
        # tr C² and tr C³ from products (tr C³ = Σ (C²)∘C), not an eigendecomposition: one p³ product, several
        # times faster than eigvalsh at the widths of real layers
        tr2 = float(c.square().sum())
        tr3 = float(((c @ c) * c).sum())
        cube = _cube_sum(x, block) if sample is None or sample >= n else _sampled_cube_sum(x, r, sample, block)
        stats = _LinearStats(n, float(r.sum()), r, q, tr2, tr3, cube)
        self.sampled = sample is not None and sample < n
        self.stats, self.x, self.unbiased = stats, x, unbiased
        self.gram = c  # XᵀX of the centred rows (a permutation test's observed value reuses it)
        self.shift = stats.sum_r / (n - 1) if (shift and not unbiased) else 0.0
        if unbiased:
            # Ũ_ij = k_ij + g_i + g_j off the diagonal, 0 on it (U-centring of the centred Gram, whose rows sum to 0)
            self.g = r / (n - 2) - stats.sum_r / (2 * (n - 1) * (n - 2))

    @property
    def scale(self) -> float:
        """‖A‖_F (of the shifted or U-centred matrix)."""
        return math.sqrt(max(self._e2(), 0.0))

    def _d(self) -> torch.Tensor:
        n, c = self.n, self.shift
        return self.stats.r - c * (1 - 1 / n)

    def _e2(self) -> float:
        s, n, c = self.stats, self.n, self.shift
        if self.unbiased:
            g = self.g
            full = s.tr2 + 2 * n * float((g * g).sum()) + 2 * float(g.sum()) ** 2
            return full - float(((s.r + 2 * g) ** 2).sum())
        return s.tr2 - 2 * c * s.sum_r + c * c * (n - 1)

    def component(self, edges: Edges) -> float:
        if _leaf(edges):
            return 0.0
        s, n, c = self.stats, self.n, self.shift
        vertices = sorted({v for e in edges for v in e})
        loops = sum(1 for u, v in edges if u == v)
        if self.unbiased and loops:
            return 0.0  # a zero diagonal
        if len(vertices) == 1:
            return float((self._d() ** loops).sum())
        if len(vertices) == 3:  # a triangle
            return self._triangle()
        multiplicity = len(edges) - loops
        if multiplicity == 3:
            return self._e3()
        if multiplicity == 2 and loops == 0:
            return self._e2()
        d = self._d()
        if multiplicity == 2:  # a double edge with a loop at one end: Σ d_i (A²)_ii
            a2 = s.q - 2 * c * s.r + c * c * (1 - 1 / n)
            return float((d * a2).sum())
        # an edge with a loop at each end: dᵀ A d
        xd = self.x.T @ d
        return float(xd @ xd) - c * (float(d @ d) - float(d.sum()) ** 2 / n)

    def _e3(self) -> float:
        s, n, c = self.stats, self.n, self.shift
        if self.unbiased:
            g = self.g
            xg = self.x.T @ g
            full = (
                s.cube
                + 6 * float((g * s.q).sum())
                + 6 * float(xg @ xg)
                + 2 * n * float((g**3).sum())
                + 6 * float((g * g).sum()) * float(g.sum())
            )
            return full - float(((s.r + 2 * g) ** 3).sum())
        h3 = n * (1 - 1 / n) ** 3 - (n - 1) / n**2
        sq = float((s.r * s.r).sum()) - s.tr2 / n
        return s.cube - 3 * c * sq + 3 * c * c * s.sum_r * (1 - 2 / n) - c**3 * h3

    def _triangle(self) -> float:
        s, n, c = self.stats, self.n, self.shift
        if not self.unbiased:
            return s.tr3 - 3 * c * s.tr2 + 3 * c * c * s.sum_r - c**3 * (n - 1)
        # Ũ = ZWᵀ − D with Z = [X, g, 1], W = [X, 1, g], D = diag(R + 2g): tr(Ũ³) by the small (p + 2)² matrix WᵀZ
        g, x = self.g, self.x
        ones = torch.ones_like(g)
        z = torch.cat([x, g[:, None], ones[:, None]], dim=1)
        w = torch.cat([x, ones[:, None], g[:, None]], dim=1)
        small = w.T @ z
        m_diag = (z * w).sum(dim=1)  # M_ii
        m2_diag = ((z @ small) * w).sum(dim=1)  # (M²)_ii
        dd = s.r + 2 * g
        tr_m3 = float(torch.trace(small @ small @ small))
        return tr_m3 - 3 * float((dd * m2_diag).sum()) + 3 * float((dd * dd * m_diag).sum()) - float((dd**3).sum())


def _cube_sum(x: torch.Tensor, block: int) -> float:
    """Σᵢⱼ (xᵢ·xⱼ)³ over all ordered pairs, from the upper triangle of strips of the Gram (float64): each strip of
    rows against the rows from its own first on, the diagonal block once and the rest twice."""
    n = x.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, n, block):
        stop = min(n, start + block)
        g = x[start:stop] @ x[start:].T
        width = stop - start
        diag_block = g[:, :width]
        total += 2.0 * g.pow(3).sum() - diag_block.pow(3).sum()
    return float(total)


def _sampled_cube_sum(x: torch.Tensor, r: torch.Tensor, rows: int, block: int) -> float:
    """An unbiased estimate of Σᵢⱼ (xᵢ·xⱼ)³: the diagonal Σ Rᵢ³ exactly, the off-diagonal sum from ``rows`` rows
    drawn without replacement (a fixed seed, so the result is reproducible), each against every row, scaled by
    n / rows. It enters the third moment only (the skewness of the fitted tail)."""
    n = x.shape[0]
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:rows].to(x.device)
    off = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, rows, block):
        idx = pick[start : start + block]
        g = x[idx] @ x.T
        off += g.pow(3).sum() - r[idx].pow(3).sum()
    return float(r.pow(3).sum()) + float(off) * n / rows


@dataclass
class TraceSide:
    """One representation's part in a trace statistic T = tr(A Π B Πᵀ), as a measure prepares it.

    ``trace`` holds the contractions of A (shifted to zero trace where the measure's A is double-centred),
    ``norm`` this side's factor in the measure's denominator, ``trace_a`` the trace of the unshifted A (with both
    sides shifted, E[T] = tr A · tr B / (n − 1)), ``transform`` the increasing map from T / (norm_a · norm_b) to
    the measure's value ("identity", or "sqrt" for distance correlation) and ``approximated`` what, if anything,
    was estimated rather than computed exactly.
    """

    trace: _Trace
    norm: float
    trace_a: float = 0.0
    transform: str = "identity"
    approximated: str | None = None
    #: The effective share of samples in A: (Σ eᵢ)² / (n Σ eᵢ²) with eᵢ = Σⱼ Aᵢⱼ² each sample's energy in A; near
    #: 0 when a few samples dominate (heavy-tailed rows), where the permutation distribution is too lumpy for a
    #: fitted three-moment tail.
    spread: float = 1.0


def pair_moments(a: TraceSide, b: TraceSide) -> NullMoments:
    """The exact permutation moments of T / (norm_a · norm_b) for two prepared sides (before ``transform``)."""
    n = a.trace.n
    return permutation_moments(a.trace, b.trace, a.norm * b.norm, a.trace_a * b.trace_a / (n - 1))


def shifted(m: torch.Tensor) -> tuple[torch.Tensor, float]:
    """A double-centred dense matrix minus (tr / (n − 1))·H, which has zero trace, and the trace removed."""
    n = m.shape[0]
    tr = float(m.diagonal().sum())
    out = m - (tr / (n - 1)) * (torch.eye(n, dtype=m.dtype, device=m.device) - 1.0 / n)
    return out, tr


# -- the moments of T and the fitted tail ------------------------------------------------------------------------


@dataclass(frozen=True)
class NullMoments:
    """The mean, standard deviation and skewness of a measure over all permutations of y's rows."""

    mean: float
    sd: float
    skewness: float


def permutation_moments(a: _Trace, b: _Trace, scale: float = 1.0, offset: float = 0.0) -> NullMoments:
    """Exact moments of (T − … + offset) / scale, T = tr(A Π B Πᵀ), over every permutation Π (n! of them)."""
    n = a.n
    raw = []
    for k in (1, 2, 3):
        ea, eb = a.exact_sums(k), b.exact_sums(k)
        raw.append(sum(x * y / _falling(n, m) for (m, _, _), x, y in zip(_scheme(k), ea, eb) if m <= n))
    m1, m2, m3 = raw
    var = max(m2 - m1 * m1, 0.0)
    mu3 = m3 - 3 * m1 * m2 + 2 * m1**3
    sd = math.sqrt(var)
    skew = mu3 / sd**3 if sd > 0 else 0.0
    return NullMoments((m1 + offset) / scale, sd / abs(scale), skew if scale > 0 else -skew)


#: Dense trace forms (RBF kernels, distances, RDMs) hold n × n matrices and a tr(A³): up to this many samples.
DENSE_NULL_MAX = 4096
#: Linear kernels: the strip pass for Σᵢⱼ Aᵢⱼ³ is exact up to this many samples (or 4 × the width); beyond, it is
#: estimated from this many rows (or the width, if larger).
EXACT_CUBE_MAX = 4096
#: Beyond EXACT_CUBE_MAX samples, Σᵢⱼ Aᵢⱼ³ is estimated from this many rows (for one layer: or its width, if
#: larger, which costs no more than the feature-space statistics).
EXACT_SAMPLE = 1024


def linear_side(t: torch.Tensor, unbiased: bool) -> TraceSide:
    """The side of linear CKA (biased: A = Xc Xcᵀ, shifted to zero trace; unbiased: the U-centred Gram)."""
    x = t.to(torch.float64)
    x = x - x.mean(dim=0)
    n, p = x.shape
    exact = n <= max(EXACT_CUBE_MAX, 4 * p)
    trace = LinearTrace(x, unbiased=unbiased, sample=None if exact else max(EXACT_SAMPLE, p))
    approximated = None if exact else f"Σᵢⱼ Aᵢⱼ³ estimated from {max(EXACT_SAMPLE, p)} of {n} rows"
    spread = _spread(trace.stats.q)
    if unbiased:
        return TraceSide(trace, trace.scale, 0.0, approximated=approximated, spread=spread)
    return TraceSide(trace, math.sqrt(trace.stats.tr2), trace.stats.sum_r, approximated=approximated, spread=spread)


def _spread(energy: torch.Tensor) -> float:
    total = float(energy.sum())
    return total * total / (energy.numel() * float(energy.square().sum())) if total > 0 else 1.0


def dense_side(k: torch.Tensor, how: str, transform: str = "identity") -> TraceSide:
    """The side of a dense kernel, distance or dissimilarity matrix ``k`` (n, n): ``how`` "double" (A = HKH,
    shifted to zero trace: biased HSIC, distance covariance), "u" (the U-centred matrix: unbiased HSIC), or
    "offdiagonal" (the off-diagonal entries minus their mean, a zero diagonal: the Mantel statistic)."""
    k = k.to(torch.float64)
    n = k.shape[0]
    if how == "double":
        a = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
        norm = float(a.square().sum().sqrt())
        spread = _spread(row_norms(a, squared=True))
        a, tr = shifted(a)
        return TraceSide(DenseTrace(a), norm, tr, transform, spread=spread)
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    if how == "u":
        kt = k.masked_fill(eye, 0.0)
        row = kt.sum(dim=1, keepdim=True)
        a = kt - row / (n - 2) - row.T / (n - 2) + kt.sum() / ((n - 1) * (n - 2))
        a = a.masked_fill(eye, 0.0)
    else:
        off = k.masked_fill(eye, 0.0)
        a = (off - off.sum() / (n * (n - 1))).masked_fill(eye, 0.0)
    return TraceSide(
        DenseTrace(a), float(a.square().sum().sqrt()), 0.0, transform, spread=_spread(row_norms(a, squared=True))
    )


def combined_side(sides: Sequence[TraceSide]) -> TraceSide:
    """The side whose trace statistic is the sum over layers of T_i / norm_i: Σ_i A_i / norm_i is a matrix of the
    same kind (for linear kernels the Gram of the layers' features side by side, each scaled by 1/√norm_i; U-centring
    is linear), so the mean over a layers × layers matrix of a measure has an exact null too (divide by the number
    of cells)."""
    from ._base import NoTraceForm

    if any(s.transform != "identity" for s in sides):
        raise NoTraceForm("the mean of distance correlations is not a trace statistic (each is a square root)")
    trace_a = sum(s.trace_a / s.norm for s in sides)
    traces = [s.trace for s in sides]
    if all(isinstance(t, LinearTrace) for t in traces):
        linear = [t for t in traces if isinstance(t, LinearTrace)]
        x = torch.cat([t.x / math.sqrt(s.norm) for t, s in zip(linear, sides)], dim=1)
        n = x.shape[0]
        # the layers side by side are wide: an exact strip pass would cost O(n² · Σ widths), so beyond
        # EXACT_CUBE_MAX samples Σᵢⱼ Aᵢⱼ³ (the skewness only) is estimated from EXACT_SAMPLE rows
        exact = n <= EXACT_CUBE_MAX
        trace = LinearTrace(x, unbiased=linear[0].unbiased, sample=None if exact else EXACT_SAMPLE)
        how = None if exact else f"Σᵢⱼ Aᵢⱼ³ of the layers side by side estimated from {EXACT_SAMPLE} of {n} rows"
        return TraceSide(trace, 1.0, trace_a, approximated=how)
    if all(isinstance(t, DenseTrace) for t in traces):
        dense = [t for t in traces if isinstance(t, DenseTrace)]
        return TraceSide(DenseTrace(sum(t.a / s.norm for t, s in zip(dense, sides))), 1.0, trace_a)  # type: ignore[arg-type]
    raise NoTraceForm("the layers' trace forms differ in kind")  # pragma: no cover - one measure, one kind
