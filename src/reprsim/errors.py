"""The exception and warning family of reprsim (``reprsim.errors``).

Every error reprsim raises on purpose is a :class:`ReprsimError`, which is a :class:`ValueError`, so
``except ValueError`` keeps working in user code; errors about an object's state rather than an argument
(computing an empty accumulator, say) are also :class:`RuntimeError`. Messages say what was expected, what
was received, and how to fix it. Nothing here imports the rest of the package.
"""

__all__ = [
    "ConcurrentUseError",
    "ConstantRepresentationError",
    "DeviceMismatchError",
    "IncompatibleStateError",
    "InsufficientSamplesError",
    "InvalidParameterError",
    "LayerNotFoundError",
    "MemoryBudgetError",
    "MultipleCallsError",
    "NonFiniteError",
    "RankDeficientError",
    "ReprsimError",
    "ReprsimWarning",
    "ShapeMismatchError",
    "StoreError",
]


class ReprsimError(ValueError):
    """Base class of every error reprsim raises on purpose."""


class ShapeMismatchError(ReprsimError):
    """Inputs whose shapes cannot be compared (different sample counts, a changed feature count)."""


class InsufficientSamplesError(ReprsimError):
    """Too few samples for the requested estimator (2 for biased CKA, 4 for unbiased)."""


class NonFiniteError(ReprsimError):
    """An input holds NaN or infinite values."""


class ConstantRepresentationError(ReprsimError):
    """A representation is the same for every sample, so CKA is 0/0 and undefined."""


class RankDeficientError(ReprsimError):
    """A representation whose features are linear combinations of one another (its covariance is singular), for
    a measure that inverts that covariance (CCA without ``ridge``, least squares). With fewer samples than
    features the same condition is an :class:`InsufficientSamplesError`."""


class DeviceMismatchError(ReprsimError):
    """Two tensors that must be combined live on different devices."""


class InvalidParameterError(ReprsimError):
    """An argument outside its allowed values (unknown kernel, non-positive bandwidth, ...)."""


class MemoryBudgetError(InvalidParameterError, MemoryError):
    """A computation whose memory need, known before anything is allocated, exceeds the budget it runs under
    (exact rank-based RSA at large n, per-block moments of many wide layers). The message gives the bytes needed,
    the budget and the alternatives. It is also a :class:`MemoryError`."""


class IncompatibleStateError(ReprsimError, RuntimeError):
    """An operation that the object's current state does not allow (compute before update, merging
    accumulators of different kinds or configurations)."""


class ConcurrentUseError(ReprsimError, RuntimeError):
    """A model is already being run by a reprsim call in another thread (hooks would record each other's
    forwards, and the training flags restored by one call would be the other's)."""


class LayerNotFoundError(ReprsimError):
    """A layer name or pattern that matches no module of the model."""


class MultipleCallsError(ReprsimError):
    """A selected module ran more than once in one forward pass and ``calls="error"``."""


class StoreError(ReprsimError):
    """An activation store or array file that cannot be read as asked: incomplete (its writer did not finish),
    truncated, inconsistent with its own manifest, or not matching the store it is compared with."""


class ReprsimWarning(UserWarning):
    """Warnings reprsim emits, e.g. a constant layer inside :func:`reprsim.cka_matrix`."""
