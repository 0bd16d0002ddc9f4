"""reprsim.compare against the bare forward passes it cannot avoid, and three models at once against three pairs.

Workload (issue 4): two 6-block ViTs (width 192, 3 heads, 32×32 inputs, patch 4: 64 tokens + CLS, random
weights from timm), 4096 samples in batches of 128, the 6 × 6 block outputs compared with minibatch linear
CKA (tokens flattened, 12,480 features per layer). The floor is running both models over the data; the
ratio shows what extraction and CKA add. Then three such ViTs: one ``compare`` call on the mapping of all
three against three separate pair calls. Runs alternate; medians are reported.

    python benchmarks/bench_compare.py [--repeats 3] [--samples 4096] [--pool flatten]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch

import reprsim

BLOCKS = [f"blocks.{i}" for i in range(6)]


def vit(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=6, num_classes=10
    ).eval()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pool", default="flatten")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(args.batch, 3, 32, 32, generator=g) for _ in range(args.samples // args.batch)]
    a, b, c = vit(0), vit(1), vit(2)

    def bare(models: list[torch.nn.Module]) -> None:
        with torch.no_grad():
            for x in data:
                for m in models:
                    m(x)

    def pair() -> None:
        reprsim.compare(a, b, data, layers_a=BLOCKS, pool=args.pool, progress=False)

    def three_at_once() -> None:
        reprsim.compare({"a": a, "b": b, "c": c}, data=data, layers=BLOCKS, pool=args.pool, progress=False)

    def three_pairs() -> None:
        for x, y in ((a, b), (a, c), (b, c)):
            reprsim.compare(x, y, data, layers_a=BLOCKS, pool=args.pool, progress=False)

    cases = {
        "two bare forwards": lambda: bare([a, b]),
        "compare(A, B)": pair,
        "three pair calls": three_pairs,
        "compare({A, B, C})": three_at_once,
    }
    with torch.no_grad():  # warm-up
        for m in (a, b, c):
            m(data[0])
    reprsim.compare(a, b, data[:2], layers_a=BLOCKS, pool=args.pool, progress=False)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"# compare: 6-block ViT (width 192, 65 tokens), {args.samples} samples, batch {args.batch}, "
        f"pool={args.pool}, minibatch linear CKA; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}"
    )
    print("| workload | time (s) | ratio |")
    print("|---|---|---|")
    print(f"| two bare forward passes | {med['two bare forwards']:.2f} | 1.00 |")
    print(
        f"| compare(A, B), 6 x 6 blocks | {med['compare(A, B)']:.2f} | "
        f"{med['compare(A, B)'] / med['two bare forwards']:.3f} (to the bare forwards) |"
    )
    print(f"| three separate pair calls | {med['three pair calls']:.2f} | 1.00 |")
    print(
        f"| compare({{A, B, C}}), all three pairs | {med['compare({A, B, C})']:.2f} | "
        f"{med['compare({A, B, C})'] / med['three pair calls']:.3f} (to the three pair calls) |"
    )


if __name__ == "__main__":
    main()
