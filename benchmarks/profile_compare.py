"""Where the time of ``reprsim.compare`` goes beyond the forward passes: torch.profiler over two ViTs.

Two 12-block timm ViTs (width 192, 32×32 inputs, patch 4), 2048 samples in batches of 128, every block
compared with minibatch linear CKA (the peer benchmark's largest model workload, on fewer samples). Prints
the wall time of compare and of the bare forwards, then the operators that take the most self time on the
CPU (on the GPU with ``--device cuda``, where it also counts the host synchronisations per batch).

    python benchmarks/profile_compare.py [--device cuda] [--rows 25]
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import reprsim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    dev = torch.device(args.device)

    def vit(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=12, num_classes=10
        )
        return model.eval().to(dev)

    a, b = vit(0), vit(1)
    x = torch.randn(args.samples, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    data = [(x[i : i + 128], None) for i in range(0, args.samples, 128)]
    layers = [f"blocks.{i}" for i in range(12)]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def bare() -> None:
        with torch.no_grad():
            for xb, _ in data:
                xb = xb.to(dev)
                a(xb)
                b(xb)

    def run() -> None:
        reprsim.compare(a, b, data, layers_a=layers, progress=False)

    for f in (bare, run, bare, run):  # warm-up
        f()
    times = {}
    for name, f in (("forwards", bare), ("compare", run)):
        sync()
        start = time.perf_counter()
        f()
        sync()
        times[name] = time.perf_counter() - start
    print(
        f"{args.samples} samples on {dev}: compare {times['compare']:.3f} s, bare forwards {times['forwards']:.3f} s "
        f"(ratio {times['compare'] / times['forwards']:.3f})"
    )
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        sync()
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    if dev.type == "cuda":  # the final sync() above adds one device-wide synchronisation
        syncs = sum(e.count for e in prof.key_averages() if "Synchronize" in e.key)
        print(f"host synchronisations (cuda*Synchronize calls) per batch: {syncs / len(data):.2f}")


if __name__ == "__main__":
    main()
