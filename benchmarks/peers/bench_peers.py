"""reprsim against the CKA libraries users would otherwise pick, on the same inputs, in one run.

Peers (PyPI): pytorch-cka (import ``cka``), ckatorch, torch-cka. Run through ``bash benchmarks/peers/run.sh``,
which installs them into a separate virtual environment (they are not reprsim dependencies). For every workload
and library: median time over alternating repeats after a warm-up, ratio to the fastest peer and to the floor
(the bare matrix products, or the bare forward passes), absolute difference from an independent float64
reference (tests/reference.py), any error the peer raised, and peak memory measured in a fresh process.
Writes a Markdown table and a bar chart.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests import reference as ref  # noqa: E402  (the test suite's independent float64 reference)

import reprsim  # noqa: E402

LIBS = ["reprsim", "pytorch-cka", "ckatorch", "torch-cka"]
DEVICE = "cpu"  # set by --device


def sync() -> None:
    """Wait for queued GPU work, so that a timer stopped after it measures the work."""
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


# -- inputs ----------------------------------------------------------------------------------------------


def pair(n: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n + p)
    x = torch.randn(n, p, generator=g)
    y = torch.tanh(x @ torch.randn(p, p, generator=g) / p**0.5) + 0.5 * torch.randn(n, p, generator=g)
    return x.to(DEVICE), y.to(DEVICE)


def vit(seed: int, depth: int) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return (
        timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=depth, num_classes=10
        )
        .eval()
        .to(DEVICE)
    )


def loader(samples: int, batch: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(samples)
    x = torch.randn(samples, 3, 32, 32, generator=g)
    ds = torch.utils.data.TensorDataset(x, torch.zeros(samples, dtype=torch.long))
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False)


# -- what each library is asked to do ----------------------------------------------------------------------


def single_cka(lib: str, x: torch.Tensor, y: torch.Tensor, kind: str) -> float:
    """kind: linear (biased), unbiased (linear), rbf (biased, median bandwidth)."""
    if lib == "reprsim":
        kernel = "rbf" if kind == "rbf" else "linear"
        return float(reprsim.cka(x, y, kernel=kernel, unbiased=kind == "unbiased"))
    if lib == "ckatorch":
        import ckatorch

        kernel = "rbf" if kind == "rbf" else "linear"
        return float(ckatorch.cka_base(x, y, kernel=kernel, unbiased=kind == "unbiased"))
    if lib == "pytorch-cka":
        import cka

        if kind == "rbf":
            raise NotImplementedError("no RBF kernel")
        return float(cka.cka_from_features(x, y))  # always the unbiased estimator (clamped to [0, 1])
    raise NotImplementedError("no function for two activation matrices (model comparison only)")


def compare_models(
    lib: str, models: list[torch.nn.Module], data: torch.utils.data.DataLoader, layers: list[str]
) -> list[np.ndarray]:
    """One matrix per pair of models (every pair once), through each library's model-comparison API."""
    pairs = [(i, j) for i in range(len(models)) for j in range(i + 1, len(models))]
    if lib == "reprsim":
        if len(models) == 2:
            r = reprsim.compare(models[0], models[1], data, layers_a=layers, progress=False)
            return [r.to_numpy()]
        named = {f"m{i}": m for i, m in enumerate(models)}
        res = reprsim.compare(named, data, layers=layers, progress=False)
        return [res[(f"m{i}", f"m{j}")].to_numpy() for i, j in pairs]
    out = []
    for i, j in pairs:  # every peer needs one call per pair
        if lib == "ckatorch":
            import ckatorch

            runner = ckatorch.CKA(models[i], models[j], layers=layers, device=DEVICE)
            # epochs=1: its default of 10 runs the data ten times. f_extract: without it, the elements of a
            # (images, labels) batch are passed as the forward's first arguments (labels as timm's attn_mask).
            out.append(runner(data, epochs=1, f_extract=lambda b: {"x": b[0]}, f_args={}).cpu().numpy())
        elif lib == "pytorch-cka":
            import cka

            out.append(
                cka.compute_cka(models[i], models[j], data, layers=layers, device=DEVICE, progress=False)[0]
                .cpu()
                .numpy()
            )
        elif lib == "torch-cka":
            import torch_cka

            runner = torch_cka.CKA(models[i], models[j], model1_layers=layers, model2_layers=layers, device=DEVICE)
            runner.compare(data)
            out.append(runner.export()["CKA"].cpu().numpy())
        else:
            raise ValueError(lib)
    return out


# -- floors and references -------------------------------------------------------------------------------


def bare_products(x: torch.Tensor, y: torch.Tensor) -> None:
    n, p = x.shape
    q = y.shape[1]
    if p * p + q * q + p * q <= n * (p + q):
        x.T @ x, y.T @ y, x.T @ y
    else:
        x @ x.T, y @ y.T


def bare_forwards(models: list[torch.nn.Module], data: torch.utils.data.DataLoader) -> None:
    with torch.no_grad():
        for xb, _ in data:
            xb = xb.to(DEVICE)
            for m in models:
                m(xb)


def reference_single(x: torch.Tensor, y: torch.Tensor, kind: str) -> float:
    xd, yd = x.double().cpu().numpy(), y.double().cpu().numpy()
    if kind == "rbf":
        return ref.cka(xd, yd, kernel="rbf")
    if x.shape[0] > 4000:  # explicit H is n³; the feature-space form of the biased estimator is exact too
        xc, yc = xd - xd.mean(0), yd - yd.mean(0)
        if kind == "linear":
            return float(np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))
    return ref.cka(xd, yd, unbiased=kind == "unbiased")


def reference_models(
    models: list[torch.nn.Module], data: torch.utils.data.DataLoader, layers: list[str]
) -> list[np.ndarray]:
    """Minibatch CKA (unbiased HSIC summed over batches) from float64 activations, with the reference's
    explicit unbiased-HSIC formula."""
    grams: list[list[list[np.ndarray]]] = [[] for _ in models]
    for k, m in enumerate(models):
        got: dict[str, torch.Tensor] = {}
        mods = dict(m.named_modules())
        hooks = [mods[l].register_forward_hook(lambda mod, i, o, l=l, got=got: got.__setitem__(l, o)) for l in layers]
        with torch.no_grad():
            for xb, _ in data:
                m(xb.to(DEVICE))  # the activations each library sees, then float64 arithmetic on the CPU
                per = []
                for l in layers:
                    a = got[l].double().reshape(xb.shape[0], -1).cpu().numpy()
                    per.append(ref.linear_kernel(a))
                grams[k].append(per)
        for h in hooks:
            h.remove()
    out = []
    for i in range(len(models)):
        for j in range(i + 1, len(models)):
            mat = np.zeros((len(layers), len(layers)))
            for a in range(len(layers)):
                for b in range(len(layers)):
                    kl = sum(ref.hsic_unbiased(gi[a], gj[b]) for gi, gj in zip(grams[i], grams[j]))
                    kk = sum(ref.hsic_unbiased(gi[a], gi[a]) for gi in grams[i])
                    ll = sum(ref.hsic_unbiased(gj[b], gj[b]) for gj in grams[j])
                    mat[a, b] = kl / np.sqrt(kk * ll)
            out.append(mat)
    return out


# -- workloads -------------------------------------------------------------------------------------------


def workloads(quick: bool) -> dict[str, dict[str, Any]]:
    scale = 4 if quick else 1
    return {
        "linear CKA, n=10000, p=q=768": {"kind": "single", "n": 10000 // scale, "p": 768, "est": "linear"},
        "linear CKA, n=2000, p=q=2048": {"kind": "single", "n": 2000, "p": 2048 // scale, "est": "linear"},
        "unbiased linear CKA, n=2000, p=768": {"kind": "single", "n": 2000, "p": 768, "est": "unbiased"},
        "RBF CKA, n=2000, p=768": {"kind": "single", "n": 2000 // scale, "p": 768, "est": "rbf"},
        "6-block ViTs, 6x6, 4096 samples": {"kind": "models", "depth": 6, "models": 2, "samples": 4096 // scale},
        "12-block ViTs, 12x12, 8192 samples": {"kind": "models", "depth": 12, "models": 2, "samples": 8192 // scale},
        "three 6-block ViTs, all pairs, 4096 samples": {
            "kind": "models",
            "depth": 6,
            "models": 3,
            "samples": 4096 // scale,
        },
    }


def prepare(w: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], None], Callable[[], Any]]:
    """(run a library, run the floor, compute the reference) for one workload."""
    if w["kind"] == "single":
        x, y = pair(w["n"], w["p"])
        return (
            lambda lib: single_cka(lib, x, y, w["est"]),
            lambda: bare_products(x, y),
            lambda: reference_single(x, y, w["est"]),
        )
    models = [vit(s, w["depth"]) for s in range(w["models"])]
    data = loader(w["samples"], 128)
    layers = [f"blocks.{i}" for i in range(w["depth"])]
    return (
        lambda lib: compare_models(lib, models, data, layers),
        lambda: bare_forwards(models, data),
        lambda: reference_models(models, data, layers),
    )


def difference(value: Any, reference: Any) -> float:
    if isinstance(reference, float):
        return abs(float(value) - reference)
    return max(float(np.nanmax(np.abs(np.asarray(v) - r))) for v, r in zip(value, reference))


def proc_status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_memory(lib: str, workload: str, quick: bool) -> float:
    args = [sys.executable, __file__, "--memory", lib, workload, "--device", DEVICE] + (["--quick"] if quick else [])
    done = subprocess.run(args, capture_output=True, text=True)
    try:
        return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"])
    except (ValueError, IndexError, KeyError):
        return float("nan")


@contextmanager
def gpu_memory(peaks: dict[str, float], lib: str) -> Iterator[None]:
    """On a GPU, record how far PyTorch's allocated memory rises above what is held on entry (the caching
    allocator's own statistics, so no fresh process is needed)."""
    if not DEVICE.startswith("cuda"):
        yield
        return
    sync()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    yield
    sync()
    peaks[lib] = (torch.cuda.max_memory_allocated() - before) / 2**20


def measured_memory(gpu_peak: dict[str, float], lib: str, workload: str, args: argparse.Namespace) -> float:
    if args.no_memory:
        return float("nan")
    if DEVICE.startswith("cuda"):
        return gpu_peak.get(lib, float("nan"))
    return peak_memory(lib, workload, args.quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-repeats", type=int, help="repeats for the model comparisons (default: --repeats)")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, to check the harness")
    parser.add_argument("--only", action="append", help="run only workloads whose name contains this (repeatable)")
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory processes (they rerun everything)"
    )
    parser.add_argument("--libs", nargs="+", choices=LIBS, help="run only these libraries (default: all)")
    parser.add_argument("--jsonl", type=Path, help="also append every row to this JSON-lines file")
    parser.add_argument("--render", type=Path, nargs="+", help="write the table and chart from saved JSON-lines rows")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.md")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "assets" / "benchmarks.png")
    parser.add_argument("--device", default="cpu", help="where inputs and models live, e.g. cuda (default: cpu)")
    parser.add_argument("--memory", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    all_work = workloads(args.quick)
    libs = args.libs or LIBS
    if args.render:
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for f in args.render:  # a later file's row replaces an earlier one for the same workload and library
            for line in f.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    merged[(r["workload"], r["library"])] = r
        rows = list(merged.values())  # every ratio stays the one measured within the row's own run
        order = list(all_work)
        rows.sort(
            key=lambda r: (
                order.index(r["workload"]) if r["workload"] in order else len(order),
                [*LIBS, "floor"].index(r["library"]),
            )
        )
        write_results(rows, args)
        return
    if args.memory:
        lib, name = args.memory
        run, floor, _ = prepare(all_work[name])
        # Importing torch alone sets a high-water mark above most workloads; reset it (Linux) once inputs and
        # models exist, so the peak measures what the library itself needs on top of them.
        if DEVICE.startswith("cuda"):  # GPU memory: the allocator's high-water mark above what inputs hold
            sync()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() / 2**20
            (floor if lib == "floor" else lambda: run(lib))()
            sync()
            print(json.dumps({"peak_mib": torch.cuda.max_memory_allocated() / 2**20 - before}))
            return
        Path("/proc/self/clear_refs").write_text("5")
        before = proc_status_mib("VmRSS")
        (floor if lib == "floor" else lambda: run(lib))()
        print(json.dumps({"peak_mib": proc_status_mib("VmHWM") - before}))
        return
    rows = []
    for name, w in all_work.items():
        if args.only and not any(o in name for o in args.only):
            continue
        print(f"== {name}", flush=True)
        run, floor, reference = prepare(w)
        expected = reference()
        times: dict[str, list[float]] = {lib: [] for lib in [*LIBS, "floor"]}
        errors: dict[str, str] = {}
        results: dict[str, Any] = {}
        gpu_peak: dict[str, float] = {}
        for lib in libs:  # warm-up, result and errors
            if args.model_repeats == 0 and w["kind"] == "models":
                continue  # timed below, once
            try:
                with gpu_memory(gpu_peak, lib):
                    results[lib] = run(lib)
            except Exception as exc:  # a peer's failure is a result to report, not a crash
                errors[lib] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                traceback.print_exc(limit=1)
        if DEVICE.startswith("cuda"):
            with gpu_memory(gpu_peak, "floor"):
                floor()
        repeats = args.repeats if w["kind"] == "single" or args.model_repeats is None else args.model_repeats
        if repeats == 0:  # long workloads: the (first, cold) result run is the timing
            for lib in libs:
                sync()
                start = time.perf_counter()
                try:
                    results[lib] = run(lib)
                except Exception as exc:  # a peer's failure is a result to report, not a crash
                    errors[lib] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                    continue
                sync()
                times[lib].append(time.perf_counter() - start)
            sync()
            start = time.perf_counter()
            floor()
            sync()
            times["floor"].append(time.perf_counter() - start)
        else:
            floor()
        for _ in range(repeats):
            for lib in [*[l for l in libs if l not in errors], "floor"]:
                sync()
                start = time.perf_counter()
                floor() if lib == "floor" else run(lib)
                sync()
                times[lib].append(time.perf_counter() - start)
        med = {lib: statistics.median(t) for lib, t in times.items() if t}
        peers = [med[l] for l in libs if l != "reprsim" and l in med]
        fastest_peer = min(peers) if peers else float("nan")
        for lib in libs:
            row = {"workload": name, "library": lib, "error": errors.get(lib, "")}
            if lib in med:
                row.update(
                    time_s=med[lib],
                    vs_fastest_peer=med[lib] / fastest_peer,
                    vs_floor=med[lib] / med["floor"],
                    abs_diff=difference(results[lib], expected),
                )
            row["peak_mib"] = measured_memory(gpu_peak, lib, name, args)
            row["repeats"] = repeats
            rows.append(row)
        floor_mem = measured_memory(gpu_peak, "floor", name, args)
        rows.append(
            {"workload": name, "library": "floor", "time_s": med["floor"], "peak_mib": floor_mem, "repeats": repeats}
        )
        for row in rows[-len(libs) - 1 :]:
            print(json.dumps(row), flush=True)
            if args.jsonl:
                with args.jsonl.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    write_results(rows, args)


def write_results(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    versions = {}
    for dist in ("reprsim", "pytorch-cka", "ckatorch", "torch-cka", "torch", "timm"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    gpu = DEVICE.startswith("cuda")
    where = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})" if gpu else "no GPU"
    memory = (
        "Peak MiB: how far GPU memory allocated by PyTorch rises during that library's first (warm-up) run "
        "above what its inputs and models already hold."
        if gpu
        else "Peak MiB: how far the resident set of a fresh process running only that library on that workload "
        "rises above what its inputs and models already hold."
    )
    lines = [
        "# reprsim against other CKA libraries" + (" on a GPU" if gpu else ""),
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, {torch.get_num_threads()} threads, "
        f"{where}, device {DEVICE}, Python {platform.python_version()}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ".",
        "Times are medians of alternating repeats after a warm-up ('runs timed'; '1 (cold)': a single timed run "
        f"without warm-up, for the longest workloads){' (quick inputs)' if args.quick else ''}. "
        "`floor`: the bare matrix products (single CKA) or the bare forward passes (model comparisons). "
        "`|diff|`: largest absolute difference from the float64 reference of the estimator asked for "
        "(biased linear, unbiased linear, biased RBF with the median bandwidth; minibatch CKA with unbiased "
        "HSIC for model comparisons). "
        + memory
        + (
            f" Rows merged from {len(args.render)} runs: both ratios are those measured within each row's own "
            "run, since absolute times drift between runs on a shared machine."
            if args.render
            else ""
        ),
        "",
        "| workload | library | time (s) | runs timed | vs fastest peer | vs floor | \\|diff\\| from reference "
        "| peak MiB | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = f"{r['time_s']:.3f}" if "time_s" in r else ""
        vp = f"{r['vs_fastest_peer']:.2f}" if "vs_fastest_peer" in r else ""
        vf = f"{r['vs_floor']:.2f}" if "vs_floor" in r else ""
        d = f"{r['abs_diff']:.1e}" if "abs_diff" in r else ""
        peak = r.get("peak_mib", float("nan"))
        peak_text = "" if peak != peak else f"{peak:.0f}"  # NaN: not measured
        runs = str(r.get("repeats", "")) if "time_s" in r else ""
        runs = "1 (cold)" if runs == "0" else runs
        lines.append(
            f"| {r['workload']} | {r['library']} | {t} | {runs} | {vp} | {vf} | {d} | {peak_text} "
            f"| {r.get('error', '')} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(dict.fromkeys(r["workload"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 4.5), layout="constrained")
    width = 0.2
    for k, lib in enumerate(LIBS):
        vals = []
        for n in names:
            match = [r for r in rows if r["workload"] == n and r["library"] == lib and "time_s" in r]
            vals.append(match[0]["vs_floor"] if match else np.nan)
        ax.bar(np.arange(len(names)) + (k - 1.5) * width, vals, width, label=lib)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), [n.replace(", ", "\n", 1) for n in names], fontsize=7)
    ax.set_ylabel("time / floor (log scale; lower is better)")
    ax.legend()
    args.chart.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.chart, dpi=130)
    print(f"wrote {args.chart}")


if __name__ == "__main__":
    main()
