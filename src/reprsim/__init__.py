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
from ._cka import cka, cka_from_grams, cka_matrix, hsic
from ._errors import (
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
from ._kernels import center_gram, linear_gram, rbf_gram

__version__ = "0.1.0"

__all__ = [
    "ConstantRepresentationError",
    "DeviceMismatchError",
    "IncompatibleStateError",
    "InsufficientSamplesError",
    "InvalidParameterError",
    "LinearCKA",
    "MinibatchCKA",
    "MinibatchCKAMatrix",
    "NonFiniteError",
    "ReprsimError",
    "ReprsimWarning",
    "ShapeMismatchError",
    "__version__",
    "center_gram",
    "cka",
    "cka_from_grams",
    "cka_matrix",
    "hsic",
    "linear_gram",
    "rbf_gram",
]
