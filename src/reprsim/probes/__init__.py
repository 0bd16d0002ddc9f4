"""Probes of what a representation encodes: k-NN accuracy, ridge and logistic probes, prediction agreement
between two models, and per-layer separability of a model's representations.

>>> from reprsim.probes import knn_accuracy
"""

from ._probes import RidgeProbe, knn_accuracy, logistic_probe, prediction_agreement
from ._separability import separability

__all__ = ["RidgeProbe", "knn_accuracy", "logistic_probe", "prediction_agreement", "separability"]
