"""Regression tests for the outside review of reprsim 0.1 (issue 11): one section per finding.

Each test failed on the code the review examined and checks the value a correct implementation gives, from an
independent float64 reference (tests/reference.py) or from first principles.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import reprsim
from reprsim import Extractor, cka, compare
from reprsim.streaming import LinearCKA

from . import reference as ref

# -- 1. captured activations must not change when the model later writes in place ------------------------


def _ref_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    return ref.cka(a.double().numpy(), b.double().numpy())


def test_inplace_relu_after_linear_does_not_rewrite_the_recorded_activation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(inplace=True), nn.Linear(12, 3)).eval()
    x = torch.randn(200, 6)
    with torch.no_grad():
        h = model[0](x)
        r = torch.relu(h)
    expected = _ref_cka(h, r)
    assert expected < 0.95  # the two really differ; an aliased capture reports 1.0
    acts = Extractor(model, ["0", "1"])(x)
    torch.testing.assert_close(acts["0"], h, rtol=0, atol=0)
    res = compare(model, model, [x[:100], x[100:]], layers_a=["0", "1"], measure="cka", progress=False)
    assert abs(res["0", "1"] - expected) < 1e-6


def test_input_capture_of_an_inplace_module_keeps_the_input() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True))
    x = torch.randn(16, 4)
    with torch.no_grad():
        h = model[0](x)
    acts = Extractor(model, ["1"], capture="input")(x)
    assert bool((acts["1"] < 0).any())  # the pre-ReLU values, not the rectified ones
    torch.testing.assert_close(acts["1"], h, rtol=0, atol=0)


class _Doubles(nn.Module):
    """Writes into its child's output after the child returns."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        out.mul_(2.0).add_(1.0)
        return out


@pytest.mark.parametrize("pool", ["flatten", "cls", lambda t: t[:, :3]])
def test_module_output_modified_in_place_by_its_parent(pool: object) -> None:
    model = _Doubles()
    x = torch.randn(8, 2, 5)  # (batch, tokens, features) so that "cls" is a view
    with torch.no_grad():
        inner = model.inner(x)
    got = Extractor(model, ["inner"], pool=pool)(x)["inner"]  # type: ignore[arg-type]
    expected = reprsim.pool_tokens(inner, pool)  # type: ignore[arg-type]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_torchvision_resnet_inplace_relu_and_residual_add() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(24, 3, 12, 12)
    with torch.no_grad():
        bn1 = model.bn1(model.conv1(x))
        relu = torch.relu(bn1)
        block = model.layer1[0]
        stem = model.maxpool(relu)
        o = block.relu(block.bn1(block.conv1(stem)))
        bn2 = block.bn2(block.conv2(o))  # BasicBlock then does `out += identity` and an in-place ReLU
        out = torch.relu(bn2 + stem)
    layers = ["bn1", "relu", "layer1.0.bn2", "layer1.0"]
    res = compare(model, model, [x[:12], x[12:]], layers_a=layers, measure="cka", progress=False)
    truth = {"bn1": bn1, "relu": relu, "layer1.0.bn2": bn2, "layer1.0": out}
    for a in layers:
        for b in layers:
            assert abs(res[a, b] - _ref_cka(truth[a], truth[b])) < 1e-6, (a, b)
    assert res["bn1", "relu"] < 0.9999  # 1.000 when bn1 was read after the in-place ReLU


# -- 2. separability scores each pooling on its own features, whatever their widths -----------------------


class _Tokens(nn.Module):
    """(batch, tokens, 4) inputs → (batch, tokens, 6) token features, per token."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.proj(x))


def test_separability_with_pools_of_different_widths_matches_each_pooling_alone() -> None:
    torch.manual_seed(0)
    model = _Tokens().eval()
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 3, 4, generator=g)  # 5 classes, 3 tokens
    y = torch.arange(150) % 5
    x = centres[y] + 1.2 * torch.randn(150, 3, 4, generator=g)
    train = list(zip(x[:100].split(25), y[:100].split(25)))
    test = list(zip(x[100:].split(25), y[100:].split(25)))
    pools = ["mean", "flatten", "cls"]  # widths 6, 18, 6
    got = reprsim.probes.separability(model, train, test, layers=["act"], pool=pools, k=7, probe=True)
    with torch.no_grad():
        ftr, fte = model(x[:100]), model(x[100:])
    for p in pools:
        a, b = reprsim.pool_tokens(ftr, p), reprsim.pool_tokens(fte, p)
        expected = reprsim.probes.knn_accuracy((a, y[:100]), b, y[100:], k=7, topk=(1, 5), num_classes=5)
        probe = reprsim.probes.RidgeProbe(num_classes=5)
        probe.update(a, y[:100])
        expected["probe"] = probe.accuracy(b, y[100:])
        assert got[p]["act"] == expected, p
    assert len({got[p]["act"]["top1"] for p in pools}) > 1  # the poolings really score differently


# -- 3. hsic on uncentred Grams of offset features -------------------------------------------------------


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("offset", [0.0, 100.0, 1000.0])
def test_hsic_of_raw_grams_with_a_common_offset(unbiased: bool, offset: float) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 8))
    y = np.tanh(x @ rng.normal(size=(8, 5))) + 0.3 * rng.normal(size=(60, 5))
    h = ref.hsic_unbiased if unbiased else ref.hsic_biased
    expected = h(ref.linear_kernel(x), ref.linear_kernel(y))  # the reference centres the features first
    k, l = reprsim.linear_gram(torch.tensor(x + offset)), reprsim.linear_gram(torch.tensor(y + offset))
    got = float(reprsim.hsic(k, l, unbiased=unbiased))
    assert abs(got - expected) <= 1e-10 * abs(expected)
    # and it agrees with cka_from_grams on the same Grams
    cka_ref = ref.cka_from_kernels(ref.linear_kernel(x), ref.linear_kernel(y), unbiased)
    selfs = [float(reprsim.hsic(g, g, unbiased=unbiased)) for g in (k, l)]
    assert abs(got / np.sqrt(selfs[0] * selfs[1]) - cka_ref) < 1e-10


# -- 4. every path meets its documented accuracy, or refuses / warns -------------------------------------


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


def _ridge_reference(x: np.ndarray, y: np.ndarray, classes: int, alpha: float) -> np.ndarray:
    """Weights of ridge regression on ±1 one-vs-all targets with an unpenalised intercept (centred data)."""
    t = -np.ones((len(y), classes))
    t[np.arange(len(y)), y] = 1.0
    xc, tc = x - x.mean(0), t - t.mean(0)
    return np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ tc)


def test_ridge_probe_with_a_huge_common_offset() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(400) % 3
    z = rng.normal(size=(400, 5)) + 2.0 * np.eye(3, 5)[y]
    x = 1e6 + 1e-3 * z  # the review's case: 0% accuracy from raw sums
    probe = reprsim.probes.RidgeProbe(num_classes=3, alpha=1e-8)
    for lo in range(0, 400, 64):
        probe.update(x[lo : lo + 64], y[lo : lo + 64])
    w, _ = probe.fit()
    np.testing.assert_allclose(w.numpy(), _ridge_reference(1e-3 * z, y, 3, 1e-8), rtol=1e-6)
    clean = reprsim.probes.RidgeProbe(num_classes=3, alpha=1e-8 / 1e-6)  # the same problem without offset and scale
    clean.update(z, y)
    assert probe.accuracy(x, y) == clean.accuracy(z, y) > 0.8


# -- 8. a fitted RidgeProbe never answers from a state it no longer has -----------------------------------


def test_ridge_probe_refits_after_every_change_of_state() -> None:
    rng = np.random.default_rng(1)
    xa, ya = rng.normal(size=(100, 4)), rng.integers(0, 2, 100)
    xb, yb = rng.normal(size=(100, 4)) + 1.0, rng.integers(0, 2, 100)

    def weights(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _ridge_reference(x, y, 2, 1.0)

    a = reprsim.probes.RidgeProbe(2)
    a.update(xa, ya)
    a.predict(xa)  # fitted on A
    b = reprsim.probes.RidgeProbe(2)
    b.update(xb, yb)
    a.merge(b)
    np.testing.assert_allclose(a.fit()[0].numpy(), weights(np.vstack([xa, xb]), np.concatenate([ya, yb])))
    scores_merged = a.decision_function(xa)
    a.load_state_dict(b.state_dict())
    np.testing.assert_allclose(a.fit()[0].numpy(), weights(xb, yb))
    assert not torch.allclose(a.decision_function(xa), scores_merged)
    a.reset()
    with pytest.raises(reprsim.errors.IncompatibleStateError, match="seen no samples"):
        a.predict(xa)


# -- 5. magnitudes far from 1 -------------------------------------------------------------------------------


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


def test_explicit_sigma_with_out_of_range_values_is_a_clear_error() -> None:
    x = np.random.default_rng(0).normal(size=(10, 3)) * 1e200
    with pytest.raises(
        reprsim.errors.InvalidParameterError, match=r"squared distances leave the range of torch\.float64"
    ):
        cka(x, x, kernel="rbf", sigma=1.0)


# -- 7. load_state_dict validates everything before it swaps ---------------------------------------------


def _bad_state_dicts(good: dict) -> dict[str, tuple[dict, str]]:
    import copy

    def edit(fn: object) -> dict:
        d = copy.deepcopy(good)
        fn(d)  # type: ignore[operator]
        return d

    return {
        "wrong shape": (edit(lambda d: d["state"].__setitem__("m2.0", torch.zeros(1, 2, 2))), "has shape"),
        "negative n": (edit(lambda d: d["state"].__setitem__("n", torch.tensor([-3.0]))), "non-negative integer"),
        "nan n": (edit(lambda d: d["state"].__setitem__("n", torch.tensor([float("nan")]))), "NaN or infinite"),
        "dims disagree": (edit(lambda d: d.__setitem__("dims", [1, 4, 3])), "has shape"),
        "dims none, state full": (edit(lambda d: d.__setitem__("dims", None)), "inconsistent"),
        "bad dims": (edit(lambda d: d.__setitem__("dims", ["a", 2])), "non-negative integers"),
        "old version": (edit(lambda d: d.__setitem__("version", 0)), "format version 0"),
        "no version": (edit(lambda d: d.pop("version")), "format version None"),
        "not a tensor": (edit(lambda d: d["state"].__setitem__("mean", [1.0, 2.0, 3.0])), "must be a floating-point"),
        "missing entry": (edit(lambda d: d["state"].pop("cross.0")), "needs"),
        "not a mapping": ([1, 2], "not a reprsim state dict"),  # type: ignore[dict-item]
    }


@pytest.mark.parametrize("unbiased", [False, True])
def test_a_rejected_state_dict_leaves_the_accumulator_untouched(unbiased: bool) -> None:
    rng = np.random.default_rng(0)
    good_source = LinearCKA(unbiased=unbiased)
    good_source.update(rng.normal(size=(20, 3)), rng.normal(size=(20, 2)))
    good = good_source.state_dict()
    target = LinearCKA(unbiased=unbiased)
    target.update(rng.normal(size=(30, 3)), rng.normal(size=(30, 2)))
    before, value = target.state_dict(), target.compute()
    for case, (bad, message) in _bad_state_dicts(good).items():
        with pytest.raises(reprsim.errors.IncompatibleStateError, match=message):
            target.load_state_dict(bad)
        after = target.state_dict()
        assert after["dims"] == before["dims"], case
        assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items()), case
        assert target.compute() == value, case
    target.load_state_dict(good)  # and a good one still loads
    assert target.compute() == good_source.compute()


# -- 9. one model, two threads ------------------------------------------------------------------------------


class _Gate(nn.Module):
    """Blocks its first forward until released, so a second call can be made while the first is inside."""

    def __init__(self) -> None:
        import threading

        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        self.release.wait(timeout=30)
        return self.lin(x)


@pytest.mark.parametrize("second", ["compare", "extractor", "separability"])
def test_concurrent_calls_on_one_model_are_refused_and_flags_survive(second: str) -> None:
    import threading

    model = _Gate()
    model.train()
    data = [torch.randn(16, 4) for _ in range(2)]
    out: dict[str, object] = {}

    def first() -> None:
        out["result"] = compare(model, model, data, layers_a=["lin"], progress=False)

    t = threading.Thread(target=first)
    t.start()
    assert model.entered.wait(timeout=30)
    labelled = [(d, torch.arange(16) % 2) for d in data]
    calls = {
        "compare": lambda: compare(model, model, data, layers_a=["lin"], progress=False),
        "extractor": lambda: Extractor(model, ["lin"])(data[0]),
        "separability": lambda: reprsim.probes.separability(model, labelled, labelled, layers=["lin"], pool="flatten"),
    }
    try:
        with pytest.raises(reprsim.errors.ConcurrentUseError, match="already being run by a reprsim call in another"):
            calls[second]()
    finally:
        model.release.set()
        t.join(timeout=60)
    assert model.training  # restored by the first call; the refused one changed nothing
    assert all(m.training for m in model.modules())
    assert out["result"]["lin", "lin"] == pytest.approx(1.0, abs=1e-12)  # type: ignore[index]
    compare(model, model, data, layers_a=["lin"], progress=False)  # free again afterwards


# -- 11. rbf_gram and bandwidths ------------------------------------------------------------------------------


def test_rbf_gram_bad_samples() -> None:
    with pytest.raises(reprsim.errors.NonFiniteError, match="1 NaN"):
        reprsim.rbf_gram(np.array([[0.0], [np.nan], [1.0]]))
    with pytest.raises(reprsim.errors.InsufficientSamplesError, match="at least 2 samples"):
        reprsim.rbf_gram(np.ones((1, 3)))
    with pytest.raises(reprsim.errors.InsufficientSamplesError, match="holds no samples"):
        reprsim.rbf_gram(np.ones((0, 3)))
    assert float(reprsim.rbf_gram(np.ones((1, 3)), sigma=1.0)[0, 0]) == 1.0


@pytest.mark.parametrize(
    ("sigma", "message"),
    [
        (1e300, "too large: its square overflows"),
        (1e-300, "too small: its square underflows"),
        ("1.0", "must be a positive real number"),
        ("wide", "must be a positive real number"),
        (float("nan"), "positive finite bandwidth"),
        (True, "must be a positive real number"),
    ],
)
def test_bad_sigma(sigma: object, message: str) -> None:
    x = np.random.default_rng(0).normal(size=(10, 3))
    for call in (
        lambda: reprsim.rbf_gram(x, sigma=sigma),  # type: ignore[arg-type]
        lambda: cka(x, x, kernel="rbf", sigma=sigma),  # type: ignore[arg-type]
        lambda: reprsim.streaming.MinibatchCKA(kernel="rbf", sigma=sigma),  # type: ignore[arg-type]
    ):
        with pytest.raises(reprsim.errors.InvalidParameterError, match=message):
            call()


# -- 12. an empty batch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_accepts_an_empty_batch_first_and_later(unbiased: bool) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 3))
    acc = LinearCKA(unbiased=unbiased)
    acc.update(x[:0], y[:0])
    assert acc.num_samples == 0
    acc.update(x[:10], y[:10])
    acc.update(x[10:10], y[10:10])
    acc.update(x[10:], y[10:])
    assert abs(acc.compute() - ref.cka(x, y, unbiased=unbiased)) <= 1e-10


# -- 13. SimilarityResult files and repr -----------------------------------------------------------------


def _result() -> reprsim.SimilarityResult:
    m = torch.tensor([[1.0, 0.25]], dtype=torch.float64)
    return reprsim.SimilarityResult(m, ["a"], ["b", "c"], {"model_a": "A", "model_b": "B"})


def test_result_save_and_load_with_the_same_name(tmp_path: object) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    for name in ("plain", "with.dots", "ends.npz"):
        written = _result().save(base / name)
        loaded = reprsim.SimilarityResult.load(base / name)
        assert written.name.endswith(".npz")
        assert loaded["a", "c"] == 0.25


def test_result_load_of_files_that_are_not_results(tmp_path: object) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    good = _result().save(base / "good")
    (base / "text.npz").write_text("not an archive")
    (base / "empty.npz").write_bytes(b"")
    (base / "truncated.npz").write_bytes(good.read_bytes()[:200])
    np.save(base / "array.npy", np.eye(2))
    np.savez(base / "other.npz", weights=np.eye(2))
    cases = {
        "text.npz": "not a readable .npz archive",
        "empty.npz": "not a readable .npz archive",
        "truncated.npz": "not a readable|truncated or damaged",
        "array.npy": "single array",
        "other.npz": "lacks",
    }
    for name, message in cases.items():
        with pytest.raises(reprsim.errors.InvalidParameterError, match=message):
            reprsim.SimilarityResult.load(base / name)
    with pytest.raises(FileNotFoundError, match="no result file"):
        reprsim.SimilarityResult.load(base / "missing")


def test_result_repr_of_empty_and_bad_metadata() -> None:
    empty = reprsim.SimilarityResult(torch.zeros((0, 0)), [], [], {})
    assert repr(empty) == "SimilarityResult(model A [0 layers] x model B [0 layers], similarity)"
    with pytest.raises(reprsim.errors.InvalidParameterError, match="metadata must be a mapping"):
        reprsim.SimilarityResult(torch.zeros((1, 1)), ["a"], ["b"], ["not", "a", "dict"])  # type: ignore[arg-type]


# -- 14. analysis functions: clear errors ------------------------------------------------------------------


def _xy(n: int = 20, d: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.arange(n) % 2


def test_knn_accuracy_bad_inputs() -> None:
    x, y = _xy()
    cases = [
        (
            lambda: reprsim.probes.knn_accuracy((x[:0], y[:0]), x, y, k=3),
            reprsim.errors.InsufficientSamplesError,
            "got 0",
        ),
        (
            lambda: reprsim.probes.knn_accuracy((x, y), x, y, k=3, num_classes=1),
            reprsim.errors.InvalidParameterError,
            "up to 1",
        ),
        (
            lambda: reprsim.probes.knn_accuracy((x, y), x, y, k=2.5),
            reprsim.errors.InvalidParameterError,
            "k must be an integer; got 2.5",
        ),
        (lambda: reprsim.probes.knn_accuracy((x, y), x, y, topk=(0,)), reprsim.errors.InvalidParameterError, "topk"),
        (
            lambda: reprsim.probes.knn_accuracy((x, y), x[:0], y[:0], k=3),
            reprsim.errors.InsufficientSamplesError,
            "no samples",
        ),
        (
            lambda: reprsim.probes.knn_accuracy((x, y), x, y, test_chunk=0),
            reprsim.errors.InvalidParameterError,
            "test_chunk",
        ),
        (
            lambda: reprsim.probes.knn_accuracy((x, y), x[:, :2], y, k=3),
            reprsim.errors.ShapeMismatchError,
            "dimensions",
        ),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    as_list = reprsim.probes.knn_accuracy([x, y], x, y, k=3, topk=(1,))  # a list works like a tuple
    assert as_list == reprsim.probes.knn_accuracy((x, y), x, y, k=3, topk=(1,))


def test_logistic_probe_bad_inputs() -> None:
    x, y = _xy()
    cases = [
        (lambda: reprsim.probes.logistic_probe(x[:0], y[:0], x, y), reprsim.errors.InsufficientSamplesError, "got 0"),
        (lambda: reprsim.probes.logistic_probe(x, y, x[:, :2], y), reprsim.errors.ShapeMismatchError, "dimensions"),
        (
            lambda: reprsim.probes.logistic_probe(x, y, x, y, num_classes=1),
            reprsim.errors.InvalidParameterError,
            "up to 1",
        ),
        (lambda: reprsim.probes.logistic_probe(x, y, x, y, C=0.0), reprsim.errors.InvalidParameterError, "C must be"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_prediction_agreement_bad_inputs() -> None:
    s = torch.randn(10, 4)
    cases = [
        (lambda: reprsim.probes.prediction_agreement(s, s, ks=(-3,)), "every entry of ks must be an integer ≥ 1"),
        (lambda: reprsim.probes.prediction_agreement(s, s, ks=(0,)), "every entry of ks must be an integer ≥ 1"),
        (lambda: reprsim.probes.prediction_agreement(s, s, chunk=0), "chunk must be an integer ≥ 1; got 0"),
        (lambda: reprsim.probes.prediction_agreement(s, s, torch.full((10,), 4)), "labels go up to 4"),
    ]
    for call, message in cases:
        with pytest.raises(reprsim.errors.InvalidParameterError, match=message):
            call()
    with pytest.raises(reprsim.errors.ShapeMismatchError, match=r"\(samples, classes\) matrix"):
        reprsim.probes.prediction_agreement(s.reshape(10, 2, 2), s.reshape(10, 2, 2))
    with pytest.raises(reprsim.errors.InsufficientSamplesError, match="no samples"):
        reprsim.probes.prediction_agreement(s[:0], s[:0])


def test_separability_and_ridge_probe_bad_inputs() -> None:
    x, y = _xy()
    model = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(reprsim.errors.InsufficientSamplesError, match="got 0 and"):
        reprsim.probes.separability(model, [], [(x, y)], layers=["0"], pool="flatten", k=3)
    with pytest.raises(reprsim.errors.InvalidParameterError, match="up to 1"):
        reprsim.probes.separability(model, [(x, y)], [(x, y)], layers=["0"], pool="flatten", k=3, num_classes=1)
    probe = reprsim.probes.RidgeProbe(2)
    with pytest.raises(reprsim.errors.InvalidParameterError, match="up to 2"):
        probe.update(x, y + 1)
    probe.update(x, y)
    with pytest.raises(reprsim.errors.ShapeMismatchError, match="trained on 3"):
        probe.predict(x[:, :2])


# -- 15. messages that name the right fix and the right place ----------------------------------------------


def test_overflow_message_depends_on_the_state_dtype() -> None:
    big = np.full((8, 2), 1e300) * np.arange(1, 9)[:, None]
    acc = LinearCKA()
    with pytest.raises(reprsim.errors.NonFiniteError, match="Rescale the inputs") as info:
        acc.update(big, big)
    assert "dtype=torch.float64" not in str(info.value)
    large = 3e30 * np.arange(1, 9)[:, None] * np.ones((8, 2))  # finite in float32, its squares are not
    with pytest.raises(reprsim.errors.NonFiniteError, match=r"Use dtype=torch\.float64"):
        LinearCKA(dtype=torch.float32).update(large, np.arange(8.0))


class _NanAfter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x)) * torch.nan


@pytest.mark.parametrize("measure", ["cka", "cka_unbiased", "cka_minibatch", "procrustes"])
def test_nan_from_a_model_names_model_and_layer(measure: str) -> None:
    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _NanAfter()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    model, other = Wrap(), nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(reprsim.errors.NonFiniteError, match=r"model A.*body"):
        compare(model, other, [torch.randn(8, 3)], layers_a=["body"], layers_b=["0"], measure=measure, progress=False)


def test_sparse_and_meta_inputs_get_clear_errors() -> None:
    x = torch.randn(10, 4)
    with pytest.raises(reprsim.errors.InvalidParameterError, match=r"sparse_coo tensor.*to_dense"):
        cka(x.to_sparse(), x)
    meta = torch.empty(10, 4, device="meta")
    with pytest.raises(reprsim.errors.InvalidParameterError, match="meta tensor"):
        cka(meta, meta)
    with pytest.raises(reprsim.errors.InvalidParameterError, match="meta tensor"):
        reprsim.cka_matrix([meta])
    with pytest.raises(reprsim.errors.InvalidParameterError, match="meta tensor"):
        LinearCKA().update(meta, meta)
