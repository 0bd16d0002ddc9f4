"""Streaming accumulators: streamed, merged, saved/loaded and all-reduced results equal the one-shot ones."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reprsim
from reprsim import ReprsimWarning
from reprsim.errors import (
    ConstantRepresentationError,
    DeviceMismatchError,
    IncompatibleStateError,
    InsufficientSamplesError,
    InvalidParameterError,
    NonFiniteError,
    ShapeMismatchError,
)
from reprsim.streaming import LinearCKA, MinibatchCKA, MinibatchCKAMatrix

from . import reference as ref


def data(n: int, p: int, q: int, seed: int, offset: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """A related pair with a large common offset, so that the reference frame of LinearCKA matters."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) * rng.uniform(0.5, 2.0, size=p) + offset
    y = np.tanh((x - offset) @ rng.normal(size=(p, q)) / np.sqrt(p)) + 0.3 * rng.normal(size=(n, q)) - offset
    return x, y


def split(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    points = sorted({c for c in cuts if 0 < c < n})
    edges = [0, *points, n]
    return list(zip(edges[:-1], edges[1:]))


def state_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["dims"] == b["dims"] and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


# -- LinearCKA -------------------------------------------------------------------------------------------


def test_linear_cka_shares_the_moment_state_not_the_cross_moments_interface() -> None:
    # it holds one pair and computes CKA: lists of layers and other measures are CrossMoments' job
    acc = LinearCKA()
    assert isinstance(acc, reprsim.streaming.Accumulator)
    assert not isinstance(acc, reprsim.streaming.CrossMoments)
    x = torch.randn(20, 3, dtype=torch.float64)
    with pytest.raises(reprsim.errors.InvalidParameterError, match=r"one pair.*use CrossMoments"):
        acc.update([x, x], x)
    assert acc.num_samples == 0  # refused before anything changed
    acc.update(x, 2 * x)
    assert acc.compute() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(4, 120),
    p=st.integers(1, 12),
    q=st.integers(1, 12),
    cuts=st.lists(st.integers(1, 119), max_size=8),
)
def test_linear_streaming_equals_one_shot(unbiased: bool, seed: int, n: int, p: int, q: int, cuts: list[int]) -> None:
    x, y = data(n, p, q, seed)
    acc = LinearCKA(unbiased=unbiased)
    for a, b in split(n, cuts):
        acc.update(x[a:b], y[a:b])
    assert acc.num_samples == n
    assert abs(acc.compute() - ref.cka(x, y, unbiased=unbiased)) <= 1e-10


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_streaming_wide_and_many_batches(unbiased: bool) -> None:
    x, y = data(3000, 64, 300, seed=1, offset=50.0)
    acc = LinearCKA(unbiased=unbiased)
    for a in range(0, 3000, 97):
        acc.update(torch.from_numpy(x[a : a + 97]), torch.from_numpy(y[a : a + 97]))
    assert abs(acc.compute() - float(reprsim.cka(x, y, unbiased=unbiased))) <= 1e-10


@pytest.mark.parametrize("unbiased", [False, True])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), cut=st.integers(1, 59), cuts=st.lists(st.integers(1, 59), max_size=4))
def test_linear_merge_equals_single_stream(unbiased: bool, seed: int, cut: int, cuts: list[int]) -> None:
    x, y = data(60, 5, 4, seed)
    a, b = LinearCKA(unbiased=unbiased), LinearCKA(unbiased=unbiased)
    # different first rows: the two accumulators hold their sums in different reference frames
    for lo, hi in split(cut, cuts):
        a.update(x[lo:hi], y[lo:hi])
    for lo, hi in split(60 - cut, cuts):
        b.update(x[cut + lo : cut + hi], y[cut + lo : cut + hi])
    before_b = b.state_dict()
    a.merge(b)
    assert state_equal(b.state_dict(), before_b)  # other is left unchanged
    assert abs(a.compute() - ref.cka(x, y, unbiased=unbiased)) <= 1e-10


def test_merge_into_and_from_empty() -> None:
    x, y = data(40, 3, 3, seed=2)
    full = LinearCKA(unbiased=True)
    full.update(x, y)
    empty = LinearCKA(unbiased=True)
    empty.merge(full)
    assert abs(empty.compute() - full.compute()) == 0.0
    full.merge(LinearCKA(unbiased=True))
    assert abs(full.compute() - ref.cka(x, y, unbiased=True)) <= 1e-10


# -- minibatch estimators ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "extra"),
    [("linear", {}), ("rbf", {}), ("rbf", {"sigma": 1.5}), ("rbf", {"median_fraction": 0.5}), ("laplace", {})],
)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), cuts=st.lists(st.integers(4, 76), max_size=6))
def test_minibatch_equals_per_batch_reference(kernel: str, extra: dict[str, float], seed: int, cuts: list[int]) -> None:
    x, y = data(80, 6, 4, seed)
    # every batch needs >= 4 rows: keep only cut points at least 4 apart
    pieces = [(a, b) for a, b in split(80, cuts)]
    merged: list[tuple[int, int]] = []
    for a, b in pieces:
        if merged and (b - a < 4 or merged[-1][1] - merged[-1][0] < 4):
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    if merged[-1][1] - merged[-1][0] < 4 and len(merged) > 1:
        last = merged.pop()
        merged[-1] = (merged[-1][0], last[1])
    acc = MinibatchCKA(kernel=kernel, **extra)  # type: ignore[arg-type]
    for a, b in merged:
        acc.update(x[a:b], y[a:b])
    expected = ref.minibatch_cka([x[a:b] for a, b in merged], [y[a:b] for a, b in merged], kernel=kernel, **extra)  # type: ignore[arg-type]
    assert abs(acc.compute() - expected) <= 1e-10
    records = acc.hsic_records
    assert records.shape == (len(merged), 3)
    a0, b0 = merged[0]
    k, l = ref.gram(x[a0:b0], kernel, **extra), ref.gram(y[a0:b0], kernel, **extra)  # type: ignore[arg-type]
    np.testing.assert_allclose(
        records[0].numpy(),
        [ref.hsic_unbiased(k, l), ref.hsic_unbiased(k, k), ref.hsic_unbiased(l, l)],
        rtol=1e-10,
    )


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_single_batch_minibatch_is_unbiased_cka(kernel: str) -> None:
    x, y = data(50, 7, 3, seed=3)
    acc = MinibatchCKA(kernel=kernel)
    acc.update(x, y)
    assert abs(acc.compute() - reprsim.cka(x, y, kernel=kernel, unbiased=True)) <= 1e-10


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_minibatch_matrix_equals_reference_and_pairwise(kernel: str, symmetric: bool, device: str) -> None:
    rng = np.random.default_rng(4)
    n, batch = 96, 32
    base = rng.normal(size=(n, 5))
    xs = [base, np.tanh(base @ rng.normal(size=(5, 20))), rng.normal(size=(n, 3, 2))]
    ys = xs if symmetric else [base + 0.5 * rng.normal(size=(n, 5)), rng.normal(size=(n, 9))]
    acc = MinibatchCKAMatrix(kernel=kernel)
    for a in range(0, n, batch):
        bx = [torch.from_numpy(v[a : a + batch]).to(device) for v in xs]
        if symmetric:
            acc.update(bx)
        else:
            acc.update(bx, [torch.from_numpy(v[a : a + batch]).to(device) for v in ys])
    got = acc.compute().cpu().numpy()
    expected = np.array(
        [
            [
                ref.minibatch_cka(
                    [u[a : a + batch] for a in range(0, n, batch)],
                    [v[a : a + batch] for a in range(0, n, batch)],
                    kernel=kernel,
                )
                for v in ys
            ]
            for u in xs
        ]
    )
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    if symmetric:
        np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-12)


def test_minibatch_matrix_merge_and_float32() -> None:
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(64, 6)).astype(np.float32), rng.normal(size=(64, 3)).astype(np.float32)]
    whole, a, b = MinibatchCKAMatrix(), MinibatchCKAMatrix(), MinibatchCKAMatrix()
    for i, lo in enumerate(range(0, 64, 16)):
        batch = [v[lo : lo + 16] for v in xs]
        whole.update(batch, batch[::-1])
        (a if i % 2 else b).update(batch, batch[::-1])
    a.merge(b)
    torch.testing.assert_close(a.compute(), whole.compute(), rtol=0, atol=1e-12)
    expected = ref.minibatch_cka(
        [xs[0][lo : lo + 16] for lo in range(0, 64, 16)], [xs[1][lo : lo + 16] for lo in range(0, 64, 16)]
    )
    assert abs(float(whole.compute()[0, 0]) - expected) <= 1e-5


def test_minibatch_matrix_constant_layer_is_nan_with_warning() -> None:
    rng = np.random.default_rng(6)
    acc = MinibatchCKAMatrix()
    for _ in range(3):
        x = rng.normal(size=(16, 4))
        acc.update([x, np.full((16, 2), 7.1)], [x])
    with pytest.warns(ReprsimWarning, match=r"xs\[1\] had zero variation in every batch"):
        m = acc.compute()
    assert torch.isnan(m[1, 0])
    assert abs(float(m[0, 0]) - 1.0) < 1e-12


# -- checkpointing -----------------------------------------------------------------------------------------


def roundtrip(sd: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded: dict[str, Any] = torch.load(buf, weights_only=True)
    return loaded


@pytest.mark.parametrize(
    "make",
    [
        lambda: LinearCKA(),
        lambda: LinearCKA(unbiased=True),
        lambda: MinibatchCKA(kernel="rbf"),
        lambda: MinibatchCKAMatrix(),
    ],
    ids=["linear", "linear-unbiased", "minibatch-rbf", "matrix"],
)
def test_save_load_continue_equals_never_stopping(make: Any) -> None:
    x, y = data(120, 5, 4, seed=7)
    is_matrix = isinstance(make(), MinibatchCKAMatrix)

    def feed(acc: Any, lo: int, hi: int) -> None:
        if is_matrix:
            acc.update([x[lo:hi], y[lo:hi]], [y[lo:hi]])
        else:
            acc.update(x[lo:hi], y[lo:hi])

    straight = make()
    for lo in range(0, 120, 20):
        feed(straight, lo, lo + 20)
    first = make()
    for lo in range(0, 60, 20):
        feed(first, lo, lo + 20)
    resumed = make().load_state_dict(roundtrip(first.state_dict()))
    for lo in range(60, 120, 20):
        feed(resumed, lo, lo + 20)
    a, b = straight.compute(), resumed.compute()
    if is_matrix:
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        assert a == b
    assert state_equal(straight.state_dict(), resumed.state_dict())


def test_load_rejects_other_kind_or_config() -> None:
    acc = LinearCKA()
    acc.update(*data(10, 2, 2, seed=8))
    with pytest.raises(IncompatibleStateError, match=r"configurations differ.*unbiased"):
        LinearCKA(unbiased=True).load_state_dict(acc.state_dict())
    with pytest.raises(IncompatibleStateError, match="cannot load a LinearCKA into a MinibatchCKA"):
        MinibatchCKA().load_state_dict(acc.state_dict())
    with pytest.raises(IncompatibleStateError, match="not a reprsim state dict"):
        LinearCKA().load_state_dict({"weights": 1})


def test_merge_rejects_other_kind_config_or_widths() -> None:
    x, y = data(20, 3, 2, seed=9)
    a = LinearCKA()
    a.update(x, y)
    with pytest.raises(IncompatibleStateError, match="cannot merge a MinibatchCKA into a LinearCKA"):
        a.merge(MinibatchCKA())
    with pytest.raises(IncompatibleStateError, match=r"configurations differ"):
        MinibatchCKA(kernel="rbf").merge(MinibatchCKA(kernel="linear"))
    other = LinearCKA()
    other.update(x[:, :2], y)
    with pytest.raises(ShapeMismatchError, match=r"feature widths x: 3, y: 2 but the other has x: 2, y: 2"):
        a.merge(other)


# -- CrossMoments with folds -------------------------------------------------------------------------------


def fold_moments(x: np.ndarray, y: np.ndarray, folds: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Each fold's count, means and centred cross sum XcᵀYc, from the rows i with i mod folds = fold."""
    out = []
    for f in range(folds):
        xf, yf = x[f::folds], y[f::folds]
        if len(xf) == 0:
            out.append((0, np.zeros(x.shape[1] + y.shape[1]), np.zeros((x.shape[1], y.shape[1]))))
            continue
        mx, my = xf.mean(0), yf.mean(0)
        out.append((len(xf), np.concatenate([mx, my]), (xf - mx).T @ (yf - my)))
    return out


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 90),
    folds=st.integers(2, 23),
    cuts=st.lists(st.integers(1, 89), max_size=8),
)
def test_folded_moments_equal_each_folds_own(seed: int, n: int, folds: int, cuts: list[int]) -> None:
    """Batches smaller and larger than the fold count, in order, and the same batches fed out of order to two
    accumulators with their stream positions (as two processes do) and merged: every fold's moments are those
    of its own rows."""
    x, y = data(n, 4, 3, seed=seed)
    expected = fold_moments(x, y, folds)
    one = reprsim.streaming.CrossMoments(folds=folds)
    parts = split(n, cuts)
    for s, e in parts:
        one.update(x[s:e], y[s:e])
    odd, even = reprsim.streaming.CrossMoments(folds=folds), reprsim.streaming.CrossMoments(folds=folds)
    for k, (s, e) in reversed(list(enumerate(parts))):
        acc = odd if k % 2 else even
        acc.commit(acc.prepare(x[s:e], y[s:e], start=s))
    if len(parts) > 1:
        even.merge(odd)
    for acc in (one, even):
        state = acc._state
        for f, (count, mean, cross) in enumerate(expected):
            assert float(state["n"][f]) == count
            if count:
                np.testing.assert_allclose(state["mean"][f].numpy(), mean, rtol=0, atol=1e-12)
                np.testing.assert_allclose(state["cross.0"][f].numpy(), cross, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("folds", "fourth"), [(1, False), (6, False), (1, True), (6, True)])
def test_moments_reject_a_bad_batch_unchanged(folds: int, fourth: bool) -> None:
    """Including values whose squares overflow: in a batch of eight, and alone in a one-row batch (or a fold's
    only row), which centres to zero but would still move the means by 1e200."""
    x, y = data(40, 4, 3, seed=11)
    acc = reprsim.streaming.CrossMoments(folds=folds, fourth=fourth)
    acc.update(x[:17], y[:17])
    before = {k: v.clone() for k, v in acc._state.items()}
    huge = x[17:25].copy()
    huge[2, 0] = 1e200
    bad = [*bad_batches(x[17:], y[17:]), (huge, y[17:25], NonFiniteError, "overflowed")]
    bad.append((huge[2:3], y[19:20], NonFiniteError, "overflowed"))
    for bx, by, err, msg in bad:
        with pytest.raises(err, match=msg):
            acc.update(bx, by)
        assert all(torch.equal(before[k], v) for k, v in acc._state.items())
    acc.update(x[17:], y[17:])
    for f, (count, _, cross) in enumerate(fold_moments(x, y, folds)):
        assert float(acc._state["n"][f]) == count
        np.testing.assert_allclose(acc._state["cross.0"][f].numpy(), cross, rtol=0, atol=1e-9)


# -- reliability -------------------------------------------------------------------------------------------


def bad_batches(x: np.ndarray, y: np.ndarray) -> list[tuple[Any, Any, type[Exception], str]]:
    nan = x[:8].copy()
    nan[1, 1] = np.nan
    return [
        (nan, y[:8], NonFiniteError, r"x contains 1 NaN"),
        (x[:8], y[:7], ShapeMismatchError, "same samples"),
        (x[:8, :2], y[:8], ShapeMismatchError, "earlier batches"),
    ]


@pytest.mark.parametrize(
    "make",
    [lambda: LinearCKA(unbiased=True), lambda: MinibatchCKA(), lambda: MinibatchCKA(kernel="rbf")],
    ids=["linear", "minibatch", "minibatch-rbf"],
)
def test_rejected_batch_leaves_state_untouched(make: Any) -> None:
    x, y = data(40, 4, 3, seed=10)
    acc = make()
    acc.update(x[:20], y[:20])
    before = acc.state_dict()
    cases = bad_batches(x, y)
    if isinstance(acc, MinibatchCKA):
        cases.append((x[:3], y[:3], InsufficientSamplesError, r"at least 4 rows; got a batch of 3"))
    for bx, by, err, msg in cases:
        with pytest.raises(err, match=msg):
            acc.update(bx, by)
        assert state_equal(acc.state_dict(), before)
    acc.update(x[20:], y[20:])
    expected = (
        ref.cka(x, y, unbiased=True)
        if isinstance(acc, LinearCKA)
        else ref.minibatch_cka([x[:20], x[20:]], [y[:20], y[20:]], kernel=acc.kernel)
    )
    assert abs(acc.compute() - expected) <= 1e-10


def test_matrix_rejected_batch_leaves_state_untouched() -> None:
    x, y = data(40, 4, 3, seed=11)
    acc = MinibatchCKAMatrix()
    acc.update([x[:20]], [y[:20]])
    before = acc.state_dict()
    nan = y[20:].copy()
    nan[0, 0] = np.inf
    with pytest.raises(NonFiniteError, match=r"ys\[0\] contains 0 NaN and 1 infinite"):
        acc.update([x[20:]], [nan])
    with pytest.raises(ShapeMismatchError, match=r"widths xs \[4\], ys \[3, 3\] but earlier batches had"):
        acc.update([x[20:]], [y[20:], y[20:]])
    assert state_equal(acc.state_dict(), before)


def test_compute_before_update_and_too_few_samples() -> None:
    for acc in (LinearCKA(), MinibatchCKA(), MinibatchCKAMatrix()):
        with pytest.raises(IncompatibleStateError, match="has seen no samples; call update"):
            acc.compute()
    acc = LinearCKA(unbiased=True)
    acc.update(np.ones((2, 2)) * np.arange(2)[:, None], np.arange(2.0)[:, None])
    with pytest.raises(InsufficientSamplesError, match="unbiased CKA needs at least 4 samples; got 2 so far"):
        acc.compute()


def test_constant_stream_raises() -> None:
    rng = np.random.default_rng(12)
    acc = LinearCKA()
    for _ in range(3):
        acc.update(np.full((10, 3), 0.1), rng.normal(size=(10, 2)))
    with pytest.raises(ConstantRepresentationError, match="x is constant: its 30 samples differ"):
        acc.compute()


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_batches_accumulate_in_float64(low: torch.dtype) -> None:
    x, y = data(200, 8, 8, seed=13, offset=200.0)
    xl, yl = torch.from_numpy(x).to(low), torch.from_numpy(y).to(low)
    acc = LinearCKA(unbiased=True)
    for lo in range(0, 200, 50):
        acc.update(xl[lo : lo + 50], yl[lo : lo + 50])
    # |x| ~ 200 in 8 features: fourth-order sums near 1e11 would overflow float16's 65504
    assert abs(acc.compute() - ref.cka(xl.double().numpy(), yl.double().numpy(), unbiased=True)) <= 1e-10
    assert acc.state_dict()["state"]["m2.0"].dtype == torch.float64


def test_updates_never_keep_autograd_graphs() -> None:
    x = torch.randn(16, 4, requires_grad=True)
    acc = MinibatchCKAMatrix()
    acc.update([x * 2], [x])
    lin = LinearCKA()
    lin.update(x * 2, x)
    for a in (acc, lin):
        assert all(not t.requires_grad for t in a.state_dict()["state"].values())


def test_device_mismatch_between_batch_and_state() -> None:
    acc = LinearCKA()
    acc.update(torch.randn(8, 2), torch.randn(8, 2))
    with pytest.raises(DeviceMismatchError, match=r"state is on cpu"):
        acc.update(torch.randn(8, 2, device="meta"), torch.randn(8, 2, device="meta"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_accumulators_match_cpu() -> None:
    x, y = data(256, 16, 8, seed=14)
    for make in (
        lambda: LinearCKA(unbiased=True),
        lambda: MinibatchCKA(),
        lambda: MinibatchCKA(kernel="rbf"),
    ):
        cpu, gpu = make(), make()
        for lo in range(0, 256, 64):
            cpu.update(x[lo : lo + 64], y[lo : lo + 64])
            gpu.update(torch.from_numpy(x[lo : lo + 64]).cuda(), torch.from_numpy(y[lo : lo + 64]).cuda())
        assert abs(cpu.compute() - gpu.compute()) <= 1e-10
        assert gpu.to("cpu").merge(cpu).num_samples == 512


# -- loaded states must be states that data produce; per-batch records grow in amortised O(1) ---------------


def _loaded(make: Any, state: dict[str, Any]) -> Any:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(
    ("make", "entry", "change", "message"),
    [
        (lambda: LinearCKA(), "cross.0", lambda t: t * 1e6, "Cauchy–Schwarz"),
        (lambda: LinearCKA(unbiased=True), "m2.0", lambda t: t - 2 * torch.diag(t[0].diagonal())[None], "negative"),
        (lambda: LinearCKA(unbiased=True), "r2", lambda t: -t, "negative"),
        (lambda: MinibatchCKA(), "n", lambda t: t * 0 + 5, "at least 4 samples"),
        (lambda: MinibatchCKA(), "kl", lambda t: t + 100.0, "do not add up"),
        (lambda: MinibatchCKAMatrix(records=True), "batches", lambda t: t + 40, "at least 4 samples"),
        (lambda: MinibatchCKAMatrix(records=True), "kk", lambda t: t * 3, "do not add up"),
    ],
)
def test_impossible_states_are_refused_and_change_nothing(make: Any, entry: str, change: Any, message: str) -> None:
    """A state that no data produce (CKA came out as 6.6e11 from one) is refused before anything changes."""
    x, y = data(120, 5, 4, seed=3)
    acc = make()
    for lo, hi in split(120, [40, 80]):
        if isinstance(acc, MinibatchCKAMatrix):
            acc.update([x[lo:hi]], [y[lo:hi]])
        else:
            acc.update(x[lo:hi], y[lo:hi])
    good = acc.state_dict()
    bad = {**good, "state": {**good["state"], entry: change(good["state"][entry].clone())}}
    target = make()
    target.load_state_dict(_loaded(make, good))
    before = target.compute()
    with pytest.raises(IncompatibleStateError, match=message):
        target.load_state_dict(_loaded(make, bad))
    after = target.compute()
    assert torch.equal(torch.as_tensor(after), torch.as_tensor(before))


def test_records_grow_in_amortised_constant_time() -> None:
    """A torch.cat per batch copied every earlier record (5.6 ms an update after 10⁶ batches): the records now
    live in a buffer that doubles, so 2,000 batches reallocate it about log2(2000) times, not 2,000."""
    acc = MinibatchCKA()
    g = torch.Generator().manual_seed(0)
    buffers = set()
    batches = [torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in range(2000)]
    for b in batches:
        acc.update(b, b.tanh())
        buffers.add(acc._room["records"].data_ptr())
    assert len(buffers) <= 12
    records = acc.hsic_records
    assert records.shape == (2000, 3)
    expected = [
        ref.hsic_unbiased(ref.linear_kernel(b.numpy()), ref.linear_kernel(b.tanh().numpy())) for b in batches[:3]
    ]
    np.testing.assert_allclose(records[:3, 0].numpy(), expected, rtol=1e-10)
    copy = MinibatchCKA().load_state_dict(acc.state_dict())  # a loaded state keeps growing the same way
    copy.update(batches[0], batches[0].tanh())
    assert copy.hsic_records.shape == (2001, 3)
    assert torch.equal(copy.hsic_records[:2000], records)


def test_unbiased_cka_of_a_state_with_10_to_the_15_samples() -> None:
    """(n − 1)(n − 2) at n = 10¹⁵ overflows int64: the unbiased terms are combined in floating point."""
    x, y = data(200, 4, 3, seed=2)
    acc = LinearCKA(unbiased=True)
    acc.update(x, y)
    sd = acc.state_dict()
    scale = 5e12  # as if every sample were seen 5·10¹² times: sums scale, the value converges to biased CKA
    state = {k: (v * scale if k not in ("n", "mean", "eps") else v) for k, v in sd["state"].items()}
    state["n"] = torch.tensor([200 * scale], dtype=torch.float64)
    big = LinearCKA(unbiased=True).load_state_dict({**sd, "state": state})
    assert abs(big.compute() - ref.cka(x, y)) < 1e-6


def test_minibatch_matrix_refuses_arrays_where_lists_of_layers_belong() -> None:
    x = torch.randn(32, 6)
    with pytest.raises(InvalidParameterError, match=r"xs is one array of shape \(32, 6\).*update\(\[x\], \[y\]\)"):
        MinibatchCKAMatrix().update(x, x)  # type: ignore[arg-type]


# -- state dicts validated before the swap, empty batches, overflow messages (from the review of 0.2) --------------


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


def test_overflow_message_depends_on_the_state_dtype() -> None:
    big = np.full((8, 2), 1e300) * np.arange(1, 9)[:, None]
    acc = LinearCKA()
    with pytest.raises(reprsim.errors.NonFiniteError, match="Rescale the inputs") as info:
        acc.update(big, big)
    assert "dtype=torch.float64" not in str(info.value)
    large = 3e30 * np.arange(1, 9)[:, None] * np.ones((8, 2))  # finite in float32, its squares are not
    with pytest.raises(reprsim.errors.NonFiniteError, match=r"Use dtype=torch\.float64"):
        LinearCKA(dtype=torch.float32).update(large, np.arange(8.0))


def test_a_state_dict_whose_dims_cannot_be_cross_moments_is_refused_naming_why() -> None:
    acc = reprsim.streaming.CrossMoments()
    acc.update(torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    state = acc.state_dict()
    with pytest.raises(IncompatibleStateError, match=r"dims \[1\] do not describe a CrossMoments: no layers"):
        reprsim.streaming.CrossMoments().load_state_dict({**state, "dims": [1]})
    paired = reprsim.streaming.CrossMoments(groups=[([0], [1])])
    paired.update([torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)])
    with pytest.raises(IncompatibleStateError, match="its groups name layers beyond these widths"):
        reprsim.streaming.CrossMoments(groups=[([0], [1])]).load_state_dict({**paired.state_dict(), "dims": [0, 3]})


def test_checkpoints_that_named_the_groups_blocks_still_load() -> None:
    """Format version 3 (0.2 and before this rename) wrote CrossMoments(blocks=...) as config "blocks"."""
    g = torch.Generator().manual_seed(3)
    layers = [torch.randn(40, w, generator=g, dtype=torch.float64) for w in (3, 2, 4)]
    acc = reprsim.streaming.CrossMoments(groups=[([0], [1, 2])])
    acc.update(layers)
    old = acc.state_dict()
    assert old["version"] == 4
    assert old["config"]["groups"] == [[[0], [1, 2]]]
    old["version"] = 3
    old["config"] = {k if k != "groups" else "blocks": v for k, v in old["config"].items()}
    loaded = reprsim.streaming.CrossMoments(groups=[([0], [1, 2])]).load_state_dict(old)
    assert torch.equal(loaded.compute_matrix("cka"), acc.compute_matrix("cka", group=0))
    with pytest.raises(IncompatibleStateError, match="configurations differ"):
        reprsim.streaming.CrossMoments(groups=[([0], [1])]).load_state_dict(old)
    # LinearCKA shares the state and its format: its version-3 checkpoints load too
    one = reprsim.streaming.LinearCKA()
    one.update(layers[0], layers[1])
    saved = one.state_dict()
    saved["version"] = 3
    saved["config"] = {k if k != "groups" else "blocks": v for k, v in saved["config"].items()}
    assert reprsim.streaming.LinearCKA().load_state_dict(saved).compute() == one.compute()
