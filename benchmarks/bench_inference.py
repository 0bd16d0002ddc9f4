"""Cost of permutation tests and intervals, as ratios to the measure itself, measured side by side in one run.

Usage: ``python benchmarks/bench_inference.py [--n 10000] [--p 768] [--permutations 1000] [--layers 12]``.
Prints a markdown table. Data are float64 Gaussian with a nonlinear dependence; one CKA is ``reprsim.cka``
on the same arrays (median of 3).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import reprsim
from reprsim.inference import bootstrap, jackknife, permutation_test


def timed(fn: Callable[[], object], repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--p", type=int, default=768)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--layer-width", type=int, default=64)
    parser.add_argument("--peers", action="store_true", help="also time calibrated-similarity and shesha-geometry")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    n, p = args.n, args.p
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(p, p, generator=g, dtype=torch.float64) / p**0.5)
    y = y + 0.5 * torch.randn(n, p, generator=g, dtype=torch.float64)
    one = timed(lambda: reprsim.cka(x, y), repeats=3)
    print(f"n = {n:,}, p = q = {p}, float64, {torch.get_num_threads()} threads\n")
    print("| work | time (s) | ratio to one CKA |")
    print("|---|---|---|")
    print(f"| one linear CKA (`reprsim.cka`) | {one:.3f} | 1 |")
    k = args.permutations
    t = timed(lambda: permutation_test(x, y, "cka", permutations=k))
    print(f"| {k} permutations of linear CKA (`permutation_test`) | {t:.1f} | {t / one:.0f} |")
    t = timed(lambda: jackknife(x, y, "cka", blocks=20))
    print(f"| jackknife, 20 blocks | {t:.2f} | {t / one:.1f} |")
    t = timed(lambda: bootstrap(x, y, "cka", resamples=100, method="percentile"))
    print(f"| bootstrap, 100 resamples | {t:.1f} | {t / one:.0f} |")
    # a layers × layers matrix with best-cell calibration against one pair of the same layers
    w, layers = args.layer_width, args.layers
    xs = [torch.tanh(x[:, :w] * (1 + i / layers)) for i in range(layers)]
    ys = [torch.tanh(y[:, :w] * (1 + j / layers)) for j in range(layers)]
    kk = min(k, 200)
    single = timed(lambda: permutation_test(xs[0], ys[0], "cka", permutations=kk))
    matrix = timed(lambda: permutation_test(xs, ys, "cka", permutations=kk, aggregate="best"))
    print(
        f"| {layers} × {layers} layers (width {w}), {kk} permutations, best-cell calibration | {matrix:.1f} | "
        f"{matrix / single:.0f}× one pair's test ({single:.2f} s) |"
    )
    if args.peers:
        peers(x, y, one)


def peers(x: torch.Tensor, y: torch.Tensor, one: float) -> None:
    """The same work in the peers that offer it (few repetitions, extrapolated where stated)."""
    from calibrated_similarity import calibrate
    from shesha.sim import cka_linear

    def gram_cka(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # calibrated-similarity's documented example
        a, b = a - a.mean(0), b - b.mean(0)
        k, l = a @ a.T, b @ b.T
        return (k * l).sum() / k.norm() / l.norm()

    def linear_cka(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # the feature-space form, for fairness
        a, b = a - a.mean(0), b - b.mean(0)
        return (a.T @ b).square().sum() / (a.T @ a).norm() / (b.T @ b).norm()

    for name, fn in (("its documented Gram CKA", gram_cka), ("a feature-space CKA", linear_cka)):
        t = timed(lambda fn=fn: calibrate(x, y, fn, K=10, generator=torch.Generator().manual_seed(0)))
        print(
            f"| calibrated-similarity, {name}: 10 permutations, × 100 for 1000 | {t * 100:.0f} (extrapolated) | "
            f"{t * 100 / one:.0f} |"
        )
    xa, ya = x.numpy(), y.numpy()
    t = timed(lambda: cka_linear(xa, ya, n_bootstrap_ci=20, seed=0))
    extrapolated = t * 5
    print(
        f"| shesha-geometry `cka_linear(n_bootstrap_ci=20)`, × 5 for 100 | {extrapolated:.1f} (extrapolated) | "
        f"{extrapolated / one:.0f} |"
    )


if __name__ == "__main__":
    main()
