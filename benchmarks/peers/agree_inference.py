"""Agreement of reprsim.inference.permutation_test with the calibrated-similarity package (Gröger et al.).

Run in the peers' environment (calibrated-similarity is never a reprsim dependency):
``python benchmarks/peers/agree_inference.py``. Both draw the k-th permutation as the k-th
``torch.randperm(n, generator=g)`` of a generator seeded alike, so the nulls are the same permutations;
calibrated-similarity holds its values in float32, reprsim in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from calibrated_similarity import calibrate, calibrate_layers

import reprsim
from reprsim.inference import permutation_test


def main() -> None:
    rng = np.random.default_rng(0)
    print("| case | quantity | calibrated-similarity | reprsim | difference |")
    print("|---|---|---|---|---|")
    for strength in (0.0, 0.3, 2.0):
        x = rng.normal(size=(200, 16))
        y = strength * np.tanh(x[:, :8]) + rng.normal(size=(200, 8))
        xt, yt = torch.tensor(x), torch.tensor(y)
        theirs = calibrate(xt, yt, lambda a, b: reprsim.cka(a, b), K=200, generator=torch.Generator().manual_seed(7))
        ours = permutation_test(x, y, "cka", permutations=200, seed=7)
        for name, t, o in zip(("calibrated", "p-value", "τ"), theirs, (ours.calibrated, ours.p_value, ours.threshold)):
            print(f"| CKA, strength {strength} | {name} | {float(t):.8f} | {o:.8f} | {abs(float(t) - o):.1e} |")
    xs = [torch.tensor(rng.normal(size=(150, 6))) for _ in range(3)]
    ys = [torch.tanh(xs[0][:, :4]) + torch.tensor(rng.normal(size=(150, 4))), torch.tensor(rng.normal(size=(150, 5)))]
    for agg, ours_agg in (("max", "best"), ("mean", "mean")):
        theirs = calibrate_layers(
            xs, ys, lambda a, b: reprsim.cka(a, b), agg=agg, K=100, generator=torch.Generator().manual_seed(3)
        )
        ours = permutation_test(xs, ys, "cka", permutations=100, seed=3, aggregate=ours_agg)  # type: ignore[arg-type]
        for name, t, o in zip(("calibrated", "p-value", "τ"), theirs, (ours.calibrated, ours.p_value, ours.threshold)):
            print(f"| 3 × 2 layers, {agg} | {name} | {float(t):.8f} | {o:.8f} | {abs(float(t) - o):.1e} |")


if __name__ == "__main__":
    main()
