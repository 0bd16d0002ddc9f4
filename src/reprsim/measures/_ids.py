"""Standard measure names: the naming scheme of the similarity-repository meta-package (Cloos et al.), read and
built. :func:`from_id`, :class:`Derived`, :data:`NOT_PROVIDED`.

A name is a family and its settings joined by ``-``, the value's form last but for a cross-validation suffix:
``cka-kernel=(rbf-sigma=1)-hsic=gretton-distance=angular``, ``shape_metric-alpha=0.5-distance=angular-cv=5folds``.
A parenthesised value (a kernel with its own settings) is one token. The forms of a score s are ``score`` (s),
``distance=angular`` (arccos s), ``distance=euclidean`` (√(‖Xc‖²_F + ‖Yc‖²_F − 2‖Xc‖_F‖Yc‖_F s), the
shape-metric relation on the centred data), ``distance=squared_euclidean`` (its square),
``distance=one_minus_score`` (1 − s), ``score-negative_log`` (−log s) and ``distance=angular_normalized``
((2/π) arccos s). Every measure's :attr:`~reprsim.measures.Measure.id` is such a name, and :func:`from_id`
builds the measure back from it or from any name of the scheme whose family reprsim has; the names reprsim does
not provide are in :data:`NOT_PROVIDED` with the reason.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from ..errors import InvalidParameterError
from ._base import Cache, Measure, NoTraceForm, cached, get_measure
from ._cca import CCA, PWCCA, SVCCA
from ._cka import CKA
from ._ensd import ENSD
from ._matching import CorrelationMatch, PermutationMetric
from ._moments import Moments
from ._predictivity import Predictivity
from ._procrustes import AlignedCosine, Procrustes, ShapeMetric
from ._samples import (
    CKNNA,
    LCSKNN,
    RSA,
    CycleKNN,
    DistanceCorrelation,
    EditDistanceKNN,
    JaccardKNN,
    MutualKNN,
    RankSimilarity,
    SecondOrderCosine,
)
from ._subspace import GULP, EigenspaceOverlap
from ._traces import TraceSide

__all__ = ["ALIASES", "FORMS", "NOT_PROVIDED", "Derived", "from_id", "split_id"]

Form = Literal[
    "score", "angular", "euclidean", "squared_euclidean", "one_minus_score", "negative_log", "angular_normalized"
]
FORMS: tuple[Form, ...] = (
    "score",
    "angular",
    "euclidean",
    "squared_euclidean",
    "one_minus_score",
    "negative_log",
    "angular_normalized",
)
_TOKENS = {form: f"distance={form}" for form in FORMS} | {"score": "score", "negative_log": "score-negative_log"}
_TEXT = {
    "score": "score",
    "angular": "angular distance",
    "euclidean": "Euclidean distance",
    "squared_euclidean": "squared Euclidean distance",
    "one_minus_score": "1 − score",
    "negative_log": "−log score",
    "angular_normalized": "angular distance / (π/2)",
}


def split_id(name: str) -> list[str]:
    """The tokens of a name: split at each ``-`` outside parentheses (``kernel=(rbf-sigma=1)`` is one token)."""
    tokens, depth, start = [], 0, 0
    for i, c in enumerate(name):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth < 0:
            break
        if c == "-" and depth == 0:
            tokens.append(name[start:i])
            start = i + 1
    if depth != 0:
        raise InvalidParameterError(f"unbalanced parentheses in the measure ID {name!r}")
    tokens.append(name[start:])
    if any(not t for t in tokens):
        raise InvalidParameterError(f"the measure ID {name!r} has an empty part (two '-' in a row, or one at an end)")
    return tokens


def _score(base: Measure, value: torch.Tensor) -> torch.Tensor:
    return value.cos() if base.form == "angular" else value


def _centred_norm2(t: torch.Tensor, cache: Cache) -> torch.Tensor:
    def make() -> torch.Tensor:
        d = t.double()
        out: torch.Tensor = (d - d.mean(dim=0)).square().sum()
        return out

    value: torch.Tensor = cached(cache, ("centred_norm2",), make)
    return value


class Derived(Measure):
    """A measure in another of the scheme's forms: its score s (the measure's value, or the cosine of its angle
    when it is an angular distance) as arccos s, a Euclidean distance, 1 − s, −log s, ...

    Parameters
    ----------
    measure : str or Measure
        A measure whose ``form`` is ``"score"`` or ``"angular"`` (CKA, NBS and angular Procrustes, the shape
        metrics, mean CCA, SVCCA and PWCCA), by name or object.
    form : {"score", "angular", "euclidean", "squared_euclidean", "one_minus_score", "negative_log", \
            "angular_normalized"}
        ``score``: s; ``angular``: arccos s (Williams et al. 2021); ``euclidean``: √(‖Xc‖²_F + ‖Yc‖²_F −
        2‖Xc‖_F‖Yc‖_F s), the Euclidean shape distance the angle corresponds to, on the centred data unscaled (so
        it grows with n and the data's scale); ``squared_euclidean``: its square; ``one_minus_score``: 1 − s (Ding
        et al. 2021); ``negative_log``: −log s (scores that cannot be negative); ``angular_normalized``:
        (2/π) arccos s, in [0, 1] for s ≥ 0.

    Notes
    -----
    The value is computed from the same moments or samples as the measure's, so it streams, runs in
    :func:`reprsim.compare` and gets intervals alike; an interval of a form estimates the form's expectation.
    Its permutation test is Monte Carlo: the forms are monotone maps of s with data-dependent norms, and the
    base measure's own test gives the same p-value from exact moments where it has them.

    Examples
    --------
    >>> import numpy as np
    >>> from reprsim.measures import Derived
    >>> x = np.random.default_rng(0).normal(size=(50, 4))
    >>> m = Derived("cka", "angular")
    >>> m.id
    'cka-kernel=linear-hsic=gretton-distance=angular'
    >>> round(m(x, 3 * x), 6)
    0.0
    """

    name = "derived"
    target = "expectation"

    def __init__(self, measure: str | Measure, form: Form) -> None:
        base = get_measure(measure)
        if form not in FORMS:
            raise InvalidParameterError(f"form must be one of {list(FORMS)}; got {form!r}")
        if base.form is None or base.stream == "minibatch":
            raise InvalidParameterError(
                f"{base!r} has no score form (its value is not a score in [−1, 1] or the angle of one), so it "
                "has no derived forms; derived forms exist for CKA (exact), NBS/angular Procrustes, the shape "
                "metrics, mean CCA, SVCCA and PWCCA"
            )
        if form == base.form:
            raise InvalidParameterError(f"{base!r} is already in the {form} form; use it as it is")
        low = math.cos(base.range[1]) if base.form == "angular" else base.range[0]
        high = math.cos(base.range[0]) if base.form == "angular" else base.range[1]
        if form == "negative_log" and low < 0:
            raise InvalidParameterError(
                f"{base!r} can be negative, which has no logarithm; use another form, or a measure whose score is "
                "at least 0"
            )
        self.base, self.form_out = base, form
        for attribute in (
            "stream", "fourth", "folds", "min_samples", "full_second_order", "differentiable", "symmetric",
            "sample_resampling",
        ):  # fmt: skip
            setattr(self, attribute, getattr(base, attribute))
        self.form = "score" if form == "score" else ("angular" if form == "angular" else None)
        self.extensive = {"euclidean": 0.5, "squared_euclidean": 1.0}.get(form, 0.0)  # ‖Xc‖² grows as n
        self.direction = "similarity" if form == "score" else "distance"
        invariances = set(base.invariances)
        if form in ("euclidean", "squared_euclidean"):
            invariances -= {"isotropic_scaling", "invertible_linear"}  # the norms of the data are part of the value
        self.invariances = frozenset(invariances)
        self.metric = form in ("angular", "euclidean", "angular_normalized") and base.metric
        self.range = {
            "score": (low, high),
            "angular": (math.acos(high), math.acos(low)),
            "euclidean": (0.0, math.inf),
            "squared_euclidean": (0.0, math.inf),
            "one_minus_score": (1 - high, 1 - low),
            "negative_log": (-math.log(high), math.inf),
            "angular_normalized": (math.acos(high) * 2 / math.pi, math.acos(low) * 2 / math.pi),
        }[form]

    @property
    def id(self) -> str:
        own = "score" if self.base.form == "score" else "distance=angular"
        tokens = split_id(self.base.id)
        return "-".join(_TOKENS[self.form_out] if t == own else t for t in tokens)

    @property
    def label(self) -> str:
        return f"{self.base.label}: {_TEXT[self.form_out]}"

    def config(self) -> dict[str, Any]:
        return {"measure": self.base.id, "form": self.form_out}

    def __repr__(self) -> str:
        return f"Derived({self.base!r}, {self.form_out!r})"

    def check_samples(self, n: int, p: int, q: int) -> None:
        self.base.check_samples(n, p, q)

    def _value(self, s: torch.Tensor, norms: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        form = self.form_out
        if form == "score":
            return s
        if form in ("angular", "angular_normalized"):
            angle = s.clamp(-1.0, 1.0).arccos()
            return angle * (2 / math.pi) if form == "angular_normalized" else angle
        if form == "one_minus_score":
            return 1 - s
        if form == "negative_log":
            return -s.log()
        assert norms is not None
        a, b = norms
        squared = (a + b - 2 * (a * b).sqrt() * s).clamp_min(0.0)
        return squared if form == "squared_euclidean" else squared.sqrt()

    def _needs_norms(self) -> bool:
        return self.form_out in ("euclidean", "squared_euclidean")

    def from_moments(self, m: Moments) -> torch.Tensor:
        s = _score(self.base, self.base.from_moments(m))
        norms = (m.cxx.diagonal().sum(), m.cyy.diagonal().sum()) if self._needs_norms() else None
        return self._value(s, norms)

    def from_samples(
        self, x: torch.Tensor, y: torch.Tensor, cache_x: Cache = None, cache_y: Cache = None
    ) -> torch.Tensor:
        s = _score(self.base, self.base.from_samples(x, y, cache_x, cache_y))
        norms = (_centred_norm2(x, cache_x), _centred_norm2(y, cache_y)) if self._needs_norms() else None
        return self._value(s, norms)

    def null_trace(self, t: torch.Tensor) -> TraceSide:
        raise NoTraceForm(
            f"the {_TEXT[self.form_out]} of {self.base.label} is a nonlinear map of a trace statistic; the "
            "measure's own permutation test gives the same p-value"
        )


# -- names of the scheme that reprsim reads as another name, and the ones it does not provide -------------------

#: Names of the scheme that reprsim builds under another ID: the scheme's synonyms (NBS is the Procrustes score,
#: Harvey et al. 2023; the shape metric at α = 0 and 1 is CCA and Procrustes; the Bures distance of centred linear
#: kernels is the Euclidean Procrustes distance), the ReSi and STIR codes' own names, and the defaults the bare
#: ReSi names stand for (k = 10). ``nbs-…`` reads as ``procrustes-…`` and
#: ``compare=tau_b`` as ``compare=kendall`` (scipy's τ-b) throughout.
ALIASES: dict[str, str] = {
    "orthogonal_angular_shape_metric_centered": "procrustes-distance=angular",
    "procrustes-distance=angular-cv=5folds": "shape_metric-alpha=1-distance=angular-cv=5folds",
    "cca-distance=angular-cv=5folds": "shape_metric-alpha=0-distance=angular-cv=5folds",
    "feature_space_linear_cka": "cka-kernel=linear-hsic=gretton-score",
    "linear_CKA": "cka-kernel=linear-hsic=gretton-score",
    "feature_space_linear_cka-debiased_True": "cka-kernel=linear-hsic=song-score",
    "kernel_CKA": "cka-kernel=(rbf-sigma=1)-hsic=gretton-score",
    "ensd-distance=angular_normalized": "cka-kernel=linear-hsic=gretton-distance=angular_normalized",
    "jaccard_similarity": "jaccard_similarity-topk=10",
    "second_order_cosine_similarity": "second_order_cosine_similarity-topk=10",
    "rank_similarity": "rank_similarity-topk=10",
    "linear_regression": "linear_regression-r2-reduce=variance_weighted-reverse",
    "bures_distance": "procrustes-distance=euclidean",
    "aligned_cossim": "aligned_cosine_similarity",
    # brain-language-nlp's kernel ridge: the linear kernel without an intercept, Xᵀ(XXᵀ + λI)⁻¹Y
    "kernel_ridge-lambda=1-r2": "ridge-lambda=1-r2-intercept=false",
    # rsatoolbox's Mahalanobis RDM without a noise precision is its squared Euclidean RDM (identity precision)
    **{
        f"rsa-rdm=mahalanobis-compare={c}": f"rsa-rdm=squared_euclidean_normalized-compare={to}"
        for c, to in [(c, c) for c in ("cosine", "kendall", "pearson", "rho_a", "spearman", "tau_a")]
        + [("tau_b", "kendall")]
    },
}

_PLANNED = "not in reprsim yet (planned)"
#: platonic-rep's neighbour-list measures
_SEQUENCES: dict[str, type[MutualKNN]] = {
    "cycle_knn": CycleKNN,
    "lcs_knn": LCSKNN,
    "edit_distance_knn": EditDistanceKNN,
}
#: Every name of the scheme's list (``fnmatch`` patterns, first match) that reprsim does not provide, with why.
NOT_PROVIDED: dict[str, str] = {
    "svcca-*-cv=*": "a cross-validated SVCCA (PCA inside the folds) is not provided; reprsim's cross-validated "
    "angular scores are the shape metrics' (shape_metric-alpha=…-distance=angular-cv=5folds)",
    "svcca-score": "the wrapped codes keep different numbers of components under this name; name the truncation "
    "(svcca-var=0.99-score, svcca-dim=10-score)",
    "svcca-distance=*": "the wrapped codes keep different numbers of components under this name; name the "
    "truncation (svcca-var=0.99-…, svcca-dim=10-…)",
    "ridge-pearsonr-cv=5folds*": "neuroaimetrics' ridge chooses its penalty per fold by RidgeCV over "
    "10⁻⁸…10⁸ on standardised predictors, in shuffled folds; not provided: name the penalty "
    "(ridge-lambda=1-pearsonr-cv=5folds)",
    "pls": "Google's SVCCA code's 'pls': the mean singular value of the sample cross-covariance, which is not "
    "scale free and so is not a measure here; PLS regression is pls-pearsonr-components=25 (and …-cv=5folds)",
    "permutation_procrustes": "ReSi's permutation-aligned distance of uncentred data (not translation invariant) is "
    "not provided; the centred one is permutation_metric-distance=euclidean",
    "pairwisematching": "neuroaimetrics' cross-validated matching draws its folds with scikit-learn's shuffled "
    "KFold(random_state=42); not provided (the in-sample matchings are hard_correlation_match and "
    "soft_correlation_match)",
    "max_match": f"{_PLANNED} (max-match / subspace match)",
    "imd": "the multi-scale intrinsic distance is not provided: the scheme's IMD (ReSi's wrap of the msid "
    "package) is a stochastic Lanczos estimate of heat-kernel traces, random from run to run (ReSi averages 5 runs "
    "of 8,000 steps against its variance); the exact traces need every eigenvalue of each k-NN graph's Laplacian, "
    "O(n³) time and an n × n matrix, beyond the sample-space measures' memory budget; and it compares two "
    "spectra, ignoring which sample is paired with which",
    "rsm_norm_difference": f"{_PLANNED} (RSM norm difference)",
    "magnitude_difference": f"{_PLANNED} (ReSi's representation statistics)",
    "concentricity_difference": f"{_PLANNED} (ReSi's representation statistics)",
    "uniformity_difference": f"{_PLANNED} (ReSi's representation statistics)",
    "rsa-rdm=squared_euclidean-compare=cosine_cov": "the whitened RDM comparators are not provided; the scheme "
    "equates this one with linear CKA, which is: cka-kernel=linear-hsic=gretton-score",
    **{
        f"rsa-rdm=*-compare={c}": f"{_PLANNED} (RDM comparators beyond Pearson, Spearman, Kendall's τ-a and "
        "τ-b, ρ-a and the cosine)"
        for c in ("euclidean", "corr_cov", "cosine_cov", "bures", "bures_metric")
    },
    "*_HSIC": "a raw HSIC is not scale free and so is not a measure here; reprsim.measures.hsic computes HSIC "
    "(sparse and cosine HSIC estimators are not provided)",
    "correlation": "Brain-Score's and mouse-vision's median Pearson r of units paired by index needs units in "
    "correspondence; not provided",
    "cosine": "the cosine of two given kernel matrices, a building block these codes register on Grams, not a "
    "measure of representations; CKA is its centred form",
    "zero_diagonal-cosine": "the cosine of two given zero-diagonal kernel matrices (rsatoolbox); not provided",
    "euclidean": "the Euclidean distance between two uncentred linear kernel matrices (nn_similarity_index); not "
    "provided",
    "isc": "inter-subject correlation needs units in correspondence; not provided",
    "versa": "VERSA (neuroaimetrics) is not provided",
    "wreath_*": "the wreath-product symmetry measures (modelsym) are not provided",
}


class _Unknown(Exception):
    """A family, setting or value the builders do not know (from_id adds the reason when the scheme has it)."""


def _number(options: dict[str, str], key: str, kind: type = float) -> Any:
    text = options.pop(key)
    try:
        return kind(text)
    except ValueError:
        raise _Unknown(f"{key}={text} is not a{'n integer' if kind is int else ' number'}") from None


def _folds(options: dict[str, str]) -> int | None:
    text = options.pop("cv", None)
    if text is None:
        return None
    if not text.endswith("folds") or not text[: -len("folds")].isdigit():
        raise _Unknown(f"cv={text} is not a fold count such as cv=5folds")
    return int(text[: -len("folds")])


def _kernel(text: str) -> dict[str, Any]:
    if text == "linear":
        return {"kernel": "linear"}
    if not (text.startswith("(") and text.endswith(")")):
        raise _Unknown(f"kernel={text} is not a kernel (linear, or (rbf-sigma=…), (laplace-median_fraction=…), …)")
    family, *rest = split_id(text[1:-1])
    inner = dict(t.split("=", 1) for t in rest if "=" in t)
    radial = family in ("rbf", "laplace") and len(inner) == len(rest) == 1
    if not radial or not inner.keys() <= {"sigma", "median_fraction"}:
        raise _Unknown(
            f"kernel={text} is not a kernel reprsim has (linear, or rbf or laplace with sigma=… or median_fraction=…)"
        )
    key = next(iter(inner))
    return {"kernel": family, key: _number(inner, key)}


def _build(family: str, options: dict[str, str], flags: set[str]) -> Measure:
    """The measure a parsed name names, in its own form (the caller derives the form asked for)."""

    def pop_flag(flag: str) -> bool:
        found = flag in flags
        flags.discard(flag)
        return found

    if family == "cka":
        if "kernel" not in options or "hsic" not in options:
            raise _Unknown("a CKA name gives its kernel and HSIC estimator (cka-kernel=linear-hsic=gretton-score)")
        kernel = _kernel(options.pop("kernel"))
        hsic, estimator = options.pop("hsic"), options.pop("estimator", "exact")
        if hsic not in ("gretton", "song", "lange") or estimator not in ("exact", "minibatch"):
            raise _Unknown(f"hsic={hsic} with estimator={estimator} is not a CKA reprsim has")
        if estimator == "minibatch" and hsic != "song":
            raise _Unknown("minibatch CKA uses Song et al.'s HSIC per batch: hsic=song")
        unbiased = {"gretton": False, "song": estimator == "exact", "lange": "lange"}[hsic]
        return CKA(unbiased=unbiased, estimator=estimator, **kernel)  # type: ignore[arg-type]
    if family == "procrustes":
        return Procrustes("nbs")
    if family == "orthogonal_procrustes_centered_and_normalized":
        return Procrustes("squared_euclidean" if pop_flag("squared") else "euclidean")
    if family == "shape_metric":
        if "alpha" not in options:
            raise _Unknown("a shape-metric name gives alpha (shape_metric-alpha=0.5-distance=angular)")
        return ShapeMetric(_number(options, "alpha"), folds=_folds(options))
    if family == "cca":
        ridge = _number(options, "ridge") if "ridge" in options else 0.0
        return CCA("yanai" if pop_flag("squared_score") else "mean", ridge=ridge)
    if family == "svcca":
        if ("var" in options) == ("dim" in options):
            raise _Unknown("an SVCCA name gives var=… (a variance fraction) or dim=… (a component count)")
        keep = _number(options, "var") if "var" in options else _number(options, "dim", int)
        return SVCCA(keep, "yanai" if pop_flag("squared_score") else "mean")
    if family == "pwcca":
        ridge = _number(options, "ridge") if "ridge" in options else 0.0
        return PWCCA(options.pop("weights_from", "narrower"), ridge=ridge)  # type: ignore[arg-type]
    if family in ("linear_regression", "ridge", "pls"):
        ridge = _number(options, "lambda") if family == "ridge" and "lambda" in options else 0.0
        if family == "ridge" and ridge == 0.0:
            raise _Unknown("a ridge name gives its penalty (ridge-lambda=1-r2)")
        components = None
        if family == "pls":  # Brain-Score's pls_regression keeps 25 components
            components = _number(options, "components", int) if "components" in options else 25
        scores = [flag for flag in ("r2", "pearsonr", "pearsonr2") if pop_flag(flag)]
        if len(scores) != 1:
            raise _Unknown("a regression name gives one score: …-r2, …-pearsonr or …-pearsonr2")
        reduce = options.pop("reduce", "mean")
        predict = "y_to_x" if pop_flag("reverse") else options.pop("predict", "x_to_y")
        intercept = options.pop("intercept", "true")
        if intercept not in ("true", "false"):
            raise _Unknown(f"intercept={intercept} is not true or false")
        through = intercept == "false"
        args: tuple[Any, ...] = (ridge, _folds(options), predict, reduce, scores[0], components, not through)
        return Predictivity(*args)
    if family in ("mutual_knn", "jaccard_similarity", "rank_similarity", "cknna", *_SEQUENCES):
        if "topk" not in options:
            raise _Unknown(f"a {family} name gives its neighbour count (…-topk=10)")
        k, neighbours = _number(options, "topk", int), options.pop("neighbours", "cosine")
        if family == "cknna":
            hsic = options.pop("hsic", "song")
            if hsic not in ("song", "gretton"):
                raise _Unknown(f"hsic={hsic} is not a CKNNA reprsim has (song or gretton)")
            return CKNNA(k, neighbours, unbiased=hsic == "song")  # type: ignore[arg-type]
        kind = {"mutual_knn": MutualKNN, "jaccard_similarity": JaccardKNN, "rank_similarity": RankSimilarity}
        kind |= _SEQUENCES
        return kind[family](k, neighbours)  # type: ignore[arg-type]
    if family == "second_order_cosine_similarity":
        if "topk" not in options:
            raise _Unknown("a second_order_cosine_similarity name gives its neighbour count (…-topk=10)")
        return SecondOrderCosine(_number(options, "topk", int))
    if family == "distance_correlation":
        return DistanceCorrelation(unbiased=pop_flag("unbiased"))
    if family == "rsa":
        rdms = {"correlation": "correlation", "cosine": "cosine", "euclidean": "euclidean"}
        rdms |= {"squared_euclidean": "sqeuclidean", "squared_euclidean_normalized": "sqeuclidean_per_feature"}
        rdms |= {"gaussian": "gaussian", "poisson": "poisson"}
        rdm, compare = options.pop("rdm", "?"), options.pop("compare", "?")
        compare = "kendall" if compare == "tau_b" else compare
        if rdm not in rdms or compare not in ("pearson", "spearman", "kendall", "cosine", "rho_a", "tau_a"):
            raise _Unknown(f"rdm={rdm} with compare={compare} is not an RSA reprsim has")
        return RSA(rdms[rdm], compare)  # type: ignore[arg-type]
    if family == "aligned_cosine_similarity":
        return AlignedCosine()
    if family == "permutation_metric":
        return PermutationMetric()
    if family in ("hard_correlation_match", "soft_correlation_match"):
        return CorrelationMatch("hard" if family.startswith("hard") else "soft")
    if family == "ensd":
        return ENSD()
    if family == "gulp":
        return GULP(_number(options, "lambda") if "lambda" in options else 0.0)
    if family == "eigenspace_overlap_score":
        return EigenspaceOverlap()
    raise _Unknown(f"reprsim has no measure family {family!r}")


def from_id(name: str) -> Measure:
    """The measure a name of the similarity-repository scheme names, configured.

    Parameters
    ----------
    name : str
        A measure's :attr:`~reprsim.measures.Measure.id`, or any name of the scheme whose family reprsim has,
        with its options' values filled in (``cka-kernel=(rbf-sigma=0.5)-hsic=song-distance=angular``).

    Returns
    -------
    Measure
        The measure itself where the name is its own form, else a :class:`Derived` form of it. Its ``id`` is the
        name, or the name reprsim files it under (:data:`ALIASES`).

    Raises
    ------
    InvalidParameterError
        A name reprsim does not provide (the reason, from :data:`NOT_PROVIDED`), an unknown family or setting,
        or a placeholder left in (``{sigma}``).

    Examples
    --------
    >>> from reprsim.measures import from_id
    >>> from_id("cka-kernel=linear-hsic=song-score")
    CKA(unbiased=True, estimator='exact', kernel='linear')
    >>> from_id("procrustes-distance=euclidean").id
    'procrustes-distance=euclidean'
    >>> from_id("svcca-var=0.99-squared_score")
    SVCCA(keep=0.99, reduce='yanai')
    """
    import fnmatch

    if not isinstance(name, str) or not name.strip():
        raise InvalidParameterError(f"a measure ID is a non-empty string; got {name!r}")
    name = name.strip()
    if "{" in name or "}" in name:
        raise InvalidParameterError(f"the measure ID {name!r} has a placeholder; put the value in (sigma=0.5, topk=10)")
    wanted = name
    name = "procrustes" + name[3:] if name.startswith("nbs-") else name
    name = ALIASES.get(name, name)
    try:
        return _in_form(name)
    except _Unknown as exc:
        reason = next((why for pattern, why in NOT_PROVIDED.items() if fnmatch.fnmatchcase(wanted, pattern)), None)
        if reason is not None:
            raise InvalidParameterError(f"reprsim does not provide {wanted!r}: {reason}") from None
        raise InvalidParameterError(
            f"{wanted!r} is not a measure ID reprsim can build: {exc}. IDs read family-key=value-…-form, as "
            "measure.id prints them (docs/measures.md lists every family)"
        ) from None


def _in_form(name: str) -> Measure:
    family, *rest = split_id(name)
    options: dict[str, str] = {}
    flags: set[str] = set()
    for token in rest:
        if "=" in token:
            key, value = token.split("=", 1)
            if key in options:
                raise _Unknown(f"{key}= is given twice")
            options[key] = value
        else:
            flags.add(token)
    form: str | None = options.pop("distance", None)
    if "negative_log" in flags:
        flags -= {"negative_log", "score"}
        form = "negative_log" if form is None else "?"
    elif "score" in flags:
        flags.discard("score")
        form = "score" if form is None else "?"
    if form is not None and form not in FORMS:
        raise _Unknown(f"{form} is not a form (score, distance=angular, distance=euclidean, ...)")
    base = _build(family, options, flags)
    if options or flags:
        left = sorted([f"{k}={v}" for k, v in options.items()] + list(flags))
        raise _Unknown(f"{family} has no setting {', '.join(left)}")
    if form is None or form == base.form:
        if form is None and base.form is not None:
            raise _Unknown(f"say which form of {family}: …-score or …-distance=angular|euclidean|…")
        return base
    if base.form is None:
        raise _Unknown(f"{family} has no forms")
    if form == "angular" and base == Procrustes("nbs"):
        return Procrustes("angular")
    return Derived(base, form)
