"""Alignment restricted to matching units: the permutation metric (Williams et al. 2021, as netrep's
PermutationMetric) and hard and soft correlation matching (Li et al. 2016, "Convergent learning", as ReSi
computes them). :class:`PermutationMetric`, :class:`CorrelationMatch`, :func:`permutation_metric`,
:func:`correlation_match`.

Both pair the units of X with the units of Y, never mixing them: they are invariant to permuting units, not to
rotating them. Both are functions of the centred co-moments, so they stream: the permutation metric maximises
tr(XcᵀYc P) = Σᵢ Cxy[i, π(i)] over one-to-one matchings π of the narrower side's units (zero-padding the
narrower side, as netrep does, adds nothing to the sum), and correlation matching works on the units' Pearson
correlations Cxy[i, j] / √(Cxx[i, i] Cyy[j, j]). The matching is the linear assignment problem, solved exactly by
scipy's ``linear_sum_assignment``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch

from ..errors import InvalidParameterError
from ._base import Measure, evaluate, register
from ._linalg import check_variance
from ._moments import Moments

__all__ = ["CorrelationMatch", "PermutationMetric", "correlation_match", "permutation_metric"]


def _matched(weights: torch.Tensor) -> torch.Tensor:
    """The largest Σᵢ w[i, π(i)] over one-to-one matchings π of the narrower side's units (the linear assignment
    problem, solved exactly on the CPU), as a sum of ``weights``' entries: differentiable almost everywhere."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as exc:  # pragma: no cover - scipy is installed with the test extras
        raise ImportError(
            "matching units needs scipy's linear_sum_assignment: pip install 'reprsim[match]' (or scipy)"
        ) from exc
    rows, cols = linear_sum_assignment(weights.detach().to("cpu", torch.float64).numpy(), maximize=True)
    index = torch.as_tensor(np.stack([rows, cols]), device=weights.device)
    return weights[index[0], index[1]].sum()


def _unit_correlations(m: Moments) -> torch.Tensor:
    """Pearson correlations between every unit of X and every unit of Y, 0 with a constant unit (whose centred
    values are rounding residues: variance at most (64ε)² times its mean square), as the cosine of a zero vector
    is taken by scikit-learn and ReSi."""

    def scale(c: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        var = c.diagonal()
        constant = var <= (64 * m.eps) ** 2 * (var + m.n * mean * mean)
        return torch.where(constant, torch.zeros_like(var), var.clamp_min(torch.finfo(var.dtype).tiny).rsqrt())

    return scale(m.cxx, m.mean_x)[:, None] * m.cxy * scale(m.cyy, m.mean_y)[None, :]


class PermutationMetric(Measure):
    """The permutation metric: the angle between the centred representations after the best matching of their
    units (Williams et al. 2021; netrep's ``PermutationMetric``).

    arccos( max_π Σᵢ ⟨xc_i, yc_π(i)⟩ / (‖Xc‖_F ‖Yc‖_F) ), xc_i the i-th unit's centred values over the samples and
    π a one-to-one matching of units (the narrower side's units each matched once: netrep's zero-padding). It is
    the Procrustes angle with rotations restricted to permutations, so it is at least the angular Procrustes
    distance. ``Derived(PermutationMetric(), "euclidean")`` is netrep's Euclidean score, ‖Xc − YcP‖_F.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import PermutationMetric
    >>> x = np.random.default_rng(0).normal(size=(50, 4))
    >>> round(PermutationMetric()(x, 3 * x[:, [2, 0, 3, 1]] + 1), 6)  # units shuffled, scaled, shifted
    0.0
    """

    name = "permutation_metric"
    form = "angular"
    direction = "distance"
    range = (0.0, math.pi)  # beyond π/2 when the best matching still pairs negatively correlated units
    metric = True
    symmetric = True
    invariances = frozenset({"permutation", "isotropic_scaling", "translation"})
    full_second_order = False  # Cxy in full, and only the traces of Cxx and Cyy

    @property
    def id(self) -> str:
        return "permutation_metric-distance=angular"

    @property
    def label(self) -> str:
        return "permutation metric (angular)"

    def from_moments(self, m: Moments) -> torch.Tensor:
        tx = check_variance(m, "x", "the permutation metric")
        ty = check_variance(m, "y", "the permutation metric")
        cos = _matched(m.cxy) / (tx.sqrt() * ty.sqrt())
        return cos.clamp(-1.0, 1.0).arccos()


Match = Literal["hard", "soft"]


class CorrelationMatch(Measure):
    """Correlation matching of units (Li et al. 2016, "Convergent learning"; as the ReSi code computes it).

    With r[i, j] the Pearson correlation between unit i of X and unit j of Y over the samples:

    - ``match="hard"``: the mean of r over the best one-to-one matching of units (min(p, q) pairs, the linear
      assignment that maximises their sum);
    - ``match="soft"``: each unit's best correlation on the other side, averaged over X's units and over Y's, and
      the two averages averaged.

    A constant unit (a dead ReLU) correlates 0 with every unit, as in ReSi, where the cosine of a zero vector is 0.

    Parameters
    ----------
    match : {"hard", "soft"}, default "hard"
        One-to-one matching, or each unit's best partner.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import CorrelationMatch
    >>> x = np.random.default_rng(0).normal(size=(50, 4))
    >>> round(CorrelationMatch()(x, x[:, [2, 0, 3, 1]] * [1, 2, 3, 4]), 6)  # units shuffled and rescaled
    1.0
    """

    name = "correlation_match"
    full_second_order = False  # Cxy in full, and only the diagonals of Cxx and Cyy
    direction = "similarity"
    range = (-1.0, 1.0)
    symmetric = True
    invariances = frozenset({"permutation", "isotropic_scaling", "translation"})

    def __init__(self, match: Match = "hard") -> None:
        if match not in ("hard", "soft"):
            raise InvalidParameterError(f"match must be 'hard' or 'soft'; got {match!r}")
        self.match: Match = match

    @property
    def id(self) -> str:
        return f"{self.match}_correlation_match"

    @property
    def label(self) -> str:
        return f"{self.match} correlation match"

    def config(self) -> dict[str, Any]:
        return {"match": self.match}

    def from_moments(self, m: Moments) -> torch.Tensor:
        check_variance(m, "x", "correlation matching")
        check_variance(m, "y", "correlation matching")
        r = _unit_correlations(m)
        if self.match == "soft":
            return (r.amax(dim=1).mean() + r.amax(dim=0).mean()) / 2
        return _matched(r) / min(r.shape)


def permutation_metric(x: Any, y: Any) -> Any:
    """The permutation metric of ``x`` (n, p) and ``y`` (n, q): the angle between the centred data after the best
    one-to-one matching of their units (see :class:`PermutationMetric`).

    Parameters
    ----------
    x, y : array_like or torch.Tensor
        Two representations of the same n samples.

    Returns
    -------
    float or torch.Tensor
        The angle in [0, π]: a float for NumPy inputs, a 0-d tensor for tensors (differentiable for the
        matching found: the matching itself is discrete).
    """
    return evaluate(PermutationMetric(), x, y)


def correlation_match(x: Any, y: Any, match: Match = "hard") -> Any:
    """Hard or soft correlation matching of the units of ``x`` (n, p) and ``y`` (n, q) (see
    :class:`CorrelationMatch`).

    Parameters
    ----------
    x, y : array_like or torch.Tensor
        Two representations of the same n samples.
    match : {"hard", "soft"}, default "hard"
        The mean correlation over the best one-to-one matching of units, or of each unit's best partner.

    Returns
    -------
    float or torch.Tensor
        In [−1, 1]: a float for NumPy inputs, a 0-d tensor for tensors.
    """
    return evaluate(CorrelationMatch(match), x, y)


register("permutation_metric", PermutationMetric)
register("correlation_match", CorrelationMatch)
register("correlation_match_soft", lambda: CorrelationMatch("soft"))
