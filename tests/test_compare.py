"""Extraction and model comparison on toy models with known answers and on plain torch architectures."""

from __future__ import annotations

import copy
import gc
import sys
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import reprsim
from reprsim import Extractor, SimilarityResult, Uncertainty, compare, list_layers
from reprsim.errors import InvalidParameterError, LayerNotFoundError, MultipleCallsError, ShapeMismatchError
from reprsim.measures import CKA
from reprsim.streaming import MinibatchCKAMatrix
from tests import reference as ref
from tests.toys import batches, hand_extract, mlp


def rotated_copy(net: nn.Sequential) -> nn.Sequential:
    """A copy whose first Linear output is an orthogonal rotation of the original's (and whose later layers
    are changed: the ReLU does not commute with the rotation)."""
    other = copy.deepcopy(net)
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        other[0].weight.copy_(q @ net[0].weight)
        other[0].bias.copy_(q @ net[0].bias)
    return other


LAYERS = ["0", "1", "2", "3", "4"]


# -- known answers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("measure", ["cka_minibatch", "cka", "cka_unbiased", "nbs", "svcca"])
def test_model_with_itself_has_unit_diagonal_and_runs_once(measure: str) -> None:
    net = mlp()
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    data = batches()
    result = compare(net, None, data, layers_a=LAYERS, measure=measure, progress=False)
    assert len(calls) == len(data)  # one forward per batch, not two
    np.testing.assert_allclose(np.diag(result.to_numpy()), 1.0, atol=1e-12)
    np.testing.assert_allclose(result.to_numpy(), result.to_numpy().T, atol=1e-12)
    assert result.names_a == LAYERS
    assert result.metadata["samples"] == 256
    assert result.metadata["batches"] == 8


@pytest.mark.parametrize("measure", ["cka_minibatch", "cka"])
def test_rotated_layer_has_cka_one_and_later_layers_do_not(measure: str) -> None:
    net = mlp()
    other = rotated_copy(net)
    result = compare(net, other, batches(), layers_a=LAYERS, measure=measure, progress=False)
    assert abs(result["0", "0"] - 1.0) < 1e-12
    assert result["1", "1"] < 0.999  # ReLU does not commute with a rotation


def test_compare_equals_hand_written_loop_and_cka_matrix() -> None:
    net, other = mlp(0), mlp(1)
    data = batches()
    a, b = hand_extract(net, LAYERS, data), hand_extract(other, LAYERS, data)
    exact = compare(net, other, data, layers_a=LAYERS, measure="cka", progress=False)
    expected = reprsim.cka_matrix(list(a.values()), list(b.values()))
    torch.testing.assert_close(exact.matrix, expected, rtol=0, atol=1e-10)
    unbiased = compare(net, other, data, layers_a=LAYERS, measure="cka_unbiased", progress=False)
    torch.testing.assert_close(
        unbiased.matrix, reprsim.cka_matrix(list(a.values()), list(b.values()), unbiased=True), rtol=0, atol=1e-10
    )
    one_batch = compare(net, other, [torch.cat(data)], layers_a=LAYERS, measure="cka_minibatch", progress=False)
    torch.testing.assert_close(
        one_batch.matrix, reprsim.cka_matrix(list(a.values()), list(b.values()), unbiased=True), rtol=0, atol=1e-10
    )
    acc = MinibatchCKAMatrix()
    for lo in range(0, 256, 32):
        acc.update([v[lo : lo + 32] for v in a.values()], [v[lo : lo + 32] for v in b.values()])
    streamed = compare(net, other, data, layers_a=LAYERS, measure="cka_minibatch", progress=False)
    torch.testing.assert_close(streamed.matrix, acc.compute(), rtol=0, atol=1e-12)


def wide_mlp(seed: int) -> nn.Sequential:
    """A hidden layer of 8,200 features: more than the 8,192 that exact moments take."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 8200), nn.Tanh(), nn.Linear(8200, 3)).double()


def test_the_default_measure_is_exact_cka_where_widths_allow_and_minibatch_beyond(tmp_path: Path) -> None:
    # narrow layers: exact linear CKA, against the functional form on every activation
    net, other = mlp(0), mlp(1)
    data = batches()
    a, b = hand_extract(net, LAYERS, data), hand_extract(other, LAYERS, data)
    narrow = compare(net, other, data, layers_a=LAYERS, progress=False)
    torch.testing.assert_close(narrow.matrix, reprsim.cka_matrix(list(a.values()), list(b.values())), rtol=0,
                               atol=1e-10)  # fmt: skip
    assert narrow.measure["id"] == "cka-kernel=linear-hsic=gretton-score"
    assert narrow.metadata["default_measure"] == "cka (every pooled width is at most 8,192)"
    # one layer beyond 8,192: minibatch CKA for every cell, against the accumulator fed by hand
    wa, wb = wide_mlp(0), wide_mlp(1)
    data = batches(n=96)
    a, b = hand_extract(wa, ["0", "1", "2"], data), hand_extract(wb, ["0", "1", "2"], data)
    acc = MinibatchCKAMatrix()
    for lo in range(0, 96, 32):
        acc.update([v[lo : lo + 32] for v in a.values()], [v[lo : lo + 32] for v in b.values()])
    wide = compare(wa, wb, data, layers_a=["0", "1", "2"], progress=False)
    torch.testing.assert_close(wide.matrix, acc.compute(), rtol=0, atol=1e-12)
    assert wide.measure["id"] == "cka-kernel=linear-hsic=song-estimator=minibatch-score"
    assert wide.metadata["default_measure"] == (
        "cka_minibatch (model A:0 has 8,200 features after pooling, more than exact CKA's 8,192)"
    )
    # narrow enough, but 20 blocks of exact moments for an interval would not fit in memory: minibatch CKA too
    torch.manual_seed(3)
    ma, mb = nn.Sequential(nn.Linear(10, 3500), nn.Tanh()).double(), nn.Sequential(nn.Linear(10, 3500)).double()
    held = compare(ma, mb, data, layers_a=["0"], layers_b=["0"], uncertainty=Uncertainty(ci=0.9), progress=False)
    assert held.metadata["default_measure"] == (
        "cka_minibatch (exact CKA's moments for these layers, with 20 blocks for the interval, would take "
        "5.48 GiB, more than 4 GiB)"
    )
    with pytest.raises(InvalidParameterError, match=r"permutations= needs exact CKA.*8,200 features.*pool="):
        compare(wa, wb, data, layers_a=["0"], uncertainty=Uncertainty(permutations=9), progress=False)
    # a named measure is never replaced: exact CKA on the wide layer is refused, naming the fix
    with pytest.raises(InvalidParameterError, match=r"limit 8192.*cka_minibatch"):
        compare(wa, wb, data, layers_a=["0"], measure="cka", progress=False)
    # the stored counterpart and the CLI follow the same rule
    with reprsim.StoreWriter(tmp_path / "a") as w:
        w.write({"narrow": a["2"], "wide": a["0"]})
    with reprsim.StoreWriter(tmp_path / "b") as w:
        w.write({"narrow": b["2"]})
    stored = reprsim.compare_stores(tmp_path / "a", tmp_path / "b", layers_a=["narrow"], progress=False)
    assert stored.metadata["default_measure"].startswith("cka (")
    assert float(stored["narrow", "narrow"]) == pytest.approx(float(reprsim.cka(a["2"], b["2"])), abs=1e-12)
    stored = reprsim.compare_stores(tmp_path / "a", tmp_path / "b", chunk_rows=32, progress=False)
    assert stored.metadata["default_measure"].startswith("cka_minibatch (a:wide has 8,200 features")
    torch.testing.assert_close(stored.matrix[:, 0], acc.compute()[[2, 0], 2], rtol=0, atol=1e-12)


def test_cnn_channel_permutation_gives_one_and_mean_pooling() -> None:
    torch.manual_seed(2)
    cnn = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    perm = torch.randperm(8)
    other = copy.deepcopy(cnn)
    with torch.no_grad():  # permute conv1's output channels and conv2's input channels: same function
        other[0].weight.copy_(cnn[0].weight[perm])
        other[0].bias.copy_(cnn[0].bias[perm])
        other[2].weight.copy_(cnn[2].weight[:, perm])
    data = [torch.randn(16, 3, 8, 8) for _ in range(4)]
    for pool in ("flatten", "mean"):
        r = compare(cnn, other, data, layers_a=["0", "2", "6"], pool=pool, progress=False)
        np.testing.assert_allclose(np.diag(r.to_numpy()), 1.0, atol=1e-5)
    acts = Extractor(cnn, ["0", "2"], pool="mean")(data[0])
    assert acts["0"].shape == (16, 8)
    torch.testing.assert_close(acts["2"], cnn[:3](data[0]).mean(dim=(2, 3)))


def test_transformer_encoder_layers() -> None:
    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True, dropout=0.1)
    enc = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)
    noisy = copy.deepcopy(enc)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    data = [torch.randn(16, 10, 32) for _ in range(4)]
    enc.train()
    self_r = compare(enc, None, data, layers_a="layers.*", pool="mean", progress=False)
    assert enc.training  # restored after comparing in eval mode
    np.testing.assert_allclose(np.diag(self_r.to_numpy()), 1.0, atol=1e-5)  # dropout off: deterministic
    r = compare(enc, noisy, data, layers_a="layers.*", pool="cls", progress=False)
    assert r.names_a == ["layers.0", "layers.1", "layers.2"]
    assert np.isfinite(r.to_numpy()).all()
    assert r["layers.0", "layers.0"] < 0.999


# -- extraction mechanics --------------------------------------------------------------------------------


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.block(x))))


def test_module_called_twice_is_rejected_or_recorded_per_call() -> None:
    model = Shared()
    x = torch.randn(8, 6)
    with pytest.raises(MultipleCallsError, match=r"layer 'block' ran more than once.*calls='each'.*'block#0'"):
        Extractor(model, ["block"])(x)
    acts = Extractor(model, ["block", "head"], calls="each")(x)
    assert list(acts) == ["block#0", "block#1", "head"]
    first = model.block(x)
    torch.testing.assert_close(acts["block#0"], first.detach())
    torch.testing.assert_close(acts["block#1"], model.block(torch.relu(first)).detach())
    torch.testing.assert_close(Extractor(model, ["block"], calls="last")(x)["block"], acts["block#1"])
    each = Extractor(model, ["block"], calls="each")
    result = compare(each, None, [torch.randn(8, 6) for _ in range(3)], progress=False)
    assert result.names_a == ["block#0", "block#1"]


def test_unknown_layers_suggest_close_names() -> None:
    net = nn.Sequential()
    net.add_module("encoder", nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    net.add_module("head", nn.Linear(4, 2))
    with pytest.raises(LayerNotFoundError, match=r"no layer 'encodr.0'; did you mean 'encoder.0'"):
        Extractor(net, ["encodr.0"])
    with pytest.raises(LayerNotFoundError, match=r"no layer of Sequential matches the pattern 'blocks.\*'"):
        Extractor(net, "blocks.*")
    assert Extractor(net, "encoder.*").layers == ["encoder.0", "encoder.1"]  # '*' stays within one level
    assert Extractor(net, "**").layers == ["encoder", "encoder.0", "encoder.1", "head"]
    assert Extractor(net, nn.Linear).layers == ["encoder.0", "head"]
    assert Extractor(net, lambda name, m: name.startswith("h")).layers == ["head"]
    import re

    assert Extractor(net, re.compile(r"encoder\.\d")).layers == ["encoder.0", "encoder.1"]


def test_integer_layer_indices_count_the_rows_of_list_layers() -> None:
    net = nn.Sequential()
    net.add_module("encoder", nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    net.add_module("head", nn.Linear(4, 2))
    rows = [info.name for info in list_layers(net)]
    assert rows == ["encoder", "encoder.0", "encoder.1", "head"]
    assert Extractor(net, -1).layers == ["head"]
    assert Extractor(net, [0, -2, "head", 3]).layers == ["encoder", "encoder.1", "head"]  # duplicates once
    with pytest.raises(LayerNotFoundError, match=r"4 modules, so layer index 4 is out of range \(from -4 to 3"):
        Extractor(net, [4])
    with pytest.raises(LayerNotFoundError, match=r"index -5 is out of range"):
        Extractor(net, -5)
    with pytest.raises(reprsim.errors.InvalidParameterError, match="an integer index"):
        Extractor(net, [True])
    x = [torch.randn(16, 4) for _ in range(2)]
    by_index = compare(net, None, x, layers_a=[-1, 1], progress=False)
    by_name = compare(net, None, x, layers_a=["head", "encoder.0"], progress=False)
    assert by_index.names_a == ["head", "encoder.0"]
    torch.testing.assert_close(by_index.matrix, by_name.matrix, rtol=0, atol=0)


def test_list_layers_shows_types_calls_and_shapes() -> None:
    model = Shared()
    table = list_layers(model, torch.randn(3, 6))
    rows = {i.name: i for i in table}
    assert rows["block"].calls == 2
    assert rows["head"].output_shape == (3, 2)
    assert "block" in repr(table)
    assert "Linear" in repr(table)
    assert [i.name for i in list_layers(model)] == ["block", "head"]


def test_input_capture_and_select() -> None:
    class TwoOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.lin(x), "features": x * 2}

    outer = nn.Sequential()
    outer.add_module("inner", TwoOut())
    x = torch.randn(5, 4)
    assert torch.equal(Extractor(outer, ["inner"])(x)["inner"], outer.inner.lin(x).detach())  # first tensor
    assert torch.equal(Extractor(outer, ["inner"], select="features")(x)["inner"], x * 2)
    assert torch.equal(Extractor(outer, ["inner.lin"], capture="input")(x)["inner.lin"], x)


def test_stop_early_skips_later_layers_and_gives_the_same_result() -> None:
    net = mlp()
    last = []
    net[4].register_forward_hook(lambda *a: last.append(1))
    data = batches()
    early = compare(Extractor(net, ["0", "2"], stop_early=True), mlp(1), data, layers_b=["0", "2"], progress=False)
    assert not last  # the final Linear of net never ran
    full = compare(net, mlp(1), data, layers_a=["0", "2"], progress=False)
    torch.testing.assert_close(early.matrix, full.matrix, rtol=0, atol=0)


def test_hooks_removed_and_training_restored_after_an_exception() -> None:
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.drop(self.a(x))
            if x.shape[0] == 3:
                raise RuntimeError("boom in forward")
            return y

    model = Boom()
    model.train()
    model.drop.eval()  # a submodule in a different mode than its parent must keep it
    data = [torch.randn(8, 4), torch.randn(3, 4)]
    with pytest.raises(RuntimeError, match="boom in forward"):
        compare(model, None, data, layers_a=["a", "drop"], progress=False)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert model.training
    assert model.a.training
    assert not model.drop.training


def test_no_activation_outlives_its_batch() -> None:
    net = mlp()
    refs: list[weakref.ref[torch.Tensor]] = []
    alive_per_batch: list[int] = []

    def tracking_pool(t: torch.Tensor) -> torch.Tensor:
        out = t.reshape(t.shape[0], -1).clone()
        gc.collect()
        alive_per_batch.append(sum(r() is not None for r in refs))
        refs.append(weakref.ref(out))
        return out

    data = batches(n=512)
    compare(net, mlp(1), data, layers_a=["0", "2"], pool=tracking_pool, progress=False)
    gc.collect()
    assert all(r() is None for r in refs)
    # while running, at most the current batch's activations (2 layers x 2 models) are alive
    assert max(alive_per_batch) <= 3


def test_inputs_adapters_feed_each_model_its_own_preprocessing() -> None:
    net = mlp()
    scaled = copy.deepcopy(net)
    with torch.no_grad():
        scaled[0].weight.mul_(0.5)  # expects inputs twice as large
    data = batches()
    r = compare(net, Extractor(scaled, LAYERS, inputs=lambda b: b * 2), data, layers_a=LAYERS, progress=False)
    np.testing.assert_allclose(np.diag(r.to_numpy()), 1.0, atol=1e-12)


def test_extractors_carry_their_own_settings_and_share_a_forward_pass_when_they_agree() -> None:
    """compare() takes Extractor objects for models with their own extraction settings; extractors of one model
    with the same settings share one forward pass per batch, and different settings run it separately."""
    net, data = mlp(0), batches(n=96)
    runs: list[int] = []
    net.register_forward_hook(lambda *a: runs.append(1))
    # the input of layer "2" is the output of layer "1": two settings of one model, so two forwards per batch
    out = compare(
        {"relu out": Extractor(net, ["1"]), "linear in": Extractor(net, ["2"], capture="input")},
        data=data,
        measure="cka",
        progress=False,
    )
    assert len(runs) == 2 * len(data)
    assert out[("relu out", "linear in")].matrix.item() == pytest.approx(1.0, abs=1e-12)
    assert out[("relu out", "linear in")].metadata["capture"] == {"relu out": "output", "linear in": "input"}
    # the same settings (here, those of the bare-module sugar): one forward per batch, the union of the layers
    runs.clear()
    shared = compare(Extractor(net, ["0", "2"]), net, data, layers_b=["4"], measure="cka", progress=False)
    assert len(runs) == len(data)
    acts = hand_extract(net, ["0", "2", "4"], data)
    for i, la in enumerate(["0", "2"]):
        want = ref.cka(acts[la].numpy(), acts["4"].numpy())
        assert float(shared.matrix[i, 0]) == pytest.approx(want, abs=1e-12)
    assert shared.metadata["pool"] == "flatten"
    # an Extractor's transform runs before the Grams that minibatch CKA builds inside the hooks
    other = mlp(1)
    absolute = compare(
        Extractor(net, LAYERS, transform=lambda name, t: t.abs()),
        other,
        data,
        layers_b=LAYERS,
        measure="cka_minibatch",
        progress=False,
    )
    a, b = hand_extract(net, LAYERS, data), hand_extract(other, LAYERS, data)
    by_hand = MinibatchCKAMatrix()
    for rows in torch.split(torch.arange(96), 32):
        by_hand.update([a[k][rows].abs() for k in LAYERS], [b[k][rows] for k in LAYERS])
    torch.testing.assert_close(absolute.matrix, by_hand.compute(), rtol=0, atol=1e-12)


def test_extractor_settings_are_given_once() -> None:
    net, data = mlp(0), batches(n=64)
    with pytest.raises(InvalidParameterError, match=r"'model A' is an Extractor, which selects its own layers"):
        compare(Extractor(net, ["0"]), net, data, layers_a=["2"], progress=False)
    with pytest.raises(InvalidParameterError, match=r"'b' is an Extractor, which selects its own layers"):
        compare({"a": net, "b": Extractor(net, ["0"])}, data=data, layers={"a": ["0"], "b": ["2"]}, progress=False)
    with pytest.raises(InvalidParameterError, match=r"pool= applies to bare modules, and every model here is an"):
        compare(Extractor(net, ["0"]), Extractor(mlp(1), ["0"]), data, pool="mean", progress=False)
    with pytest.raises(InvalidParameterError, match=r"no layers selected for 'model B'"):
        compare(Extractor(net, ["0"]), mlp(1), data, progress=False)
    with pytest.raises(InvalidParameterError) as caught:
        compare(net, None, data, layers_a=["0"], capture="input", inputs_b=torch.neg, progress=False)  # type: ignore[call-overload]
    message = str(caught.value)
    assert "instead of capture=, pass the model as reprsim.Extractor(model, layers, capture='input')" in message
    assert "instead of inputs_b=, pass model_b as reprsim.Extractor(model, layers, inputs=<the adapter>)" in message


def test_tuple_and_dict_batches() -> None:
    net = mlp()
    data = batches()
    plain = compare(net, mlp(1), data, layers_a=LAYERS, progress=False)
    tuples = compare(net, mlp(1), [(b, torch.zeros(len(b))) for b in data], layers_a=LAYERS, progress=False)
    torch.testing.assert_close(plain.matrix, tuples.matrix, rtol=0, atol=0)

    class KW(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return self.inner(x * scale)

    kw = compare(KW(net), KW(mlp(1)), [{"x": b} for b in data], layers_a=[f"inner.{n}" for n in LAYERS], progress=False)
    torch.testing.assert_close(plain.matrix, kw.matrix, rtol=0, atol=0)


def test_three_models_run_once_each_and_match_pairwise_calls() -> None:
    models = {"a": mlp(0), "b": mlp(1), "c": mlp(2)}
    counts = {k: 0 for k in models}
    for k, m in models.items():
        m.register_forward_hook(lambda *a, k=k: counts.__setitem__(k, counts[k] + 1))
    data = batches()
    results = compare(models, data=data, layers=LAYERS, progress=False)
    assert set(results) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert counts == {"a": len(data), "b": len(data), "c": len(data)}
    for (x, y), res in results.items():
        pair = compare(models[x], models[y], data, layers_a=LAYERS, model_names=(x, y), progress=False)
        torch.testing.assert_close(res.matrix, pair.matrix, rtol=0, atol=1e-12)
        assert (res.model_a, res.model_b) == (x, y)


def test_different_layer_sets_on_one_model_run_once() -> None:
    net = mlp()
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    data = batches()
    r = compare(net, net, data, layers_a=["0", "2"], layers_b=["2", "4"], progress=False)
    assert len(calls) == len(data)
    assert (r.names_a, r.names_b) == (["0", "2"], ["2", "4"])
    assert abs(r["2", "2"] - 1.0) < 1e-12


def test_exact_estimator_refuses_huge_widths_and_old_keywords() -> None:
    net = nn.Sequential(nn.Linear(4, 9000))
    with pytest.raises(reprsim.errors.InvalidParameterError, match=r"9000 features after pooling \(limit 8192\)"):
        compare(net, None, [torch.randn(8, 4)], layers_a=["0"], measure="cka", progress=False)
    with pytest.raises(reprsim.errors.InvalidParameterError, match="instead of kernel=, pass"):
        compare(net, None, [torch.randn(8, 4)], layers_a=["0"], kernel="rbf", progress=False)


def test_runtime_is_one_checked_frozen_value_and_changes_no_number(tmp_path: Path) -> None:
    """Devices, eval mode, feature memory and torchrun settings are one Runtime value: checked where written,
    refused under their old keywords with the replacement, and without effect on the numbers."""
    import dataclasses

    from reprsim import Runtime, StoreWriter, compare_stores

    net, other, data = mlp(0), mlp(1), batches(n=96)
    r = Runtime(device="cpu", feature_memory=0)
    assert r.device == torch.device("cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.eval = False  # type: ignore[misc]
    plain = compare(net, other, data, layers_a=LAYERS, measures=["cka", "rsa"], progress=False)
    # features spilled to disk at once, batches sent to the CPU explicitly: the same numbers to the last digit
    spilled = compare(net, other, data, layers_a=LAYERS, measures=["cka", "rsa"], runtime=r, progress=False)
    for key in ("cka", "rsa"):
        torch.testing.assert_close(plain[key].matrix, spilled[key].matrix, rtol=0, atol=0)
    assert spilled["rsa"].metadata["features"].startswith("spilled to memory-mapped temporary files")
    for bad, message in (
        (dict(device="nope"), "device must be a torch device"),
        (dict(eval=1), "eval must be"),
        (dict(feature_memory=-1), "feature_memory must be an integer ≥ 0"),
        (dict(distributed="yes"), "distributed must be True, False or None"),
        (dict(shard="rows"), "shard must be 'auto', 'batches' or 'data'"),
    ):
        with pytest.raises(InvalidParameterError, match=message):
            Runtime(**bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match=r"runtime= takes a Runtime .* got str"):
        compare(net, None, data, layers_a=["1"], runtime="cpu", progress=False)  # type: ignore[call-overload]
    with pytest.raises(InvalidParameterError) as caught:
        compare(net, None, data, layers_a=["1"], device="cpu", feature_memory=0, ci=0.9, progress=False)  # type: ignore[call-overload]
    message = str(caught.value)
    assert (
        "instead of device=, feature_memory=, pass runtime=reprsim.Runtime(device='cpu', feature_memory=0)" in message
    )
    assert "instead of ci=, pass uncertainty=reprsim.Uncertainty(ci=0.9)" in message
    with StoreWriter(tmp_path / "s") as w:
        w.write({"x": np.random.default_rng(0).normal(size=(40, 3))})
    with pytest.raises(
        InvalidParameterError, match=r"instead of device=, pass runtime=reprsim\.Runtime\(device='cpu'\)"
    ):
        compare_stores(tmp_path / "s", device="cpu", progress=False)
    with pytest.raises(
        InvalidParameterError, match=r"Runtime's \['eval', 'feature_memory'\] concern models and batches"
    ):
        compare_stores(tmp_path / "s", runtime=Runtime(eval=False, feature_memory=0), progress=False)
    stored = compare_stores(tmp_path / "s", runtime=Runtime(device="cpu", distributed=False), progress=False)
    assert stored.matrix.device == torch.device("cpu")


def test_rbf_minibatch_compare_runs() -> None:
    net = mlp()
    r = compare(
        net,
        rotated_copy(net),
        batches(),
        layers_a=LAYERS,
        measure=CKA(estimator="minibatch", kernel="rbf"),
        progress=False,
    )
    assert abs(r["0", "0"] - 1.0) < 1e-10  # RBF with median bandwidth is rotation invariant too


# -- results ---------------------------------------------------------------------------------------------


def test_result_save_load_roundtrip_and_no_pickle(tmp_path: Path) -> None:
    r = compare(mlp(0), mlp(1), batches(), layers_a=LAYERS, model_names=("resnet-ish", "other"), progress=False)
    path = r.save(tmp_path / "cmp")
    assert path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as f:
        assert set(f.files) == {"matrix", "names_a", "names_b", "metadata"}
    back = SimilarityResult.load(path)
    torch.testing.assert_close(back.matrix, r.matrix, rtol=0, atol=0)
    assert back.names_a == r.names_a
    assert back.metadata == r.metadata
    assert "resnet-ish [5 layers] x other [5 layers]" in repr(r)


def test_result_plot_puts_model_a_on_the_y_axis(tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    r = compare(mlp(0), mlp(1), batches(), layers_a=LAYERS, layers_b=["0", "2"], model_names=("A", "B"), progress=False)
    ax = r.plot()
    assert ax.get_ylabel() == "A"
    assert ax.get_xlabel() == "B"
    assert [t.get_text() for t in ax.get_yticklabels()] == LAYERS
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2"]
    out = tmp_path / "heat.png"
    ax.figure.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nan_activations_are_named_by_model_and_layer() -> None:
    net = mlp()
    with torch.no_grad():
        net[2].bias[0] = float("nan")
    with pytest.raises(reprsim.errors.NonFiniteError, match=r"model A: layers \['2', '3', '4'\] produced NaN"):
        compare(net, mlp(1), batches(), layers_a=LAYERS, measure="cka_minibatch", progress=False)


def test_extractor_transform_runs_inside_the_hook() -> None:
    net = mlp()
    x = batches()[0]
    seen = []
    acts = Extractor(net, ["0", "2"], transform=lambda name, t: seen.append(name) or t.sum(dim=1, keepdim=True))(x)
    assert seen == ["0", "2"]
    torch.testing.assert_close(acts["2"], net[:3](x).sum(dim=1, keepdim=True))


@pytest.mark.parametrize(
    ("measure", "layers", "extras"),
    [
        ("procrustes", ["0"], {}),
        ("procrustes", ["0", "2"], {"uncertainty": Uncertainty(ci=0.9, permutations=99)}),
        ("cka", LAYERS, {"uncertainty": Uncertainty(ci=0.9, permutations="moments")}),
        ("rsa", LAYERS, {}),
    ],
    ids=["distance-1x1", "distance-2x2-ci-p", "cka-ci-p", "rsa"],
)
def test_heatmaps_keep_every_label_on_the_canvas(measure: str, layers: list[str], extras: dict[str, Any]) -> None:
    """The default figure of ``plot()`` (which the CLI saves) and a figure with long layer names: the colour
    bar's label (a distance's has a second line), the title with its notes and every tick label are drawn inside
    the canvas. The CLI's Procrustes heatmap used to cut its colour-bar label off at the top."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import overflow

    r = compare(mlp(0), mlp(1), batches(), layers_a=layers, measure=measure, progress=False, **extras)
    long = SimilarityResult(
        r.matrix, [f"encoder.layers.{i}.mlp.fc2" for i in range(len(layers))], r.names_b, r.metadata,
        low=r.low, high=r.high, p_values=r.p_values, chance=r.chance,
    )  # fmt: skip
    for result in (r, long):
        ax = result.plot()
        try:
            assert overflow(ax.figure) == []
        finally:
            plt.close(ax.figure)


def test_diagonal_plot_draws_the_matched_cells_with_their_intervals_and_chance() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import overflow

    r = compare(
        mlp(0),
        mlp(1),
        batches(),
        layers_a=LAYERS,
        measure="cka",
        uncertainty=Uncertainty(ci=0.9, permutations="moments"),
        progress=False,
    )
    ax = r.plot_diagonal()
    try:
        line = ax.lines[0]
        np.testing.assert_array_equal(line.get_ydata(), r.matrix.numpy().diagonal())
        band = ax.collections[0].get_paths()[0].vertices[:, 1]  # the interval band's outline
        assert band.min() == pytest.approx(float(r.low.diagonal().min()))
        assert band.max() == pytest.approx(float(r.high.diagonal().max()))
        chance = [ln for ln in ax.lines if ln.get_label() == "chance (null mean)"]
        np.testing.assert_array_equal(chance[0].get_ydata(), r.chance.numpy().diagonal())
        weak = r.p_values.diagonal() > 0.05
        open_marks = [ln for ln in ax.lines if ln.get_label() == "p > 0.05"]
        assert len(open_marks) == int(weak.any())
        assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS
        assert overflow(ax.figure) == []
    finally:
        plt.close(ax.figure)
    other = compare(mlp(0), mlp(1), batches(), layers_a=["0", "2"], layers_b=["2", "4", "0"], progress=False)
    ax = other.plot_diagonal()
    try:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0 / 2", "2 / 4"]  # min(2, 3) matched cells
        assert len(ax.lines[0].get_ydata()) == 2
    finally:
        plt.close(ax.figure)


def test_calibrated_heatmap_draws_the_calibrated_scores_on_a_fixed_scale() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import overflow

    r = compare(
        mlp(0),
        mlp(1),
        batches(),
        layers_a=LAYERS,
        measure="cka",
        uncertainty=Uncertainty(permutations="moments"),
        progress=False,
    )
    assert r.calibrated is not None
    ax = r.plot(calibrated=True)
    try:
        image = ax.images[0]
        np.testing.assert_array_equal(image.get_array(), r.calibrated.numpy())
        assert image.get_clim() == (0.0, 1.0)
        label = ax.figure.axes[-1].get_ylabel()
        assert label.startswith("calibrated linear CKA")
        assert "0: chance at α = 0.05" in label
        assert overflow(ax.figure) == []
    finally:
        plt.close(ax.figure)
    plain = compare(mlp(0), mlp(1), batches(), layers_a=LAYERS, measure="cka", progress=False)
    with pytest.raises(reprsim.errors.InvalidParameterError, match="permutations='moments'"):
        plain.plot(calibrated=True)


# -- what a newcomer meets in the first hour (issue 25): errors with the fix, progress ----------------------


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
    compare(mlp(0), mlp(1), batches(n=64), layers_a=["1", "3"], measures=["cka", "mutual_knn"],
            uncertainty=Uncertainty(ci=0.9), progress=True)  # fmt: skip
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


# -- captured activations, one model in two threads, result files, NaN from a model (from the review of 0.2) -------


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
