"""Small models and data shared by the tests of compare, its measures, the sample-space measures and
inference: a float64 MLP, seeded batches, and every activation of chosen layers captured with plain hooks
(independent of reprsim's extractor)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()


def batches(n: int = 256, size: int = 32, dim: int = 10, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, dim, generator=g, dtype=torch.float64) for _ in range(n // size)]


def hand_extract(model: nn.Module, names: list[str], data: list[Any]) -> dict[str, torch.Tensor]:
    """All activations of ``names`` over ``data`` with plain forward hooks, flattened and concatenated."""
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    mods = dict(model.named_modules())
    handles = [
        mods[n].register_forward_hook(lambda m, i, o, n=n: got[n].append(o.detach().reshape(o.shape[0], -1)))
        for n in names
    ]
    try:
        with torch.no_grad():
            for b in data:
                model(b)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in got.items()}
