"""How much two representations' column spaces overlap: the eigenspace overlap score (May et al. 2019),
:class:`EigenspaceOverlap`, :func:`eigenspace_overlap`.

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

from ._base import Measure, evaluate, register
from ._cka import inner
from ._linalg import check_variance, eigh_cached, numerical_rank
from ._moments import Moments

__all__ = ["EigenspaceOverlap", "eigenspace_overlap"]


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
