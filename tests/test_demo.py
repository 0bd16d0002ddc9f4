"""`reprsim demo --quick`: the miniature seed study runs end to end and writes a sane report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from reprsim.cli import main
from reprsim.demo import MAEObjective, SimCLRObjective, TinyViT

PNG = b"\x89PNG\r\n\x1a\n"


def numbers(obj: Any) -> list[float]:
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in numbers(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in numbers(x)]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [float(obj)]
    return []


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick demo's output folder, with ``clipped.json``: for each figure it saved, what it drew outside its
    canvas (checked just before saving)."""
    from matplotlib.figure import Figure

    from .figures import overflow

    out = tmp_path_factory.mktemp("demo")
    clipped: dict[str, list[str]] = {}
    save = Figure.savefig

    def checked(fig: Figure, fname: Any, *args: Any, **kwargs: Any) -> None:
        clipped[Path(str(fname)).name] = overflow(fig)
        save(fig, fname, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", checked)
        assert main(["demo", "--quick", "--out", str(out)]) == 0
    (out / "clipped.json").write_text(json.dumps(clipped))
    return out


def test_demo_figures_keep_every_label_on_the_canvas(quick_run: Path) -> None:
    clipped = json.loads((quick_run / "clipped.json").read_text())
    assert sorted(clipped) == ["a1_blocks.png", "a2_sublayers.png", "a3_separability.png", "a5_finetuning.png"]
    assert clipped == {name: [] for name in clipped}


def test_quick_demo_writes_report_figures_and_sane_numbers(quick_run: Path) -> None:
    report = (quick_run / "report.md").read_text()
    for section in ("## Findings", "## A1", "## A2", "## A3", "## A4", "## A5"):
        assert section in report
    for fig in ("a1_blocks.png", "a2_sublayers.png", "a3_separability.png", "a5_finetuning.png"):
        assert (quick_run / fig).read_bytes()[:8] == PNG
        assert f"({fig})" in report
    results = json.loads((quick_run / "results.json").read_text())
    # CKA values: finite and within [-0.1, 1] (unbiased estimates may dip slightly below 0)
    for v in numbers(results["A1"]) + numbers(results["A2"]) + numbers(results["A5"]):
        assert math.isfinite(v)
        assert -0.1 <= v <= 1.0 + 1e-6
    for v in numbers(results["A3"]):
        assert 0.0 <= v <= 1.0
    agreement = results["A4"]["pretrained (linear probes)"]["all"]
    assert 0.0 <= agreement["top1_agreement"] <= 1.0
    assert -1.0 <= agreement["kendall_tau_top5"] <= 1.0
    assert len(results["findings"]) == 5
    assert all(isinstance(f["reproduced"], bool) for f in results["findings"])
    # every finding carries its verdict and the original criterion with its result, and the report shows both
    for f in results["findings"]:
        assert f["verdict"] in ("yes", "no", "inconclusive")
        assert f["reproduced"] == (f["verdict"] == "yes")
        assert isinstance(f["original_result"], bool)
        assert f["original"] in report
    assert "### How the criteria came to be" in report
    # the report records how long each part took; how long is the host's business, never a test's
    timings = results["timings_s"]
    assert "total" in timings
    assert all(math.isfinite(v) and v >= 0 for v in numbers(timings))


def test_demo_is_deterministic(quick_run: Path, tmp_path: Path) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    first = json.loads((quick_run / "results.json").read_text())
    second = json.loads((tmp_path / "results.json").read_text())
    assert first["A1"] == second["A1"]
    assert first["A3"] == second["A3"]


def test_demo_with_timm_models(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    code = main(
        [
            "demo",
            "--quick",
            "--out",
            str(tmp_path),
            "--models",
            "vit_tiny_patch16_224",
            "vit_small_patch16_224",
            "--img-size",
            "32",
        ]
    )
    assert code == 0
    report = (tmp_path / "report.md").read_text()
    assert "vit_tiny_patch16_224" in report
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["A1"]["diagonal"]) == 12
    assert results["A5"] == {}  # no fine-tuned pair given: A5 is skipped, not faked


def test_python_dash_m_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "reprsim", "demo", "--help"], capture_output=True, text=True, check=True
    )
    assert "--quick" in out.stdout


def test_tiny_vit_names_match_timm_and_objectives_train() -> None:
    model = TinyViT(depth=2, dim=32)
    names = {n for n, _ in model.named_modules()}
    assert {"blocks.1.attn.qkv", "blocks.1.norm1", "blocks.1.mlp.fc1", "norm", "head"} <= names
    x = torch.randn(16, 1, 8, 8)
    assert model(x).shape == (16, 10)
    g = torch.Generator().manual_seed(0)
    for objective in (SimCLRObjective(model), MAEObjective(model)):
        loss = objective(x, g)
        loss.backward()
        assert math.isfinite(float(loss.detach()))
        assert model.blocks[0].attn.qkv.weight.grad is not None


def test_the_demos_batch_interval_is_the_jackknife_of_a_mean() -> None:
    """For the mean of per-batch numbers the delete-one-batch jackknife is the t interval: mean ± t·s/√k."""
    from reprsim.demo._run import LEVEL, batch_interval

    per_batch = torch.tensor([0.31, 0.27, 0.35, 0.30, 0.24, 0.33], dtype=torch.float64)
    k = per_batch.numel()

    def weighted_mean(w: torch.Tensor) -> torch.Tensor:
        return (w * per_batch).sum(dim=1) / w.sum(dim=1)

    estimate, low, high = batch_interval(weighted_mean, k)
    mean, s = per_batch.mean().item(), per_batch.std().item()  # s with k − 1
    t = {0.95: 2.570581835636314}[LEVEL]  # Student t, 5 degrees of freedom, 97.5% (tables)
    assert estimate == pytest.approx(mean, abs=1e-14)
    assert low == pytest.approx(mean - t * s / math.sqrt(k), abs=1e-12)
    assert high == pytest.approx(mean + t * s / math.sqrt(k), abs=1e-12)


def test_verdicts_read_the_whole_interval_against_the_threshold() -> None:
    from reprsim.demo._run import _above, _below, _both

    assert _above((0.11, 0.101, 0.12), 0.1) == "yes"
    assert _above((0.110, 0.092, 0.128), 0.1) == "inconclusive"  # the point passes, the interval straddles
    assert _above((0.03, 0.027, 0.035), 0.05) == "no"
    assert _below((0.84, 0.81, 0.87), 0.95) == "yes"
    assert _below((0.96, 0.951, 0.97), 0.95) == "no"
    assert _both("yes", "yes") == "yes"
    assert _both("yes", "inconclusive") == "inconclusive"
    assert _both("inconclusive", "no") == "no"
