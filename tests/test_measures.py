"""The moment-based measures (Procrustes, shape metrics, CCA family, predictivity, linear CKA): reference
agreement, streaming == one-shot, merge, state dicts, the clear errors of degenerate inputs, and every
invariance claimed by each measure's metadata (hypothesis)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reprsim
from reprsim.errors import (
    ConstantRepresentationError,
    IncompatibleStateError,
    InsufficientSamplesError,
    InvalidParameterError,
    NonFiniteError,
    RankDeficientError,
    ShapeMismatchError,
)
from reprsim.measures import (
    CCA,
    CKA,
    ENSD,
    GULP,
    INVARIANCES,
    PWCCA,
    RSA,
    SVCCA,
    CorrelationMatch,
    Derived,
    EigenspaceOverlap,
    Measure,
    PermutationMetric,
    Predictivity,
    Procrustes,
    ShapeMetric,
    available_measures,
    canonical_correlations,
    cca,
    eigenspace_overlap,
    ensd,
    get_measure,
    gulp,
    predictivity,
    procrustes,
    pwcca,
    shape_metric,
    svcca,
)
from reprsim.streaming import CrossMoments

from . import reference as ref
from . import reference_measures as rm


def data(n: int = 300, p: int = 7, q: int = 5, seed: int = 0, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated, anisotropic x and y (well-conditioned covariances)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) @ np.diag(np.linspace(0.5, 2.0, p)) + offset
    y = np.tanh(x - offset) @ rng.normal(size=(p, q)) + 0.5 * rng.normal(size=(n, q)) - offset
    return x, y


# -- reference agreement (float64 to 1e-10) --------------------------------------------------------------


def no_intercept_r2(x: np.ndarray, y: np.ndarray, lam: float, folds: int) -> float:
    """Ridge through the origin, (XᵀX + λI)⁻¹XᵀY on the raw training rows, out-of-fold (i mod K); the mean of the
    targets' R² about their means."""
    pred = np.empty_like(y)
    fold = np.arange(len(x)) % folds
    for k in range(folds):
        a, b = x[fold != k], y[fold != k]
        pred[fold == k] = x[fold == k] @ np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ b)
    return float(np.mean(1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))


REFERENCES: dict[str, tuple[Any, Any]] = {
    "procrustes angular": (lambda x, y: procrustes(x, y), lambda x, y: rm.procrustes(x, y, "angular")),
    "procrustes euclidean": (
        lambda x, y: procrustes(x, y, score="euclidean"),
        lambda x, y: rm.procrustes(x, y, "euclidean"),
    ),
    "procrustes squared": (
        lambda x, y: procrustes(x, y, score="squared_euclidean"),
        lambda x, y: rm.procrustes(x, y, "squared_euclidean"),
    ),
    "nbs": (lambda x, y: procrustes(x, y, score="nbs"), rm.nbs),
    "shape alpha=0.5": (lambda x, y: shape_metric(x, y, alpha=0.5), lambda x, y: rm.shape_metric(x, y, 0.5)),
    "shape alpha=0": (lambda x, y: shape_metric(x, y, alpha=0.0), lambda x, y: rm.shape_metric(x, y, 0.0)),
    "shape alpha=1": (lambda x, y: shape_metric(x, y, alpha=1.0), lambda x, y: rm.procrustes(x, y, "angular")),
    "shape cv": (
        lambda x, y: shape_metric(x, y, alpha=0.3, folds=4),
        lambda x, y: rm.shape_metric_cv(x, y, 0.3, 4),
    ),
    "cca mean": (cca, lambda x, y: rm.canonical_correlations(x, y).mean()),
    "cca yanai": (
        lambda x, y: cca(x, y, reduce="yanai"),
        lambda x, y: (rm.canonical_correlations(x, y) ** 2).mean(),
    ),
    "svcca 0.99": (svcca, lambda x, y: rm.svcca(x, y, 0.99)),
    "svcca 0.9": (lambda x, y: svcca(x, y, keep=0.9), lambda x, y: rm.svcca(x, y, 0.9)),
    "svcca k=3": (lambda x, y: svcca(x, y, keep=3), lambda x, y: rm.svcca(x, y, 3)),
    "pwcca": (pwcca, rm.pwcca),
    "predictivity": (predictivity, lambda x, y: rm.predictivity(x, y, 0.0, None, "variance_weighted")),
    "predictivity ridge mean": (
        lambda x, y: predictivity(x, y, ridge=3.0, reduce="mean"),
        lambda x, y: rm.predictivity(x, y, 3.0, None, "mean"),
    ),
    "predictivity cv": (
        lambda x, y: predictivity(x, y, folds=5, ridge=0.5),
        lambda x, y: rm.predictivity(x, y, 0.5, 5, "variance_weighted"),
    ),
    "predictivity pearsonr": (
        lambda x, y: predictivity(x, y, scoring="pearsonr"),
        lambda x, y: rm.predictivity_r(x, y, 0.0, None),
    ),
    "predictivity pearsonr cv ridge": (
        lambda x, y: predictivity(x, y, scoring="pearsonr", folds=4, ridge=2.0),
        lambda x, y: rm.predictivity_r(x, y, 2.0, 4),
    ),
    "predictivity pearsonr2 cv": (
        lambda x, y: predictivity(x, y, scoring="pearsonr2", folds=5),
        lambda x, y: rm.predictivity_r(x, y, 0.0, 5, 2),
    ),
    "pls": (
        lambda x, y: predictivity(x, y, components=2),
        lambda x, y: rm.predictivity(x, y, 0.0, None, "variance_weighted", components=2),
    ),
    "pls pearsonr cv": (
        lambda x, y: predictivity(x, y, components=3, scoring="pearsonr", folds=5),
        lambda x, y: rm.predictivity_r(x, y, 0.0, 5, components=3),
    ),
    "predictivity through the origin": (
        lambda x, y: predictivity(x, y, ridge=0.5, intercept=False, reduce="mean", folds=3),
        lambda x, y: no_intercept_r2(x, y, 0.5, 3),
    ),
    "gulp": (gulp, rm.gulp),
    "gulp ridge": (lambda x, y: gulp(x, y, ridge=0.05), lambda x, y: rm.gulp(x, y, 0.05)),
    "predictivity y_to_x": (
        lambda x, y: predictivity(x, y, predict="y_to_x"),
        lambda x, y: rm.predictivity(y, x, 0.0, None, "variance_weighted"),
    ),
    "cka": (lambda x, y: CKA()(x, y), lambda x, y: ref.cka(x, y, "linear")),
    "cka unbiased": (lambda x, y: CKA(unbiased=True)(x, y), lambda x, y: ref.cka(x, y, "linear", unbiased=True)),
    "cka lange": (lambda x, y: CKA(unbiased="lange")(x, y), lambda x, y: ref.cka(x, y, "linear", unbiased="lange")),
    "cka laplace lange": (
        lambda x, y: CKA(kernel="laplace", unbiased="lange", sigma=2.0)(x, y),
        lambda x, y: ref.cka(x, y, "laplace", unbiased="lange", sigma=2.0),
    ),
    "ensd": (ensd, rm.ensd),
    "eigenspace overlap": (eigenspace_overlap, rm.eigenspace_overlap),
}


@pytest.mark.parametrize("case", list(REFERENCES))
@pytest.mark.parametrize("shape", [(300, 7, 5), (120, 4, 9)], ids=["p>q", "p<q"])
def test_float64_matches_independent_reference(case: str, shape: tuple[int, int, int]) -> None:
    ours, theirs = REFERENCES[case]
    x, y = data(*shape, offset=3.0)
    got, want = ours(x, y), theirs(x, y)
    assert isinstance(got, float)
    assert abs(got - want) < 1e-10, (got, want)


@pytest.mark.parametrize("case", list(REFERENCES))
def test_float32_is_within_1e5_and_tensors_stay_tensors(case: str) -> None:
    ours, theirs = REFERENCES[case]
    x, y = data(400, 6, 4, seed=1)
    got = ours(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert isinstance(got, torch.Tensor)
    assert got.dtype == torch.float32
    assert got.ndim == 0
    assert abs(float(got) - theirs(x.astype(np.float32), y.astype(np.float32))) < 1e-5


def test_canonical_correlations_and_per_target_r2_match_references() -> None:
    x, y = data(200, 5, 3)
    np.testing.assert_allclose(canonical_correlations(x, y).numpy(), rm.canonical_correlations(x, y), atol=1e-12)
    per = predictivity(x, y, reduce="none")
    mx, my, b = rm.ridge_fit(x, y, 0.0)
    expected = 1 - ((y - my - (x - mx) @ b) ** 2).sum(0) / ((y - my) ** 2).sum(0)
    np.testing.assert_allclose(per.numpy(), expected, atol=1e-12)


def test_predictivity_matches_scikit_learn_ridge() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    from sklearn.metrics import r2_score

    x, y = data(200, 6, 3, seed=3)
    fit = sklearn.Ridge(alpha=2.5).fit(x, y)
    want = r2_score(y, fit.predict(x), multioutput="variance_weighted")
    assert abs(predictivity(x, y, ridge=2.5) - want) < 1e-10


def test_pearson_predictivity_matches_scikit_learn_and_scipy_per_target() -> None:
    """r of scikit-learn's out-of-fold Ridge predictions (folds i mod 5), target by target, by scipy."""
    pytest.importorskip("sklearn")
    from scipy.stats import pearsonr
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import PredefinedSplit, cross_val_predict

    x, y = data(150, 6, 4, seed=5, offset=40.0)
    pred = cross_val_predict(Ridge(alpha=1.0), x, y, cv=PredefinedSplit(np.arange(150) % 5))
    want = np.array([pearsonr(pred[:, j], y[:, j])[0] for j in range(4)])
    got = predictivity(x, y, ridge=1.0, folds=5, scoring="pearsonr", reduce="none")
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)
    assert abs(predictivity(x, y, ridge=1.0, folds=5, scoring="pearsonr2") - float(np.mean(want**2))) < 1e-10
    # in-sample least squares: r² is R², target by target
    r = predictivity(x, y, scoring="pearsonr", reduce="none")
    np.testing.assert_allclose(r.numpy() ** 2, predictivity(x, y, reduce="none").numpy(), atol=1e-12)


def test_pearson_and_pls_predictivity_float32_on_offset_quantised_data() -> None:
    """Offsets of 10³ and values on a grid of 1/8: the fold sums are taken about the means, so float32 holds 1e-5."""
    rng = np.random.default_rng(7)
    x = np.round(8 * rng.normal(size=(400, 5))) / 8 + 1000.0
    y = np.round(8 * (np.tanh(x - 1000.0) @ rng.normal(size=(5, 3)) + rng.normal(size=(400, 3)))) / 8 - 500.0
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    for folds, ridge, k in ((None, 0.0, None), (5, 0.0, None), (4, 3.0, None), (5, 0.0, 2), (None, 0.0, 3)):
        want = rm.predictivity_r(x32, y32, ridge, folds, components=k)
        got = predictivity(
            torch.from_numpy(x32), torch.from_numpy(y32), ridge=ridge, folds=folds, scoring="pearsonr", components=k
        )
        assert abs(float(got) - want) < 1e-5, (folds, ridge, k, float(got), want)


def test_pearson_predictivity_refuses_constant_predictions_and_the_weighted_reduction() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    x -= x.mean(0)
    y = np.column_stack([x[:, 0], rng.normal(size=60)])
    y[:, 1] -= x @ np.linalg.lstsq(x, y[:, 1], rcond=None)[0]  # orthogonal to every predictor: Cxy's column is 0
    with pytest.raises(ConstantRepresentationError, match="predictions of 1 features are constant"):
        predictivity(x, y, scoring="pearsonr")
    with pytest.raises(InvalidParameterError, match="reduce='mean'"):
        Predictivity(scoring="pearsonr", reduce="variance_weighted")
    with pytest.raises(InvalidParameterError, match="scoring must be"):
        Predictivity(scoring="spearmanr")  # type: ignore[arg-type]


def test_pls_matches_scikit_learn_and_stops_where_y_is_explained() -> None:
    """scikit-learn's PLSRegression(scale=False) finds each weight by a power iteration (tol 1e-6 by default,
    tightened here); reprsim takes the exact singular vector of the deflated cross-moment."""
    pytest.importorskip("sklearn")
    from sklearn.cross_decomposition import PLSRegression
    from sklearn.metrics import r2_score

    x, y = data(200, 8, 5, seed=2, offset=3.0)
    for k in (1, 3, 8):
        fit = PLSRegression(n_components=k, scale=False, max_iter=5000, tol=1e-14).fit(x, y)
        want = r2_score(y, fit.predict(x), multioutput="variance_weighted")
        assert abs(predictivity(x, y, components=k) - want) < 1e-8, k
    # as many components as X has dimensions: least squares; more are not there to take
    assert abs(predictivity(x, y, components=8) - predictivity(x, y)) < 1e-12
    assert abs(predictivity(x, y, components=25) - predictivity(x, y)) < 1e-12
    # one target (PLS1): k components fit least squares in the Krylov space of c = XcᵀY under Cxx (Helland 1988)
    xc = x - x.mean(0)
    cxx, c = xc.T @ xc, xc.T @ (y[:, :1] - y[:, 0].mean())
    for k in (1, 2, 4):
        basis = np.hstack([np.linalg.matrix_power(cxx, j) @ c for j in range(k)])
        beta = basis @ np.linalg.solve(basis.T @ cxx @ basis, basis.T @ c)
        rss = np.sum((y[:, 0] - y[:, 0].mean() - xc @ beta[:, 0]) ** 2)
        want = 1 - rss / np.sum((y[:, 0] - y[:, 0].mean()) ** 2)
        assert abs(predictivity(x, y[:, :1], components=k) - want) < 1e-10, k
    # a target on X's first principal axis: one component explains it and the second finds nothing left
    axis = np.linalg.eigh(cxx)[1][:, -1]
    assert abs(predictivity(x, (xc @ axis)[:, None], components=2) - 1.0) < 1e-12
    with pytest.raises(InvalidParameterError, match="no ridge"):
        Predictivity(ridge=1.0, components=3)
    with pytest.raises(InvalidParameterError, match="components must be an integer"):
        Predictivity(components=2.5)  # type: ignore[arg-type]
    with pytest.raises(InsufficientSamplesError, match="PLS regression"):
        predictivity(x[:5], y[:5], components=4)  # in-sample, 4 scores span the 4 centred dimensions of 5 samples


def test_gulp_is_resis_recipe_and_the_canonical_correlations_at_zero_ridge() -> None:
    """ReSi's recipe (GULP's code): features × samples, centred, scaled to √n Frobenius norm, eigendecompositions
    of AAᵀ; and at λ = 0, p + q − 2Σρ² from the canonical correlations."""
    import math

    x, y = data(300, 6, 4, seed=4, offset=2.0)

    def resi(r: np.ndarray, rp: np.ndarray, lam: float) -> float:
        n = len(r)
        a, b = r.T - r.T.mean(1, keepdims=True), rp.T - rp.T.mean(1, keepdims=True)
        a, b = math.sqrt(n) * a / np.linalg.norm(a), math.sqrt(n) * b / np.linalg.norm(b)
        ea, va = np.linalg.eigh(a @ a.T)
        eb, vb = np.linalg.eigh(b @ b.T)
        ea, eb = np.clip(ea, 0, None) / n, np.clip(eb, 0, None) / n
        ia, ib = 1 / (ea + lam), 1 / (eb + lam)
        c = a @ b.T / n
        t3 = np.trace(np.diag(np.sqrt(ia)) @ va.T @ c @ vb @ np.diag(ib) @ vb.T @ c.T @ va @ np.diag(np.sqrt(ia)))
        return float(np.sum((ea * ia) ** 2) + np.sum((eb * ib) ** 2) - 2 * t3)

    for lam in (0.0, 0.01, 1.0):
        assert abs(gulp(x, y, ridge=lam) - resi(x, y, lam)) < 1e-10, lam
    rho = rm.canonical_correlations(x, y)
    assert abs(gulp(x, y) - (6 + 4 - 2 * np.sum(rho**2))) < 1e-10
    with pytest.raises(InsufficientSamplesError, match="Pass ridge > 0"):
        gulp(x[:5], y[:5])
    assert gulp(x[:5], y[:5], ridge=0.1) > 0


def test_known_values() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert abs(procrustes(x, 2 * x @ q + 5)) < 1e-6  # arccos near 1 loses half the digits (see the docstring)
    assert abs(procrustes(x, 2 * x @ q + 5, score="nbs") - 1) < 1e-12
    ind = rng.normal(size=(100, 6))
    assert 0.0 < procrustes(x, ind, score="nbs") < 1.0
    # canonical correlations of a variable with a noisy copy: ρ = 1/sqrt(1 + σ²) in the population
    big = rng.normal(size=(200_000, 1))
    rho = cca(big, big + 0.5 * rng.normal(size=big.shape))
    assert abs(rho - 1 / math.sqrt(1.25)) < 5e-3


def test_pwcca_weights_from_options() -> None:
    x, y = data(200, 4, 6)
    assert abs(pwcca(x, y) - pwcca(x, y, weights_from="x")) < 1e-12  # x is narrower
    assert abs(pwcca(x, y, weights_from="y") - rm.pwcca(x, y, side="y")) < 1e-10
    assert abs(pwcca(x, y, weights_from="y") - pwcca(x, y)) > 1e-3  # the two sides weight differently
    assert abs(pwcca(y, x) - rm.pwcca(y, x)) < 1e-10  # the narrower side again, now the second argument


# -- degenerate inputs: clear errors, never NaN or a silent 1 ---------------------------------------------


def test_cca_refuses_too_few_samples_and_singular_covariances() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 6)), rng.normal(size=(10, 5))
    with pytest.raises(InsufficientSamplesError, match=r"11 dimensions on 10 samples.*exactly 1"):
        cca(x, y)
    assert 0 < cca(x, y, ridge=0.1) < 1  # an explicit ridge makes it defined
    x = rng.normal(size=(100, 3))
    singular = np.hstack([x, x[:, :1] + x[:, 1:2]])
    # collinear features with plenty of samples: rank deficiency, the same error class for every measure that
    # inverts a covariance (CCA said "too few samples" and predictivity "constant" before)
    with pytest.raises(RankDeficientError, match=r"covariance of x is singular \(rank 3 of 4"):
        cca(singular, rng.normal(size=(100, 2)))
    with pytest.raises(RankDeficientError, match="covariance of y is singular"):
        pwcca(rng.normal(size=(100, 2)), singular, weights_from="x")
    with pytest.raises(RankDeficientError, match=r"the predictors is singular \(rank 3 of 4"):
        predictivity(singular, rng.normal(size=(100, 2)))
    assert not issubclass(RankDeficientError, (InsufficientSamplesError, ConstantRepresentationError))
    with pytest.raises(InsufficientSamplesError, match="SVCCA"):
        svcca(rng.normal(size=(8, 6)), rng.normal(size=(8, 6)), keep=1.0)


def test_predictivity_refuses_an_exact_in_sample_fit() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 9)), rng.normal(size=(10, 2))
    with pytest.raises(InsufficientSamplesError, match="least squares"):
        predictivity(x, y)
    assert predictivity(x, y, ridge=1.0) < 1.0
    assert predictivity(x, y, folds=5, ridge=1.0) < 0.5  # out of sample, noise does not predict noise
    singular = np.hstack([x[:, :3], x[:, :1]])
    with pytest.raises(RankDeficientError, match="singular"):  # collinear, not constant
        predictivity(np.vstack([singular] * 3), np.vstack([y] * 3))


def test_constant_and_nonfinite_inputs() -> None:
    rng = np.random.default_rng(0)
    x, const = rng.normal(size=(50, 3)), np.ones((50, 2))
    for fn in (procrustes, cca, svcca, lambda a, b: shape_metric(a, b, alpha=0.5), predictivity):
        with pytest.raises(ConstantRepresentationError, match=r"same for every sample|undefined|singular"):
            fn(x, const)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(NonFiniteError, match="1 NaN"):
        procrustes(bad, x)
    with pytest.raises(ShapeMismatchError, match="50 rows in x"):
        cca(x, x[:40])
    with pytest.raises(InvalidParameterError, match=r"alpha must be a finite number in \[0, 1\]"):
        ShapeMetric(alpha=1.5)
    with pytest.raises(InvalidParameterError, match="folds must be an integer"):
        Predictivity(folds=1)
    with pytest.raises(InvalidParameterError, match="did you mean 'procrustes'"):
        get_measure("procrustres")


def test_shape_metric_alpha_zero_needs_room() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InsufficientSamplesError, match="alpha=0"):
        shape_metric(rng.normal(size=(10, 6)), rng.normal(size=(10, 6)), alpha=0.0)
    assert math.isfinite(shape_metric(rng.normal(size=(10, 6)), rng.normal(size=(10, 6)), alpha=0.5))


def test_rank_deficient_data_leave_the_null_space_out_of_the_whitening() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = rng.normal(size=(200, 4))
    padded = np.hstack([x, np.zeros((200, 2))])  # two dead units: the value must not change (netrep zero-pads)
    assert abs(shape_metric(padded, y, alpha=0.4) - shape_metric(x, y, alpha=0.4)) < 1e-12


# -- streaming == one-shot, merge, state dicts -----------------------------------------------------------

STREAMED: list[Measure] = [
    CKA(),
    CKA(unbiased=True),
    CKA(unbiased="lange"),
    Procrustes(),
    Procrustes("nbs"),
    ShapeMetric(0.5),
    ShapeMetric(0.5, folds=3),
    CCA(),
    CCA("yanai", ridge=0.01),
    SVCCA(),
    PWCCA(),
    Predictivity(),
    Predictivity(ridge=1.0, folds=3, predict="mean"),
    Predictivity(ridge=0.5, folds=3, scoring="pearsonr"),
    Predictivity(predict="y_to_x", scoring="pearsonr2"),
    Predictivity(components=2, folds=3, scoring="pearsonr"),
    GULP(),
    GULP(ridge=0.1),
    RSA("sqeuclidean", "pearson"),
    ENSD(),
    EigenspaceOverlap(),
    PermutationMetric(),
    CorrelationMatch(),
    CorrelationMatch("soft"),
]


def stream(x: np.ndarray, y: np.ndarray, sizes: list[int], **kwargs: Any) -> CrossMoments:
    acc = CrossMoments(**kwargs)
    start = 0
    for s in sizes:
        acc.update(torch.from_numpy(x[start : start + s]), torch.from_numpy(y[start : start + s]))
        start += s
    return acc


@pytest.mark.parametrize("offset", [0.0, 1e6], ids=["centred", "offset-1e6"])
def test_streaming_equals_one_shot_for_every_measure(offset: float) -> None:
    x, y = data(240, 6, 4, offset=offset)
    sizes = [1, 0, 50, 7, 100, 82]  # uneven, with an empty batch and a single row
    acc = stream(x, y, sizes, fourth=True, folds=3)
    assert acc.num_samples == 240
    for m in STREAMED:
        one_shot = m(x, y)
        tol = 1e-10 if offset == 0 else 1e-7  # the offset data themselves lose digits when centred
        assert abs(acc.compute(m) - one_shot) < tol, (m, acc.compute(m), one_shot)


def test_ridge_through_the_origin_streams_and_its_accuracy_follows_the_conditioning() -> None:
    """Fitting through the origin uses the uncentred moments, whose condition number grows as (offset/spread)²:
    streamed equals one-shot to 1e-10 at an offset of 3, and to ε·κ (here 1e-4) at 10⁶, as docs/measures.md
    says; the centred fits hold 1e-7 there (the test above)."""
    for offset, tol in ((3.0, 1e-10), (1e6, 1e-4)):
        x, y = data(240, 6, 4, offset=offset)
        acc = stream(x, y, [1, 0, 50, 7, 100, 82], fourth=True, folds=3)
        for m in (
            Predictivity(ridge=1.0, intercept=False),
            Predictivity(ridge=1.0, folds=3, intercept=False, scoring="pearsonr"),
        ):
            assert abs(acc.compute(m) - m(x, y)) < tol, (offset, m)
    x, y = data(240, 6, 4, offset=3.0)
    assert (
        abs(predictivity(x, y, ridge=0.5, intercept=False, reduce="mean", folds=3) - no_intercept_r2(x, y, 0.5, 3))
        < 1e-10
    )
    assert abs(predictivity(x, y, intercept=False) - predictivity(x, y)) > 1e-3  # the offset matters without one
    with pytest.raises(InvalidParameterError, match="always centres"):
        Predictivity(components=2, intercept=False)


def test_merge_equals_concatenation_and_all_layers_at_once() -> None:
    x, y = data(200, 5, 3, offset=10.0)
    a = stream(x[:70], y[:70], [30, 40], fourth=True)
    b = stream(x[70:], y[70:], [130], fourth=True)
    whole = stream(x, y, [200], fourth=True)
    a.merge(b)
    for m in ("cka", "cka_unbiased", "procrustes", "cca", "predictivity"):
        assert abs(a.compute(m) - whole.compute(m)) < 1e-11
    # several layers per side: every pair equals the functional form on that pair
    acc = CrossMoments()
    layers_x = [x, x**2]
    layers_y = [y, np.tanh(y)]
    for s in (slice(0, 90), slice(90, 200)):
        acc.update([torch.from_numpy(v[s]) for v in layers_x], [torch.from_numpy(v[s]) for v in layers_y])
    matrix = acc.compute("procrustes")
    assert isinstance(matrix, torch.Tensor)
    assert matrix.shape == (2, 2)
    for i, a_ in enumerate(layers_x):
        for j, b_ in enumerate(layers_y):
            assert abs(float(matrix[i, j]) - procrustes(a_, b_)) < 1e-11


def test_state_dict_round_trip_and_rejected_inputs_leave_state_untouched() -> None:
    x, y = data(100, 4, 3)
    acc = stream(x, y, [60, 40], fourth=True, folds=2)
    buffer = io.BytesIO()
    torch.save(acc.state_dict(), buffer)
    buffer.seek(0)
    loaded = CrossMoments(fourth=True, folds=2).load_state_dict(torch.load(buffer, weights_only=True))
    for m in ("cka_unbiased", "procrustes", ShapeMetric(0.2, folds=2)):
        assert loaded.compute(m) == acc.compute(m)
    before = {k: v.clone() for k, v in acc.state_dict()["state"].items()}
    bad = torch.from_numpy(x[:5].copy())
    bad[2, 1] = float("inf")
    with pytest.raises(NonFiniteError):
        acc.update(bad, torch.from_numpy(y[:5]))
    with pytest.raises(ShapeMismatchError, match="every batch must come from the same layers"):
        acc.update(torch.from_numpy(x[:5, :2]), torch.from_numpy(y[:5]))
    with pytest.raises(IncompatibleStateError, match="configurations differ"):
        CrossMoments(folds=3).load_state_dict(acc.state_dict())
    after = acc.state_dict()["state"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(InvalidParameterError, match="fourth-order"):
        stream(x, y, [100]).compute("cka_unbiased")
    with pytest.raises(InvalidParameterError, match="keeps 2"):
        acc.compute(Predictivity(folds=5))


def test_folds_follow_the_sample_index_across_batches() -> None:
    x, y = data(90, 4, 3)
    acc = stream(x, y, [13, 40, 37], folds=3)
    m = acc.moments()
    for k, fold in enumerate(m.folds):
        rows = np.arange(90) % 3 == k
        assert fold.n == rows.sum()
        np.testing.assert_allclose(fold.mean_x.numpy(), x[rows].mean(0), atol=1e-12)
        xc = x[rows] - x[rows].mean(0)
        np.testing.assert_allclose(fold.cxx.numpy(), xc.T @ xc, atol=1e-10)


def test_float32_state_streams_within_1e5() -> None:
    x, y = data(500, 6, 4, offset=50.0)
    acc = stream(x.astype(np.float32), y.astype(np.float32), [100] * 5, dtype=torch.float32)
    for m in ("cka", "procrustes", "cca", "predictivity"):
        assert abs(acc.compute(m) - get_measure(m)(x, y)) < 1e-5


# -- metadata and invariances ----------------------------------------------------------------------------

CONFIGURED: list[Measure] = [get_measure(name) for name in available_measures() if name != "cka_minibatch"] + [
    ShapeMetric(0.0),
    ShapeMetric(0.5),
    ShapeMetric(1.0),
    CCA(ridge=0.1),
    SVCCA(keep=3),
    PWCCA(weights_from="y"),
    Predictivity(ridge=2.0),
    Predictivity(reduce="mean"),
    Predictivity(predict="mean"),
    Predictivity(components=2),
    RSA("gaussian", "pearson"),
    GULP(ridge=0.2),
    Predictivity(components=3, scoring="pearsonr", folds=4),
    CKA(kernel="laplace", sigma=3.0),
    CKA(kernel="rbf", unbiased="lange"),
    Derived("cka", "euclidean"),
    Derived("cka_unbiased", "angular"),
    Derived(ShapeMetric(0.5), "score"),
    Derived("cca", "one_minus_score"),
    Derived("pwcca", "negative_log"),
]


def test_metadata_is_complete_and_consistent() -> None:
    for m in [*CONFIGURED, get_measure("cka_minibatch")]:
        d = m.describe()
        assert d["direction"] in ("similarity", "distance")
        assert set(d["invariances"]) <= set(INVARIANCES)
        assert d["range"][0] < d["range"][1]
        assert not (m.metric and m.direction == "similarity"), m
        assert get_measure(m) is m
        assert m == type(m)(**m.config()) if not isinstance(m, CKA) else True


def transform(kind: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    p = x.shape[1]
    if kind == "orthogonal":
        q, _ = np.linalg.qr(rng.normal(size=(p, p)))
        return x @ q
    if kind == "isotropic_scaling":
        return x * rng.uniform(0.1, 10.0)
    if kind == "translation":
        return x + rng.normal(size=p) * 5.0
    if kind == "invertible_linear":
        return x @ (rng.normal(size=(p, p)) + 3.0 * np.eye(p))
    if kind == "permutation":
        return x[:, rng.permutation(p)]
    raise AssertionError(kind)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), side=st.sampled_from(["x", "y"]))
@pytest.mark.parametrize("measure", CONFIGURED, ids=repr)
def test_claimed_invariances_hold(measure: Measure, seed: int, side: str) -> None:
    rng = np.random.default_rng(seed)
    x, y = data(80, 5, 4, seed=seed % 1000)
    base = measure(x, y)
    for kind in sorted(measure.invariances):
        tx, ty = (transform(kind, x, rng), y) if side == "x" else (x, transform(kind, y, rng))
        # angles near 0 lose half their digits to arccos; everything else keeps ~1e-9 on this data
        assert abs(measure(tx, ty) - base) < 1e-7, (kind, side)
    if measure.symmetric:
        assert abs(measure(y, x) - base) < 1e-9


def test_metadata_does_not_claim_what_fails() -> None:
    """The claims are not vacuous: each measure is sensitive to what it does not claim (on this data)."""
    x, y = data(80, 5, 4, seed=3)
    for m in CONFIGURED:
        rng = np.random.default_rng(7)  # the same transforms for every measure, whatever the list holds
        for kind in set(INVARIANCES) - m.invariances:
            # a claim covers both sides, so a measure lacks it when either side's transform changes the value
            changed = max(abs(m(transform(kind, x, rng), y) - m(x, y)), abs(m(x, transform(kind, y, rng)) - m(x, y)))
            assert changed > 1e-6, (m, kind)


def test_top_level_and_namespaced_names_agree() -> None:
    assert reprsim.procrustes is procrustes
    assert reprsim.cca is cca
    assert reprsim.measures.svcca is svcca
    assert {"cka", "procrustes", "cca", "cca_yanai", "svcca", "pwcca", "predictivity", "nbs"} <= set(
        available_measures()
    )


@pytest.mark.parametrize(("cond", "tol"), [(1e6, 1e-10), (1e8, 1e-8)])
def test_ill_conditioned_covariances_keep_the_documented_accuracy(cond: float, tol: float) -> None:
    """docs/measures.md: whitening measures lose about eps·κ(C); 1e-10 holds up to κ ≈ 1e6."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    x = rng.normal(size=(2000, 8)) @ np.diag(np.logspace(0, -np.log10(cond) / 2, 8)) @ q  # κ(XᵀX) = cond
    y = x[:, :5] @ rng.normal(size=(5, 5)) + 0.3 * rng.normal(size=(2000, 5))
    assert abs(cca(x, y) - rm.canonical_correlations(x, y).mean()) < tol
    assert abs(pwcca(x, y, weights_from="x") - rm.pwcca(x, y, side="x")) < tol
    assert abs(predictivity(x, y) - rm.predictivity(x, y, 0.0, None, "variance_weighted")) < tol
    assert abs(shape_metric(x, y, alpha=0.0) - rm.shape_metric(x, y, 0.0)) < tol * 10


def test_measures_page_lists_every_registered_measure_with_its_id_and_direction() -> None:
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "measures.md").read_text()
    rows: dict[str, str] = {}
    for line in page.splitlines():
        if line.startswith("| `"):  # the first table, "At a glance" (later tables repeat some names)
            rows.setdefault(line.split("|")[1].strip(), line)
    for name in available_measures():
        m = get_measure(name)
        if not type(m).__module__.startswith("reprsim."):
            continue  # registered by a test or a docs example (docs/adding-a-measure.md registers one)
        row = rows.get(f"`{name}`")
        assert row is not None, name
        assert f"`{m.id}`" in row, (name, m.id)
        assert f"| {m.direction} |" in row, name


def test_every_measure_on_the_device_matches_the_reference_and_streams(device: str) -> None:
    """The same numbers on CPU and CUDA: functional forms, and a CrossMoments whose state lives on the device."""
    x, y = data(300, 6, 4, offset=2.0)
    xt, yt = torch.tensor(x, device=device), torch.tensor(y, device=device)
    for case in ("procrustes angular", "nbs", "shape cv", "cca yanai", "svcca 0.9", "pwcca", "predictivity cv"):
        ours, theirs = REFERENCES[case]
        got = ours(xt, yt)
        assert got.device.type == device
        assert abs(float(got) - theirs(x, y)) < 1e-10, case
    acc = CrossMoments(fourth=True, folds=3).to(device)
    for xb, yb in zip(xt.split(70), yt.split(70)):
        acc.update(xb, yb)
    assert acc.state_dict()["state"]["m2.1"].device.type == device
    for m in STREAMED:
        assert abs(acc.compute(m) - m(x, y)) < 1e-10, m
    cpu = CrossMoments(fourth=True, folds=3).load_state_dict(acc.state_dict())  # state dicts cross devices
    assert abs(cpu.to("cpu").compute("procrustes") - acc.compute("procrustes")) < 1e-12


def test_values_that_would_overflow_the_state_are_rejected_before_anything_is_added() -> None:
    x, y = data(60, 4, 3)
    acc = stream(x, y, [30])
    before = {k: v.clone() for k, v in acc.state_dict()["state"].items()}
    with pytest.raises(NonFiniteError, match="overflowed"):
        acc.update(torch.from_numpy(x[30:] * 1e160), torch.from_numpy(y[30:]))
    after = acc.state_dict()["state"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    acc.update(torch.from_numpy(x[30:]), torch.from_numpy(y[30:]))
    assert abs(acc.compute("procrustes") - procrustes(x, y)) < 1e-12


# -- one rule for "constant", and the precision of float32 data ------------------------------------------------


def _constants(n: int, p: int) -> dict[str, np.ndarray]:
    """Dead layers as they come out of models: a float64 constant that is not a power of two (its mean does not
    round to itself), a float32 bias of a zero-weight Linear, and exact zeros."""
    bias = torch.nn.Linear(3, p)
    torch.nn.init.zeros_(bias.weight)
    with torch.no_grad():
        dead = bias(torch.randn(n, 3)).numpy()
    return {"0.1": np.full((n, p), 0.1), "zero-weight Linear": dead, "zeros": np.zeros((n, p))}


@pytest.mark.parametrize("measure", CONFIGURED, ids=repr)
def test_every_measure_refuses_a_constant_representation(measure: Measure) -> None:
    x, y = data(80, 5, 4, seed=5)
    for _label, c in _constants(80, 5).items():
        for a, b in ((c, y), (x, c[:, :4])):
            with pytest.raises(ConstantRepresentationError, match="is constant"):
                measure(a, b)  # a number here would be computed on rounding residues


def test_constant_streams_raise_as_the_arrays_do() -> None:
    """Streamed, the same data reach the same rule (LinearCKA(unbiased=True) gave 0.009 here)."""
    rng = np.random.default_rng(1)
    y = rng.normal(size=(60, 3))
    for m in ("cka", "cka_unbiased", "procrustes", "nbs", "svcca", "cca"):
        acc = CrossMoments(fourth=True)
        for lo in range(0, 60, 7):
            acc.update(np.full((len(y[lo : lo + 7]), 4), 0.1), y[lo : lo + 7])
        with pytest.raises(ConstantRepresentationError, match="x is constant"):
            acc.compute(m)
    lin = reprsim.streaming.LinearCKA(unbiased=True)
    for lo in range(0, 60, 7):
        lin.update(np.full((len(y[lo : lo + 7]), 4), 0.1), y[lo : lo + 7])
    with pytest.raises(ConstantRepresentationError, match="x is constant"):
        lin.compute()


def test_the_constant_rule_is_relative_to_scale_and_dtype() -> None:
    from reprsim._validation import constant_tolerance, is_constant

    rng = np.random.default_rng(0)
    noise = rng.normal(size=(200, 3))
    for scale in (1e-30, 1.0, 1e30):
        assert is_constant(torch.tensor(scale * (0.1 + 1e-16 * noise)))  # rounding-level spread
        assert not is_constant(torch.tensor(scale * (0.1 + 1e-11 * noise)))  # real variation, tiny but real
    assert is_constant(torch.tensor(0.1 + 1e-9 * noise, dtype=torch.float32))  # below float32's resolution
    assert not is_constant(torch.tensor(0.1 + 1e-3 * noise, dtype=torch.float32))
    assert constant_tolerance(torch.float32) > constant_tolerance(torch.float64)
    x, y = data(80, 5, 4)
    assert abs(procrustes(1e6 + 1e-3 * x, y) - procrustes(x, y)) < 1e-6  # offset 1e9 × spread still varies


def test_float32_data_of_low_rank_keep_their_rank() -> None:
    """A float32 Linear(8, 24) layer has rank 8; its float32 rounding must not read as 16 more dimensions."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 24)
    h = torch.randn(500, 8)
    with torch.no_grad():
        a = layer(h)
    b = torch.tanh(h @ torch.randn(8, 12)) + 0.1 * torch.randn(500, 12)
    # float64 reference on the same numbers: fully whitened data are the left singular vectors of the data's
    # range (rank 8 known by construction), so the distance is arccos(‖UxᵀUy‖_* / sqrt(rank x · rank y))
    ux = np.linalg.svd(rm.centred(a.double().numpy()), full_matrices=False)[0][:, :8]
    uy = np.linalg.svd(rm.centred(b.double().numpy()), full_matrices=False)[0]
    expected = float(np.arccos(np.linalg.svd(ux.T @ uy, compute_uv=False).sum() / np.sqrt(8 * 12)))
    assert abs(float(shape_metric(a, b, alpha=0.0)) - expected) < 1e-5
    acc = CrossMoments()
    for lo in range(0, 500, 100):
        acc.update(a[lo : lo + 100], b[lo : lo + 100])
    assert abs(acc.compute(ShapeMetric(0.0)) - expected) < 1e-5
    with pytest.raises(RankDeficientError, match="rank 8 of 24"):
        cca(a, b)


@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e200, 1e-200])
def test_extreme_magnitudes_give_the_value_at_magnitude_one(scale: float) -> None:
    x, y = data(120, 5, 4, seed=2)
    dtype = np.float32 if abs(math.log10(scale)) < 38 else np.float64
    xs, ys = (x * scale).astype(dtype), (y * scale).astype(dtype)
    xe, ye = (xs / scale).astype(np.float64), (ys / scale).astype(np.float64)  # the same values at scale 1
    tol = 1e-5 if dtype == np.float32 else 1e-10
    for m in [get_measure(k) for k in ("procrustes", "nbs", "cca", "cca_yanai", "svcca", "pwcca", "cka")]:
        assert abs(m(xs, ys) - m(xe, ye)) < tol, (m, scale)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
@pytest.mark.parametrize("measure", CONFIGURED, ids=repr)
def test_claimed_invariances_hold_exactly_on_quantised_data(measure: Measure, seed: int) -> None:
    """Integer-valued data have exact ties (equal distances, equal similarities); transformations that are exact
    in floating point (scaling by 3, integer shifts, signed permutations of features) must not change the value,
    whatever the rounding of the products (mutual_knn(x, 3x) was 0.952 on such data)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=(60, 5)).astype(np.float64)
    y = np.round(2 * np.tanh(x[:, :4] + rng.integers(-1, 2, size=(60, 4)))).astype(np.float64) + x[:, :4]
    exact = {
        "isotropic_scaling": lambda a: 3.0 * a,
        "translation": lambda a: a + rng.integers(-5, 6, size=a.shape[1]),
        "permutation": lambda a: a[:, rng.permutation(a.shape[1])],
        "orthogonal": lambda a: (a * rng.choice([-1.0, 1.0], size=a.shape[1]))[:, rng.permutation(a.shape[1])],
    }
    try:
        base = measure(x, y)
    except (RankDeficientError, InsufficientSamplesError, ConstantRepresentationError):
        return  # integer data can be collinear; the claim is then about an error, which is not in question here
    for kind in sorted(measure.invariances & set(exact)):
        for tx, ty in ((exact[kind](x), y), (x, exact[kind](y))):
            assert abs(measure(tx, ty) - base) < 1e-9, (kind, measure)


def test_eigenspace_overlap_on_rank_deficient_and_far_off_data() -> None:
    """The column space of X = Xc + 1μᵀ gains the constant direction exactly when μ leaves the centred range, and
    the score keeps CCA's accuracy however far the data are from the origin (whitening the uncentred second
    moment instead put streamed and one-shot values 3e-5 apart at an offset of 10⁶)."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 3))
    dependent = np.hstack([base, base[:, :1] + base[:, 1:2]])  # width 4, rank 3
    assert eigenspace_overlap(dependent, dependent) == pytest.approx(0.75, abs=1e-12)  # 3 shared dims over 4
    shifted = dependent.copy()
    shifted[:, 3] += 4.0  # a mean outside the centred range: the constant direction joins the space (rank 4)
    y = rng.normal(size=(200, 2)) + base[:, :2]
    for x in (dependent, shifted):
        assert abs(eigenspace_overlap(x, y) - rm.eigenspace_overlap(x, y)) < 1e-10
    assert abs(eigenspace_overlap(shifted, shifted) - 1.0) < 1e-12
    far = base + 1e6
    assert abs(eigenspace_overlap(far, y) - rm.eigenspace_overlap(far, y)) < 1e-9
