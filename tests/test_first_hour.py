"""What a newcomer runs into in the first hour: clear errors with the fix for the common mistakes, progress
without optional packages, a CLI that says its version, heatmaps scaled to the data."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

import reprsim
from reprsim import compare
from reprsim.cli import main
from reprsim.errors import InvalidParameterError, ShapeMismatchError
from reprsim.streaming import MinibatchCKAMatrix


class Tokens(nn.Module):
    """(b, T, 4) with T from the input's width: a transformer whose batches are padded to different lengths."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, None].expand(-1, -1, 4).contiguous()


@pytest.mark.parametrize("measure", ["cka_minibatch", "cka", "mutual_knn"])
def test_per_batch_padding_with_flatten_names_the_layer_and_the_fix(measure: str) -> None:
    model = nn.Sequential(Tokens(), nn.Identity())
    data = [torch.randn(16, 12), torch.randn(16, 15)]  # 12 tokens, then 15
    with pytest.raises(ShapeMismatchError, match=r"layer '1' has 60 features after pooling in this batch but 48") as e:
        compare(model, None, data, layers_a=["1"], measure=measure, progress=False)
    assert "pool='masked_mean'" in str(e.value)
    assert "pad every batch to one length" in str(e.value)


def test_a_bare_tensor_as_data_is_refused_with_the_fix() -> None:
    net = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(InvalidParameterError, match=r"data is one array of shape \(64, 8\).*torch.split\(x, 128\)"):
        compare(net, None, torch.randn(64, 8), layers_a=["0"], progress=False)


def test_minibatch_matrix_refuses_arrays_where_lists_of_layers_belong() -> None:
    x = torch.randn(32, 6)
    with pytest.raises(InvalidParameterError, match=r"xs is one array of shape \(32, 6\).*update\(\[x\], \[y\]\)"):
        MinibatchCKAMatrix().update(x, x)  # type: ignore[arg-type]


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


def test_progress_without_tqdm_prints_a_plain_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from reprsim.models import _compare

    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    bar = _compare._progress([1, 2, 3], True, "compare")
    assert isinstance(bar, _compare._PlainProgress)
    bar.set_postfix_str("1,000 samples/s")
    bar.last -= 11.0  # ten seconds have passed
    bar.update(2)
    assert "compare: 2/3 batches 1,000 samples/s" in capsys.readouterr().err


def test_the_work_after_the_pass_shows_progress_too(capsys: pytest.CaptureFixture[str]) -> None:
    """Intervals, permutation tests and sample-space measures run after the pass's bar reached 100%: a second
    bar counts the results."""
    pytest.importorskip("tqdm")
    from reprsim import compare

    from .test_compare import batches, mlp

    compare(mlp(0), mlp(1), batches(n=64), layers_a=["1", "3"], measures=["cka", "mutual_knn"], ci=0.9,
            progress=True)  # fmt: skip
    err = capsys.readouterr().err
    assert "compare" in err
    assert "results" in err
    assert "2/2" in err  # one pair, two measures
    compare(mlp(0), mlp(1), batches(n=64), layers_a=["1"], measure="cka", progress=True)
    assert "results" not in capsys.readouterr().err  # nothing slow after the pass: no second bar


def test_heatmap_colours_span_the_data_and_names_print_whole() -> None:
    r = reprsim.SimilarityResult(
        torch.tensor([[0.12, 0.21], [0.15, 0.18]], dtype=torch.float64),
        ["blocks.0", "blocks.11.attn.qkv"],
        ["blocks.0", "blocks.11.mlp.fc1"],
        {"model_a": "A", "model_b": "B"},
    )
    assert r.color_range() == pytest.approx((0.12, 0.21))
    text = repr(r)
    for name in ("blocks.11.attn.qkv", "blocks.11.mlp.fc1"):
        assert name in text
    assert np.isclose(float(r["blocks.11.attn.qkv", "blocks.11.mlp.fc1"]), 0.18)


class DLPackOnly:
    """What JAX, CuPy or TensorFlow arrays offer: the DLPack protocol, and no NumPy or torch type."""

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __dlpack__(self, **kwargs: object) -> object:
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._a.__dlpack_device__()  # type: ignore[no-any-return]


class ArrayOnly:
    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self._a


def test_arrays_from_other_frameworks_are_read_without_a_copy() -> None:
    from reprsim._validation import as_matrix

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 6)), rng.normal(size=(50, 4))
    t = as_matrix(DLPackOnly(x), "x")
    assert t.data_ptr() == x.__array_interface__["data"][0]  # shared memory
    for fn in (reprsim.cka, reprsim.procrustes, reprsim.mutual_knn):
        assert fn(DLPackOnly(x), ArrayOnly(y)) == pytest.approx(fn(x, y), abs=1e-12)
