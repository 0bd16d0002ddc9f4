"""Similarity measures: one private module per family, each with measure classes (metadata, and the value from
streamed moments, per-batch records or every sample, as the class's ``stream`` declares) and functional forms
on two arrays, all exported here.

=====================  ===========================================================================
``_cka``               linear, RBF and minibatch CKA, HSIC (:func:`cka`, :class:`CKA`, :func:`cka_matrix`)
``_procrustes``        orthogonal Procrustes, NBS, shape metrics, aligned cosine (:func:`procrustes`, ...)
``_cca``               canonical correlations, mean ρ, Yanai's R², SVCCA, PWCCA
``_ensd``              the effective number of shared dimensions (:func:`ensd`)
``_subspace``          the eigenspace overlap score (:func:`eigenspace_overlap`), GULP (:func:`gulp`)
``_matching``          units matched one to one: the permutation metric, hard and soft correlation matching
``_predictivity``      ridge / least-squares R², in-sample or cross-validated
``_samples``           mutual k-NN, CKNNA, k-NN Jaccard, second-order cosine, rank similarity,
                       distance correlation, RSA and its RDMs (every sample, blockwise)
=====================  ===========================================================================

Every measure is usable by name in :func:`reprsim.compare` (``measures=["cka", "procrustes", "cca"]``);
:func:`available_measures` lists the names, :func:`get_measure` turns a name into a configured object.
"""

from ._base import INVARIANCES, Measure, available_measures, get_measure, register
from ._cca import CCA, PWCCA, SVCCA, canonical_correlations, cca, pwcca, svcca
from ._cka import CKA, cka, cka_from_grams, cka_matrix, hsic
from ._ensd import ENSD, ensd
from ._ids import ALIASES, NOT_PROVIDED, Derived, from_id
from ._matching import CorrelationMatch, PermutationMetric, correlation_match, permutation_metric
from ._moments import Moments
from ._predictivity import Predictivity, predictivity
from ._procrustes import AlignedCosine, Procrustes, ShapeMetric, aligned_cosine, procrustes, shape_metric
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
    cknna,
    distance_correlation,
    jaccard_knn,
    mutual_knn,
    plot_rdm,
    rank_similarity,
    rdm,
    rsa,
    second_order_cosine,
)
from ._subspace import GULP, EigenspaceOverlap, eigenspace_overlap, gulp

__all__ = [
    "ALIASES",
    "CCA",
    "CKA",
    "CKNNA",
    "ENSD",
    "GULP",
    "INVARIANCES",
    "LCSKNN",
    "NOT_PROVIDED",
    "PWCCA",
    "RSA",
    "SVCCA",
    "AlignedCosine",
    "CorrelationMatch",
    "CycleKNN",
    "Derived",
    "DistanceCorrelation",
    "EditDistanceKNN",
    "EigenspaceOverlap",
    "JaccardKNN",
    "Measure",
    "Moments",
    "MutualKNN",
    "PermutationMetric",
    "Predictivity",
    "Procrustes",
    "RankSimilarity",
    "SecondOrderCosine",
    "ShapeMetric",
    "aligned_cosine",
    "available_measures",
    "canonical_correlations",
    "cca",
    "cka",
    "cka_from_grams",
    "cka_matrix",
    "cknna",
    "correlation_match",
    "distance_correlation",
    "eigenspace_overlap",
    "ensd",
    "from_id",
    "get_measure",
    "gulp",
    "hsic",
    "jaccard_knn",
    "mutual_knn",
    "permutation_metric",
    "plot_rdm",
    "predictivity",
    "procrustes",
    "pwcca",
    "rank_similarity",
    "rdm",
    "register",
    "rsa",
    "second_order_cosine",
    "shape_metric",
    "svcca",
]
