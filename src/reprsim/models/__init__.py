"""Models: layer extraction (:class:`Extractor`, :func:`list_layers`, :func:`pool_tokens`), layer-by-layer
comparison of models over a stream of batches (:func:`compare`) and its result (:class:`SimilarityResult`)."""

from __future__ import annotations

from ._compare import compare
from ._extract import Extractor, LayerInfo, list_layers, pool_tokens
from ._result import SimilarityResult

__all__ = ["Extractor", "LayerInfo", "SimilarityResult", "compare", "list_layers", "pool_tokens"]
