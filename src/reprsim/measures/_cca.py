"""The CCA family: :class:`CCA` (mean canonical correlation or Yanai's R²), :class:`SVCCA`, :class:`PWCCA`, and
the functional forms :func:`canonical_correlations`, :func:`cca`, :func:`svcca`, :func:`pwcca`.

Canonical correlations are the singular values of Cxx^(−1/2) Cxy Cyy^(−1/2) (Cxx = XcᵀXc etc.; the 1/(n−1)
cancels), computed from each side's eigendecomposition (cached per layer) and one SVD per pair. The mean ρ
(SVCCA's summary, "cca-score" in similarity-repository) and Yanai's R² = mean ρ² ("cca-squared_score") are different
numbers and carry different names here. Centred data span n − 1 dimensions, so once p + q > n − 1 some ρ are
exactly 1 whatever the data: that, and a singular covariance, is an error unless ``ridge`` is set.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from .._validation import check_real, is_integer
from ..errors import InvalidParameterError
from ._base import Measure, as_result, evaluate, num, pair_of, register
from ._linalg import check_dimensions, check_rank, check_variance, eigh_cached, numerical_rank
from ._moments import Moments

__all__ = ["CCA", "PWCCA", "SVCCA", "canonical_correlations", "cca", "pwcca", "svcca"]

CCAReduce = Literal["mean", "yanai"]


def _check_ridge(ridge: Any) -> float:
    return check_real(ridge, "ridge", low=0.0, hint="0 for none; a finite penalty such as 1e-3")


def _inverse_root(m: Moments, side: str, ridge: float, what: str = "CCA", name: str | None = None) -> torch.Tensor:
    """W with WᵀCW = I on the whole space: Λ^(−1/2)Vᵀ of C + ridge·(tr C / p)·I, C the co-moment of ``side``
    (called ``name`` in errors, by default ``side``)."""
    c, cache = (m.cxx, m.cache_x) if side == "x" else (m.cyy, m.cache_y)
    key = ("inverse_root", ridge)
    if key not in cache:
        lam, vec = eigh_cached(c, cache)
        check_variance(m, side, what, name)
        if ridge == 0.0:
            check_rank(
                lam, m.n, name or side, m.eps, what,
                "Pass ridge > 0 (e.g. ridge=1e-3, relative to the mean variance), or reduce the width first (SVCCA "
                "keeps the top principal components)",
            )  # fmt: skip
        shift = ridge * lam.sum() / lam.numel()
        cache[key] = (lam + shift).rsqrt().unsqueeze(1) * vec.T
    out: torch.Tensor = cache[key]
    return out


#: How to get a CCA value when the widths leave no room (the fix every such error gives).
CCA_FIX = "Pass ridge > 0, use fewer features (SVCCA), or more samples."
PWCCA_FIX = "Pass ridge > 0, use fewer features, or more samples."


def _correlations(m: Moments, ridge: float) -> torch.Tensor:
    p, q = m.cxx.shape[0], m.cyy.shape[0]
    if ridge == 0.0:
        check_dimensions(m.n, p + q, "CCA", CCA_FIX)
    wx = _inverse_root(m, "x", ridge)
    wy = _inverse_root(m, "y", ridge)
    rho: torch.Tensor = torch.linalg.svdvals(wx @ m.cxy @ wy.T)
    return rho


class CCA(Measure):
    """Canonical correlation analysis summarised as the mean ρ or as Yanai's R² (mean ρ²).

    Parameters
    ----------
    reduce : {"mean", "yanai"}, default "mean"
        ``mean``: ρ̄ = mean of the min(p, q) canonical correlations. ``yanai``: R² = mean of ρ².
    ridge : float, default 0
        Adds ``ridge`` times the mean variance to each covariance's diagonal (scale-free). 0 is exact CCA,
        which needs non-singular covariances and p + q ≤ n − 1.

    Notes
    -----
    Accuracy: each ρ carries a relative error of about eps·κ, κ the larger condition number of Cxx and
    Cyy (1e-10 for κ up to about 1e5 in float64); near-singular covariances make CCA itself unstable, which
    is what ``ridge`` is for.
    """

    name = "cca"
    symmetric = True

    def __init__(self, reduce: CCAReduce = "mean", ridge: float = 0.0) -> None:
        if reduce not in ("mean", "yanai"):
            raise InvalidParameterError(f"reduce must be 'mean' or 'yanai'; got {reduce!r}")
        self.reduce = reduce
        self.form = "score" if reduce == "mean" else None
        self.ridge = _check_ridge(ridge)
        inv = {"orthogonal", "isotropic_scaling", "translation", "permutation"}
        if self.ridge == 0.0:
            inv.add("invertible_linear")
        self.invariances = frozenset(inv)
        self.min_samples = 3

    @property
    def id(self) -> str:
        ridge = f"-ridge={num(self.ridge)}" if self.ridge else ""
        return f"cca{ridge}-" + ("score" if self.reduce == "mean" else "squared_score")

    @property
    def label(self) -> str:
        return "mean CCA ρ" if self.reduce == "mean" else "Yanai's R² (mean CCA ρ²)"

    def config(self) -> dict[str, Any]:
        return {"reduce": self.reduce, "ridge": self.ridge}

    def check_samples(self, n: int, p: int, q: int) -> None:
        if self.ridge == 0.0:
            check_dimensions(n, p + q, "CCA", CCA_FIX)

    def from_moments(self, m: Moments) -> torch.Tensor:
        rho = _correlations(m, self.ridge)
        return rho.mean() if self.reduce == "mean" else (rho * rho).mean()


def _keep_count(lam: torch.Tensor, keep: float | int, eps: float) -> int:
    if isinstance(keep, int):
        return min(keep, numerical_rank(lam, eps))
    frac = torch.cumsum(lam.clamp(min=0), 0) / lam.clamp(min=0).sum()
    return min(int((frac < keep - 1e-12).sum()) + 1, numerical_rank(lam, eps))


class SVCCA(Measure):
    """SVCCA (Raghu et al. 2017): each side projected on its top principal components, then CCA summarised
    by the mean ρ (Raghu et al.'s summary) or Yanai's R².

    Parameters
    ----------
    keep : float in (0, 1] or int, default 0.99
        A float keeps the fewest components explaining at least that fraction of the variance; an int keeps
        that many (at most the rank).
    reduce : {"mean", "yanai"}, default "mean"
        As in :class:`CCA`.
    """

    name = "svcca"
    symmetric = True
    invariances = frozenset({"orthogonal", "isotropic_scaling", "translation", "permutation"})

    def __init__(self, keep: float | int = 0.99, reduce: CCAReduce = "mean") -> None:
        if reduce not in ("mean", "yanai"):
            raise InvalidParameterError(f"reduce must be 'mean' or 'yanai'; got {reduce!r}")
        self.reduce = reduce
        self.form = "score" if reduce == "mean" else None
        ok_int = is_integer(keep) and keep >= 1
        ok_float = isinstance(keep, (float, np.floating)) and 0.0 < keep <= 1.0
        if not (ok_int or ok_float):
            raise InvalidParameterError(
                f"keep must be a variance fraction in (0, 1] or a component count ≥ 1; got {keep!r}"
            )
        self.keep = int(keep) if ok_int else float(keep)
        self.min_samples = 3

    @property
    def id(self) -> str:
        kept = f"var={num(self.keep)}" if isinstance(self.keep, float) else f"dim={self.keep}"
        return f"svcca-{kept}-" + ("score" if self.reduce == "mean" else "squared_score")

    @property
    def label(self) -> str:
        return "SVCCA (mean ρ)" if self.reduce == "mean" else "SVCCA (Yanai's R²)"

    def config(self) -> dict[str, Any]:
        return {"keep": self.keep, "reduce": self.reduce}

    def from_moments(self, m: Moments) -> torch.Tensor:
        check_variance(m, "x", "SVCCA")
        check_variance(m, "y", "SVCCA")
        lx, vx = eigh_cached(m.cxx, m.cache_x)
        ly, vy = eigh_cached(m.cyy, m.cache_y)
        kx, ky = _keep_count(lx, self.keep, m.eps), _keep_count(ly, self.keep, m.eps)
        check_dimensions(m.n, kx + ky, "SVCCA's CCA", "Keep fewer components (a smaller keep) or use more samples.")
        wx = lx[:kx].rsqrt().unsqueeze(1) * vx[:, :kx].T
        wy = ly[:ky].rsqrt().unsqueeze(1) * vy[:, :ky].T
        rho: torch.Tensor = torch.linalg.svdvals(wx @ m.cxy @ wy.T)
        return rho.mean() if self.reduce == "mean" else (rho * rho).mean()


class PWCCA(Measure):
    """Projection-weighted CCA (Morcos et al. 2018): Σᵢ αᵢρᵢ with αᵢ ∝ Σⱼ |⟨hᵢ, xⱼ⟩|.

    hᵢ is the i-th canonical variate of one side (unit norm) and xⱼ that side's j-th centred neuron, so the
    weights are computed from Cxx alone: αᵢ ∝ Σⱼ |(Cxx aᵢ)ⱼ| with aᵢ the canonical weights.

    Parameters
    ----------
    weights_from : {"narrower", "x", "y"}, default "narrower"
        Whose canonical variates weight the correlations. The reference code (google/svcca) uses the side
        with fewer neurons (x on a tie), which makes PWCCA asymmetric when widths are equal.
    ridge : float, default 0
        As in :class:`CCA`.

    Notes
    -----
    This is Morcos et al.'s formula. google/svcca's ``pwcca.py`` differs: it builds the variates from the rotation
    of the whitened cross-covariance applied to the raw centred activations (no Cxx^(−1/2)), so its weights and
    value differ (5e-3 to 2e-2 on centred data, 0.33 with offsets), and it crashes when p > q.
    """

    name = "pwcca"
    form = "score"
    symmetric = False
    invariances = frozenset({"isotropic_scaling", "translation", "permutation"})

    def __init__(self, weights_from: Literal["narrower", "x", "y"] = "narrower", ridge: float = 0.0) -> None:
        if weights_from not in ("narrower", "x", "y"):
            raise InvalidParameterError(f"weights_from must be 'narrower', 'x' or 'y'; got {weights_from!r}")
        self.weights_from = weights_from
        self.ridge = _check_ridge(ridge)
        self.min_samples = 3

    @property
    def id(self) -> str:
        weights = "" if self.weights_from == "narrower" else f"-weights_from={self.weights_from}"
        return f"pwcca{weights}" + (f"-ridge={num(self.ridge)}" if self.ridge else "") + "-score"

    @property
    def label(self) -> str:
        return "PWCCA"

    def config(self) -> dict[str, Any]:
        return {"weights_from": self.weights_from, "ridge": self.ridge}

    def check_samples(self, n: int, p: int, q: int) -> None:
        if self.ridge == 0.0:
            check_dimensions(n, p + q, "PWCCA", PWCCA_FIX)

    def from_moments(self, m: Moments) -> torch.Tensor:
        p, q = m.cxx.shape[0], m.cyy.shape[0]
        use_y = self.weights_from == "y" or (self.weights_from == "narrower" and q < p)
        if use_y:
            m = m.swapped()
        self.check_samples(m.n, p, q)
        # after a swap, m's "x" side is the caller's y: errors name the caller's sides
        wx = _inverse_root(m, "x", self.ridge, "PWCCA", "y" if use_y else "x")
        wy = _inverse_root(m, "y", self.ridge, "PWCCA", "x" if use_y else "y")
        u, rho, _ = torch.linalg.svd(wx @ m.cxy @ wy.T, full_matrices=False)
        a = wx.T @ u  # canonical weights: the variates Xc·a have unit norm
        weights = (m.cxx @ a).abs().sum(dim=0)
        out: torch.Tensor = (weights * rho).sum() / weights.sum()
        return out


def canonical_correlations(x: Any, y: Any, *, ridge: float = 0.0) -> torch.Tensor:
    """All min(p, q) canonical correlations of ``x`` (n, p) and ``y`` (n, q), in descending order.

    Returns
    -------
    torch.Tensor, shape (min(p, q),)
        Float64 for float64 inputs; on the inputs' device for tensors, on the CPU for NumPy arrays.

    Examples
    --------
    >>> import torch
    >>> from reprsim.measures import canonical_correlations
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(500, 3, generator=g, dtype=torch.float64)
    >>> canonical_correlations(x, x[:, :2] * 2 + 1).round(decimals=6)
    tensor([1., 1.], dtype=torch.float64)
    """
    r = _check_ridge(ridge)
    m, like = pair_of(x, y, need=3)
    out = _correlations(m, r)
    result: torch.Tensor = as_result(out, like, x, y)
    return result


def cca(x: Any, y: Any, *, reduce: CCAReduce = "mean", ridge: float = 0.0) -> Any:
    """Mean canonical correlation (``reduce="mean"``) or Yanai's R² (``"yanai"``); see :class:`CCA`.

    Parameters
    ----------
    x, y : array or tensor, shape (n, ...)
        Two representations of the same samples (widths may differ).
    reduce : {"mean", "yanai"}, default "mean"
    ridge : float, default 0

    Returns
    -------
    float or torch.Tensor

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import cca
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 4))
    >>> round(cca(x, x @ rng.normal(size=(4, 4))), 6)  # CCA is invariant to invertible linear maps
    1.0
    """
    return evaluate(CCA(reduce, ridge), x, y)


def svcca(x: Any, y: Any, *, keep: float | int = 0.99, reduce: CCAReduce = "mean") -> Any:
    """SVCCA: mean canonical correlation (or Yanai's R²) of the top principal components; see :class:`SVCCA`.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import svcca
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 8))
    >>> round(svcca(x, x, keep=4), 6)
    1.0
    """
    return evaluate(SVCCA(keep, reduce), x, y)


def pwcca(x: Any, y: Any, *, weights_from: Literal["narrower", "x", "y"] = "narrower", ridge: float = 0.0) -> Any:
    """Projection-weighted CCA (Morcos et al. 2018); see :class:`PWCCA`.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import pwcca
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 5))
    >>> round(pwcca(x, 2 * x + 1), 6)
    1.0
    """
    return evaluate(PWCCA(weights_from, ridge), x, y)


register("cca", lambda: CCA("mean"))
register("cca_yanai", lambda: CCA("yanai"))
register("svcca", lambda: SVCCA())
register("pwcca", lambda: PWCCA())
