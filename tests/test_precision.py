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
from reprsim import cka
from reprsim._precision import full_precision
from reprsim.streaming import LinearCKA

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


# -- every path meets its documented accuracy, or refuses or warns (from the review of 0.2) ------------------------


def _heavy_tailed(n: int, p: int, q: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_cauchy(size=(n, p))
    return x, x @ rng.normal(size=(p, q)) / np.sqrt(p) + rng.standard_cauchy(size=(n, q))


@pytest.mark.parametrize("seed", range(6))
def test_float64_unbiased_cka_on_heavy_tailed_wide_data(seed: int) -> None:
    x, y = _heavy_tailed(8, 1000, 300, seed)
    expected = ref.cka_extended(x, y, unbiased=True)
    assert abs(cka(x, y, unbiased=True) - expected) <= 1e-10
    assert abs(float(reprsim.cka_matrix([x], [y], unbiased=True)[0, 0]) - expected) <= 1e-10


@pytest.mark.parametrize("seed", range(6))
def test_streamed_unbiased_cka_is_accurate_or_warns(seed: int) -> None:
    import warnings

    x, y = _heavy_tailed(8, 1000, 300, seed)
    dominant = seed % 2 == 1
    if dominant:  # one row dominates: the unbiased terms cancel to ~1e-9 of their size
        x[3] *= 1e4
    expected = ref.cka_extended(x, y, unbiased=True)
    acc = LinearCKA(unbiased=True)
    acc.update(x[:5], y[:5])
    acc.update(x[5:], y[5:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = acc.compute()
    warned = [w for w in caught if issubclass(w.category, reprsim.ReprsimWarning)]
    if dominant:
        assert warned
        assert "terms cancel" in str(warned[0].message)
    if not warned:
        assert abs(got - expected) <= 1e-10


@pytest.mark.parametrize("n", [4, 5, 6, 8])
def test_float32_unbiased_cka_with_few_samples_and_many_features(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(5):
        x = rng.normal(size=(n, 768))
        y = np.tanh(x) + rng.normal(size=(n, 768))
        expected = ref.cka_extended(x, y, unbiased=True)
        x32, y32 = x.astype(np.float32), y.astype(np.float32)
        # the float64 reference on the float32-rounded data: the input's own rounding is not the estimator's
        expected = ref.cka_extended(x32.astype(np.float64), y32.astype(np.float64), unbiased=True)
        assert abs(cka(x32, y32, unbiased=True) - expected) <= 1e-5


def test_float32_unbiased_cka_on_heavy_tailed_data_in_feature_space() -> None:
    for seed in range(4):
        x, y = _heavy_tailed(300, 20, 10, seed)
        x[0] *= 30  # one dominant sample: ‖XᵀY‖² and Σ aᵢbᵢ nearly cancel
        y[0] *= 30
        x32, y32 = x.astype(np.float32), y.astype(np.float32)
        expected = ref.cka_extended(x32.astype(np.float64), y32.astype(np.float64), unbiased=True)
        assert abs(cka(x32, y32, unbiased=True) - expected) <= 1e-6  # up to 7.5e-6 in float32 before


def test_minibatch_cka_with_a_float32_state() -> None:
    worst = 0.0
    for seed in range(4):
        x, y = (a.astype(np.float32) for a in _heavy_tailed(48, 768, 300, seed))
        batches = [(x[i : i + 6], y[i : i + 6]) for i in range(0, 48, 6)]
        expected = ref.minibatch_cka([b[0].astype(float) for b in batches], [b[1].astype(float) for b in batches])
        acc = reprsim.streaming.MinibatchCKA(dtype=torch.float32)
        for bx, by in batches:
            acc.update(bx, by)
        worst = max(worst, abs(acc.compute() - expected))
    assert worst <= 1e-4  # 3e-3 before; what is left is the float32 Grams' own rounding on heavy tails


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32])
def test_accumulator_state_below_float32_is_refused(dtype: torch.dtype) -> None:
    for make in (
        lambda: LinearCKA(dtype=dtype),
        lambda: reprsim.streaming.MinibatchCKA(dtype=dtype),
        lambda: reprsim.probes.RidgeProbe(2, dtype=dtype),
    ):
        with pytest.raises(reprsim.errors.InvalidParameterError, match=r"state dtype must be torch\.float64"):
            make()


def test_unbiased_linear_cka_needs_a_float64_state() -> None:
    with pytest.raises(reprsim.errors.InvalidParameterError, match=r"unbiased=True\) keeps fourth-order sums"):
        LinearCKA(unbiased=True, dtype=torch.float32)
    x, y = _heavy_tailed(300, 6, 4, 0)
    acc = LinearCKA(dtype=torch.float32)  # the biased estimator has no cancelling terms
    acc.update(x, y)
    assert abs(acc.compute() - ref.cka(x, y)) <= 1e-5


@pytest.mark.parametrize(
    ("scale", "dtype", "tol"), [(1e18, np.float32, 1e-5), (1e-30, np.float32, 1e-5), (1e200, np.float64, 1e-10)]
)
@pytest.mark.parametrize(("kernel", "unbiased"), [("linear", False), ("linear", True), ("rbf", False)])
def test_cka_is_scale_invariant_at_extreme_magnitudes(
    scale: float, dtype: type, tol: float, kernel: str, unbiased: bool
) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(80, 12))
    y = np.tanh(x @ rng.normal(size=(12, 6))) + 0.2 * rng.normal(size=(80, 6))
    expected = ref.cka(x, y, kernel=kernel, unbiased=unbiased)
    xs, ys = (x * scale).astype(dtype), (y * scale).astype(dtype)
    assert np.isfinite(xs).all()
    assert abs(cka(xs, ys, kernel=kernel, unbiased=unbiased) - expected) <= tol
    m = reprsim.cka_matrix([xs], [ys], kernel=kernel, unbiased=unbiased)
    assert abs(float(m[0, 0]) - expected) <= tol
