"""The README's quickstart runs as written and is the same code as examples/quickstart.py."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quickstart_code() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"## Quickstart\n\n```python\n(.*?)```", readme, re.S)
    assert match is not None, "README.md lost its Quickstart python block"
    return match.group(1)


def test_readme_quickstart_runs(capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(quickstart_code(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    values = [float(v) for v in re.findall(r"CKA\s+(-?\d\.\d+)", out)]
    assert len(values) == 3
    assert all(0.0 < v < 1.0 for v in values)
    angle = float(re.search(r"Procrustes\s+(\d\.\d+) rad", out).group(1))  # type: ignore[union-attr]
    rho = float(re.search(r"mean CCA rho\s+(\d\.\d+)", out).group(1))  # type: ignore[union-attr]
    assert 0.0 < angle < 1.5708
    assert 0.0 < rho < 1.0
    assert "tensor(" in out


def test_example_file_is_the_readme_quickstart() -> None:
    example = (ROOT / "examples" / "quickstart.py").read_text()
    assert quickstart_code() in example
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
