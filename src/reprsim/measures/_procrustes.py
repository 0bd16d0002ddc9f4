"""Orthogonal Procrustes and the generalised shape metrics: :class:`Procrustes`, :class:`ShapeMetric`,
:func:`procrustes`, :func:`shape_metric`.

With Xc, Yc column-centred: the normalised Bures similarity NBS = ‖XcᵀYc‖_* / (‖Xc‖_F ‖Yc‖_F) (Harvey et al.
2023); the angular Procrustes distance arccos(NBS) (Williams et al. 2021, netrep's default); the Euclidean
Procrustes distance on centred, unit-Frobenius data sqrt(2 − 2·NBS) and its square (Ding et al. 2021). The
shape metric with partial whitening α first maps X ↦ Xc·Z, Z = αI + (1 − α)(XcᵀXc)^(−1/2) (netrep's
``LinearMetric`` convention: the co-moment is a sum, not divided by n), then takes the angular distance.
All are functions of XcᵀXc, YcᵀYc and XcᵀYc: one SVD (and for α < 1 two eigendecompositions) per pair.
:class:`AlignedCosine` (:func:`aligned_cosine`) aligns the uncentred data with the Procrustes rotation and
averages each sample's cosine, so it needs every sample.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch

from .._precision import full_precision_matmul
from .._validation import check_int, check_real
from ..errors import InvalidParameterError, ReprsimWarning
from ._base import Cache, Measure, evaluate, num, register
from ._linalg import check_dimensions, check_variance, eigh_cached, numerical_rank
from ._moments import Moments, pool_moments

__all__ = ["AlignedCosine", "Procrustes", "ShapeMetric", "aligned_cosine", "procrustes", "shape_metric"]

ProcrustesScore = Literal["angular", "euclidean", "squared_euclidean", "nbs"]
_SCORES: dict[str, dict[str, Any]] = {
    "angular": {
        "id": "procrustes-distance=angular",
        "direction": "distance",
        "range": (0.0, math.pi / 2),
        "metric": True,
    },
    "euclidean": {
        "id": "orthogonal_procrustes_centered_and_normalized",
        "direction": "distance",
        "range": (0.0, math.sqrt(2)),
        "metric": True,
    },
    "squared_euclidean": {
        "id": "orthogonal_procrustes_centered_and_normalized-squared",
        "direction": "distance",
        "range": (0.0, 2.0),
        "metric": False,
    },
    "nbs": {"id": "procrustes-score", "direction": "similarity", "range": (0.0, 1.0), "metric": False},
}
_LABELS = {
    "angular": "angular Procrustes distance",
    "euclidean": "Euclidean Procrustes distance",
    "squared_euclidean": "squared Procrustes distance",
    "nbs": "normalised Bures similarity",
}


def _nuclear(c: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = torch.linalg.svdvals(c).sum()
    return out


def _angle(cos: torch.Tensor) -> torch.Tensor:
    # |cos| ≤ 1 holds exactly; rounding can exceed it by a few ulps, which arccos would turn into NaN
    return torch.arccos(cos.clamp(-1.0, 1.0))


class Procrustes(Measure):
    """Orthogonal Procrustes: NBS, and the angular, Euclidean and squared Euclidean Procrustes distances.

    Parameters
    ----------
    score : {"angular", "euclidean", "squared_euclidean", "nbs"}, default "angular"
        ``angular``: arccos(NBS) in [0, π/2], a metric. ``euclidean``: sqrt(2 − 2·NBS) in [0, √2], the
        Procrustes distance between centred unit-Frobenius representations, a metric. ``squared_euclidean``:
        2 − 2·NBS (Ding et al. 2021's convention). ``nbs``: the normalised Bures similarity in [0, 1].

    Notes
    -----
    Accuracy: NBS to about 1e-13 in float64. Near NBS = 1 the angular distance has infinite slope, so an
    NBS rounding error ε becomes an angle error √(2ε) (about 1e-8 for identical representations).
    """

    name = "procrustes"
    symmetric = True
    invariances = frozenset({"orthogonal", "isotropic_scaling", "translation", "permutation"})
    full_second_order = False  # the nuclear norm of Cxy and two traces

    def __init__(self, score: ProcrustesScore = "angular") -> None:
        if score not in _SCORES:
            raise InvalidParameterError(f"score must be one of {list(_SCORES)}; got {score!r}")
        self.score = score
        meta = _SCORES[score]
        self.direction = meta["direction"]
        self.range = meta["range"]
        self.metric = meta["metric"]
        self.form = "score" if score == "nbs" else ("angular" if score == "angular" else None)

    @property
    def id(self) -> str:
        return str(_SCORES[self.score]["id"])

    @property
    def label(self) -> str:
        return _LABELS[self.score]

    def config(self) -> dict[str, Any]:
        return {"score": self.score}

    def from_moments(self, m: Moments) -> torch.Tensor:
        tx = check_variance(m, "x", "Procrustes")
        ty = check_variance(m, "y", "Procrustes")
        nbs = _nuclear(m.cxy) / (tx.sqrt() * ty.sqrt())
        if self.score == "nbs":
            return nbs
        if self.score == "angular":
            return _angle(nbs)
        sq = (2.0 - 2.0 * nbs).clamp(min=0.0)
        return sq if self.score == "squared_euclidean" else sq.sqrt()


def _whitener(c: torch.Tensor, alpha: float, cache: dict[Any, Any], eps: float) -> tuple[torch.Tensor, int]:
    """Z = αI + (1 − α)C^(−1/2) on C's range (zero on its null space, where the data have no component); ``eps``
    is the data's machine epsilon, which decides the range."""
    key = ("whiten", alpha)
    if key not in cache:
        lam, vec = eigh_cached(c, cache)
        r = numerical_rank(lam, eps)
        v = vec[:, :r]
        d = alpha + (1.0 - alpha) * lam[:r].rsqrt()
        cache[key] = ((v * d) @ v.T, r)
    out: tuple[torch.Tensor, int] = cache[key]
    return out


class ShapeMetric(Measure):
    """Generalised shape metric with partial whitening (Williams et al. 2021), angular form.

    Parameters
    ----------
    alpha : float in [0, 1]
        1: no whitening (the angular Procrustes distance); 0: full whitening (any invertible linear map is
        allowed; the distance is then arccos of the mean canonical correlation's analogue and needs
        rank(X) + rank(Y) ≤ n − 1). netrep's convention: Z = αI + (1 − α)(XcᵀXc)^(−1/2) with the co-moment
        a sum, so for 0 < α < 1 the value depends on the data's scale and on n.
    folds : int, optional
        Cross-validate as netrep's ``fit``/``score``: for each of ``folds`` folds (sample i belongs to fold
        i mod folds), fit the means, whitening and rotation on the other folds and score on this one; the
        result is the mean of the folds' distances. ``None`` (default) fits and scores on all samples.

    Notes
    -----
    Directions of zero variance carry no data and are left out of the whitening (netrep clips their
    eigenvalues to 1e-7 instead; both give the same value up to rounding).
    """

    name = "shape_metric"
    form = "angular"
    direction = "distance"
    range = (0.0, math.pi / 2)
    metric = True
    symmetric = True

    def __init__(self, alpha: float, folds: int | None = None) -> None:
        self.alpha = check_real(alpha, "alpha", low=0.0, high=1.0, hint="1 is Procrustes, 0 full whitening")
        self.folds = _check_folds(folds)
        self.cv = folds is not None
        inv = {"orthogonal", "translation", "permutation"}
        if self.alpha in (0.0, 1.0):
            inv.add("isotropic_scaling")
        if self.alpha == 0.0 and not self.cv:
            inv.add("invertible_linear")
        self.invariances = frozenset(inv)
        if self.cv:
            self.range = (0.0, math.pi)  # a held-out fold can be anti-aligned
            self.metric = False  # a held-out score need not vanish between identical representations
        self.min_samples = max(2, 2 * self.folds)

    @property
    def id(self) -> str:
        return f"shape_metric-alpha={num(self.alpha)}-distance=angular" + (f"-cv={self.folds}folds" if self.cv else "")

    @property
    def label(self) -> str:
        return f"shape metric (α={self.alpha:g}{', cross-validated' if self.cv else ''})"

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "folds": self.folds if self.cv else None}

    def from_moments(self, m: Moments) -> torch.Tensor:
        check_variance(m, "x", "the shape metric")
        check_variance(m, "y", "the shape metric")
        if not self.cv:
            zx, rx = _whitener(m.cxx, self.alpha, m.cache_x, m.eps)
            zy, ry = _whitener(m.cyy, self.alpha, m.cache_y, m.eps)
            if self.alpha == 0.0:
                check_dimensions(m.n, rx + ry, "the fully whitened (alpha=0) shape metric", "Use alpha > 0.")
            nuc = _nuclear(zx @ m.cxy @ zy)
            nx = (zx @ m.cxx @ zx).diagonal().sum()
            ny = (zy @ m.cyy @ zy).diagonal().sum()
            return _angle(nuc / (nx * ny).sqrt())
        scores = []
        for k, test in enumerate(m.folds):
            train = pool_moments([f for j, f in enumerate(m.folds) if j != k])
            zx, _ = _whitener(train.cxx, self.alpha, {}, m.eps)
            zy, _ = _whitener(train.cyy, self.alpha, {}, m.eps)
            u, _, vt = torch.linalg.svd(zx @ train.cxy @ zy)
            r = min(zx.shape[0], zy.shape[0])
            # the rotation pairs r directions; the rest of the wider side meets zero padding (netrep's
            # zero_pad), so it adds to that side's norm but not to the inner product
            cxx, cyy, cxy = test.about(train.mean_x, train.mean_y)
            num = (u[:, :r].T @ zx @ cxy @ zy @ vt[:r].T).diagonal().sum()
            den = ((zx @ cxx @ zx).diagonal().sum() * (zy @ cyy @ zy).diagonal().sum()).sqrt()
            scores.append(_angle(num / den))
        return torch.stack(scores).mean()


def _check_folds(folds: int | None) -> int:
    if folds is None:
        return 1
    return check_int(folds, "folds", minimum=2, hint="or None for no cross-validation")


def procrustes(x: Any, y: Any, *, score: ProcrustesScore = "angular") -> Any:
    """Orthogonal Procrustes distance (or the normalised Bures similarity) between two representations.

    Parameters
    ----------
    x : array or tensor, shape (n, ...)
        One representation (trailing dimensions are flattened).
    y : array or tensor, shape (n, ...)
        Another representation of the same n samples; its width may differ.
    score : {"angular", "euclidean", "squared_euclidean", "nbs"}, default "angular"
        See :class:`Procrustes`.

    Returns
    -------
    float or torch.Tensor
        A float for NumPy inputs, a 0-d tensor (differentiable) for torch inputs.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import procrustes
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(100, 5))
    >>> q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    >>> round(procrustes(x, 3 * x @ q + 1, score="nbs"), 12)  # a rotated, scaled, shifted copy
    1.0
    """
    return evaluate(Procrustes(score), x, y)


def shape_metric(x: Any, y: Any, *, alpha: float, folds: int | None = None) -> Any:
    """Angular shape metric with partial whitening ``alpha`` (Williams et al. 2021); see :class:`ShapeMetric`.

    Parameters
    ----------
    x, y : array or tensor, shape (n, ...)
        Two representations of the same samples.
    alpha : float in [0, 1]
        1 is the angular Procrustes distance; 0 allows any invertible linear map.
    folds : int, optional
        Cross-validate over this many folds (sample i in fold i mod folds).

    Returns
    -------
    float or torch.Tensor
        The distance in radians.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import shape_metric
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 4))
    >>> round(shape_metric(x, x @ rng.normal(size=(4, 4)), alpha=0.0), 6)  # an invertible linear map
    0.0
    """
    return evaluate(ShapeMetric(alpha, folds), x, y)


class AlignedCosine(Measure):
    """Aligned cosine similarity (as the ReSi and llm-repsim codes compute it): rotate X onto Y with the orthogonal
    Procrustes map of the uncentred data, then average each sample's cosine with its counterpart.

    With XᵀY = USVᵀ (the narrower side zero-padded, as those codes do, which leaves the rotation's action on the
    data the p × q partial isometry W = UVᵀ), the value is mean_i ⟨x_i W, y_i⟩ / (‖x_i‖ ‖y_i‖). The data are not
    centred, so a shift changes it.

    Notes
    -----
    Where XᵀY is rank-deficient the best rotation is not unique, and nor is the score: reprsim keeps the singular
    pairs with nonzero singular values (W = U_r V_rᵀ, r the numerical rank), a choice that does not depend on the
    SVD routine. A sample that is zero in either representation has no cosine: it counts as 0 and a warning gives
    the count (the ReSi code returns NaN for the whole measure).

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import AlignedCosine
    >>> x = np.random.default_rng(0).normal(size=(50, 4))
    >>> q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
    >>> round(AlignedCosine()(x, 2 * x @ q), 6)  # a rotation and a scale
    1.0
    """

    name = "aligned_cosine"
    stream = "samples"
    direction = "similarity"
    range = (-1.0, 1.0)
    symmetric = True
    invariances = frozenset({"orthogonal", "isotropic_scaling", "permutation"})
    sample_resampling = "blocks"  # a mean over samples of a smooth function: the jackknife

    @property
    def id(self) -> str:
        return "aligned_cosine_similarity"

    @property
    def label(self) -> str:
        return "aligned cosine similarity"

    @full_precision_matmul
    def from_samples(
        self, x: torch.Tensor, y: torch.Tensor, cache_x: Cache = None, cache_y: Cache = None
    ) -> torch.Tensor:
        xd, yd = x.double(), y.double()
        u, s, vh = torch.linalg.svd(xd.T @ yd, full_matrices=False)
        r = numerical_rank(s * s, float(torch.finfo(x.dtype).eps))
        w = u[:, :r] @ vh[:r]
        nx, ny = xd.norm(dim=1), yd.norm(dim=1)
        defined = (nx > 0) & (ny > 0)
        cos = ((xd @ w) * yd).sum(dim=1) / torch.where(defined, nx * ny, torch.ones_like(nx))
        undefined = int((~defined).sum())
        if undefined:
            warnings.warn(
                f"{undefined} samples are zero in one representation; their cosine is undefined and counts as 0 "
                "(the ReSi code returns NaN)",
                ReprsimWarning,
                stacklevel=3,
            )
        return torch.where(defined, cos, torch.zeros_like(cos)).mean().to(x.dtype)


def aligned_cosine(x: Any, y: Any) -> Any:
    """Aligned cosine similarity of ``x`` (n, p) and ``y`` (n, q): the mean over samples of the cosine between
    x_i rotated onto y by the orthogonal Procrustes map of the uncentred data and y_i (see :class:`AlignedCosine`).

    Parameters
    ----------
    x, y : array_like or torch.Tensor
        Two representations of the same n samples.

    Returns
    -------
    float or torch.Tensor
        In [−1, 1]: a float for NumPy inputs, a 0-d tensor for tensors.
    """
    return evaluate(AlignedCosine(), x, y)


register("procrustes", lambda: Procrustes("angular"))
register("procrustes_euclidean", lambda: Procrustes("euclidean"))
register("procrustes_squared", lambda: Procrustes("squared_euclidean"))
register("nbs", lambda: Procrustes("nbs"))
register("aligned_cosine", AlignedCosine)
