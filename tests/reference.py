"""Independent float64 NumPy reference implementations, written from the formulas in DESIGN.md.

Deliberately naive: the explicit centring matrix H, the explicit unbiased-HSIC formula of Song et al. (2012),
scipy's pairwise distances and NumPy's median. Nothing here imports reprsim.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist


def as2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


def linear_kernel(x: np.ndarray) -> np.ndarray:
    """XXᵀ of column-centred X. Both HSIC estimators are translation invariant; centring first keeps the
    unbiased formula (which works on raw Gram entries) from cancelling when the data has a large offset."""
    x = as2d(x)
    x = x - x.mean(axis=0)
    return x @ x.T


def rbf_kernel(x: np.ndarray, sigma: float | None = None, median_fraction: float = 1.0) -> np.ndarray:
    """exp(-d²/(2σ²)); σ² = f² · median of the full n×n squared-distance matrix (zeros included)."""
    d2 = cdist(as2d(x), as2d(x), "sqeuclidean")
    sigma2 = median_fraction**2 * np.median(d2) if sigma is None else sigma**2
    return np.exp(-d2 / (2.0 * sigma2))


def laplace_kernel(x: np.ndarray, sigma: float | None = None, median_fraction: float = 1.0) -> np.ndarray:
    """exp(−d/(√2σ)), the similarity-repository scheme's Laplace kernel (repsim's length scale √2σ); σ by default
    the RBF's rule, f · √(median of the full n×n squared-distance matrix, zeros included)."""
    d = cdist(as2d(x), as2d(x), "euclidean")
    s = median_fraction * np.sqrt(np.median(d**2)) if sigma is None else sigma
    return np.exp(-d / (np.sqrt(2.0) * s))


def hsic_lange(k: np.ndarray, l: np.ndarray) -> float:
    """Lange et al.'s HSIC: 2/(n(n−3)) Σ_{i>j} (HKH)_ij (HLH)_ij, the strict lower triangle of the double-centred
    Grams (the diagonal dropped)."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    kc, lc = h @ k @ h, h @ l @ h
    below = np.tril_indices(n, -1)
    return float(2.0 / (n * (n - 3)) * np.sum(kc[below] * lc[below]))


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    term1 = np.trace(kt @ lt)
    term2 = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return float((term1 + term2 - term3) / (n * (n - 3)))


def cka_from_kernels(k: np.ndarray, l: np.ndarray, unbiased: bool | str = False) -> float:
    h = hsic_lange if unbiased == "lange" else (hsic_unbiased if unbiased else hsic_biased)
    return h(k, l) / np.sqrt(h(k, k) * h(l, l))


def gram(x: np.ndarray, kernel: str, sigma: float | None = None, median_fraction: float = 1.0) -> np.ndarray:
    if kernel == "laplace":
        return laplace_kernel(x, sigma, median_fraction)
    return linear_kernel(x) if kernel == "linear" else rbf_kernel(x, sigma, median_fraction)


def cka(
    x: np.ndarray,
    y: np.ndarray,
    kernel: str = "linear",
    unbiased: bool | str = False,
    sigma: float | None = None,
    median_fraction: float = 1.0,
) -> float:
    return cka_from_kernels(gram(x, kernel, sigma, median_fraction), gram(y, kernel, sigma, median_fraction), unbiased)


def minibatch_cka(
    batches_x: list[np.ndarray],
    batches_y: list[np.ndarray],
    kernel: str = "linear",
    sigma: float | None = None,
    median_fraction: float = 1.0,
) -> float:
    """Nguyen, Raghu & Kornblith (2021): Σ HSIC₁(K,L) / sqrt(Σ HSIC₁(K,K) · Σ HSIC₁(L,L))."""
    kl = kk = ll = 0.0
    for bx, by in zip(batches_x, batches_y):
        k = gram(bx, kernel, sigma, median_fraction)
        l = gram(by, kernel, sigma, median_fraction)
        kl += hsic_unbiased(k, l)
        kk += hsic_unbiased(k, k)
        ll += hsic_unbiased(l, l)
    return kl / np.sqrt(kk * ll)


def cka_extended(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    """:func:`cka` of linear kernels computed in NumPy's extended precision (80-bit on x86: 11 more bits than
    float64), for inputs on which the float64 formulas themselves lose digits to cancellation."""
    ld = np.longdouble
    xs, ys = (np.asarray(a, dtype=ld).reshape(a.shape[0], -1) for a in (x, y))
    k, l = ((a - a.mean(axis=0)) @ (a - a.mean(axis=0)).T for a in (xs, ys))
    n = k.shape[0]
    if not unbiased:
        h = np.eye(n, dtype=ld) - np.ones((n, n), dtype=ld) / n
        kc, lc = h @ k @ h, h @ l @ h
        return float((kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum()))

    def song(a: np.ndarray, b: np.ndarray) -> np.longdouble:
        at, bt = a.copy(), b.copy()
        np.fill_diagonal(at, 0)
        np.fill_diagonal(bt, 0)
        one = np.ones(n, dtype=ld)
        return (np.trace(at @ bt) + (one @ at @ one) * (one @ bt @ one) / ((n - 1) * (n - 2))
                - 2 * (one @ at @ bt @ one) / (n - 2))  # fmt: skip

    return float(song(k, l) / np.sqrt(song(k, k) * song(l, l)))
