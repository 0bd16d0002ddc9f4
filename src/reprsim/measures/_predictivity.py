"""Linear predictivity: how well a ridge regression from one representation predicts the other.
:class:`Predictivity`, :func:`predictivity`.

B = (XcᵀXc + λI)⁻¹XcᵀYc (λ as scikit-learn's ``Ridge(alpha=λ)`` with an intercept; λ = 0 is ordinary least
squares). The residual sum of squares of every target follows from the moments:
RSS = diag(YcᵀYc − 2BᵀXcᵀYc + BᵀXcᵀXcB), and R² = 1 − RSS / Σ(y − ȳ)². Cross-validated from per-fold
moments in one pass: each fold is predicted by a model fitted (means included) on the other folds, and the
out-of-fold residuals of all folds are pooled against the total variance (the convention of scikit-learn's
``r2_score`` on ``cross_val_predict``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from .._validation import CONSTANT_EPS
from ..errors import ConstantRepresentationError, InvalidParameterError
from ._base import Measure, as_result, evaluate, num, pair_of, register
from ._cca import _check_ridge
from ._linalg import check_dimensions, check_rank, check_variance, eigh_cached
from ._moments import Moments, pool_moments
from ._procrustes import _check_folds

__all__ = ["Predictivity", "predictivity"]

Predict = Literal["x_to_y", "y_to_x", "mean"]
Reduce = Literal["variance_weighted", "mean"]


def _coefficients(
    cxx: torch.Tensor, cxy: torch.Tensor, ridge: float, cache: dict[Any, Any], n: int, eps: float
) -> torch.Tensor:
    lam, vec = eigh_cached(cxx, cache)
    if ridge == 0.0:
        check_rank(lam, n, "the predictors", eps, "least squares", "Pass ridge > 0")
    return vec @ ((vec.T @ cxy) / (lam + ridge).unsqueeze(1))


def _rss(cxx: torch.Tensor, cyy: torch.Tensor, cxy: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-target residual sums of squares of the prediction (x − mx)B of (y − my), moments about (mx, my)."""
    return cyy.diagonal() - 2 * (b * cxy).sum(0) + (b * (cxx @ b)).sum(0)


class Predictivity(Measure):
    """Linear predictivity: R² of a ridge regression from one representation to the other.

    Parameters
    ----------
    ridge : float, default 0
        The ridge penalty λ on the sum-of-squares scale (scikit-learn's ``Ridge(alpha=λ)``); 0 is OLS.
    folds : int, optional
        K-fold cross-validation (sample i in fold i mod K), from per-fold moments in one pass. ``None``
        (default) scores in-sample, which needs p ≤ n − 2 with λ = 0 (else the fit is exact: R² = 1).
    predict : {"x_to_y", "y_to_x", "mean"}, default "x_to_y"
        Predict y from x, x from y, or the mean of both R² (symmetric).
    reduce : {"variance_weighted", "mean"}, default "variance_weighted"
        ``variance_weighted``: 1 − ΣRSS / Σ total variance, over all targets. ``mean``: the mean of the
        targets' R² (every target needs variance).
    """

    name = "predictivity"
    range = (float("-inf"), 1.0)

    def __init__(
        self,
        ridge: float = 0.0,
        folds: int | None = None,
        predict: Predict = "x_to_y",
        reduce: Reduce = "variance_weighted",
    ) -> None:
        if predict not in ("x_to_y", "y_to_x", "mean"):
            raise InvalidParameterError(f"predict must be 'x_to_y', 'y_to_x' or 'mean'; got {predict!r}")
        if reduce not in ("variance_weighted", "mean"):
            raise InvalidParameterError(f"reduce must be 'variance_weighted' or 'mean'; got {reduce!r}")
        self.ridge = _check_ridge(ridge)
        self.folds = _check_folds(folds)
        self.cv = folds is not None
        self.predict, self.reduce = predict, reduce
        self.symmetric = predict == "mean"
        inv = {"translation", "permutation"}
        if reduce == "variance_weighted":
            inv.add("orthogonal")
        if self.ridge == 0.0:
            inv.add("isotropic_scaling")
        self.invariances = frozenset(inv)
        if not self.cv:
            self.range = (0.0, 1.0)
        self.min_samples = max(3, 2 * self.folds)

    @property
    def id(self) -> str:
        head = f"ridge-lambda={num(self.ridge)}" if self.ridge else "linear_regression"
        weighted = "-reduce=variance_weighted" if self.reduce == "variance_weighted" else ""
        folds = f"-cv={self.folds}folds" if self.cv else ""
        direction = {"x_to_y": "", "y_to_x": "-reverse", "mean": "-predict=mean"}[self.predict]
        return f"{head}-r2{weighted}{folds}{direction}"

    @property
    def label(self) -> str:
        arrow = {"x_to_y": "x→y", "y_to_x": "y→x", "mean": "x↔y"}[self.predict]
        return f"linear predictivity R² ({arrow}{', cross-validated' if self.cv else ''})"

    def config(self) -> dict[str, Any]:
        return {
            "ridge": self.ridge,
            "folds": self.folds if self.cv else None,
            "predict": self.predict,
            "reduce": self.reduce,
        }

    def check_samples(self, n: int, p: int, q: int) -> None:
        predictors = {"x_to_y": p, "y_to_x": q, "mean": max(p, q)}[self.predict]
        self._check_predictors(n, predictors)

    def _check_predictors(self, n: int, width: int) -> None:
        if not self.cv and self.ridge == 0.0:
            check_dimensions(n, width + 1, "least squares with an intercept", "Pass ridge > 0, or folds=.")

    def residuals(self, m: Moments) -> torch.Tensor:
        """Every target's residual sum of squares (in-sample, or out-of-fold pooled over the folds)."""
        if not self.cv:
            self._check_predictors(m.n, m.cxx.shape[0])
            check_variance(m, "x", "predictivity")
            b = _coefficients(m.cxx, m.cxy, self.ridge, m.cache_x, m.n, m.eps)
            return _rss(m.cxx, m.cyy, m.cxy, b)
        rss = torch.zeros_like(m.cyy.diagonal())
        for k, test in enumerate(m.folds):
            train = pool_moments([f for j, f in enumerate(m.folds) if j != k])
            b = _coefficients(train.cxx, train.cxy, self.ridge, {}, train.n, m.eps)
            rss = rss + _rss(*test.about(train.mean_x, train.mean_y), b)
        return rss

    def per_target(self, m: Moments) -> torch.Tensor:
        """R² of every column of y predicted from x."""
        var = m.cyy.diagonal()
        # the one rule of "constant" (reprsim._validation.CONSTANT_EPS), feature by feature
        tol = (CONSTANT_EPS * m.eps) ** 2
        constant = var <= tol * (var + m.n * m.mean_y.square())
        if bool(constant.any()):
            raise ConstantRepresentationError(
                f"{int(constant.sum())} predicted features are constant (e.g. feature "
                f"{int(constant.nonzero()[0])}), so their R² is undefined; use reduce='variance_weighted'"
            )
        return 1.0 - self.residuals(m) / var

    def _one_way(self, m: Moments) -> torch.Tensor:
        total = check_variance(m, "y", "R² (the predicted representation)")
        if self.reduce == "mean":
            return self.per_target(m).mean()
        return 1.0 - self.residuals(m).sum() / total

    def from_moments(self, m: Moments) -> torch.Tensor:
        if self.predict == "x_to_y":
            return self._one_way(m)
        if self.predict == "y_to_x":
            return self._one_way(m.swapped())
        return (self._one_way(m) + self._one_way(m.swapped())) / 2


def predictivity(
    x: Any,
    y: Any,
    *,
    ridge: float = 0.0,
    folds: int | None = None,
    predict: Predict = "x_to_y",
    reduce: Reduce | Literal["none"] = "variance_weighted",
) -> Any:
    """Linear predictivity: R² of a ridge regression from ``x`` to ``y``; see :class:`Predictivity`.

    Parameters
    ----------
    x, y : array or tensor, shape (n, ...)
        Predictors and targets (the same samples).
    ridge : float, default 0
    folds : int, optional
    predict : {"x_to_y", "y_to_x", "mean"}, default "x_to_y"
    reduce : {"variance_weighted", "mean", "none"}, default "variance_weighted"
        ``"none"`` returns every target's R² (a tensor; ``predict`` must not be "mean").

    Returns
    -------
    float or torch.Tensor

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import predictivity
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 3))
    >>> y = x @ rng.normal(size=(3, 2)) + 0.5 * rng.normal(size=(500, 2))
    >>> 0.8 < predictivity(x, y, folds=5) < 1.0
    True
    """
    if reduce == "none":
        if predict == "mean":
            raise InvalidParameterError("reduce='none' returns one direction's per-target R²; pick x_to_y or y_to_x")
        measure = Predictivity(ridge, folds, "x_to_y", "variance_weighted")
        m, like = pair_of(x, y, folds=measure.folds, need=measure.min_samples)
        if predict == "y_to_x":
            m = m.swapped()
        out = measure.per_target(m)
        return as_result(out, like, x, y)
    return evaluate(Predictivity(ridge, folds, predict, reduce), x, y)


register("predictivity", lambda: Predictivity())
