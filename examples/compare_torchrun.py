"""Compare two models layer by layer; the same script runs in one process or on N under torchrun.

    python examples/compare_torchrun.py                              # one process
    torchrun --nproc_per_node=2 examples/compare_torchrun.py         # two ranks, the same result

Under torchrun, compare() initialises the process group (gloo on CPU), runs every other batch on each rank
and all-reduces the statistics: every rank returns the result of one process on all the data.
"""

import os

import torch
from torch import nn

import reprsim


def net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10))


g = torch.Generator().manual_seed(0)
data = [torch.randn(128, 16, generator=g) for _ in range(16)]  # every rank builds the same batches
results = reprsim.compare(net(0), net(1), data, layers=["1", "3", "4"], measures=["cka", "procrustes"],
                          progress=False)  # fmt: skip
if int(os.environ.get("RANK", "0")) == 0:  # every rank holds the same result; print it once
    print(results["cka"])
    print(results["cka"].metadata.get("distributed", "one process"))
