"""What ``ci=0.95`` adds to a ``reprsim.compare`` run, per measure family.

Workload (issue 25): two 6-block ViTs (width 192, 3 heads, 32×32 inputs, patch 4, random weights from
timm), 2048 samples in batches of 128, the 6 × 6 block outputs mean-pooled over tokens (192 features each),
compared with linear CKA alone, and with CKA, Procrustes and CCA together. Each configuration runs without and
with ``ci=0.95`` (the delete-a-block jackknife over 20 blocks) alternately; the medians and the median of the
paired ratios are printed.

What ``ci=`` costs: per batch, every fold's products (20 sets of moments, one batched multiply); after the pass,
each leave-one-block-out set of moments by one downdate from the total, and each measure evaluated 20 more
times per cell. For CKA an evaluation is a few traces; for Procrustes and CCA it is an SVD of the p × q cross
moments, so their 20 extra SVDs per cell are a floor no bookkeeping removes.

    python benchmarks/bench_compare_ci.py [--repeats 3] [--samples 2048]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import reprsim
from bench_compare import BLOCKS, vit  # the same 6-block ViTs (this script's folder is on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2048)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(128, 3, 32, 32, generator=g) for _ in range(args.samples // 128)]
    a, b = vit(0), vit(1)
    print("| measures | without ci= (s) | with ci=0.95 (s) | ratio (median of pairs) |")
    print("|---|---|---|---|")
    for measures in (["cka"], ["cka", "procrustes", "cca"]):
        options = {"layers_a": BLOCKS, "pool": "mean", "progress": False, "measures": measures}
        plain: list[float] = []
        with_ci: list[float] = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            reprsim.compare(a, b, data, **options)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            reprsim.compare(a, b, data, uncertainty=reprsim.Uncertainty(ci=0.95), **options)
            with_ci.append(time.perf_counter() - start)
        ratio = statistics.median(c / p for p, c in zip(plain, with_ci))
        print(
            f"| {' + '.join(measures)} | {statistics.median(plain):.2f} | {statistics.median(with_ci):.2f} | "
            f"{ratio:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
