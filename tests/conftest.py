from __future__ import annotations

import os

import pytest
import torch

# Models come from installed packages (timm architectures, the MiniLM wheel); never from a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICES = ["cpu", pytest.param("cuda", marks=[CUDA, pytest.mark.cuda])]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return str(request.param)
