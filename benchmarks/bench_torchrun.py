"""compare under torchrun (2 ranks × 1 thread) against one process with 2 threads, on the two-ViT workload.

Workload: bench_compare.py's two 6-block ViTs (random timm weights, 32×32 inputs, 64 tokens + CLS), 4096
samples in batches of 128, the 6 × 6 block outputs compared with minibatch CKA (tokens flattened) and, in
the same pass, exact linear CKA and Procrustes on mean-pooled tokens. Reports each configuration's wall time
(median over repeats, the two alternating), each rank's forward passes, the reduction's time once every rank
has finished (``metadata["distributed"]["reduce_seconds"]``) and the time a rank waited for the other
(``wait_seconds``) as shares of the run, and the largest difference between the two configurations' matrices.

    python benchmarks/bench_torchrun.py [--repeats 3] [--samples 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def workload(samples: int, batch: int) -> tuple[torch.nn.Module, torch.nn.Module, list[torch.Tensor]]:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_compare import vit

    g = torch.Generator().manual_seed(0)
    data = [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(samples // batch)]
    return vit(0), vit(1), data


def worker(out: Path, samples: int, batch: int) -> None:
    import reprsim

    a, b, data = workload(samples, batch)
    calls = [0]
    a.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    # minibatch CKA needs no pooling (flattened tokens); the exact measures need a fixed width: mean over tokens
    start = time.perf_counter()
    flat = reprsim.compare(a, b, data, layers_a=[f"blocks.{i}" for i in range(6)], measure="cka_minibatch",
                           progress=False)  # fmt: skip
    exact = reprsim.compare(a, b, data, layers_a=[f"blocks.{i}" for i in range(6)], measures=["cka", "procrustes"],
                            pool="mean", progress=False)  # fmt: skip
    wall = time.perf_counter() - start
    runs = [flat.metadata.get("distributed", {}), exact["cka"].metadata.get("distributed", {})]
    reduce_s = sum(r.get("reduce_seconds", 0.0) for r in runs)
    wait_s = sum(r.get("wait_seconds", 0.0) for r in runs)
    rank = int(os.environ.get("RANK", "0"))
    record = {"wall": wall, "reduce": reduce_s, "wait": wait_s, "forwards": calls[0],
              "matrices": {"cka_minibatch": flat.to_numpy().tolist(), "cka": exact["cka"].to_numpy().tolist(),
                           "procrustes": exact["procrustes"].to_numpy().tolist()}}  # fmt: skip
    (out / f"rank{rank}.json").write_text(json.dumps(record))


def launch(ranks: int, samples: int, batch: int) -> list[dict[str, object]]:
    out = Path(tempfile.mkdtemp(prefix="bench-torchrun-"))
    script = [str(Path(__file__)), "--worker", str(out), "--samples", str(samples), "--batch", str(batch)]
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // ranks)}
    if ranks == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *script]
    subprocess.run(command, env=env, check=True, capture_output=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--worker", type=Path)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.samples, args.batch)
        return
    single, multi = [], []
    for _ in range(args.repeats):
        single.append(launch(1, args.samples, args.batch))
        multi.append(launch(2, args.samples, args.batch))
    one = statistics.median(r[0]["wall"] for r in single)  # type: ignore[misc]
    two = statistics.median(max(x["wall"] for x in r) for r in multi)  # type: ignore[type-var]
    share = statistics.median(max(x["reduce"] for x in r) / max(x["wall"] for x in r) for r in multi)  # type: ignore[operator]
    waited = statistics.median(max(x["wait"] for x in r) / max(x["wall"] for x in r) for r in multi)  # type: ignore[operator]
    diff = 0.0
    for m in ("cka_minibatch", "cka", "procrustes"):
        s = torch.tensor(single[-1][0]["matrices"][m])  # type: ignore[index]
        for rank in multi[-1]:
            diff = max(diff, float((torch.tensor(rank["matrices"][m]) - s).abs().max()))  # type: ignore[index]
    print(f"samples {args.samples}, batches of {args.batch}, {args.repeats} repeats (medians)")
    print(f"1 process × 2 threads: {one:.1f} s ({single[-1][0]['forwards']} forwards of model A, both calls)")
    print(f"2 ranks × 1 thread:    {two:.1f} s (forwards per rank: {[r['forwards'] for r in multi[-1]]})")
    print(f"ratio 1 process / 2 ranks: {one / two:.2f}")
    print(f"the reduction (agreeing, all-reduces, gathers), once both ranks finished: {100 * share:.2f}% of the run")
    print(f"waiting at the end of a loop for the other rank (load imbalance): {100 * waited:.2f}% of the run")
    print(f"largest difference between the two configurations' matrices: {diff:.1e}")
    print(f"per-run walls, 1 process: {[round(r[0]['wall'], 1) for r in single]}")  # type: ignore[arg-type]
    print(f"per-run walls, 2 ranks:   {[round(max(x['wall'] for x in r), 1) for r in multi]}")  # type: ignore[type-var]


if __name__ == "__main__":
    main()
