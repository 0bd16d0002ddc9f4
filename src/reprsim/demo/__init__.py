"""The seed study in miniature: ``reprsim demo`` (or ``python -m reprsim demo``).

Two tiny Vision Transformers pretrained on scikit-learn's bundled digits, one contrastive and one
reconstructive (masked autoencoder), fine-tuned with labels, then compared with reprsim: block and sub-layer
CKA, separability per block, prediction agreement, and the effect of fine-tuning. Needs the ``demo`` extra
(scikit-learn, matplotlib).
"""

from ._models import MAEObjective, SimCLRObjective, TinyViT, augment
from ._run import DemoSettings, run_demo

__all__ = ["DemoSettings", "MAEObjective", "SimCLRObjective", "TinyViT", "augment", "run_demo"]
