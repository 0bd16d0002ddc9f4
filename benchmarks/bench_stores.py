"""Comparing two activation stores from disk: read rate against the disk's, bytes read, and memory against n.

Writes two stores of ``--samples`` × ``--width`` float32 activations (one layer each), then, each phase in its
own process with the files evicted from the page cache first (``posix_fadvise(DONTNEED)``):

1. ``disk``: the disk's sequential read rate on those same files (64 MiB reads, nothing else);
2. ``reader``: reprsim's chunk reader alone (both stores, background read-ahead, no measures);
3. ``compare``: ``compare_stores(a, b, measures=["cka", "procrustes"])``, the whole comparison;
4. ``cached``: the same with the files left in the page cache (no disk at all: the compute's own time);
5. ``disk`` again, to see the spread of the disk's rate.

For each: wall time, MB/s over the bytes of both files, the bytes the process read from storage
(``/proc/self/io``: each file read once means about the files' size) and the peak resident memory.

    python benchmarks/bench_stores.py [--samples 1000000] [--width 768] [--folder /tmp/reprsim-bench-stores]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

import reprsim
from reprsim.models._store import chunks


def io_read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return -1


def files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/layers/*.npy"))


def evict(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write(folder: Path, n: int, width: int) -> float:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(width, width, generator=g) / width**0.5
    start = time.perf_counter()
    with reprsim.StoreWriter(folder / "a", model="a") as wa, reprsim.StoreWriter(folder / "b", model="b") as wb:
        for s in range(0, n, 16384):
            x = torch.randn(min(16384, n - s), width, generator=g)
            wa.write({"layer": x})
            wb.write({"layer": torch.tanh(x @ mix) + 0.5 * torch.randn(x.shape, generator=g)})
    return time.perf_counter() - start


def phase(name: str, folder: Path) -> dict[str, float]:
    paths = files(folder)
    if name != "cached":
        evict(paths)
    before = io_read_bytes()
    start = time.perf_counter()
    if name == "disk":
        buf = bytearray(64 * 2**20)
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
    elif name == "reader":
        a, b = reprsim.open_store(folder / "a"), reprsim.open_store(folder / "b")
        for _ in chunks([(a, ["layer"], None), (b, ["layer"], None)], 65536 // 3 * 1):
            pass
    else:
        r = reprsim.compare_stores(folder / "a", folder / "b", measures=["cka", "procrustes"], progress=False)
        print(json.dumps({"cka": r["cka"].matrix.item(), "procrustes": r["procrustes"].matrix.item()}), file=sys.stderr)
    wall = time.perf_counter() - start
    size = sum(p.stat().st_size for p in paths)
    return {"wall": wall, "mb_s": size / wall / 1e6, "read_gb": (io_read_bytes() - before) / 1e9,
            "files_gb": size / 1e9, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/reprsim-bench-stores"))
    parser.add_argument("--phase")
    parser.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.folder)))
        return
    wrote = write(args.folder, args.samples, args.width)
    size = sum(p.stat().st_size for p in files(args.folder))
    print(f"{args.samples:,} × {args.width} float32, two stores of {size / 2e9:.2f} GB each; written in {wrote:.0f} s "
          f"({size / wrote / 1e6:.0f} MB/s)")  # fmt: skip
    results = {}
    for label, name in (("disk", "disk"), ("reader", "reader"), ("compare", "compare"), ("cached", "cached"),
                        ("disk again", "disk")):  # fmt: skip
        if name == "cached":  # warm the page cache
            subprocess.run(
                [sys.executable, __file__, "--phase", "reader", "--folder", str(args.folder)],
                check=True,
                capture_output=True,
            )
        out = subprocess.run([sys.executable, __file__, "--phase", name, "--folder", str(args.folder)],
                             check=True, capture_output=True, text=True)  # fmt: skip
        results[label] = json.loads(out.stdout)
        if name == "compare":
            print(f"compare result: {out.stderr.strip()}")
    disk = (results["disk"]["mb_s"] + results["disk again"]["mb_s"]) / 2
    for name, r in results.items():
        print(f"{name:10s} {r['wall']:7.1f} s  {r['mb_s']:7.0f} MB/s ({100 * r['mb_s'] / disk:5.1f}% of disk)  "
              f"read {r['read_gb']:.2f} GB of {r['files_gb']:.2f} GB  peak {r['peak_mib']:.0f} MiB")  # fmt: skip
    if not args.keep:
        shutil.rmtree(args.folder)


if __name__ == "__main__":
    main()
