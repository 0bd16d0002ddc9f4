"""reprsim's products run in IEEE float32 whatever the caller's TF32 setting, and leave that setting as found."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import reprsim
from reprsim._precision import full_precision

from . import reference as ref

NEW_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")

# Run in a fresh interpreter per setting: PyTorch remembers process-wide which API wrote the flags.
PROBE = textwrap.dedent(
    """
    import json, sys, torch, reprsim
    m = torch.backends.cuda.matmul
    how = sys.argv[1]
    if how == "legacy":
        m.allow_tf32 = True
    elif how == "global":
        torch.set_float32_matmul_precision("high")
    elif how == "per_backend":
        m.fp32_precision = "tf32"
    elif how == "generic":
        torch.backends.fp32_precision = "tf32"

    def reads():
        out = {}
        for name, read in [
            ("legacy", lambda: m.allow_tf32),
            ("per_backend", lambda: getattr(m, "fp32_precision", "n/a")),
            ("global", torch.get_float32_matmul_precision),
        ]:
            try:
                out[name] = read()
            except RuntimeError as exc:
                out[name] = "RuntimeError: " + str(exc)[:40]
        return out

    before = reads()
    x = torch.randn(50, 8)
    y = x @ torch.randn(8, 8)
    seen = []
    real = torch.Tensor.__matmul__

    def spy(a, b):
        seen.append(getattr(m, "fp32_precision", None))
        return real(a, b)

    torch.Tensor.__matmul__ = spy
    value = float(reprsim.cka(x, y))
    torch.Tensor.__matmul__ = real
    print(json.dumps({"before": before, "after": reads(), "inside": sorted(set(map(str, seen))), "value": value}))
    """
)


@pytest.mark.parametrize("how", ["none", "legacy", "global", "per_backend", "generic"])
def test_caller_setting_is_restored_and_not_used(how: str) -> None:
    if how in ("per_backend", "generic") and not NEW_API:
        pytest.skip("per-backend precision flags need PyTorch >= 2.9")
    done = subprocess.run([sys.executable, "-c", PROBE, how], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["after"] == got["before"]  # every reader answers as before, errors of the caller's own mixing too
    if how != "none":
        assert got["before"]["per_backend" if NEW_API else "legacy"] in ("tf32", True)
    if NEW_API:
        assert got["inside"] == ["ieee"]  # reprsim's products ran with IEEE float32
    assert 0.0 < got["value"] <= 1.0


def test_full_precision_restores_after_an_exception() -> None:
    if not NEW_API:
        pytest.skip("per-backend precision flags need PyTorch >= 2.9")
    m = torch.backends.cuda.matmul
    saved = m.fp32_precision
    try:
        m.fp32_precision = "tf32"
        inside = []

        def fail() -> None:
            with full_precision():
                inside.append(m.fp32_precision)
                raise KeyError("boom")

        with pytest.raises(KeyError):
            fail()
        assert inside == ["ieee"]
        assert m.fp32_precision == "tf32"
    finally:
        m.fp32_precision = saved


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float32_cuda_cka_stays_exact_with_tf32_enabled() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 256))
    y = np.tanh(x @ rng.normal(size=(256, 256)) / 16) + 0.3 * rng.normal(size=(2000, 256))
    expected = ref.cka(x, y)
    xt, yt = torch.tensor(x, dtype=torch.float32, device="cuda"), torch.tensor(y, dtype=torch.float32, device="cuda")
    m = torch.backends.cuda.matmul
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # TF32, as many training scripts set it
        bare = (xt.T @ yt).double().cpu().numpy()
        tf32_error = np.abs(bare - x.T @ y).max() / np.abs(x.T @ y).max()
        assert tf32_error > 1e-5, "TF32 was not in effect: this test would prove nothing"
        assert abs(float(reprsim.cka(xt, yt)) - expected) <= 1e-5
        assert abs(float(reprsim.cka(xt, yt, kernel="rbf")) - ref.cka(x, y, kernel="rbf")) <= 1e-5
        acc = reprsim.streaming.MinibatchCKAMatrix()  # float32 Grams in the batches' dtype, float64 sums
        for lo in range(0, 2000, 250):
            acc.update([xt[lo : lo + 250]], [yt[lo : lo + 250]])
        want = ref.minibatch_cka(
            [x[lo : lo + 250] for lo in range(0, 2000, 250)], [y[lo : lo + 250] for lo in range(0, 2000, 250)]
        )
        assert abs(float(acc.compute()[0, 0]) - want) <= 1e-5
        assert torch.get_float32_matmul_precision() == "high"
        if NEW_API:
            assert m.fp32_precision == "tf32"
    finally:
        torch.set_float32_matmul_precision(saved)
