"""Cost of permutation tests and intervals, as ratios to the measure itself, measured side by side in one run.

Usage: ``python benchmarks/bench_inference.py [--n 10000] [--p 768] [--permutations 1000] [--layers 12]
[--moments-only]``. Prints markdown tables. Data are float64 Gaussian with a nonlinear dependence; one CKA is
``reprsim.cka`` on the same arrays (median of 3).

The exact-moment null (``permutations="moments"``) is timed for one pair against one CKA, and for every cell of a
layers × layers matrix of full-width layers against computing that matrix (``reprsim.cka_matrix``); its p-values
and critical values are set beside 1,000 Monte Carlo permutations of a weakly dependent pair. The Monte Carlo
test's time per permutation is set against its floor, one p × n × q product.
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
    parser.add_argument("--moments-only", action="store_true", help="only the exact-moment null's section")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    n, p = args.n, args.p
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(p, p, generator=g, dtype=torch.float64) / p**0.5)
    y = y + 0.5 * torch.randn(n, p, generator=g, dtype=torch.float64)
    one = timed(lambda: reprsim.cka(x, y), repeats=3)
    print(f"n = {n:,}, p = q = {p}, float64, {torch.get_num_threads()} threads\n")
    moments_section(x, one, args)
    if args.moments_only:
        return
    print("| work | time (s) | ratio to one CKA |")
    print("|---|---|---|")
    print(f"| one linear CKA (`reprsim.cka`) | {one:.3f} | 1 |")
    k = args.permutations
    t = timed(lambda: permutation_test(x, y, "cka", permutations=k))
    print(f"| {k} permutations of linear CKA (`permutation_test`) | {t:.1f} | {t / one:.0f} |")
    floor = timed(lambda: x.T @ y[torch.randperm(n)], repeats=3)
    print(
        f"| one p × n × q product Xᵀ·Y[π] (the floor of one permutation) | {floor:.3f} | {floor / one:.2f}; a "
        f"permutation costs {t / k / floor:.2f}× it |"
    )
    t = timed(lambda: jackknife(x, y, "cka", blocks=20))
    print(f"| jackknife, 20 blocks | {t:.2f} | {t / one:.1f} |")
    t = timed(lambda: bootstrap(x, y, "cka", scheme="pairs", resamples=100, method="percentile"))
    print(f'| rows drawn with replacement (`scheme="pairs"`, opt-in), 100 resamples | {t:.1f} | {t / one:.0f} |')
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


def moments_section(x: torch.Tensor, one: float, args: argparse.Namespace) -> None:
    """The exact-moment null: cost for one pair and for a full matrix, accuracy against Monte Carlo."""
    n, p = x.shape
    g = torch.Generator().manual_seed(1)
    # a weakly dependent pair, so that the p-value is neither 1 nor 1/(K + 1)
    weak = torch.randn(n, p, generator=g, dtype=torch.float64) + 0.012 * torch.tanh(x)
    print('| exact-moment null (`permutations="moments"`) | time (s) | ratio |')
    print("|---|---|---|")
    t = timed(lambda: permutation_test(x, weak, "cka", permutations="moments"), repeats=3)
    print(f"| one pair, linear CKA | {t:.2f} | {t / one:.1f}× one CKA ({one:.2f} s) |")
    layers = args.layers
    xs = [torch.tanh(x * (0.5 + i / layers)) for i in range(layers)]
    ys = [torch.tanh(weak * (0.5 + j / layers)) + 0.1 * x for j in range(layers)]
    matrix, test = alternating(
        lambda: feature_space_matrix(xs, ys), lambda: permutation_test(xs, ys, "cka", permutations="moments")
    )
    print(
        f"| {layers} × {layers} layers of width {p}: p-values of every cell, Holm's, the best cell's | {test:.1f} | "
        f"{test / matrix:.2f}× the matrix itself ({matrix:.1f} s, in feature space) |"
    )
    test = timed(lambda: permutation_test(xs, ys, "cka", permutations="moments", aggregate="mean"), repeats=1)
    print(
        f'| the same with `aggregate="mean"` (the null of the mean needs the layers side by side) | {test:.1f} | '
        f"{test / matrix:.2f}× the matrix itself |"
    )
    k = args.permutations
    exact = permutation_test(x, weak, "cka", permutations="moments")
    mc = permutation_test(x, weak, "cka", permutations=k, seed=0)
    se = (mc.p_value * (1 - mc.p_value) / k) ** 0.5
    print(
        f"\nOne weakly dependent pair: p = {exact.p_value:.4f} from the moments, {mc.p_value:.4f} ± {se:.4f} "
        f"(one Monte Carlo SE) from {k} permutations; critical value τ at α = 0.05: {exact.threshold:.6f} against "
        f"{mc.threshold:.6f}; null mean, sd, skewness {tuple(round(v, 6) for v in exact.null_moments or ())} "
        f"against {tuple(round(v, 6) for v in mc.null_moments or ())}.\n"
    )


def alternating(a: Callable[[], object], b: Callable[[], object], repeats: int = 3) -> tuple[float, float]:
    """Median times of ``a`` and ``b`` run in turn (a, b, a, b, ...): side by side on a noisy machine."""
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(a))
        tb.append(timed(b))
    return statistics.median(ta), statistics.median(tb)


def feature_space_matrix(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    """The linear CKA matrix at its arithmetic floor for p < n: one p × n × q product per cell and one per layer
    for the norms (``reprsim.cka_matrix`` builds n × n Grams instead, O(layers · n²) memory: 38 GB here)."""
    cx = [x - x.mean(0) for x in xs]
    cy = [y - y.mean(0) for y in ys]
    nx = torch.stack([torch.linalg.matrix_norm(x.T @ x) for x in cx])
    ny = torch.stack([torch.linalg.matrix_norm(y.T @ y) for y in cy])
    cross = torch.stack([torch.stack([(x.T @ y).square().sum() for y in cy]) for x in cx])
    return cross / (nx[:, None] * ny[None, :])


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
