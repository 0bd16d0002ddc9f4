"""Stream a dataset too large for memory into accumulators, checkpoint half-way, resume, and get the same answer."""

import torch

from reprsim import cka, procrustes
from reprsim.streaming import CrossMoments, LinearCKA, MinibatchCKAMatrix


def batches(start, stop, size=256):
    """Stand-in for a DataLoader over activations: every batch is generated, used and dropped."""
    for i in range(start, stop, size):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(size, 64, generator=g, dtype=torch.float64)
        yield x, torch.tanh(x @ torch.ones(64, 16, dtype=torch.float64) / 8) + 0.1 * x[:, :16]


exact = LinearCKA()  # equals cka() on the concatenated data, in O(width²) memory
layers = MinibatchCKAMatrix()  # layers x layers, minibatch estimator
moments = CrossMoments()  # every moment-based measure (Procrustes, CCA, CKA, ...) from one state
for x, y in batches(0, 8192):
    exact.update(x, y)
    layers.update([x, x.relu()], [y])
    moments.update(x, y)
torch.save(
    {"exact": exact.state_dict(), "layers": layers.state_dict(), "moments": moments.state_dict()}, "checkpoint.pt"
)

# ... the job is interrupted; a new process resumes from the checkpoint:
state = torch.load("checkpoint.pt", weights_only=True)  # tensors and plain values only: no pickle needed
resumed = LinearCKA().load_state_dict(state["exact"])
resumed_layers = MinibatchCKAMatrix().load_state_dict(state["layers"])
resumed_moments = CrossMoments().load_state_dict(state["moments"])
for x, y in batches(8192, 16384):
    resumed.update(x, y)
    resumed_layers.update([x, x.relu()], [y])
    resumed_moments.update(x, y)

everything = list(batches(0, 16384))
one_shot = float(cka(torch.cat([x for x, _ in everything]), torch.cat([y for _, y in everything])))
print(f"streamed + resumed {resumed.compute():.12f}")
print(f"one shot           {one_shot:.12f}")
print(resumed_layers.compute())
all_x, all_y = torch.cat([x for x, _ in everything]), torch.cat([y for _, y in everything])
print(
    f"Procrustes streamed {resumed_moments.compute('procrustes'):.12f}, one shot {float(procrustes(all_x, all_y)):.12f}"
)
