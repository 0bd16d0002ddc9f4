"""Models: layer extraction (:class:`Extractor`, :func:`list_layers`, :func:`pool_tokens`), layer-by-layer
comparison of models over a stream of batches (:func:`compare`) and its result (:class:`SimilarityResult`),
activation stores on disk (:class:`StoreWriter`, :func:`open_store`) and their comparison (:func:`compare_stores`)."""

from ._compare import compare
from ._compare_stores import compare_stores
from ._extract import Extractor, LayerInfo, list_layers, pool_tokens
from ._options import Runtime, Uncertainty
from ._result import SimilarityResult
from ._store import ActivationStore, StoreWriter, open_store

__all__ = [
    "ActivationStore",
    "Extractor",
    "LayerInfo",
    "Runtime",
    "SimilarityResult",
    "StoreWriter",
    "Uncertainty",
    "compare",
    "compare_stores",
    "list_layers",
    "open_store",
    "pool_tokens",
]
