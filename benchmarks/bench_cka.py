"""Time reprsim.cka against the bare matrix products it cannot avoid, side by side in one run.

Linear CKA needs XᵀX, YᵀY and XᵀY when the widths are below the sample count (feature space), and the two
n×n Grams XXᵀ, YYᵀ otherwise. The ratio of reprsim's time to those products is the overhead of everything
else (centring, norms, validation); on the n×n route it can be below 1, since reprsim only builds the upper
triangle of the (symmetric) Grams, a strip at a time. Runs alternate and the medians are reported.

    python benchmarks/bench_cka.py [--repeats 7] [--device cpu] [--dtype float32]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

import reprsim


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bare_products(x: torch.Tensor, y: torch.Tensor) -> Callable[[], object]:
    n, p = x.shape
    q = y.shape[1]
    if p * p + q * q + p * q <= n * (p + q):
        return lambda: (x.T @ x, y.T @ y, x.T @ y)
    return lambda: (x @ x.T, y @ y.T)


def bench(n: int, p: int, repeats: int, device: torch.device, dtype: torch.dtype, unbiased: bool) -> dict[str, object]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, p, generator=gen, dtype=dtype).to(device)
    y = (x @ torch.randn(p, p, generator=gen, dtype=dtype).to(device) / p**0.5).tanh()
    ours = lambda: reprsim.cka(x, y, unbiased=unbiased)  # noqa: E731
    floor = bare_products(x, y)
    for fn in (ours, floor):  # warm-up
        fn()
    t_ours, t_floor = [], []
    for _ in range(repeats):
        t_ours.append(timed(ours, device))
        t_floor.append(timed(floor, device))
    mo, mf = statistics.median(t_ours), statistics.median(t_floor)
    return {"n": n, "p": p, "unbiased": unbiased, "reprsim_s": mo, "products_s": mf, "ratio": mo / mf}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"# linear CKA vs its bare matrix products: {where}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.dtype}, median of {args.repeats}"
    )
    print("| n | p = q | estimator | reprsim (s) | bare products (s) | ratio |")
    print("|---|---|---|---|---|---|")
    for n, p in [(10000, 768), (2000, 2048)]:
        for unbiased in (False, True):
            r = bench(n, p, args.repeats, device, dtype, unbiased)
            est = "unbiased" if unbiased else "biased"
            print(f"| {n} | {p} | {est} | {r['reprsim_s']:.4f} | {r['products_s']:.4f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
