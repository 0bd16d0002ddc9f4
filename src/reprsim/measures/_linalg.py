"""Linear algebra on centred co-moments that several measure families share: eigendecompositions cached per
layer, rank decisions with one tolerance, and the checks that turn a degenerate covariance into a clear error.
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_spread, spread_of_moments
from ..errors import InsufficientSamplesError, RankDeficientError
from ._moments import EPS64, Moments

__all__ = ["RANK_RTOL", "check_rank", "check_variance", "eigh_cached", "numerical_rank"]

#: Eigenvalues below this fraction of the largest (times the width) count as zero: float64 rounding of a
#: co-moment is about eps·λ_max per entry, so smaller eigenvalues carry no information.
RANK_RTOL = 64 * EPS64
#: Data rounded to a machine epsilon ε (float32 activations: ε ≈ 1.2e-7) give the co-moment eigenvalues of
#: about ε²·λ_max in directions the data do not span; below (DATA_RTOL·ε)²·width·λ_max an eigenvalue counts as
#: zero. This, not float64's own rounding, decides the rank of float32 data summed in float64.
DATA_RTOL = 8.0


def eigh_cached(c: torch.Tensor, cache: dict[Any, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors of a symmetric co-moment, computed once per layer."""
    if "eigh" not in cache:
        lam, vec = torch.linalg.eigh((c + c.T) / 2)
        cache["eigh"] = (lam.flip(0), vec.flip(1))
    out: tuple[torch.Tensor, torch.Tensor] = cache["eigh"]
    return out


def numerical_rank(lam: torch.Tensor, eps: float = EPS64) -> int:
    """How many eigenvalues (descending) are distinguishable from zero, for data of machine epsilon ``eps``."""
    lam = lam.detach()
    top = float(lam[0]) if lam.numel() else 0.0
    if top <= 0:
        return 0
    rtol = max(RANK_RTOL, (DATA_RTOL * eps) ** 2) * lam.numel()
    return int((lam > top * rtol).sum())


def check_variance(m: Moments, side: str, what: str, name: str | None = None) -> torch.Tensor:
    """The total variance (trace) of one side's co-moment (``side`` "x" or "y" of ``m``); a clear error naming
    ``name`` (default: ``side``) when that side counts as constant (the one rule of
    :data:`reprsim._validation.CONSTANT_EPS`)."""
    c, mean = (m.cxx, m.mean_x) if side == "x" else (m.cyy, m.mean_y)
    tr = c.diagonal().sum()
    check_spread(spread_of_moments(m.n, mean, tr), _dtype_of(m.eps), name or side, m.n, what)
    return tr


def _dtype_of(eps: float) -> torch.dtype:
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        if eps <= float(torch.finfo(dtype).eps):
            return dtype
    return torch.float16  # pragma: no cover - no coarser floating dtype


def check_rank(lam: torch.Tensor, n: int, side: str, eps: float, what: str, fix: str) -> None:
    """A covariance that must be invertible: with fewer samples than features it cannot be
    (:class:`InsufficientSamplesError`); otherwise features that are linear combinations of others make it
    singular (:class:`RankDeficientError`). The message gives the rank found."""
    p = lam.numel()
    r = numerical_rank(lam, eps)
    if r >= p:
        return
    if p > n - 1:
        raise InsufficientSamplesError(
            f"{what} of {side} needs at least {p + 1} samples for its {p} features (centred data span n − 1 = "
            f"{n - 1} dimensions); its covariance has rank {r}. {fix}"
        )
    raise RankDeficientError(
        f"the covariance of {side} is singular (rank {r} of {p} features: some features are linear combinations "
        f"of others), so {what} is not defined. {fix}"
    )


def check_dimensions(n: int, dims: int, what: str, fix: str) -> None:
    """Centred data span n − 1 dimensions: a fit with ``dims`` free dimensions needs ``dims`` ≤ n − 1."""
    if dims > n - 1:
        raise InsufficientSamplesError(
            f"{what} with {dims} dimensions on {n} samples: centred data span only n − 1 = {n - 1} dimensions, so "
            f"some canonical correlations (or fits) are exactly 1 whatever the data. {fix}"
        )
