"""`reprsim compare` and `reprsim info` end to end, in subprocesses: tables, files, exit codes, messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import reprsim
from reprsim import StoreWriter
from reprsim.cli import main
from tests import reference as ref

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"import sys\n{prelude}\nfrom reprsim.cli import main\nsys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16))
    y = np.tanh(x @ rng.normal(size=(16, 8))) + 0.2 * rng.normal(size=(400, 8))
    ids = np.arange(400)
    with StoreWriter(base / "a.store", model="vit-a") as w:
        w.write({"blocks.0": x, "blocks.1": np.tanh(x)}, ids=ids)
    with StoreWriter(base / "b.store", model="vit-b") as w:
        w.write({"blocks.0": y}, ids=ids)
    perm = rng.permutation(400)
    with StoreWriter(base / "shuffled.store") as w:
        w.write({"blocks.0": y[perm]}, ids=ids[perm])
    np.save(base / "x.npy", x)
    np.save(base / "y.npy", y)
    return base


def test_compare_prints_tables_and_writes_results_and_heatmaps(folder: Path, tmp_path: Path) -> None:
    done = cli("compare", str(folder / "a.store"), str(folder / "b.store"), "--measure", "cka", "--measure",
               "procrustes", "--out", str(tmp_path / "result.npz"), cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "cka:" in done.stdout
    assert "procrustes:" in done.stdout
    assert "blocks.1" in done.stdout
    rx = np.load(folder / "x.npy")
    ry = np.load(folder / "y.npy")
    saved = reprsim.SimilarityResult.load(tmp_path / "result-cka.npz")
    assert saved.names_a == ["blocks.0", "blocks.1"]
    assert saved.model_a == "vit-a"
    assert saved["blocks.0", "blocks.0"] == pytest.approx(ref.cka(rx, ry, "linear"), abs=1e-10)
    assert f"{saved['blocks.0', 'blocks.0']:.3f}" in done.stdout
    assert (tmp_path / "result-procrustes.npz").exists()
    assert (tmp_path / "result-cka.png").stat().st_size > 1000
    assert (tmp_path / "result-procrustes.png").exists()


def test_compare_files_one_side_with_intervals_and_a_chosen_plot(folder: Path, tmp_path: Path) -> None:
    done = cli("compare", "x.npy", "y.npy", "--ci", "0.9", "--plot", str(tmp_path / "h.png"), "--quiet",
               cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "SimilarityResult(x [1 layers] x y [1 layers]" in done.stdout
    assert "90% jackknife interval" in done.stdout  # the table shows each cell's interval
    assert done.stdout.count("[") >= 1
    assert (tmp_path / "h.png").exists()
    assert done.stderr.count("compare:") == 0
    within = cli("compare", "a.store", "--measure", "cka_unbiased", "--quiet", cwd=folder)
    assert within.returncode == 0
    assert within.stdout.count("blocks.") >= 4


def test_without_a_measure_the_default_rule_picks_it_and_says_so(folder: Path) -> None:
    # as compare() and compare_stores(): exact CKA here (16 and 8 features), named on stderr
    done = cli("compare", "x.npy", "y.npy", "--quiet", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert "measure: cka (every pooled width is at most 8,192); --measure names another" in done.stderr
    cka = ref.cka(np.load(folder / "x.npy"), np.load(folder / "y.npy"), "linear")
    assert f"{cka:.3f}" in done.stdout


def test_info_lists_layers_and_refuses_broken_stores(folder: Path, tmp_path: Path) -> None:
    done = cli("info", "a.store", "x.npy", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert "400 samples" in done.stdout
    assert "vit-a" in done.stdout
    assert "blocks.1" in done.stdout
    assert "npy" in done.stdout
    assert "none (rows are matched by position)" in done.stdout
    with StoreWriter(tmp_path / "t.store") as w:
        w.write({"h": np.ones((50, 4))})
    os.truncate(tmp_path / "t.store" / "layers" / "0000.npy", 300)
    bad = cli("info", str(tmp_path / "t.store"), cwd=folder)
    assert bad.returncode == 4
    assert "0000.npy" in bad.stderr
    assert "truncated" in bad.stderr
    assert "write it again" in bad.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["compare", "a.store", "missing.store"], 4, "missing.store"),
        (["compare", "a.store", "b.store", "--measure", "ckaa"], 2, "unknown measure 'ckaa'"),
        (["compare", "a.store", "shuffled.store", "--quiet"], 4, "--align"),
        (["compare", "a.store", "b.store", "--layers-a", "blocks.9", "--quiet"], 4, "blocks.9"),
        (["compare", "a.store", "b.store", "--ci", "2", "--quiet"], 2, "ci must"),
        (["compare", "a.store"], None, None),
        (["compare", "a.store", "--bogus"], 2, "unrecognized arguments"),
        (["info", "nowhere"], 4, "nowhere"),
    ],
)
def test_exit_codes_and_messages(folder: Path, args: list[str], code: int | None, message: str | None) -> None:
    done = cli(*args, cwd=folder)
    if code is None:
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == code, (done.stdout, done.stderr)
    assert message is not None
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_align_reorders_by_sample_id(folder: Path) -> None:
    plain = cli("compare", "a.store", "b.store", "--quiet", cwd=folder)
    aligned = cli("compare", "a.store", "shuffled.store", "--align", "--quiet", cwd=folder)
    assert aligned.returncode == 0, aligned.stderr
    table = lambda out: out.split(")", 1)[1]  # noqa: E731 - the numbers, after the header naming the models
    assert table(aligned.stdout) == table(plain.stdout)


def test_missing_matplotlib_is_a_clear_exit_code(folder: Path, tmp_path: Path) -> None:
    prelude = "sys.modules['matplotlib'] = None"
    asked = cli("compare", "x.npy", "y.npy", "--plot", str(tmp_path / "h.png"), "--quiet", cwd=folder, prelude=prelude)
    assert asked.returncode == 3
    assert 'pip install "reprsim[plot]"' in asked.stderr
    implied = cli("compare", "x.npy", "y.npy", "--out", str(tmp_path / "r"), "--quiet", cwd=folder, prelude=prelude)
    assert implied.returncode == 0
    assert "no heatmap written" in implied.stderr
    assert (tmp_path / "r.npz").exists()


def test_help_shows_examples_and_version() -> None:
    top = subprocess.run([sys.executable, "-m", "reprsim", "--help"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert "reprsim compare a.store b.store" in top.stdout
    assert "exit codes" in top.stdout
    sub = subprocess.run([sys.executable, "-m", "reprsim", "compare", "--help"], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert "--measure cka --measure procrustes" in sub.stdout
    assert "--align" in sub.stdout


def _broken(kind: str, base: Path) -> Path:
    """A store or file damaged in one way that once ended in a traceback (exit 1) or printed what it should not."""
    import json
    import struct

    if kind in ("passwd", "non-utf8", "layers"):
        with StoreWriter(base / kind, model="m") as w:
            w.write({"h": np.ones((3, 2))}, ids=["a", "b", "c"])
        manifest = json.loads((base / kind / "reprsim-store.json").read_text())
        if kind == "passwd":
            manifest["ids"]["file"] = "/etc/passwd"
        elif kind == "layers":
            manifest["layers"] = {"h": 1}
        else:
            (base / kind / "ids.txt").write_bytes(b"a\n\xff\xfe\nc\n")
        (base / kind / "reprsim-store.json").write_text(json.dumps(manifest))
        return base / kind
    if kind == "safetensors":
        text = b'{"h": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 1000000]}}'
        (base / "m.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 16)
        return base / "m.safetensors"
    np.save(base / "w0.npy", np.ones((5, 0)))
    return base / "w0.npy"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("passwd", "not inside the store"),
        ("non-utf8", "not UTF-8 text"),
        ("layers", "damaged"),
        ("safetensors", "outside the file"),
        ("width0", "no features"),
    ],
)
def test_damaged_inputs_exit_4_without_a_traceback(tmp_path: Path, kind: str, message: str) -> None:
    path = _broken(kind, tmp_path)
    for args in (["info", str(path)], ["compare", str(path), "--quiet"]):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 4, (done.stdout, done.stderr)
        assert message in done.stderr
        assert "Traceback" not in done.stderr
        assert "root:" not in done.stdout + done.stderr  # /etc/passwd's first line, never printed


def test_info_escapes_control_characters(tmp_path: Path) -> None:
    with StoreWriter(tmp_path / "s", model="net\x1b[31mred") as w:
        w.write({"h": np.ones((3, 2))}, ids=["a\tb", "c", "d"])
    done = cli("info", str(tmp_path / "s"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert "\\x1b" in done.stdout
    assert "a\\tb" in done.stdout


def test_cli_version_and_help_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"reprsim {reprsim.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "reprsim demo --quick --out demo-out" in capsys.readouterr().out


def test_demo_without_its_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 3
    assert "the demo needs matplotlib: pip install 'reprsim[demo]'" in capsys.readouterr().err
