"""reprsim: representation similarity for PyTorch.

Many measures of how similar two representations of the same samples are (CKA, Procrustes and shape metrics,
the CCA family, linear predictivity, nearest-neighbour alignment, RSA, distance correlation), on NumPy arrays or
torch tensors, CPU or CUDA; every moment-based measure also streams exactly over datasets of any size, merges
and all-reduces, the measures that need every sample run blockwise in bounded memory, and :func:`compare` runs
them over two models layer by layer in one pass.

>>> import numpy as np
>>> from reprsim import cka
>>> x = np.random.default_rng(0).normal(size=(200, 32))
>>> round(cka(x, x), 6)
1.0

Namespaces: :mod:`reprsim.measures` (every measure, its metadata and the registry), :mod:`reprsim.streaming`
(accumulators), :mod:`reprsim.inference` (permutation tests, calibrated scores), :mod:`reprsim.probes` (kNN,
ridge and logistic probes, prediction agreement, separability), :mod:`reprsim.errors` (the exception family).
"""

from . import errors, inference, measures, probes, streaming
from ._kernels import center_gram, linear_gram, rbf_gram
from ._version import __version__
from .errors import ReprsimError, ReprsimWarning
from .measures import (
    aligned_cosine,
    canonical_correlations,
    cca,
    cka,
    cka_from_grams,
    cka_matrix,
    cknna,
    correlation_match,
    distance_correlation,
    eigenspace_overlap,
    ensd,
    gulp,
    hsic,
    jaccard_knn,
    mutual_knn,
    permutation_metric,
    plot_rdm,
    predictivity,
    procrustes,
    pwcca,
    rank_similarity,
    rdm,
    rsa,
    second_order_cosine,
    shape_metric,
    svcca,
)
from .models import (
    ActivationStore,
    Extractor,
    LayerInfo,
    Runtime,
    SimilarityResult,
    StoreWriter,
    Uncertainty,
    compare,
    compare_stores,
    list_layers,
    open_store,
    pool_tokens,
)

__all__ = [
    "ActivationStore",
    "Extractor",
    "LayerInfo",
    "ReprsimError",
    "ReprsimWarning",
    "Runtime",
    "SimilarityResult",
    "StoreWriter",
    "Uncertainty",
    "__version__",
    "aligned_cosine",
    "canonical_correlations",
    "cca",
    "center_gram",
    "cka",
    "cka_from_grams",
    "cka_matrix",
    "cknna",
    "compare",
    "compare_stores",
    "correlation_match",
    "distance_correlation",
    "eigenspace_overlap",
    "ensd",
    "errors",
    "gulp",
    "hsic",
    "inference",
    "jaccard_knn",
    "linear_gram",
    "list_layers",
    "measures",
    "mutual_knn",
    "open_store",
    "permutation_metric",
    "plot_rdm",
    "pool_tokens",
    "predictivity",
    "probes",
    "procrustes",
    "pwcca",
    "rank_similarity",
    "rbf_gram",
    "rdm",
    "rsa",
    "second_order_cosine",
    "shape_metric",
    "streaming",
    "svcca",
]
