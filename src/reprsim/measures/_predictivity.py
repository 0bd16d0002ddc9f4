"""Linear predictivity: how well a ridge (or PLS) regression from one representation predicts the other.
:class:`Predictivity`, :func:`predictivity`.

B = (XcᵀXc + λI)⁻¹XcᵀYc (λ as scikit-learn's ``Ridge(alpha=λ)`` with an intercept; λ = 0 is ordinary least
squares). The residual sum of squares of every target follows from the moments:
RSS = diag(YcᵀYc − 2BᵀXcᵀYc + BᵀXcᵀXcB), and R² = 1 − RSS / Σ(y − ȳ)². Cross-validated from per-fold
moments in one pass: each fold is predicted by a model fitted (means included) on the other folds, and the
out-of-fold residuals of all folds are pooled against the total variance (the convention of scikit-learn's
``r2_score`` on ``cross_val_predict``).

Scored by Pearson r instead (``scoring="pearsonr"``), each target's r is the correlation of its (out-of-fold)
predictions with it, again from the moments: in-sample, Σ(ŷ − ȳ)(y − ȳ) = (B ∘ XcᵀYc) summed over predictors and
Σ(ŷ − ȳ)² = (B ∘ XcᵀXcB) summed likewise; cross-validated, each fold's predictions (x − x̄ₜ)B + ȳₜ are summed
about the overall mean of y from the fold's moments about the training means, and the pooled sums give r.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from .._validation import CONSTANT_EPS, check_int
from ..errors import ConstantRepresentationError, InvalidParameterError
from ._base import Measure, as_result, evaluate, num, pair_of, register
from ._cca import _check_ridge
from ._linalg import check_dimensions, check_rank, check_variance, eigh_cached
from ._moments import Moments, pool_moments
from ._procrustes import _check_folds

__all__ = ["Predictivity", "predictivity"]

Predict = Literal["x_to_y", "y_to_x", "mean"]
Reduce = Literal["variance_weighted", "mean"]
Scoring = Literal["r2", "pearsonr", "pearsonr2"]


def _coefficients(
    cxx: torch.Tensor, cxy: torch.Tensor, ridge: float, cache: dict[Any, Any], n: int, eps: float
) -> torch.Tensor:
    lam, vec = eigh_cached(cxx, cache)
    if ridge == 0.0:
        check_rank(lam, n, "the predictors", eps, "least squares", "Pass ridge > 0")
    return vec @ ((vec.T @ cxy) / (lam + ridge).unsqueeze(1))


def _pls_coefficients(cxx: torch.Tensor, cxy: torch.Tensor, components: int, eps: float) -> torch.Tensor:
    """PLS regression (PLS2, NIPALS with exact singular vectors; scikit-learn's ``PLSRegression(scale=False)``)
    from the centred moments. Component k's weight w is the top left singular vector of the deflated
    cross-moment XₖᵀY; its score is t = Xₖw = Xr with r = Πₖw in the original coordinates (Xₖ = XΠₖ); X's loading
    is ΠₖᵀCxx r / tᵀt and Y's Cyx r / tᵀt (the scores are orthogonal, so Y need not be deflated); then
    Πₖ₊₁ = Πₖ − r pᵀ. B = Σ r qᵀ. It stops early when the deflated cross-moment vanishes (Y is explained)."""
    proj = torch.eye(cxx.shape[0], dtype=cxx.dtype, device=cxx.device)
    b = torch.zeros_like(cxy)
    s = cxy
    first = None
    for _ in range(components):
        u, sv, _ = torch.linalg.svd(s, full_matrices=False)
        first = sv[0] if first is None else first
        if bool(sv[0] <= 100 * eps * first) or not bool(first > 0):
            break
        r = proj @ u[:, 0]
        c = cxx @ r
        tt = r @ c
        if not bool(tt > 0):
            break
        b = b + torch.outer(r, (cxy.T @ r) / tt)
        proj = proj - torch.outer(r, proj.T @ c / tt)
        s = proj.T @ cxy
    return b


def _rss(cxx: torch.Tensor, cyy: torch.Tensor, cxy: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-target residual sums of squares of the prediction (x − mx)B of (y − my), moments about (mx, my)."""
    return cyy.diagonal() - 2 * (b * cxy).sum(0) + (b * (cxx @ b)).sum(0)


class Predictivity(Measure):
    """Linear predictivity: R² (or Pearson r) of a ridge regression from one representation to the other.

    Parameters
    ----------
    ridge : float, default 0
        The ridge penalty λ on the sum-of-squares scale (scikit-learn's ``Ridge(alpha=λ)``); 0 is OLS.
    folds : int, optional
        K-fold cross-validation (sample i in fold i mod K), from per-fold moments in one pass. ``None``
        (default) scores in-sample, which needs p ≤ n − 2 with λ = 0 (else the fit is exact: R² = 1).
    predict : {"x_to_y", "y_to_x", "mean"}, default "x_to_y"
        Predict y from x, x from y, or the mean of both R² (symmetric).
    reduce : {"variance_weighted", "mean"}, optional
        ``variance_weighted`` (the default for R²): 1 − ΣRSS / Σ total variance, over all targets. ``mean``: the
        mean of the targets' scores (every target needs variance), the only reduction for Pearson r.
    scoring : {"r2", "pearsonr", "pearsonr2"}, default "r2"
    components : int, optional
        PLS regression with this many components instead of ridge.
    intercept : bool, default True
        How a target's prediction is scored: R² (scikit-learn's ``r2_score``), the Pearson correlation r of
        prediction and target, or its square r² (the neural-regression codes' ``pearson_r`` and ``pearson_r2``).
        In-sample least squares gives r² = R²; out of sample, r ignores the predictions' offset and scale, R² does
        not.
    components : int, optional
        Fit a PLS regression with this many components instead (scikit-learn's ``PLSRegression(scale=False)``,
        Brain-Score's ``pls_regression`` with 25), from the moments, with no ``ridge``. Fewer when X has fewer
        dimensions or Y is explained sooner (the deflated cross-moment vanishes): with as many components as X
        has dimensions, PLS is least squares.
    intercept : bool, default True
        Fit an intercept (scikit-learn's convention). ``False`` fits through the origin from the uncentred
        moments, B = (XᵀX + λI)⁻¹XᵀY, as brain-language-nlp's ``ridge`` and its linear ``kernel_ridge`` (the same
        estimator, Xᵀ(XXᵀ + λI)⁻¹Y); R² is still taken about the targets' means.
    """

    name = "predictivity"
    range = (float("-inf"), 1.0)

    def __init__(
        self,
        ridge: float = 0.0,
        folds: int | None = None,
        predict: Predict = "x_to_y",
        reduce: Reduce | None = None,
        scoring: Scoring = "r2",
        components: int | None = None,
        intercept: bool = True,
    ) -> None:
        if predict not in ("x_to_y", "y_to_x", "mean"):
            raise InvalidParameterError(f"predict must be 'x_to_y', 'y_to_x' or 'mean'; got {predict!r}")
        if scoring not in ("r2", "pearsonr", "pearsonr2"):
            raise InvalidParameterError(f"scoring must be 'r2', 'pearsonr' or 'pearsonr2'; got {scoring!r}")
        if reduce is None:
            reduce = "variance_weighted" if scoring == "r2" else "mean"
        if reduce not in ("variance_weighted", "mean"):
            raise InvalidParameterError(f"reduce must be 'variance_weighted' or 'mean'; got {reduce!r}")
        if reduce == "variance_weighted" and scoring != "r2":
            raise InvalidParameterError(
                f"scoring={scoring!r} is a per-target correlation, averaged over targets: use reduce='mean'"
            )
        self.ridge = _check_ridge(ridge)
        if components is not None:
            components = check_int(components, "components", minimum=1, hint="PLS regression's component count")
            if self.ridge:
                raise InvalidParameterError("PLS regression (components=) has no ridge penalty; drop ridge=")
        self.components = components
        if intercept not in (True, False):
            raise InvalidParameterError(f"intercept must be True or False; got {intercept!r}")
        if not intercept and components is not None:
            raise InvalidParameterError("PLS regression (components=) always centres; drop intercept=False")
        self.intercept = bool(intercept)
        self.folds = _check_folds(folds)
        self.cv = folds is not None
        self.predict, self.reduce, self.scoring = predict, reduce, scoring
        self.symmetric = predict == "mean"
        inv = {"translation", "permutation"}
        if reduce == "variance_weighted":
            inv.add("orthogonal")
        if self.ridge == 0.0:
            inv.add("isotropic_scaling")
        if not self.intercept:  # a shift of x or y moves the fit through the origin
            inv.discard("translation")
        self.invariances = frozenset(inv)
        if scoring != "r2":
            # in-sample, Σ(ŷ − ȳ)(y − ȳ) = CyxB = Cyx(Cxx + λI)⁻¹Cxy ≥ 0 on the diagonal
            self.range = (-1.0, 1.0) if self.cv and scoring == "pearsonr" else (0.0, 1.0)
        elif not self.cv:
            self.range = (0.0, 1.0)
        self.min_samples = max(3, 2 * self.folds)

    @property
    def id(self) -> str:
        head = f"ridge-lambda={num(self.ridge)}" if self.ridge else "linear_regression"
        weighted = "-reduce=variance_weighted" if self.reduce == "variance_weighted" else ""
        folds = f"-cv={self.folds}folds" if self.cv else ""
        direction = {"x_to_y": "", "y_to_x": "-reverse", "mean": "-predict=mean"}[self.predict]
        if self.components is not None:  # the scheme's order: pls-pearsonr-components=25-cv=5folds
            return f"pls-{self.scoring}{weighted}-components={self.components}{folds}{direction}"
        origin = "" if self.intercept else "-intercept=false"
        return f"{head}-{self.scoring}{weighted}{origin}{folds}{direction}"

    @property
    def label(self) -> str:
        arrow = {"x_to_y": "x→y", "y_to_x": "y→x", "mean": "x↔y"}[self.predict]
        score = {"r2": "R²", "pearsonr": "Pearson r", "pearsonr2": "Pearson r²"}[self.scoring]
        how = "linear" if self.components is None else f"PLS ({self.components} components)"
        return f"{how} predictivity {score} ({arrow}{', cross-validated' if self.cv else ''})"

    def config(self) -> dict[str, Any]:
        return {
            "ridge": self.ridge,
            "folds": self.folds if self.cv else None,
            "predict": self.predict,
            "reduce": self.reduce,
            "scoring": self.scoring,
            "components": self.components,
            "intercept": self.intercept,
        }

    def check_samples(self, n: int, p: int, q: int) -> None:
        predictors = {"x_to_y": p, "y_to_x": q, "mean": max(p, q)}[self.predict]
        self._check_predictors(n, predictors)

    def _check_predictors(self, n: int, width: int) -> None:
        if self.components is not None:
            if not self.cv:  # k scores span k of the n − 1 centred dimensions: an exact fit at k = n − 1
                k = min(self.components, width)
                check_dimensions(n, k + 1, f"PLS regression ({k} components) with an intercept", "Pass folds=.")
            return
        if not self.cv and self.ridge == 0.0:
            check_dimensions(n, width + 1, "least squares with an intercept", "Pass ridge > 0, or folds=.")

    def _coefficients(self, m: Moments, cache: dict[Any, Any], eps: float) -> torch.Tensor:
        if self.components is not None:
            return _pls_coefficients(m.cxx, m.cxy, self.components, eps)
        return _coefficients(m.cxx, m.cxy, self.ridge, cache, m.n, eps)

    def _fits(self, m: Moments) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per target, over the (out-of-fold) predictions ŷ of y: the residual sum of squares Σ(y − ŷ)², the
        cross sum Σ(ŷ − ŷ̄)(y − ȳ) and the predictions' sum of squares Σ(ŷ − ŷ̄)²."""
        if not self.cv:
            self._check_predictors(m.n, m.cxx.shape[0])
            check_variance(m, "x", "predictivity")
            if self.intercept:
                b = self._coefficients(m, m.cache_x, m.eps)
                cross, square = (b * m.cxy).sum(0), (b * (m.cxx @ b)).sum(0)  # the predictions' mean is ȳ
                return m.cyy.diagonal() - 2 * cross + square, cross, square
            pairs = [(m, m)]
        else:
            pairs = [(pool_moments([f for j, f in enumerate(m.folds) if j != k]), f) for k, f in enumerate(m.folds)]
        zero = torch.zeros_like(m.cyy.diagonal())
        rss, cross, square, total = zero, zero, zero, zero
        for train, test in pairs:
            self._check_predictors(train.n, train.cxx.shape[0])
            if self.intercept:  # the model's origin: the training means
                ox, oy = train.mean_x, train.mean_y
                b = self._coefficients(train, {}, m.eps)
            else:  # no intercept: the origin itself, and the uncentred moments
                ox, oy = torch.zeros_like(train.mean_x), torch.zeros_like(train.mean_y)
                rxx, _, rxy = train.about(ox, oy)
                b = _coefficients(rxx, rxy, self.ridge, {}, train.n, m.eps)
            sxx, syy, sxy = test.about(ox, oy)
            # about the origin: d = ŷ − oy = (x − ox)B, e = y − oy; c = oy − ȳ moves both to the mean ȳ
            dd, de = (b * (sxx @ b)).sum(0), (b * sxy).sum(0)
            d_sum = test.n * ((test.mean_x - ox) @ b)
            e_sum = test.n * (test.mean_y - oy)
            c = oy - m.mean_y
            rss = rss + syy.diagonal() - 2 * de + dd
            square = square + dd + 2 * c * d_sum + test.n * c.square()
            cross = cross + de + c * (d_sum + e_sum) + test.n * c.square()
            total = total + d_sum + test.n * c
        return rss, cross, square - total.square() / m.n

    def residuals(self, m: Moments) -> torch.Tensor:
        """Every target's residual sum of squares (in-sample, or out-of-fold pooled over the folds)."""
        return self._fits(m)[0]

    def per_target(self, m: Moments) -> torch.Tensor:
        """The score (R², r or r²) of every column of y predicted from x."""
        var = m.cyy.diagonal()
        # the one rule of "constant" (reprsim._validation.CONSTANT_EPS), feature by feature
        tol = (CONSTANT_EPS * m.eps) ** 2
        constant = var <= tol * (var + m.n * m.mean_y.square())
        if bool(constant.any()):
            what = "R²" if self.scoring == "r2" else "correlation"
            fix = "; use reduce='variance_weighted'" if self.scoring == "r2" else "; drop the constant features"
            raise ConstantRepresentationError(
                f"{int(constant.sum())} predicted features are constant (e.g. feature "
                f"{int(constant.nonzero()[0])}), so their {what} is undefined{fix}"
            )
        rss, cross, square = self._fits(m)
        if self.scoring == "r2":
            return 1.0 - rss / var
        flat = square <= tol * var
        if bool(flat.any()):
            raise ConstantRepresentationError(
                f"the predictions of {int(flat.sum())} features are constant (e.g. feature "
                f"{int(flat.nonzero()[0])}: the predictors carry nothing of it), so their Pearson r is undefined; "
                "use scoring='r2'"
            )
        r = cross / (square * var).sqrt()
        return r if self.scoring == "pearsonr" else r.square()

    def _one_way(self, m: Moments) -> torch.Tensor:
        total = check_variance(m, "y", "predictivity (the predicted representation)")
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
    reduce: Reduce | Literal["none"] | None = None,
    scoring: Scoring = "r2",
    components: int | None = None,
    intercept: bool = True,
) -> Any:
    """Linear predictivity: R² (or Pearson r) of a ridge regression from ``x`` to ``y``; see
    :class:`Predictivity`.

    Parameters
    ----------
    x, y : array or tensor, shape (n, ...)
        Predictors and targets (the same samples).
    ridge : float, default 0
    folds : int, optional
    predict : {"x_to_y", "y_to_x", "mean"}, default "x_to_y"
    reduce : {"variance_weighted", "mean", "none"}, optional
        ``variance_weighted`` (the default for R²) or ``mean`` (the default and only reduction for Pearson r).
        ``"none"`` returns every target's score (a tensor; ``predict`` must not be "mean").
    scoring : {"r2", "pearsonr", "pearsonr2"}, default "r2"
    components : int, optional
        PLS regression with this many components instead of ridge.
    intercept : bool, default True

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
    >>> 0.9 < predictivity(x, y, folds=5, scoring="pearsonr") < 1.0
    True
    """
    if reduce == "none":
        if predict == "mean":
            raise InvalidParameterError(
                "reduce='none' returns one direction's per-target scores; pick x_to_y or y_to_x"
            )
        measure = Predictivity(ridge, folds, "x_to_y", None, scoring, components, intercept)
        m, like = pair_of(x, y, folds=measure.folds, need=measure.min_samples)
        if predict == "y_to_x":
            m = m.swapped()
        out = measure.per_target(m)
        return as_result(out, like, x, y)
    return evaluate(Predictivity(ridge, folds, predict, reduce, scoring, components, intercept), x, y)


register("predictivity", lambda: Predictivity())
register("predictivity_pearsonr", lambda: Predictivity(scoring="pearsonr", folds=5))
