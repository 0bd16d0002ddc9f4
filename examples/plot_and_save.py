"""Compare two models, save the result (a .npz file, no pickle), load it back and plot it."""

import matplotlib

matplotlib.use("Agg")
import torch
from torch import nn

from reprsim import SimilarityResult, compare


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


torch.manual_seed(0)
cnn, other = small_cnn(), small_cnn()  # same architecture, different random weights
images = [torch.randn(64, 3, 16, 16) for _ in range(4)]

result = compare(cnn, other, images, layers_a=[nn.Conv2d, nn.Linear], pool="mean", model_names=("CNN", "other CNN"))
path = result.save("cnn_vs_other.npz")
again = SimilarityResult.load(path)
assert torch.equal(again.matrix, result.matrix)
print(again)
ax = again.plot(annotate=True, title="CNN vs other CNN, minibatch linear CKA")
ax.figure.savefig("cnn_vs_other.png", dpi=150)
