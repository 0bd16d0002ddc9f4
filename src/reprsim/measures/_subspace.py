"""How much two representations' column spaces overlap: the eigenspace overlap score (May et al. 2019),
:class:`EigenspaceOverlap`, :func:`eigenspace_overlap`; and how far apart the best linear predictors on them are,
GULP (Boix-Adserà et al. 2022), :class:`GULP`, :func:`gulp`.

With U (n × rank X) and V (n × rank Y) orthonormal bases of the column spaces of X and Y (the spans of their
features over the n samples), EOS = ‖UᵀV‖²_F / max(p, q): the squared cosines of the principal angles between
the two spaces, summed, over the wider width. The data are not centred (ReSi's convention, which
similarity-repository wraps as ``eigenspace_overlap_score``), so a shift of one representation changes the score.
In feature space each column space is written in the orthonormal coordinates (1/√n, the whitened centred
data), where it is all of them or all but one direction (see :func:`_column_space`), and ‖UᵀV‖²_F = ‖Px M Py‖²_F
with M the cross-Gram of the two coordinate systems: a function of the streamed co-moments and means.
"""

from __future__ import annotations

from typing import Any

import torch

from ._base import Measure, evaluate, num, register
from ._cca import _check_ridge
from ._cka import inner
from ._linalg import check_rank, check_variance, eigh_cached, numerical_rank
from ._moments import Moments

__all__ = ["GULP", "EigenspaceOverlap", "eigenspace_overlap", "gulp"]


def _column_space(
    c: torch.Tensor, mean: torch.Tensor, n: int, eps: float, cache: dict[Any, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's column space in well-conditioned coordinates: (W, P) with W = V_r Λ_r^(−1/2) the whitening of
    the centred co-moment C on its numerical range (r columns), and P the (r + 1) × (r + 1) projector onto the
    column space of X = Xc + 1μᵀ in the orthonormal coordinates (1/√n, Xc·W).

    X's columns there are Gx = [√n·μᵀ; Λ_r^(1/2) V_rᵀ]. When μ has a component outside C's range (a constant
    direction the centred data do not span), they span every coordinate and P = I. Otherwise the one direction
    they miss is z = (1, −√n·Λ_r^(−1/2) V_rᵀ μ) (Gxᵀz = 0), and P = I − zzᵀ/‖z‖². Working from the centred
    co-moment keeps the accuracy of CCA's whitening however far the data are from the origin; the uncentred second
    moment C + nμμᵀ is only asked its rank. Computed once per layer."""
    key = "column_space"
    if key not in cache:
        lam, vec = eigh_cached(c, cache)
        r = numerical_rank(lam, eps)
        scale = lam[:r].rsqrt()
        s = c + n * torch.outer(mean, mean)
        outside = numerical_rank(torch.linalg.eigvalsh((s + s.T) / 2).flip(0), eps) > r
        proj = torch.eye(r + 1, dtype=c.dtype, device=c.device)
        if not outside:
            z = torch.cat([torch.ones(1, dtype=c.dtype, device=c.device), -(n**0.5) * scale * (vec[:, :r].T @ mean)])
            proj = proj - torch.outer(z, z) / inner(z, z)
        cache[key] = (vec[:, :r] * scale, proj)
    out: tuple[torch.Tensor, torch.Tensor] = cache[key]
    return out


class EigenspaceOverlap(Measure):
    """The eigenspace overlap score of two representations (May et al. 2019, as ReSi computes it).

    ‖UᵀV‖²_F / max(p, q) for orthonormal bases U, V of the column spaces of X (n × p) and Y (n × q), uncentred:
    1 when the two spaces are equal and p = q = the common rank, 0 when they are orthogonal. It depends on the
    column spaces only, so any invertible linear map of the features leaves it unchanged; translating the data
    changes it (the all-ones direction joins the space).

    Notes
    -----
    Ranks are decided as for CCA (eigenvalues of the second moment below a tolerance set by the data's machine
    epsilon count as zero), so features that are exact linear combinations of others add nothing. Accuracy: as
    CCA's, about ε·κ(C) of the centred covariance, whatever the data's distance from the origin (the centred
    moments carry the spread, the means the offset).
    """

    name = "eigenspace_overlap"
    direction = "similarity"
    range = (0.0, 1.0)
    symmetric = True
    invariances = frozenset({"orthogonal", "isotropic_scaling", "invertible_linear", "permutation"})

    @property
    def id(self) -> str:
        return "eigenspace_overlap_score"

    @property
    def label(self) -> str:
        return "eigenspace overlap score"

    def from_moments(self, m: Moments) -> torch.Tensor:
        check_variance(m, "x", "the eigenspace overlap score")
        check_variance(m, "y", "the eigenspace overlap score")
        wx, px = _column_space(m.cxx, m.mean_x, m.n, m.eps, m.cache_x)
        wy, py = _column_space(m.cyy, m.mean_y, m.n, m.eps, m.cache_y)
        # the cross-Gram of the two coordinate bases: 1/√n with itself, and the whitened centred bases' overlap
        # (each orthogonal to 1/√n, the data being centred)
        cross = torch.zeros(px.shape[0], py.shape[0], dtype=wx.dtype, device=wx.device)
        cross[0, 0] = 1.0
        cross[1:, 1:] = wx.T @ m.cxy @ wy
        overlap = px @ cross @ py
        out: torch.Tensor = inner(overlap, overlap) / max(m.cxx.shape[0], m.cyy.shape[0])
        return out


def eigenspace_overlap(x: Any, y: Any) -> Any:
    """The eigenspace overlap score of two representations; see :class:`EigenspaceOverlap`.

    Parameters
    ----------
    x : array or tensor, shape (n, ...)
        One representation (trailing dimensions are flattened).
    y : array or tensor, shape (n, ...)
        Another representation of the same n samples; its width may differ.

    Returns
    -------
    float or torch.Tensor
        A float for NumPy inputs, a 0-d tensor (differentiable) for torch inputs.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import eigenspace_overlap
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 4))
    >>> round(eigenspace_overlap(x, x @ rng.normal(size=(4, 4))), 12)  # the same column space
    1.0
    >>> round(eigenspace_overlap(x, x[:, :2]), 12)  # half of x's space, over x's width
    0.5
    """
    return evaluate(EigenspaceOverlap(), x, y)


register("eigenspace_overlap", EigenspaceOverlap)


class GULP(Measure):
    """The GULP distance (Boix-Adserà, Lawrence, Stepaniants and Rigollet 2022), squared, as ReSi computes it.

    Each representation is centred and scaled to unit total variance, Σx = Cxx / tr Cxx (the GULP code's
    normalisation), and the value is

    T1 + T2 − 2T3, with T1 = tr(Σx(Σx + λI)⁻¹)², T2 likewise for y and T3 = tr(Σxy(Σy + λI)⁻¹Σyx(Σx + λI)⁻¹):

    the mean squared difference, over linear tasks with isotropic random weights, between the predictions of the
    best λ-ridge predictors on X and on Y. Its square root is the metric. At λ = 0 (the default, ReSi's and the
    scheme's ``gulp``) it is rank X + rank Y − 2Σρᵢ², the ρᵢ the canonical correlations, and invariant to any
    invertible linear map of either side; λ > 0 keeps orthogonal and isotropic-scaling invariance.

    Parameters
    ----------
    ridge : float, default 0
        λ, on the scale of Σ (unit trace). At 0 both covariances must be invertible, as for CCA.

    Notes
    -----
    A function of the streamed moments: one eigendecomposition per layer (shared by every pair it is in) and a
    p × q product per pair. ReSi decides which eigenvalues are zero by an exact ``> 0`` test; reprsim, at λ = 0,
    refuses a singular covariance as CCA does (with the fix, ``ridge=``), and at λ > 0 treats eigenvalues below
    the numerical rank tolerance as zero (ReSi: 1/λ for those), which only changes values on rank-deficient
    data.
    """

    name = "gulp"
    direction = "distance"
    range = (0.0, float("inf"))
    symmetric = True

    def __init__(self, ridge: float = 0.0) -> None:
        self.ridge = _check_ridge(ridge)
        inv = {"orthogonal", "isotropic_scaling", "translation", "permutation"}
        if self.ridge == 0.0:
            inv.add("invertible_linear")
        self.invariances = frozenset(inv)

    @property
    def id(self) -> str:
        return "gulp" if self.ridge == 0.0 else f"gulp-lambda={num(self.ridge)}"

    @property
    def label(self) -> str:
        return "GULP (squared)" if self.ridge == 0.0 else f"GULP (squared, λ={num(self.ridge)})"

    def config(self) -> dict[str, Any]:
        return {"ridge": self.ridge}

    def _side(self, c: torch.Tensor, n: int, eps: float, cache: dict[Any, Any], side: str) -> tuple[Any, ...]:
        lam, vec = eigh_cached(c, cache)
        if self.ridge == 0.0:
            check_rank(lam, n, side, eps, "GULP at λ = 0", "Pass ridge > 0.")
        trace = lam.clamp(min=0).sum()
        lam = lam.clamp(min=0) / trace
        r = numerical_rank(lam, eps)
        inv = torch.zeros_like(lam)
        inv[:r] = 1.0 / (lam[:r] + self.ridge)
        return vec, inv, (lam * inv).square().sum(), trace

    def from_moments(self, m: Moments) -> torch.Tensor:
        check_variance(m, "x", "GULP")
        check_variance(m, "y", "GULP")
        vx, ix, t1, tx = self._side(m.cxx, m.n, m.eps, m.cache_x, "x")
        vy, iy, t2, ty = self._side(m.cyy, m.n, m.eps, m.cache_y, "y")
        a = vx.T @ m.cxy @ vy / (tx * ty).sqrt()  # Σxy in the two eigenbases
        t3 = (a.square() * ix[:, None] * iy[None, :]).sum()
        out: torch.Tensor = t1 + t2 - 2 * t3
        return out


def gulp(x: Any, y: Any, *, ridge: float = 0.0) -> Any:
    """The squared GULP distance of two representations; see :class:`GULP`.

    Parameters
    ----------
    x : array or tensor, shape (n, ...)
        One representation (trailing dimensions are flattened).
    y : array or tensor, shape (n, ...)
        Another representation of the same n samples; its width may differ.
    ridge : float, default 0
        λ, on the scale of the unit-trace covariances.

    Returns
    -------
    float or torch.Tensor
        A float for NumPy inputs, a 0-d tensor (differentiable) for torch inputs.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import gulp
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 4))
    >>> round(gulp(x, x @ rng.normal(size=(4, 4)) + 3.0), 10)  # the same column space, shifted
    0.0
    >>> round(gulp(x, x[:, :2]), 10)  # rank 4 + rank 2 − 2 · (two canonical correlations of 1)
    2.0
    """
    return evaluate(GULP(ridge), x, y)


register("gulp", GULP)
