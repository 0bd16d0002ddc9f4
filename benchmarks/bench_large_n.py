"""Sample-space measures at large n within a memory budget: time and peak resident set, one fresh process each.

Usage: ``python benchmarks/bench_large_n.py --n 100000 --p 768 [--measures mutual_knn ...]``. Data are float32
(two n × p arrays: 2 × 293 MiB at n = 100,000, p = 768), the measures at their default strip size (64 MiB of
float64 per strip). Prints a markdown table; the budget column is the process's peak resident set, which
includes the torch import (about 300 MiB) and the data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

RUNNER = """
import json, resource, time
import torch
import reprsim
torch.manual_seed(0)
n, p = {n}, {p}
x = torch.randn(n, p)
y = torch.tanh(x @ (torch.randn(p, p) / p ** 0.5)) + 0.5 * torch.randn(n, p)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
value = float({call})
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"time": elapsed, "value": value, "peak_mib": peak / 1024, "extra_mib": (peak - base) / 1024}}))
"""

CALLS = {
    "mutual_knn": "reprsim.mutual_knn(x, y, k=10)",
    "cknna": "reprsim.cknna(x, y, k=10)",
    "distance_correlation": "reprsim.distance_correlation(x, y)",
    "rsa_pearson_correlation_rdm": "reprsim.rsa(x, y, compare='pearson')",
    "rsa_pearson_sqeuclidean_streamed": "reprsim.rsa(x, y, rdm='sqeuclidean', compare='pearson')",
    "cka_rbf": "reprsim.cka(x, y, kernel='rbf')",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--p", type=int, default=768)
    parser.add_argument("--measures", nargs="*", default=list(CALLS))
    args = parser.parse_args()
    print(f"n = {args.n:,}, p = q = {args.p}, float32 inputs\n")
    print("| measure | call | time (s) | peak RSS (MiB) | beyond the data and imports (MiB) | value |")
    print("|---|---|---|---|---|---|")
    for name in args.measures:
        script = RUNNER.format(n=args.n, p=args.p, call=CALLS[name])
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {name} | `{CALLS[name]}` | failed: {done.stderr.strip().splitlines()[-1][:80]} | | | |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"| {name} | `{CALLS[name]}` | {r['time']:.1f} | {r['peak_mib']:.0f} | {r['extra_mib']:.0f} | "
            f"{r['value']:.6f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
