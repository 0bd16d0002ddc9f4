"""The effective number of shared dimensions (Giaffar, Rangel Buitrago & Morris 2023): :class:`ENSD`, :func:`ensd`.

With Xc, Yc column-centred and K = XcXcᵀ, L = YcYcᵀ their linear Grams, the participation ratio of one
representation is PR(X) = (tr K)² / tr(K²), the effective number of dimensions its variance spreads over, and

    ENSD(X, Y) = PR(X) · PR(Y) · tr(K L) / (tr K · tr L) = tr K · tr L · tr(K L) / (tr(K²) · tr(L²)),

the number of dimensions the two share: PR(X) for two copies of X, 0 for orthogonal column spaces, and at most
min(PR(X), PR(Y)). In feature space, tr K = tr Cxx, tr(K²) = ‖Cxx‖²_F and tr(K L) = ‖Cxy‖²_F for the centred
co-moments, so it streams from the moments linear CKA uses; it equals linear CKA times √(PR(X) · PR(Y)).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..errors import ConstantRepresentationError
from ._base import Measure, evaluate, register
from ._cka import frobenius, inner
from ._linalg import check_variance
from ._moments import Moments
from ._traces import TraceSide, linear_side

__all__ = ["ENSD", "ensd"]


class ENSD(Measure):
    """The effective number of shared dimensions of two representations (Giaffar et al. 2023).

    A similarity in units of dimensions: from 0 (no shared variance) to min(PR(X), PR(Y)), where PR is the
    participation ratio (tr C)² / ‖C‖²_F of a representation's covariance C. Two copies of one representation
    share all of its PR(X) dimensions. Unlike CKA it is not normalised to [0, 1]: a pair of representations
    that each spread over many dimensions can share more of them.

    Notes
    -----
    Conventions: the features are centred (the authors' code centres each feature before forming the Grams), and
    the ratio does not depend on normalising the covariances by n or n − 1. It is linear CKA times
    √(PR(X)·PR(Y)), so its permutation test is linear CKA's, rescaled, and the exact-moment null applies.
    Accuracy: as linear CKA, about 1e-13 relative in float64.
    """

    name = "ensd"
    direction = "similarity"
    range = (0.0, float("inf"))
    symmetric = True
    invariances = frozenset({"orthogonal", "isotropic_scaling", "translation", "permutation"})

    @property
    def label(self) -> str:
        return "effective number of shared dimensions"

    def from_moments(self, m: Moments) -> torch.Tensor:
        tx = check_variance(m, "x", "ENSD")
        ty = check_variance(m, "y", "ENSD")
        # normalised by the traces first, so sums of squares of large activations cannot overflow: with
        # C' = C / tr C, ENSD = ‖C'xy‖² / (‖C'xx‖² ‖C'yy‖²)
        cxx, cyy, cxy = m.cxx / tx, m.cyy / ty, m.cxy / (tx.sqrt() * ty.sqrt())
        out: torch.Tensor = inner(cxy, cxy) / (frobenius(cxx) * frobenius(cyy)).square()
        return out

    def null_trace(self, t: torch.Tensor) -> TraceSide:
        # T = tr(K Π L Πᵀ) as for linear CKA; the denominator tr(K²)·tr(L²) / (tr K · tr L) splits into one
        # factor per side, tr(K²) / tr K
        side = linear_side(t, unbiased=False)
        if not side.trace_a > 0:
            raise ConstantRepresentationError("a constant representation has no shared dimensions (tr K = 0)")
        return dataclasses.replace(side, norm=side.norm**2 / side.trace_a)


def ensd(x: Any, y: Any) -> Any:
    """The effective number of shared dimensions of two representations; see :class:`ENSD`.

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
    >>> from reprsim.measures import ensd
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(1000, 3))
    >>> x = np.hstack([z, rng.normal(size=(1000, 3))])  # three dimensions shared with y, three not
    >>> y = np.hstack([z, rng.normal(size=(1000, 5))])
    >>> round(ensd(x, y), 2)
    2.94
    >>> c = np.cov(x.T)
    >>> bool(abs(ensd(x, x) - np.trace(c) ** 2 / (c**2).sum()) < 1e-9)  # two copies share all PR(X) dimensions
    True
    """
    return evaluate(ENSD(), x, y)


register("ensd", ENSD)
