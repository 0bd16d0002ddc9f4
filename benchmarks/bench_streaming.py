"""MinibatchCKAMatrix throughput against the Gram products it needs, and its peak memory versus samples.

Workload: 12 layers of model A against 12 of model B, width 768, batch 256, float32. The floor is building
the 24 Grams of each batch (``X Xᵀ``, 256×768×256 each); everything else (zero diagonals, the one pair
product, corrections, validation, accumulation) is overhead. Peak memory is measured in fresh processes
streaming 8192 and 65536 samples; it must not grow with the sample count.

    python benchmarks/bench_streaming.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

import reprsim

LAYERS, WIDTH, BATCH = 12, 768, 256


def batches(n_samples: int, seed: int = 0) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    pool = [[torch.randn(BATCH, WIDTH, generator=gen) for _ in range(2 * LAYERS)] for _ in range(4)]
    return [pool[i % len(pool)] for i in range(n_samples // BATCH)]


def grams_only(data: list[list[torch.Tensor]]) -> None:
    for layers in data:
        for x in layers:
            x @ x.T


def stream(data: list[list[torch.Tensor]]) -> torch.Tensor:
    acc = reprsim.streaming.MinibatchCKAMatrix()
    for layers in data:
        acc.update(layers[:LAYERS], layers[LAYERS:])
    return acc.compute()


def peak_memory(n_samples: int) -> None:
    """Child process: stream n_samples, generating each batch on the fly; print peak RSS in MiB."""
    gen = torch.Generator().manual_seed(1)
    acc = reprsim.streaming.MinibatchCKAMatrix()
    for _ in range(n_samples // BATCH):
        layers = [torch.randn(BATCH, WIDTH, generator=gen) for _ in range(2 * LAYERS)]
        acc.update(layers[:LAYERS], layers[LAYERS:])
    acc.compute()
    print(json.dumps({"samples": n_samples, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-memory", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory:
        peak_memory(args.peak_memory)
        return
    data = batches(8192)
    stream(data[:2])
    grams_only(data[:2])
    t_acc, t_gram = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        stream(data)
        t_acc.append(time.perf_counter() - start)
        start = time.perf_counter()
        grams_only(data)
        t_gram.append(time.perf_counter() - start)
    ma, mg = statistics.median(t_acc), statistics.median(t_gram)
    print(
        f"# MinibatchCKAMatrix {LAYERS}x{LAYERS} layers, width {WIDTH}, batch {BATCH}, 8192 samples, "
        f"float32; torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print("| what | time (s) | samples/s | ratio to Grams alone |")
    print("|---|---|---|---|")
    print(f"| MinibatchCKAMatrix.update x32 + compute | {ma:.3f} | {8192 / ma:,.0f} | {ma / mg:.2f} |")
    print(f"| the 24 Grams per batch alone | {mg:.3f} | {8192 / mg:,.0f} | 1.00 |")
    print()
    print("| samples streamed | peak RSS of the process (MiB) |")
    print("|---|---|")
    for n in (8192, 65536):
        out = subprocess.run(
            [sys.executable, __file__, "--peak-memory", str(n)], capture_output=True, text=True, check=True
        )
        print(f"| {n} | {json.loads(out.stdout)['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
