"""reprsim: representation similarity for PyTorch.

Centered kernel alignment (CKA) with linear and RBF kernels, biased and unbiased HSIC estimators, on NumPy
arrays or torch tensors, CPU or CUDA, differentiable.

>>> import numpy as np
>>> from reprsim import cka
>>> x = np.random.default_rng(0).normal(size=(200, 32))
>>> round(cka(x, x), 6)
1.0
"""

from __future__ import annotations

from ._accumulators import LinearCKA, MinibatchCKA, MinibatchCKAMatrix
from ._analysis import RidgeProbe, knn_accuracy, logistic_probe, prediction_agreement
from ._cka import cka, cka_from_grams, cka_matrix, hsic
from ._compare import compare
from ._errors import (
    ConcurrentUseError,
    ConstantRepresentationError,
    DeviceMismatchError,
    IncompatibleStateError,
    InsufficientSamplesError,
    InvalidParameterError,
    NonFiniteError,
    ReprsimError,
    ReprsimWarning,
    ShapeMismatchError,
)
from ._extract import Extractor, LayerInfo, LayerNotFoundError, MultipleCallsError, list_layers, pool_tokens
from ._kernels import center_gram, linear_gram, rbf_gram
from ._result import SimilarityResult
from ._separability import separability

__version__ = "0.1.0"

__all__ = [
    "ConcurrentUseError",
    "ConstantRepresentationError",
    "DeviceMismatchError",
    "Extractor",
    "IncompatibleStateError",
    "InsufficientSamplesError",
    "InvalidParameterError",
    "LayerInfo",
    "LayerNotFoundError",
    "LinearCKA",
    "MinibatchCKA",
    "MinibatchCKAMatrix",
    "MultipleCallsError",
    "NonFiniteError",
    "ReprsimError",
    "ReprsimWarning",
    "RidgeProbe",
    "ShapeMismatchError",
    "SimilarityResult",
    "__version__",
    "center_gram",
    "cka",
    "cka_from_grams",
    "cka_matrix",
    "compare",
    "hsic",
    "knn_accuracy",
    "linear_gram",
    "list_layers",
    "logistic_probe",
    "pool_tokens",
    "prediction_agreement",
    "rbf_gram",
    "separability",
]
