"""Linear algebra on centred co-moments that several measure families share: eigendecompositions cached per
layer, rank decisions with one tolerance, and the checks that turn a degenerate covariance into a clear error.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConstantRepresentationError, InsufficientSamplesError

__all__ = ["RANK_RTOL", "check_variance", "eigh_cached", "numerical_rank"]

#: Eigenvalues below this fraction of the largest (times the width) count as zero: float64 rounding of a
#: co-moment is about eps·λ_max per entry, so smaller eigenvalues carry no information.
RANK_RTOL = 64 * torch.finfo(torch.float64).eps


def eigh_cached(c: torch.Tensor, cache: dict[Any, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors of a symmetric co-moment, computed once per layer."""
    if "eigh" not in cache:
        lam, vec = torch.linalg.eigh((c + c.T) / 2)
        cache["eigh"] = (lam.flip(0), vec.flip(1))
    out: tuple[torch.Tensor, torch.Tensor] = cache["eigh"]
    return out


def numerical_rank(lam: torch.Tensor) -> int:
    """How many eigenvalues (descending) are distinguishable from zero."""
    lam = lam.detach()
    top = float(lam[0]) if lam.numel() else 0.0
    if top <= 0:
        return 0
    return int((lam > top * RANK_RTOL * lam.numel()).sum())


def check_variance(c: torch.Tensor, side: str, what: str) -> torch.Tensor:
    """The total variance (trace) of a co-moment; a clear error when it is zero."""
    tr = c.diagonal().sum()
    if not bool(tr > 0):
        raise ConstantRepresentationError(
            f"{side} is the same for every sample, so {what} is undefined (0/0); check for a dead or saturated layer"
        )
    return tr


def check_dimensions(n: int, dims: int, what: str, fix: str) -> None:
    """Centred data span n − 1 dimensions: a fit with ``dims`` free dimensions needs ``dims`` ≤ n − 1."""
    if dims > n - 1:
        raise InsufficientSamplesError(
            f"{what} with {dims} dimensions on {n} samples: centred data span only n − 1 = {n - 1} dimensions, so "
            f"some canonical correlations (or fits) are exactly 1 whatever the data. {fix}"
        )
