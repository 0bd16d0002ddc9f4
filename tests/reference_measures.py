"""Independent float64 references for the moment-based measures, written from the papers' formulas on the raw
data matrices (never from co-moments): SVDs of centred data, QR-based canonical correlations (Björck & Golub),
explicit whitened data matrices as netrep builds them, least squares on explicit train/test splits.
Nothing here imports reprsim.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.stats


def centred(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x - x.mean(axis=0)


def nbs(x: np.ndarray, y: np.ndarray) -> float:
    """‖XcᵀYc‖_* / (‖Xc‖_F ‖Yc‖_F), the nuclear norm from the singular values of the cross product."""
    xc, yc = centred(x), centred(y)
    return float(np.linalg.svd(xc.T @ yc, compute_uv=False).sum() / (np.linalg.norm(xc) * np.linalg.norm(yc)))


def procrustes(x: np.ndarray, y: np.ndarray, score: str) -> float:
    """Procrustes scores, the Euclidean ones from the optimal rotation applied to unit-Frobenius data."""
    if score == "nbs":
        return nbs(x, y)
    if score == "angular":
        return float(np.arccos(min(nbs(x, y), 1.0)))
    xc, yc = centred(x), centred(y)
    xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    p, q = xc.shape[1], yc.shape[1]
    width = max(p, q)
    xp = np.hstack([xc, np.zeros((len(xc), width - p))])  # zero-pad to a common width, as netrep does
    yp = np.hstack([yc, np.zeros((len(yc), width - q))])
    rot, _ = scipy.linalg.orthogonal_procrustes(yp, xp)  # the orthogonal map that takes y closest to x
    sq = float(np.linalg.norm(xp - yp @ rot) ** 2)
    return sq if score == "squared_euclidean" else float(np.sqrt(sq))


def whiten(xc: np.ndarray, alpha: float) -> np.ndarray:
    """netrep's partial whitening matrix Z = V(α + (1 − α)λ^(−1/2))Vᵀ of XcᵀXc (full-rank data here)."""
    lam, v = np.linalg.eigh(xc.T @ xc)
    return (v * (alpha + (1 - alpha) * lam**-0.5)) @ v.T


def angular(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.arccos(np.clip(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1)))


def pad(a: np.ndarray, width: int) -> np.ndarray:
    """Zero columns up to ``width`` (netrep's zero_pad=True for representations of different widths)."""
    return np.hstack([a, np.zeros((len(a), width - a.shape[1]))])


def shape_metric(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """Whiten the data matrices, zero-pad to one width, rotate y onto x (orthogonal Procrustes), then the
    angle between them."""
    xw, yw = centred(x) @ whiten(centred(x), alpha), centred(y) @ whiten(centred(y), alpha)
    width = max(xw.shape[1], yw.shape[1])
    xw, yw = pad(xw, width), pad(yw, width)
    u, _, vt = np.linalg.svd(xw.T @ yw)
    return angular(xw @ u, yw @ vt.T)


def shape_metric_cv(x: np.ndarray, y: np.ndarray, alpha: float, folds: int | np.ndarray) -> float:
    """netrep's fit on the other folds (means, whitening, rotation), score on the held-out fold; fold mean.
    ``folds`` is K (sample i in fold i mod K) or every sample's fold label."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    fold = np.arange(len(x)) % folds if isinstance(folds, int) else np.asarray(folds)
    scores = []
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        mx, my = x[tr].mean(0), y[tr].mean(0)
        width = max(x.shape[1], y.shape[1])
        zx, zy = pad(whiten(x[tr] - mx, alpha), width), pad(whiten(y[tr] - my, alpha), width)
        u, _, vt = np.linalg.svd(((x[tr] - mx) @ zx).T @ ((y[tr] - my) @ zy))
        scores.append(angular((x[te] - mx) @ zx @ u, (y[te] - my) @ zy @ vt.T))
    return float(np.mean(scores))


def canonical_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Björck & Golub: the singular values of QxᵀQy, Q from QR of the centred data."""
    qx, _ = np.linalg.qr(centred(x))
    qy, _ = np.linalg.qr(centred(y))
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


def svcca(x: np.ndarray, y: np.ndarray, keep: float | int) -> float:
    """Top principal components of each side (SVD of the centred data), then the mean canonical correlation."""

    def top(a: np.ndarray) -> np.ndarray:
        u, s, _ = np.linalg.svd(centred(a), full_matrices=False)
        if isinstance(keep, int):
            k = keep
        else:
            frac = np.cumsum(s**2) / np.sum(s**2)
            k = int(np.searchsorted(frac, keep - 1e-12) + 1)
        return u[:, :k] * s[:k]

    return float(canonical_correlations(top(x), top(y)).mean())


def pwcca(x: np.ndarray, y: np.ndarray, side: str = "narrower") -> float:
    """Morcos et al.: one side's canonical variates h_i (orthonormal), α_i ∝ Σ_j |⟨h_i, x_j⟩| over its neurons;
    the side with fewer neurons by default, as the google/svcca code picks it."""
    xc, yc = centred(x), centred(y)
    if side == "y" or (side == "narrower" and yc.shape[1] < xc.shape[1]):
        xc, yc = yc, xc
    qx, _ = np.linalg.qr(xc)
    qy, _ = np.linalg.qr(yc)
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    h = qx @ u  # canonical variates of x, unit norm
    weights = np.abs(h.T @ xc).sum(axis=1)
    return float(np.sum(weights * rho) / weights.sum())


def ridge_fit(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intercept (unpenalised) and coefficients by solving the normal equations of the centred data."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    if ridge == 0.0:
        b = np.linalg.lstsq(xc, yc, rcond=None)[0]
    else:
        b = np.linalg.solve(xc.T @ xc + ridge * np.eye(x.shape[1]), xc.T @ yc)
    return mx, my, b


def pls_fit(x: np.ndarray, y: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PLS2 by NIPALS on the data, as scikit-learn's PLSRegression(scale=False) with exact singular vectors:
    deflate X and Y by each score; coefficients W (PᵀW)⁻¹ Qᵀ."""
    mx, my = x.mean(0), y.mean(0)
    xk, yk = x - mx, y - my
    w_, p_, q_ = [], [], []
    first = None
    for _ in range(components):
        u, sv, _ = np.linalg.svd(xk.T @ yk)
        first = sv[0] if first is None else first
        if sv[0] <= 1e-12 * first:
            break
        t = xk @ u[:, 0]
        tt = t @ t
        p, q = xk.T @ t / tt, yk.T @ t / tt
        xk, yk = xk - np.outer(t, p), yk - np.outer(t, q)
        w_.append(u[:, 0])
        p_.append(p)
        q_.append(q)
    w, p, q = np.array(w_).T, np.array(p_).T, np.array(q_).T
    return mx, my, w @ np.linalg.inv(p.T @ w) @ q.T


def predictions(
    x: np.ndarray, y: np.ndarray, ridge: float, folds: int | np.ndarray | None, components: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(y, ŷ): the in-sample or out-of-fold ridge (or PLS) predictions of y from x; ``folds`` is K (sample i in
    fold i mod K) or every sample's fold label."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)

    def fit(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return ridge_fit(a, b, ridge) if components is None else pls_fit(a, b, components)

    pred = np.empty_like(y)
    if folds is None:
        mx, my, b = fit(x, y)
        pred = my + (x - mx) @ b
    else:
        fold = np.arange(len(x)) % folds if isinstance(folds, int) else np.asarray(folds)
        for k in np.unique(fold):
            mx, my, b = fit(x[fold != k], y[fold != k])
            pred[fold == k] = my + (x[fold == k] - mx) @ b
    return y, pred


def predictivity(
    x: np.ndarray,
    y: np.ndarray,
    ridge: float,
    folds: int | np.ndarray | None,
    reduce: str,
    components: int | None = None,
) -> float:
    """R² of the (out-of-fold) predictions, residuals pooled against the total variance about the mean."""
    y, pred = predictions(x, y, ridge, folds, components)
    rss = ((y - pred) ** 2).sum(0)
    tss = ((y - y.mean(0)) ** 2).sum(0)
    return float(1 - rss.sum() / tss.sum()) if reduce == "variance_weighted" else float(np.mean(1 - rss / tss))


def predictivity_r(
    x: np.ndarray,
    y: np.ndarray,
    ridge: float,
    folds: int | np.ndarray | None,
    power: int = 1,
    components: int | None = None,
) -> float:
    """The mean over targets of scipy's Pearson r (or r²) between the pooled (out-of-fold) predictions and y."""
    y, pred = predictions(x, y, ridge, folds, components)
    r = np.array([scipy.stats.pearsonr(pred[:, j], y[:, j])[0] for j in range(y.shape[1])])
    return float(np.mean(r**power))


def knn_lists(x: np.ndarray, k: int, neighbours: str = "cosine", include_self: bool = False) -> np.ndarray:
    """(n, k): each sample's k nearest neighbours by the dense similarity matrix, nearest first, self excluded
    unless ``include_self``, ties to the lower index (a stable sort of the negated similarities)."""
    z = np.asarray(x, np.float64).reshape(len(x), -1)
    if neighbours == "cosine":
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = -cdist_sq(z) if neighbours == "euclidean" else z @ z.T
    # equal up to rounding counts as tied (exact twins' products may differ in the last bit)
    sim = np.round(sim, 10)
    if not include_self:
        np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def knn_sets(x: np.ndarray, k: int, neighbours: str = "cosine") -> list[set[int]]:
    return [set(row.tolist()) for row in knn_lists(x, k, neighbours)]


def hsic_song(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC of Song et al. (2012) on dense (not necessarily symmetric) matrices, as platonic-rep
    writes it: (Σ K̃ ∘ L̃ᵀ + 1ᵀK̃1 1ᵀL̃1 / ((n − 1)(n − 2)) − 2 1ᵀK̃L̃1 / (n − 2)) / (n(n − 3))."""
    n = len(k)
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    value = np.sum(kt * lt.T) + kt.sum() * lt.sum() / ((n - 1) * (n - 2)) - 2 * np.sum(kt @ lt) / (n - 2)
    return float(value / (n * (n - 3)))


def cknna(x: np.ndarray, y: np.ndarray, k: int, kernel: str = "cosine", unbiased: bool = True) -> float:
    """Huh et al.'s CKNNA from dense kernels and dense 0/1 masks (platonic-rep's definition, without its
    1e-6 in the denominator)."""

    def kern(a: np.ndarray) -> np.ndarray:
        z = np.asarray(a, np.float64).reshape(len(a), -1)
        if kernel == "cosine":
            z = z / np.linalg.norm(z, axis=1, keepdims=True)
        return z @ z.T

    def mask(a: np.ndarray) -> np.ndarray:
        m = np.zeros((len(a), len(a)))
        np.put_along_axis(m, knn_lists(a, k, kernel, include_self=not unbiased), 1.0, axis=1)
        return m

    def hsic(p: np.ndarray, q: np.ndarray) -> float:
        if unbiased:
            return hsic_song(p, q)
        h = np.eye(len(p)) - 1.0 / len(p)
        return float(np.trace(p @ h @ q @ h))

    kx, ky, mx, my = kern(x), kern(y), mask(x), mask(y)
    both = mx * my
    return hsic(both * kx, both * ky) / np.sqrt(hsic(mx * kx, mx * kx) * hsic(my * ky, my * ky))


def second_order_cosine(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """ReSi's second-order cosine similarity: per sample, the cosine of its cosine-distance vectors to the
    union of both neighbour sets; 0 where a vector is zero. 1 − cos(a, b) = ‖â − b̂‖²/2, taken from scipy's
    differences so that duplicates are exactly 0 apart."""
    dists = []
    for a in (x, y):
        z = np.asarray(a, np.float64).reshape(len(a), -1)
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        dists.append(cdist_sq(z) / 2.0)
    a_sets, b_sets = knn_sets(x, k), knn_sets(y, k)
    out = []
    for i, (s, t) in enumerate(zip(a_sets, b_sets)):
        u = sorted(s | t)
        va, vb = dists[0][i, u], dists[1][i, u]
        den = np.linalg.norm(va) * np.linalg.norm(vb)
        out.append(float(va @ vb / den) if den > 0 else 0.0)
    return float(np.mean(out))


def rank_similarity(x: np.ndarray, y: np.ndarray, k: int, neighbours: str = "cosine") -> float:
    """ReSi's k-NN rank similarity, sample by sample from the ordered neighbour lists."""
    a, b = knn_lists(x, k, neighbours), knn_lists(y, k, neighbours)
    out = []
    for ra, rb in zip(a.tolist(), b.tolist()):
        joint = set(ra) & set(rb)
        if not joint:
            out.append(0.0)
            continue
        score = 0.0
        for j in joint:
            p, q = ra.index(j) + 1, rb.index(j) + 1
            score += 2.0 / ((1 + abs(p - q)) * (p + q))
        out.append(score / sum(1.0 / m for m in range(1, len(joint) + 1)))
    return float(np.mean(out))


def cdist_sq(z: np.ndarray) -> np.ndarray:
    from scipy.spatial.distance import cdist

    return cdist(z, z, "sqeuclidean")


def mutual_knn(x: np.ndarray, y: np.ndarray, k: int, neighbours: str = "cosine") -> float:
    a, b = knn_sets(x, k, neighbours), knn_sets(y, k, neighbours)
    return float(np.mean([len(s & t) / k for s, t in zip(a, b)]))


def jaccard_knn(x: np.ndarray, y: np.ndarray, k: int, neighbours: str = "cosine") -> float:
    a, b = knn_sets(x, k, neighbours), knn_sets(y, k, neighbours)
    return float(np.mean([len(s & t) / len(s | t) for s, t in zip(a, b)]))


def distance_correlation(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    """Székely et al. (2007) dCor from double-centred distance matrices, or Székely & Rizzo's (2014)
    bias-corrected dCor² from U-centred ones (zero diagonal), with scipy's pairwise distances."""
    from scipy.spatial.distance import cdist

    def centre(a: np.ndarray) -> np.ndarray:
        n = len(a)
        if not unbiased:
            return a - a.mean(0) - a.mean(1)[:, None] + a.mean()
        u = a - a.sum(0) / (n - 2) - a.sum(1)[:, None] / (n - 2) + a.sum() / ((n - 1) * (n - 2))
        np.fill_diagonal(u, 0.0)
        return u

    xa = np.asarray(x, np.float64).reshape(len(x), -1)
    ya = np.asarray(y, np.float64).reshape(len(y), -1)
    a, b = centre(cdist(xa, xa)), centre(cdist(ya, ya))
    r2 = np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(r2 if unbiased else np.sqrt(max(r2, 0.0)))


def ensd(x: np.ndarray, y: np.ndarray) -> float:
    """Giaffar et al. (2023): PR(X)·PR(Y)·tr(KL) / (tr K · tr L), with the n × n Grams K = XcXcᵀ, L = YcYcᵀ of the
    centred data and the participation ratio PR = (tr K)² / tr(K²)."""
    k, l = centred(x) @ centred(x).T, centred(y) @ centred(y).T

    def participation(g: np.ndarray) -> float:
        return float(np.trace(g) ** 2 / np.trace(g @ g))

    return participation(k) * participation(l) * float(np.trace(k @ l)) / float(np.trace(k) * np.trace(l))


def eigenspace_overlap(x: np.ndarray, y: np.ndarray) -> float:
    """May et al. (2019) as ReSi computes it: ‖UᵀV‖²_F / max(p, q), with U and V the left singular vectors of the
    uncentred data matrices, truncated to each matrix's rank."""
    u = np.linalg.svd(x, full_matrices=False)[0][:, : np.linalg.matrix_rank(x)]
    v = np.linalg.svd(y, full_matrices=False)[0][:, : np.linalg.matrix_rank(y)]
    return float(np.linalg.norm(u.T @ v) ** 2 / max(x.shape[1], y.shape[1]))


def gulp(x: np.ndarray, y: np.ndarray, ridge: float = 0.0) -> float:
    """T1 + T2 − 2T3 of Boix-Adserà et al. from the unit-trace covariances Σ = XcᵀXc / ‖Xc‖²_F, by explicit
    inverses: T1 = ‖Σx(Σx + λI)⁻¹‖²_F, T3 = tr(Σxy(Σy + λI)⁻¹Σyx(Σx + λI)⁻¹)."""
    xc, yc = centred(x), centred(y)
    nx, ny = np.linalg.norm(xc) ** 2, np.linalg.norm(yc) ** 2
    sx, sy, sxy = xc.T @ xc / nx, yc.T @ yc / ny, xc.T @ yc / np.sqrt(nx * ny)
    rx, ry = np.linalg.inv(sx + ridge * np.eye(len(sx))), np.linalg.inv(sy + ridge * np.eye(len(sy)))
    t1, t2 = np.sum((sx @ rx) ** 2), np.sum((sy @ ry) ** 2)
    return float(t1 + t2 - 2 * np.trace(sxy @ ry @ sxy.T @ rx))


def cycle_knn(x: np.ndarray, y: np.ndarray, k: int, neighbours: str = "cosine") -> float:
    """platonic-rep's round trip: i's neighbours in y, then their neighbours in x; does i come back?"""
    lx, ly = knn_lists(x, k, neighbours), knn_lists(y, k, neighbours)
    return float(np.mean([i in {int(a) for j in ly[i] for a in lx[j]} for i in range(len(x))]))


def _lcs(a: list[int], b: list[int]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            same = a[i - 1] == b[j - 1]
            table[i][j] = table[i - 1][j - 1] + 1 if same else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def _levenshtein(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        new = [i]
        for j in range(1, len(b) + 1):
            new.append(min(row[j] + 1, new[j - 1] + 1, row[j - 1] + (a[i - 1] != b[j - 1])))
        row = new
    return row[-1]


def lcs_knn(x: np.ndarray, y: np.ndarray, k: int, neighbours: str = "cosine") -> float:
    lx, ly = knn_lists(x, k, neighbours), knn_lists(y, k, neighbours)
    return float(np.mean([_lcs(list(a), list(b)) for a, b in zip(lx, ly)]))


def edit_distance_knn(x: np.ndarray, y: np.ndarray, k: int, neighbours: str = "cosine") -> float:
    lx, ly = knn_lists(x, k, neighbours), knn_lists(y, k, neighbours)
    return float(1 - np.mean([_levenshtein(list(a), list(b)) for a, b in zip(lx, ly)]) / k)
