"""Measure IDs in the similarity-repository scheme: every name of the scheme's list either builds a measure whose
value matches the scheme's definition (written here from the formulas and the scheme's own transforms), or is
in reprsim's documented list of names it does not provide; IDs name whole configurations and read back."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform
from scipy.stats import kendalltau, pearsonr, rankdata, spearmanr
from sklearn.decomposition import PCA

from reprsim import compare
from reprsim.errors import InvalidParameterError
from reprsim.measures import (
    CCA,
    CKA,
    CKNNA,
    ENSD,
    GULP,
    LCSKNN,
    NOT_PROVIDED,
    PWCCA,
    RSA,
    SVCCA,
    AlignedCosine,
    CorrelationMatch,
    CycleKNN,
    Derived,
    DistanceCorrelation,
    EditDistanceKNN,
    EigenspaceOverlap,
    JaccardKNN,
    Measure,
    MutualKNN,
    PermutationMetric,
    Predictivity,
    Procrustes,
    RankSimilarity,
    SecondOrderCosine,
    ShapeMetric,
    from_id,
    get_measure,
)
from reprsim.measures._samples import RDM_KINDS
from reprsim.streaming import CrossMoments

from . import reference as ref
from . import reference_measures as rm
from .test_matching import aligned_cosine_reference, correlation_match_reference, permutation_reference
from .toys import batches, hand_extract, mlp

LIST = Path(__file__).parent / "data" / "similarity-repository-ids.txt"
SIGMA, TOPK, ALPHA, DIM = 3.0, 5, 0.5, 4
FILLED = {"{sigma}": str(SIGMA), "{topk}": str(TOPK), "{alpha}": str(ALPHA), "{dim}": str(DIM), "{n_components}": "3"}


def scheme_names() -> list[str]:
    names = []
    for line in LIST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            names.append(line.split()[1])
    return names


def filled(name: str) -> str:
    for key, value in FILLED.items():
        name = name.replace(key, value)
    return name


def pair() -> tuple[np.ndarray, np.ndarray]:
    """Offset, anisotropic, related x (80 × 12) and y (80 × 10): wide enough for svcca-dim=10."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(80, 12)) @ np.diag(np.linspace(0.5, 2.0, 12)) + 3.0
    y = np.tanh(x - 3.0) @ rng.normal(size=(12, 10)) + 0.5 * rng.normal(size=(80, 10)) - 1.0
    return x, y


def centred(a: np.ndarray) -> np.ndarray:
    return a - a.mean(0)


def canonical(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return rm.canonical_correlations(x, y)


def pca(a: np.ndarray, keep: float | int) -> np.ndarray:
    """The scheme's SVCCA pre-processing: scikit-learn's PCA with a variance fraction or a component count."""
    return np.asarray(PCA(n_components=keep).fit_transform(a))


def bures(x: np.ndarray, y: np.ndarray) -> float:
    """nn_similarity_index's Bures distance of the centred linear kernels: √(tr K + tr L − 2 tr (K^½ L K^½)^½)."""
    h = np.eye(len(x)) - 1 / len(x)
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    w, v = np.linalg.eigh(k)
    w[w < 1e-10 * w.max()] = 0.0  # K has rank p < n: its rounding-level eigenvalues are 0
    root = (v * np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root @ l @ root)
    inner[inner < 1e-10 * inner.max()] = 0.0  # each rounding-level eigenvalue would add √ε to the trace
    return float(np.sqrt(max(np.trace(k) + np.trace(l) - 2 * np.sqrt(inner).sum(), 0.0)))


# -- the scheme's definitions ------------------------------------------------------------------------------------


def scores(x: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], float]]:
    """Each family's score s, by the name's stem (the name without its form)."""
    s = SIGMA
    return {
        "cka-kernel=linear-hsic=gretton": lambda: ref.cka(x, y),
        "cka-kernel=linear-hsic=song": lambda: ref.cka(x, y, unbiased=True),
        f"cka-kernel=(rbf-sigma={s})-hsic=gretton": lambda: ref.cka(x, y, "rbf", sigma=s),
        f"cka-kernel=(rbf-sigma={s})-hsic=song": lambda: ref.cka(x, y, "rbf", unbiased=True, sigma=s),
        "cka-kernel=linear-hsic=lange": lambda: ref.cka(x, y, unbiased="lange"),
        f"cka-kernel=(rbf-sigma={s})-hsic=lange": lambda: ref.cka(x, y, "rbf", unbiased="lange", sigma=s),
        f"cka-kernel=(laplace-sigma={s})-hsic=gretton": lambda: ref.cka(x, y, "laplace", sigma=s),
        f"cka-kernel=(laplace-sigma={s})-hsic=lange": lambda: ref.cka(x, y, "laplace", unbiased="lange", sigma=s),
        "procrustes": lambda: rm.nbs(x, y),
        "nbs": lambda: rm.nbs(x, y),
        f"shape_metric-alpha={ALPHA}": lambda: math.cos(rm.shape_metric(x, y, ALPHA)),
        "cca": lambda: float(canonical(x, y).mean()),
        "pwcca": lambda: rm.pwcca(x, y),
        "permutation_metric": lambda: math.cos(permutation_reference(x, y)[0]),
        "svcca-dim=10": lambda: float(canonical(pca(x, 10), pca(y, 10)).mean()),
        f"svcca-dim={DIM}": lambda: float(canonical(pca(x, DIM), pca(y, DIM)).mean()),
        "svcca-var=0.95": lambda: float(canonical(pca(x, 0.95), pca(y, 0.95)).mean()),
        "svcca-var=0.99": lambda: float(canonical(pca(x, 0.99), pca(y, 0.99)).mean()),
    }


def squared_scores(x: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], float]]:
    """``-squared_score``: the mean of the squared canonical correlations."""
    return {
        "cca": lambda: float((canonical(x, y) ** 2).mean()),
        **{
            f"svcca-{k}": (lambda keep=keep: float((canonical(pca(x, keep), pca(y, keep)) ** 2).mean()))
            for k, keep in (("dim=10", 10), ("var=0.95", 0.95), ("var=0.99", 0.99))
        },
    }


def in_form(form: str, s: float, x: np.ndarray, y: np.ndarray) -> float:
    """The scheme's transforms of a score (similarity/standardization.py, restated in the list's header)."""
    a, b = np.linalg.norm(centred(x)), np.linalg.norm(centred(y))
    euclidean_sq = a**2 + b**2 - 2 * a * b * s
    return {
        "score": s,
        "distance=angular": math.acos(min(s, 1.0)),
        "distance=euclidean": math.sqrt(euclidean_sq),
        "distance=squared_euclidean": euclidean_sq,
        "distance=one_minus_score": 1 - s,
        "score-negative_log": -math.log(s),
    }[form]


def cosine_of(a: np.ndarray, b: np.ndarray) -> tuple[float]:
    return (float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),)


def rho_a(a: np.ndarray, b: np.ndarray) -> tuple[float]:
    """rsatoolbox's ρ-a: the covariance of the average ranks over the variance of untied ranks."""
    n = len(a)
    ra, rb = rankdata(a) - (n + 1) / 2, rankdata(b) - (n + 1) / 2
    return (float(ra @ rb * 12 / (n**3 - n)),)


def tau_a(a: np.ndarray, b: np.ndarray) -> tuple[float]:
    """Kendall's τ-a: Σ sign(a_i − a_j) sign(b_i − b_j) over all pairs, over their number."""
    da, db = np.sign(a[:, None] - a[None, :]), np.sign(b[:, None] - b[None, :])
    n = len(a)
    return (float(np.sum(np.triu(da * db, 1)) / (n * (n - 1) / 2)),)


def brain_language_nlp_kernel_ridge(x: np.ndarray, y: np.ndarray, lam: float = 1.0) -> float:
    """brain-language-nlp: weights Xᵀ(XXᵀ + λI)⁻¹Y on the raw data, R² = 1 − mean squared error / variance per
    target, averaged."""
    pred = x @ (x.T @ np.linalg.inv(x @ x.T + lam * np.eye(len(x))) @ y)
    return float(np.mean(1 - np.mean((y - pred) ** 2, axis=0) / np.var(y, axis=0)))


def counts() -> tuple[np.ndarray, np.ndarray]:
    """Related Poisson counts (80 × 12 and 80 × 10), for the Poisson RDM."""
    rng = np.random.default_rng(11)
    x = rng.poisson(3.0, size=(80, 12)).astype(float)
    return x, rng.poisson(1.0, size=(80, 10)) + x[:, :10]


def rdm(a: np.ndarray, kind: str) -> np.ndarray:
    if kind == "squared_euclidean":  # rsatoolbox's: divided by the number of channels
        return pdist(a, "sqeuclidean") / a.shape[1]
    if kind == "mahalanobis":  # rsatoolbox's without a noise precision: the identity, on the raw patterns
        k = a @ a.T
        full = np.diag(k)[:, None] + np.diag(k)[None, :] - 2 * k
        return full[np.triu_indices(len(a), 1)] / a.shape[1]
    if kind == "poisson":  # rsatoolbox's: symmetrised KL of rates (x + 0.1) / 1.1, over the channels
        m = (a + 0.1) / 1.1
        k = m @ np.log(m).T
        full = np.diag(k)[:, None] + np.diag(k)[None, :] - k - k.T
        # integer counts give exactly tied dissimilarities, which the two computations round differently
        return np.round(full[np.triu_indices(len(a), 1)] / a.shape[1], 10)
    if kind == "gaussian":  # thingsvision's: 1 − exp(−D / mean D), the mean over the whole square
        full = squareform(pdist(a, "sqeuclidean"))
        return 1 - np.exp(-full / full.mean())[np.triu_indices(len(a), 1)]
    return pdist(a, kind)


def whole(x: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], float]]:
    """Names whose definition is not a form of a family score."""
    compare_with = {"pearson": pearsonr, "spearman": spearmanr, "kendall": kendalltau, "tau_b": kendalltau}
    compare_with |= {"cosine": cosine_of, "rho_a": rho_a, "tau_a": tau_a}
    rsa = {
        f"rsa-rdm={r}-compare={c}": (lambda r=r, f=f: float(f(rdm(x, r), rdm(y, r))[0]))
        for r in ("correlation", "cosine", "euclidean", "squared_euclidean", "mahalanobis", "gaussian", "poisson")
        for c, f in compare_with.items()
    }
    qy, _ = np.linalg.qr(centred(y))  # ReSi's linear regression: the share of X's variance in Y's column space
    k = TOPK
    return {
        **rsa,
        "ensd": lambda: rm.ensd(x, y),
        "gulp": lambda: rm.gulp(x, y),
        "hard_correlation_match": lambda: correlation_match_reference(x, y, "hard"),
        "aligned_cosine_similarity": lambda: aligned_cosine_reference(x, y),
        "aligned_cossim": lambda: aligned_cosine_reference(x, y),
        "soft_correlation_match": lambda: correlation_match_reference(x, y, "soft"),
        "ensd-distance=angular_normalized": lambda: math.acos(ref.cka(x, y)) * 2 / math.pi,
        "eigenspace_overlap_score": lambda: rm.eigenspace_overlap(x, y),
        "distance_correlation": lambda: rm.distance_correlation(x, y, False),
        f"mutual_knn-topk={k}": lambda: rm.mutual_knn(x, y, k),
        f"cycle_knn-topk={k}": lambda: rm.cycle_knn(x, y, k),
        f"lcs_knn-topk={k}": lambda: rm.lcs_knn(x, y, k),
        f"edit_distance_knn-topk={k}": lambda: rm.edit_distance_knn(x, y, k),
        f"cknna-topk={k}": lambda: rm.cknna(x, y, k),
        "jaccard_similarity": lambda: rm.jaccard_knn(x, y, 10),
        "second_order_cosine_similarity": lambda: rm.second_order_cosine(x, y, 10),
        "rank_similarity": lambda: rm.rank_similarity(x, y, 10),
        "linear_regression": lambda: float(np.linalg.norm(qy.T @ centred(x)) ** 2 / np.linalg.norm(centred(x)) ** 2),
        "linear_regression-r2-cv=5folds": lambda: rm.predictivity(x, y, 0.0, 5, "mean"),
        "ridge-lambda=1-r2": lambda: rm.predictivity(x, y, 1.0, None, "mean"),
        "kernel_ridge-lambda=1-r2": lambda: brain_language_nlp_kernel_ridge(x, y),
        "ridge-lambda=1-r2-cv=5folds": lambda: rm.predictivity(x, y, 1.0, 5, "mean"),
        "linear_regression-pearsonr": lambda: rm.predictivity_r(x, y, 0.0, None),
        "linear_regression-pearsonr-cv=5folds": lambda: rm.predictivity_r(x, y, 0.0, 5),
        "linear_regression-pearsonr2-cv=5folds": lambda: rm.predictivity_r(x, y, 0.0, 5, 2),
        "ridge-lambda=1-pearsonr": lambda: rm.predictivity_r(x, y, 1.0, None),
        "ridge-lambda=1-pearsonr-cv=5folds": lambda: rm.predictivity_r(x, y, 1.0, 5),
        "ridge-lambda=1-pearsonr2-cv=5folds": lambda: rm.predictivity_r(x, y, 1.0, 5, 2),
        # Brain-Score's 25 components, at most X's 12 dimensions
        "pls-pearsonr": lambda: rm.predictivity_r(x, y, 0.0, None, components=25),
        "pls-pearsonr-cv=5folds": lambda: rm.predictivity_r(x, y, 0.0, 5, components=25),
        "pls-pearsonr-components=25-cv=5folds": lambda: rm.predictivity_r(x, y, 0.0, 5, components=25),
        "pls-pearsonr-components=3": lambda: rm.predictivity_r(x, y, 0.0, None, components=3),
        "feature_space_linear_cka": lambda: ref.cka(x, y),
        "feature_space_linear_cka-debiased_True": lambda: ref.cka(x, y, unbiased=True),
        "linear_CKA": lambda: ref.cka(x, y),
        "bures_distance": lambda: bures(x, y),
        "kernel_CKA": lambda: ref.cka(x, y, "rbf", sigma=1.0),
        "orthogonal_angular_shape_metric_centered": lambda: rm.procrustes(x, y, "angular"),
        "orthogonal_procrustes_centered_and_normalized": lambda: rm.procrustes(x, y, "euclidean"),
        "procrustes-distance=angular-cv=5folds": lambda: rm.shape_metric_cv(x, y, 1.0, 5),
        "nbs-distance=angular-cv=5folds": lambda: rm.shape_metric_cv(x, y, 1.0, 5),
        "cca-distance=angular-cv=5folds": lambda: rm.shape_metric_cv(x, y, 0.0, 5),
        f"shape_metric-alpha={ALPHA}-distance=angular-cv=5folds": lambda: rm.shape_metric_cv(x, y, ALPHA, 5),
    }


def scheme_value(name: str, x: np.ndarray, y: np.ndarray) -> float | None:
    """The value the scheme defines for ``name`` on (x, y), or None for a name this table does not define."""
    table = whole(x, y)
    if name in table:
        return table[name]()
    for form in (
        "score-negative_log",
        "squared_score",
        "score",
        "distance=angular",
        "distance=euclidean",
        "distance=squared_euclidean",
        "distance=one_minus_score",
    ):
        if name.endswith("-" + form):
            stem = name[: -len(form) - 1]
            if form == "squared_score":
                return squared_scores(x, y)[stem]() if stem in squared_scores(x, y) else None
            family = scores(x, y)
            return in_form(form, family[stem](), x, y) if stem in family else None
    return None


def reason_for(name: str) -> str | None:
    return next((why for pattern, why in NOT_PROVIDED.items() if fnmatch.fnmatchcase(name, pattern)), None)


# -- the walk ------------------------------------------------------------------------------------------------------


def test_the_list_is_the_schemes_and_complete() -> None:
    names = scheme_names()
    assert len(names) == 207
    assert len(set(names)) == 207
    assert "cka-kernel=linear-hsic=gretton-score" in names


def test_every_name_builds_the_schemes_value_or_is_listed_with_its_reason() -> None:
    x, y = pair()
    provided, refused, used = [], [], set()
    for name in map(filled, scheme_names()):
        reason = reason_for(name)
        if reason is not None:
            with pytest.raises(InvalidParameterError, match="does not provide") as refusal:
                from_id(name)
            assert reason in str(refusal.value)
            assert name in str(refusal.value)
            used |= {p for p in NOT_PROVIDED if fnmatch.fnmatchcase(name, p)}
            refused.append(name)
            continue
        m = from_id(name)  # a name without a listed reason must build
        a, b = (x, y) if "rdm=poisson" not in name else counts()  # the Poisson RDM is defined on rates
        want = scheme_value(name, a, b)
        assert want is not None, f"{name} builds, but the test has no definition to check it against"
        got = m(a, b)
        assert abs(got - want) < 1e-9 * max(1.0, abs(want)), (name, got, want)
        provided.append(name)
    assert len(provided) + len(refused) == 207
    assert len(provided) == 157, len(provided)  # docs/measures.md: "157 of the 207 names"
    assert used == set(NOT_PROVIDED), f"patterns no name needs: {set(NOT_PROVIDED) - used}"


def test_a_name_builds_the_measure_it_names_and_ids_read_back() -> None:
    """Every provided name's measure reports an ID that builds an equal measure: the name itself, or the one
    reprsim files it under (an alias such as nbs-score → procrustes-score)."""
    for name in map(filled, scheme_names()):
        if reason_for(name) is not None:
            continue
        m = from_id(name)
        assert from_id(m.id) == m, name
        assert get_measure(name) == m


CONFIGURATIONS: list[Measure] = [
    CKA(),
    CKA(unbiased=True),
    CKA(estimator="minibatch"),
    CKA(estimator="minibatch", kernel="rbf"),
    CKA(kernel="rbf"),
    CKA(kernel="rbf", median_fraction=0.5),
    CKA(kernel="rbf", sigma=0.5),
    CKA(kernel="rbf", sigma=0.5, unbiased=True),
    CKA(unbiased="lange"),
    CKA(kernel="rbf", sigma=0.5, unbiased="lange"),
    CKA(kernel="laplace"),
    CKA(kernel="laplace", sigma=0.5),
    CKA(kernel="laplace", median_fraction=0.5, unbiased="lange"),
    *(Procrustes(s) for s in ("angular", "euclidean", "squared_euclidean", "nbs")),
    *(ShapeMetric(a) for a in (0.0, 0.2, 0.25, 0.5, 1.0)),
    ShapeMetric(0.25, folds=5),
    ShapeMetric(0.25, folds=3),
    CCA(),
    CCA("yanai"),
    CCA(ridge=0.1),
    CCA("yanai", ridge=0.1),
    *(SVCCA(k) for k in (0.95, 0.985, 0.99, 0.995, 1.0, 3, 10)),
    SVCCA(0.99, "yanai"),
    *(PWCCA(w) for w in ("narrower", "x", "y")),
    PWCCA(ridge=0.5),
    *(
        Predictivity(r, f, p, d)
        for r in (0.0, 1.0, 2.5)
        for f in (None, 5)
        for p in ("x_to_y", "y_to_x", "mean")
        for d in ("variance_weighted", "mean")
    ),
    *(
        Predictivity(r, f, "x_to_y", "mean", s)
        for r in (0.0, 1.0)
        for f in (None, 5)
        for s in ("pearsonr", "pearsonr2")
    ),
    Predictivity(1.0, 5, "y_to_x", scoring="pearsonr"),
    Predictivity(scoring="pearsonr", predict="mean"),
    *(Predictivity(folds=f, scoring="pearsonr", components=k) for f in (None, 5) for k in (3, 25)),
    Predictivity(components=10),
    Predictivity(1.0, None, "x_to_y", "mean", intercept=False),
    Predictivity(0.0, 5, "y_to_x", scoring="pearsonr", intercept=False),
    Predictivity(components=10, predict="y_to_x", reduce="mean"),
    *(MutualKNN(k, n) for k in (5, 10) for n in ("cosine", "inner_product", "euclidean")),
    *(JaccardKNN(k, n) for k in (5, 10) for n in ("cosine", "euclidean")),
    *(RankSimilarity(k, n) for k in (5, 10) for n in ("cosine", "inner_product")),
    *(CKNNA(k, n, u) for k in (5, 10) for n in ("cosine", "inner_product") for u in (True, False)),
    *(c(k, n) for c in (CycleKNN, LCSKNN, EditDistanceKNN) for k in (5, 10) for n in ("cosine", "euclidean")),
    SecondOrderCosine(5),
    SecondOrderCosine(10),
    DistanceCorrelation(),
    DistanceCorrelation(unbiased=True),
    *(RSA(r, c) for r in RDM_KINDS for c in ("pearson", "spearman", "kendall", "cosine", "rho_a", "tau_a")),
    ENSD(),
    GULP(),
    GULP(0.1),
    EigenspaceOverlap(),
    PermutationMetric(),
    CorrelationMatch(),
    CorrelationMatch("soft"),
    Derived(PermutationMetric(), "euclidean"),
    AlignedCosine(),
    *(
        Derived(m, f)
        for m in (CKA(), ShapeMetric(0.5), Procrustes("nbs"), SVCCA(10), PWCCA())
        for f in ("euclidean", "squared_euclidean", "one_minus_score", "negative_log", "angular_normalized")
    ),
    Derived(CKA(), "angular"),
    Derived(ShapeMetric(0.5), "score"),
    Derived(CCA(), "angular"),
]


def test_no_two_configurations_share_an_id_and_every_id_builds_its_measure() -> None:
    ids = [m.id for m in CONFIGURATIONS]
    assert len(set(ids)) == len(ids), sorted({i for i in ids if ids.count(i) > 1})
    for m in CONFIGURATIONS:
        back = from_id(m.id)
        assert back == m, (m, back)
        assert back.id == m.id


def test_compare_keeps_two_settings_of_one_measure_apart() -> None:
    """compare() keys measure objects by ID: settings that used to collide (α = 0.25 and 0.2 were one ID, and so
    were SVCCA's 0.985 and 0.99) are two results now, each the functional value."""
    a, b = mlp(0), mlp(1)
    data = batches(128, 32)
    measures = [ShapeMetric(0.25), ShapeMetric(0.2), SVCCA(0.985), SVCCA(0.99), Derived("cka", "euclidean")]
    out = compare(a, b, data, measures=measures, layers_a=["2"], layers_b=["2"], progress=False)
    assert set(out) == {m.id for m in measures}
    ha, hb = hand_extract(a, ["2"], data)["2"].numpy(), hand_extract(b, ["2"], data)["2"].numpy()
    for m in measures:
        assert abs(float(out[m.id].matrix[0, 0]) - m(ha, hb)) < 1e-10 * max(1.0, m(ha, hb)), m
    with pytest.raises(InvalidParameterError, match="requested twice"):
        compare(a, b, data, measures=[ShapeMetric(0.25), ShapeMetric(0.25)], progress=False)


# -- derived forms -------------------------------------------------------------------------------------------------


def test_derived_forms_stream_and_match_their_formulas_on_offset_float32_data() -> None:
    x, y = pair()
    for form in ("angular", "euclidean", "squared_euclidean", "one_minus_score", "negative_log"):
        m = Derived("cka", form)
        want = in_form(_TOKEN[form], ref.cka(x, y), x, y)
        acc = CrossMoments()
        for rows in np.array_split(np.arange(80), 3):
            acc.update(torch.from_numpy(x[rows]), torch.from_numpy(y[rows]))
        assert abs(acc.compute(m) - want) < 1e-10 * max(1.0, want), form
        assert abs(m(x, y) - want) < 1e-10 * max(1.0, want), form
        got32 = m(x.astype(np.float32), y.astype(np.float32))
        assert abs(got32 - want) < 1e-5 * max(1.0, want), form


_TOKEN = {
    "angular": "distance=angular",
    "euclidean": "distance=euclidean",
    "squared_euclidean": "distance=squared_euclidean",
    "one_minus_score": "distance=one_minus_score",
    "negative_log": "score-negative_log",
}


def test_derived_forms_of_sample_space_and_angular_measures() -> None:
    x, y = pair()
    s = ref.cka(x, y, "rbf", sigma=SIGMA)
    got = Derived(CKA(kernel="rbf", sigma=SIGMA), "euclidean")(x, y)
    assert abs(got - in_form("distance=euclidean", s, x, y)) < 1e-9
    angle = rm.shape_metric(x, y, ALPHA)
    assert abs(Derived(ShapeMetric(ALPHA), "score")(x, y) - math.cos(angle)) < 1e-10
    assert abs(Derived(ShapeMetric(ALPHA), "one_minus_score")(x, y) - (1 - math.cos(angle))) < 1e-10


def test_derived_forms_refuse_what_has_no_score() -> None:
    with pytest.raises(InvalidParameterError, match="no score form"):
        Derived("mutual_knn", "angular")
    with pytest.raises(InvalidParameterError, match="no score form"):
        Derived("cka_minibatch", "angular")
    with pytest.raises(InvalidParameterError, match="can be negative"):
        Derived("cka_unbiased", "negative_log")
    with pytest.raises(InvalidParameterError, match="already"):
        Derived("procrustes", "angular")
    with pytest.raises(InvalidParameterError, match="form must be one of"):
        Derived("cka", "cosine")  # type: ignore[arg-type]


def test_derived_metadata_follows_the_form() -> None:
    e = Derived("cka", "euclidean")
    assert e.direction == "distance"
    assert "isotropic_scaling" not in e.invariances
    assert e.range == (0.0, math.inf)
    a = Derived("cka", "angular")
    assert a.invariances == CKA().invariances
    assert a.range == (0.0, math.pi / 2)
    assert Derived("cca", "euclidean").invariances == {"orthogonal", "translation", "permutation"}
    assert Derived(ShapeMetric(0.5), "score").direction == "similarity"


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("imd", "does not provide"),
        ("cka-kernel=linear-hsic=wilson-score", "not a CKA reprsim has"),
        ("cka-kernel=(rbf-sigma={sigma})-hsic=gretton-score", "placeholder"),
        ("cka-kernel=linear-hsic=gretton", "which form"),
        ("cka-kernel=linear-hsic=gretton-score-topk=3", "no setting topk=3"),
        ("cka-kernel=(poly-degree=3)-hsic=gretton-score", "not a kernel"),
        ("shape_metric-alpha=half-distance=angular", "not a number"),
        ("shape_metric-alpha=0.5-distance=angular-cv=five", "fold count"),
        ("mutual_knn-topk=5-distance=angular", "has no forms"),
        ("cka-kernel=(rbf-sigma=1-hsic=gretton-score", "unbalanced"),
        ("procrustes--score", "empty part"),
        ("frobnicate-score", "no measure family 'frobnicate'"),
        ("cka-kernel=linear-kernel=linear-hsic=gretton-score", "given twice"),
        ("cka-kernel=linear-hsic=gretton-squared_score", "no setting squared_score"),
    ],
)
def test_from_id_names_the_problem(name: str, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        from_id(name)


def test_the_measures_page_lists_every_alias_and_every_name_not_provided() -> None:
    from reprsim.measures import ALIASES

    page = (Path(__file__).resolve().parents[1] / "docs" / "measures.md").read_text()
    for pattern, why in NOT_PROVIDED.items():
        assert f"| `{pattern}` | {why} |" in page, pattern
    for name, target in ALIASES.items():
        assert f"| `{name}` | `{target}` |" in page, name
    assert "157 build a measure" in page
