"""The moment measures: how close streaming comes to the bare matrix products, what each measure adds, peers'
time and memory for the same measure, memory flat in n, and several measures in one compare pass.

Sections (``--only`` picks some):

- ``products``: n = 10,000, p = q = 768. ``CrossMoments.update`` over batches of 1,000 against the three bare
  products XᵀX, YᵀY, XᵀY of the whole data in the same dtype (the ratio is the share of the machine's matrix
  multiply rate reached), then each measure's ``compute`` (one p × p eigendecomposition or SVD on top).
- ``peers``: each measure end to end on the two arrays (reprsim's functional form) against the installed peers'
  implementation of the same measure (repsim, deep-reps, thingsvision; whatever imports), time and the peak
  resident memory of a fresh process.
- ``flat``: 100,000 and 1,000,000 samples × 512 features streamed into Procrustes + CCA + CKA at once; the
  resident set of each run's fresh process (it must not grow with n).
- ``exact``: exact CKA of 12 × 12 layers of width 768, with one accumulator per layer pair (0.1's
  ``compare(estimator="exact")``) against one ``CrossMoments`` with moments per layer (0.2); time and peak memory.
- ``compare``: two 12-block ViTs (timm, random weights, width 192, mean-pooled tokens): one measure against
  three measures (cka, procrustes, cca) in one ``compare`` pass, and the exact CKA of 0.1 (a per-pair
  accumulator grid) against 0.2 (moments per layer).

    python benchmarks/bench_measures.py [--only products peers flat exact compare] [--repeats 3]

Timings are medians of alternating runs in one process; compare ratios, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

N, P, BATCH = 10_000, 768, 1_000
PEER_LIMIT_S = 600
MEASURES = ["cka", "cka_unbiased", "procrustes", "cca", "svcca", "pwcca", "predictivity"]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def data(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, P, generator=g, dtype=dtype)
    y = torch.tanh(x @ torch.randn(P, P, generator=g, dtype=dtype) / P**0.5) + 0.5 * torch.randn(
        N, P, generator=g, dtype=dtype
    )
    return x, y


def products(repeats: int) -> None:
    from reprsim.streaming import CrossMoments

    print(f"\n## Streaming against the bare products (n = {N:,}, p = q = {P})\n")
    print("| dtype | batch | bare XᵀX, YᵀY, XᵀY of all the data (s) | CrossMoments.update (s) | share of the rate |")
    print("|---|---|---|---|---|")
    for dtype in (torch.float64, torch.float32):
        x, y = data(dtype)
        xc, yc = x - x.mean(0), y - y.mean(0)
        for batch in (BATCH, N):

            def bare(xc: torch.Tensor = xc, yc: torch.Tensor = yc) -> None:
                _ = (xc.T @ xc, yc.T @ yc, xc.T @ yc)

            def stream(
                x: torch.Tensor = x, y: torch.Tensor = y, dtype: torch.dtype = dtype, batch: int = batch
            ) -> CrossMoments:
                acc = CrossMoments(dtype=dtype)
                for xb, yb in zip(x.split(batch), y.split(batch)):
                    acc.update(xb, yb)
                return acc

            med = medians({"bare": bare, "stream": stream}, repeats)
            print(
                f"| {str(dtype).removeprefix('torch.')} | {batch:,} | {med['bare']:.3f} | {med['stream']:.3f} | "
                f"{med['bare'] / med['stream']:.0%} |"
            )
    x, y = data(torch.float64)
    acc = CrossMoments(fourth=True)
    for xb, yb in zip(x.split(BATCH), y.split(BATCH)):
        acc.update(xb, yb)
    print(f"\n`compute` on the streamed state (float64, p = q = {P}):\n")
    print("| measure | compute (s) |")
    print("|---|---|")
    for name in MEASURES:
        t = statistics.median(timed(lambda name=name: acc.compute(name)) for _ in range(repeats))
        print(f"| {name} | {t:.3f} |")


# deep-reps 0.0.6 does not import as a package (a circular import): load its modules under a stub package
DEEP_REPS = (
    "import importlib, importlib.util, sys, types, torch\n"
    "pkg = types.ModuleType('deep_reps')\n"
    "pkg.__path__ = importlib.util.find_spec('deep_reps').submodule_search_locations\n"
    "sys.modules['deep_reps'] = pkg\n"
)

PEER_CODE = {
    ("cka", "reprsim"): "import reprsim; f = lambda x, y: reprsim.cka(x, y)",
    ("cka", "repsim"): "import repsim; f = lambda x, y: repsim.cka([x, y], kernel_type='linear', estimator='gretton')",
    ("cka", "thingsvision"): (
        "import importlib.util, sys\n"
        "root = importlib.util.find_spec('thingsvision').submodule_search_locations[0]\n"
        "for name in ('cka_base', 'cka_numpy'):\n"
        "    s = importlib.util.spec_from_file_location(\n"
        "        f'thingsvision.core.cka.{name}', f'{root}/core/cka/{name}.py')\n"
        "    m = importlib.util.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m)\n"
        "f = lambda x, y: m.CKANumPy(m=len(x), kernel='linear').compare(x, y)"
    ),
    ("procrustes", "reprsim"): "import reprsim; f = lambda x, y: reprsim.procrustes(x, y, score='euclidean')",
    ("procrustes", "deep-reps"): (
        DEEP_REPS + "g = importlib.import_module('deep_reps.alignment_measures').orthogonal_procrustes\n"
        "f = lambda x, y: g(torch.from_numpy(x), torch.from_numpy(y))"
    ),
    ("cca_yanai", "reprsim"): "import reprsim; f = lambda x, y: reprsim.cca(x, y, reduce='yanai')",
    ("cca_yanai", "repsim"): "import repsim; f = lambda x, y: repsim.cca([x, y], summary_type='yanai')",
    ("cca_yanai", "deep-reps"): (
        DEEP_REPS + "g = importlib.import_module('deep_reps.cca_measures').compute_yanai_cca\n"
        "f = lambda x, y: g(torch.from_numpy(x), torch.from_numpy(y))"
    ),
    ("svcca", "reprsim"): "import reprsim; f = lambda x, y: reprsim.svcca(x, y, reduce='yanai')",
    ("svcca", "repsim"): "import repsim; f = lambda x, y: repsim.svcca([x, y], summary_type='yanai')",
    ("pwcca", "reprsim"): "import reprsim; f = lambda x, y: reprsim.pwcca(x, y)",
    ("pwcca", "repsim"): "import repsim; f = lambda x, y: repsim.pwcca([x, y])",
    # sample-space measures (run with --n 20000 --measures mutual_knn jaccard_knn distance_correlation)
    ("mutual_knn", "reprsim"): "import reprsim; f = lambda x, y: reprsim.measures.mutual_knn(x, y, k=10)",
    ("jaccard_knn", "reprsim"): (
        "import reprsim; f = lambda x, y: reprsim.measures.jaccard_knn(x, y, k=10, neighbours='euclidean')"
    ),
    ("jaccard_knn", "deep-reps"): (
        DEEP_REPS + "vars(pkg).update(vars(importlib.import_module('deep_reps.utils')))\n"
        "g = importlib.import_module('deep_reps.neighbors_measures').knn_jaccard_similarity\n"
        "f = lambda x, y: g(torch.from_numpy(x), torch.from_numpy(y), 10)"
    ),
    ("distance_correlation", "reprsim"): "import reprsim; f = lambda x, y: reprsim.measures.distance_correlation(x, y)",
    ("distance_correlation", "dcor"): "import dcor; f = lambda x, y: dcor.distance_correlation(x, y)",
    ("rsa_spearman", "reprsim"): "import reprsim; f = lambda x, y: reprsim.rsa(x, y)",
    ("rsa_spearman", "rsatoolbox"): (
        "from rsatoolbox.data import Dataset\nfrom rsatoolbox.rdm import calc_rdm, compare\n"
        "f = lambda x, y: compare(calc_rdm(Dataset(x), method='correlation'), "
        "calc_rdm(Dataset(y), method='correlation'), method='spearman')"
    ),
    ("rsa_kendall", "reprsim"): "import reprsim; f = lambda x, y: reprsim.rsa(x, y, compare='kendall')",
    ("rsa_kendall", "rsatoolbox"): (
        "from rsatoolbox.data import Dataset\nfrom rsatoolbox.rdm import calc_rdm, compare\n"
        "f = lambda x, y: compare(calc_rdm(Dataset(x), method='correlation'), "
        "calc_rdm(Dataset(y), method='correlation'), method='kendall')"
    ),
    ("rank_similarity", "reprsim"): (
        "import reprsim; f = lambda x, y: reprsim.rank_similarity(x, y, k=10, neighbours='euclidean')"
    ),
    ("rank_similarity", "deep-reps"): (
        DEEP_REPS + "vars(pkg).update(vars(importlib.import_module('deep_reps.utils')))\n"
        "g = importlib.import_module('deep_reps.neighbors_measures').rank_similarity\n"
        "f = lambda x, y: g(torch.from_numpy(x), torch.from_numpy(y), 10)"
    ),
    ("cknna", "reprsim"): "import reprsim; f = lambda x, y: reprsim.cknna(x, y, k=10)",
    ("cka_rbf", "reprsim"): "import reprsim; f = lambda x, y: reprsim.cka(x, y, kernel='rbf', chunk_rows=256)",
}

RUNNER = """
import json, resource, statistics, sys, time
import numpy as np
rng = np.random.default_rng(0)
n, p, repeats = {n}, {p}, {repeats}
x = rng.normal(size=(n, p))
y = np.tanh(x @ rng.normal(size=(p, p)) / p ** 0.5) + 0.5 * rng.normal(size=(n, p))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
{code}
if repeats > 1:
    f(x, y)  # warm-up (imports, thread pools)
times = []
for _ in range(repeats):
    t = time.perf_counter(); f(x, y); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"time": statistics.median(times), "peak_mib": peak / 1024, "extra_mib": (peak - base) / 1024}}))
"""


def peers(repeats: int, only: list[str] | None = None, n: int = N) -> None:
    print(f"\n## End to end on two arrays, against the peers (n = {n:,}, p = q = {P}, float64)\n")
    print(
        "Each row runs in a fresh process; peak is that process's resident set (data: 2 × 59 MiB; importing torch "
        f"costs about 300 MiB). reprsim: median of {repeats} after a warm-up; peers: one cold run, stopped after "
        f"{PEER_LIMIT_S} s.\n"
    )
    print("| measure | library | time (s) | peak RSS (MiB) | reprsim's speed-up |")
    print("|---|---|---|---|---|")
    sample_space = {
        "mutual_knn", "jaccard_knn", "distance_correlation", "rsa_spearman", "rsa_kendall", "rank_similarity",
        "cknna", "cka_rbf",
    }  # fmt: skip
    for measure in dict.fromkeys(m for m, _ in PEER_CODE):
        if (only and measure not in only) or (not only and measure in sample_space):
            continue
        ours: float | None = None
        for (m, lib), code in PEER_CODE.items():
            if m != measure:
                continue
            # peers whose cost grows like n² or n³ get one cold run, and a time limit
            runs = repeats if lib == "reprsim" else 1
            script = RUNNER.format(n=n, p=P, repeats=runs, code=code)
            try:
                done = subprocess.run(
                    [sys.executable, "-c", script], capture_output=True, text=True, timeout=PEER_LIMIT_S
                )
            except subprocess.TimeoutExpired:
                print(f"| {measure} | {lib} | > {PEER_LIMIT_S} (stopped) | | > {PEER_LIMIT_S / (ours or 1):.0f}× |")
                continue
            if done.returncode != 0:
                err = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
                print(f"| {measure} | {lib} | {err[:80]} | | |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            if lib == "reprsim":
                ours = r["time"]
            speed = f"{r['time'] / ours:.1f}×" if ours and lib != "reprsim" else ""
            print(f"| {measure} | {lib} | {r['time']:.3f} | {r['peak_mib']:.0f} | {speed} |")


FLAT = """
import resource, time, torch
from reprsim.streaming import CrossMoments
n, p, batch = {n}, 512, 10_000
g = torch.Generator().manual_seed(0)
mix = torch.randn(p, p, generator=g) / p ** 0.5
acc = CrossMoments()
start = time.perf_counter()
for _ in range(n // batch):
    x = torch.randn(batch, p, generator=g)
    acc.update(x, torch.tanh(x @ mix) + 0.5 * torch.randn(batch, p, generator=g))
values = {{m: acc.compute(m) for m in ("procrustes", "cca", "cka")}}
print(n, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, values)
"""


def flat() -> None:
    print("\n## Memory flat in n: Procrustes + CCA + CKA streamed at once (p = q = 512, float32 batches of 10,000)\n")
    print("| samples | time (s) | peak RSS (MiB) | procrustes | cca | cka |")
    print("|---|---|---|---|---|---|")
    for n in (100_000, 1_000_000):
        done = subprocess.run([sys.executable, "-c", FLAT.format(n=n)], capture_output=True, text=True, timeout=7200)
        if done.returncode != 0:
            print(f"| {n:,} | failed: {done.stderr.strip().splitlines()[-1][:80]} | | | | |")
            continue
        n_, secs, peak, values = done.stdout.strip().split(" ", 3)
        v: dict[str, Any] = eval(values)
        print(
            f"| {int(n_):,} | {float(secs):.1f} | {float(peak):.0f} | {v['procrustes']:.4f} | {v['cca']:.4f} | "
            f"{v['cka']:.4f} |"
        )


EXACT = """
import resource, time, torch
from reprsim.streaming import CrossMoments
layers, width, n, batch = 12, 768, 2048, 128
g = torch.Generator().manual_seed(0)
start = time.perf_counter()
if "{how}" == "per pair":
    # 0.1's compare(estimator="exact"): one accumulator per layer pair, each recomputing both layers' XᵀX
    grid = [[CrossMoments() for _ in range(layers)] for _ in range(layers)]
else:
    acc = CrossMoments(groups=[(list(range(layers)), list(range(layers, 2 * layers)))])
for _ in range(n // batch):
    a = [torch.randn(batch, width, generator=g) for _ in range(layers)]
    b = [torch.randn(batch, width, generator=g) for _ in range(layers)]
    if "{how}" == "per pair":
        for i in range(layers):
            for j in range(layers):
                grid[i][j].update(a[i], b[j])
    else:
        acc.update(a + b)
if "{how}" == "per pair":
    values = [[c.compute("cka") for c in row] for row in grid]
else:
    values = acc.compute_matrix("cka")
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def exact() -> None:
    print("\n## Exact CKA of 12 × 12 layers of width 768 (2,048 samples in batches of 128, float64 state)\n")
    print("| moments kept | time (s) | peak RSS (MiB) |")
    print("|---|---|---|")
    for how in ("per pair", "per layer"):
        done = subprocess.run(
            [sys.executable, "-c", EXACT.format(how=how)], capture_output=True, text=True, timeout=3600
        )
        if done.returncode != 0:
            print(f"| {how} | failed: {done.stderr.strip().splitlines()[-1][:80]} | |")
            continue
        secs, peak = done.stdout.split()
        label = "per layer pair (0.1)" if how == "per pair" else "per layer + one cross block (0.2)"
        print(f"| {label} | {float(secs):.1f} | {float(peak):.0f} |")


def compare_section(repeats: int) -> None:
    import timm

    import reprsim
    from reprsim.streaming import LinearCKA

    def vit(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=12, num_classes=10
        ).eval()

    blocks = [f"blocks.{i}" for i in range(12)]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(128, 3, 32, 32, generator=g) for _ in range(16)]
    a, b = vit(0), vit(1)

    def bare() -> None:
        with torch.no_grad():
            for x in batches:
                a(x)
                b(x)

    def run(measures: list[str]) -> Callable[[], object]:
        return lambda: reprsim.compare(a, b, batches, layers_a=blocks, pool="mean", measures=measures, progress=False)

    def old_exact() -> None:
        """0.1's compare(estimator="exact"): one LinearCKA per layer pair, each recomputing XᵀX and YᵀY."""
        ea = reprsim.Extractor(a, blocks, pool="mean")
        eb = reprsim.Extractor(b, blocks, pool="mean")
        grid = [[LinearCKA() for _ in blocks] for _ in blocks]
        with torch.no_grad():
            for x in batches:
                fa, fb = ea(x), eb(x)
                for i, la in enumerate(blocks):
                    for j, lb in enumerate(blocks):
                        grid[i][j].update(fa[la], fb[lb])
        _ = [[acc.compute() for acc in row] for row in grid]

    fns = {
        "bare forwards": bare,
        "cka": run(["cka"]),
        "cka + procrustes + cca": run(["cka", "procrustes", "cca"]),
        "cka_minibatch": run(["cka_minibatch"]),
        "0.1 exact CKA (per-pair accumulators)": old_exact,
    }
    med = medians(fns, repeats)
    print("\n## compare: several measures in one pass (two 12-block ViTs, width 192, mean pooling, 2,048 samples)\n")
    print("| run | time (s) | to the bare forwards | to one measure |")
    print("|---|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {v / med['bare forwards']:.2f} | {v / med['cka']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["products", "peers", "flat", "exact", "compare"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measures", nargs="*", help="peers section: only these measures (e.g. procrustes)")
    parser.add_argument("--n", type=int, default=N, help="peers section: samples")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "products" in args.only:
        products(args.repeats)
    if "peers" in args.only:
        peers(args.repeats, args.measures, args.n)
    if "flat" in args.only:
        flat()
    if "exact" in args.only:
        exact()
    if "compare" in args.only:
        compare_section(args.repeats)


if __name__ == "__main__":
    main()
