"""End to end on a CUDA device: every public entry point gives the CPU's numbers, with state on the GPU.

The functional, accumulator and distributed tests also run on CUDA through the ``device`` fixture; this file
covers what they do not: model comparison, extraction, the analyses, and moving state between devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import reprsim
from reprsim import Extractor, SimilarityResult, compare, pool_tokens
from reprsim.measures import CKA
from reprsim.probes import RidgeProbe, knn_accuracy, logistic_probe, prediction_agreement, separability
from reprsim.streaming import LinearCKA, MinibatchCKA, MinibatchCKAMatrix

from . import reference as ref

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


class Tokens(nn.Module):
    """A small token model: (b, 6) -> 5 tokens of width 8 -> two blocks -> a 3-class head on the mean token."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(6, 40)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.GELU()) for _ in range(2)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).reshape(x.shape[0], 5, 8)
        for block in self.blocks:
            t = t + block(t)
        return self.head(t.mean(dim=1))


def models(seeds: tuple[int, ...] = (0, 1)) -> list[nn.Module]:
    return [Tokens(s).double() for s in seeds]


def batches(n: int = 192, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[i : i + size], y[i : i + size]) for i in range(0, n, size)]


LAYERS = ["embed", "blocks.*", "head"]


@pytest.mark.parametrize(
    "measure",
    [CKA(estimator="minibatch"), CKA(estimator="minibatch", kernel="rbf"), CKA(), CKA(unbiased=True), "procrustes"],
)
def test_compare_on_cuda_models_equals_cpu(measure: Any) -> None:
    data = batches()  # CPU batches: compare moves them to each model's device
    cpu = compare(*models(), data, layers=LAYERS, measure=measure, progress=False)
    gpu = compare(*[m.cuda() for m in models()], data, layers=LAYERS, measure=measure, progress=False)
    assert isinstance(cpu, SimilarityResult)
    assert isinstance(gpu, SimilarityResult)
    assert gpu.names_a == cpu.names_a
    np.testing.assert_allclose(gpu.to_numpy(), cpu.to_numpy(), rtol=0, atol=1e-10)


def test_compare_minibatch_on_cuda_equals_reference() -> None:
    data = batches()
    a, b = (m.cuda() for m in models())
    got = compare(a, b, data, layers=["head"], progress=False)
    with torch.no_grad():
        xa = [a(x.cuda()).cpu().numpy() for x, _ in data]
        xb = [b(x.cuda()).cpu().numpy() for x, _ in data]
    assert abs(got.to_numpy()[0, 0] - ref.minibatch_cka(xa, xb)) <= 1e-10


def test_several_models_and_mixed_devices() -> None:
    ms = models((0, 1, 2))
    data = batches()
    cpu = compare({"a": ms[0], "b": ms[1], "c": ms[2]}, data=data, layers=LAYERS, progress=False)
    mixed = compare(
        {"a": models((0,))[0].cuda(), "b": models((1,))[0], "c": models((2,))[0].cuda()},
        data,
        layers=LAYERS,
        progress=False,
    )
    assert isinstance(cpu, dict)
    assert isinstance(mixed, dict)
    for pair, result in cpu.items():
        np.testing.assert_allclose(mixed[pair].to_numpy(), result.to_numpy(), rtol=0, atol=1e-10)


def test_compare_device_argument_refuses_to_move_a_model() -> None:
    a, b = models()
    with pytest.raises(reprsim.errors.DeviceMismatchError, match=r"never moves a model"):
        compare(a, b, batches(), layers=["head"], runtime=reprsim.Runtime(device="cuda"), progress=False)


def test_extractor_returns_activations_on_the_models_device() -> None:
    model = models()[0].cuda()
    x = batches()[0][0].cuda()
    acts = Extractor(model, ["blocks.0", "head"])(x)
    assert {t.device.type for t in acts.values()} == {"cuda"}
    mask = torch.tensor([[1, 1, 0, 0, 1]] * x.shape[0], device="cuda")
    pooled = pool_tokens(acts["blocks.0"], "masked_mean", mask)
    np.testing.assert_allclose(
        pooled.cpu().numpy(), pool_tokens(acts["blocks.0"].cpu(), "masked_mean", mask.cpu()).numpy(), atol=1e-12
    )


def test_result_from_cuda_saves_and_loads(tmp_path: Path) -> None:
    a, b = (m.cuda() for m in models())
    got = compare(a, b, batches(), layers=LAYERS, progress=False)
    assert isinstance(got, SimilarityResult)
    back = SimilarityResult.load(got.save(tmp_path / "r.npz"))
    np.testing.assert_array_equal(back.to_numpy(), got.to_numpy())


def test_accumulator_state_moves_between_devices_and_merges() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(256, 12)) + 3.0, rng.normal(size=(256, 5))
    for make in (LinearCKA, lambda: LinearCKA(unbiased=True), MinibatchCKA, lambda: MinibatchCKA(kernel="rbf")):
        whole = make()
        for lo in range(0, 256, 32):
            whole.update(x[lo : lo + 32], y[lo : lo + 32])
        first, second = make(), make()
        for lo in range(0, 128, 32):
            first.update(torch.from_numpy(x[lo : lo + 32]).cuda(), torch.from_numpy(y[lo : lo + 32]).cuda())
        for lo in range(128, 256, 32):
            second.update(x[lo : lo + 32], y[lo : lo + 32])
        assert abs(first.merge(second).compute() - whole.compute()) <= 1e-10  # CPU state merged into CUDA
        restored = make().load_state_dict(first.state_dict())  # saved from CUDA, loaded with no device yet
        assert abs(restored.compute() - whole.compute()) <= 1e-10
        moved = first.to("cpu")
        moved.update(x[:32], y[:32])  # CPU batches are accepted once the state is on the CPU
    matrix = MinibatchCKAMatrix()
    matrix.update([torch.from_numpy(x[:32]).cuda()], [torch.from_numpy(y[:32]).cuda()])
    with pytest.raises(reprsim.errors.DeviceMismatchError, match=r"state is on cuda"):
        matrix.update([x[32:64]], [y[32:64]])
    assert matrix.num_samples == 32  # the rejected batch left the state as it was


def test_analyses_on_cuda_equal_cpu() -> None:
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(3, 16)) * 2
    labels = rng.integers(0, 3, size=300)
    feats = centers[labels] + rng.normal(size=(300, 16))
    tr, te = slice(0, 200), slice(200, 300)
    f32 = torch.tensor(feats, dtype=torch.float32)
    lab = torch.tensor(labels)
    cpu = knn_accuracy((f32[tr], lab[tr]), f32[te], lab[te], k=10)
    gpu = knn_accuracy((f32[tr].cuda(), lab[tr].cuda()), f32[te].cuda(), lab[te].cuda(), k=10)
    assert gpu == pytest.approx(cpu, abs=1e-12)
    probes = []
    for dev in ("cpu", "cuda"):
        probe = RidgeProbe(num_classes=3)
        probe.update(f32[tr].to(dev), lab[tr].to(dev))
        probes.append(probe.accuracy(f32[te].to(dev), lab[te].to(dev)))
    assert probes[0] == probes[1]
    cpu_lr = logistic_probe(f32[tr], lab[tr], f32[te], lab[te])
    gpu_lr = logistic_probe(f32[tr].cuda(), lab[tr].cuda(), f32[te].cuda(), lab[te].cuda())
    assert abs(cpu_lr["accuracy"] - gpu_lr["accuracy"]) <= 0.02  # L-BFGS in float32 may stop a step apart
    scores_a = torch.randn(300, 10, generator=torch.Generator().manual_seed(1))
    scores_b = scores_a + 0.5 * torch.randn(300, 10, generator=torch.Generator().manual_seed(2))
    y10 = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(3))
    cpu_pa = prediction_agreement(scores_a, scores_b, y10)
    gpu_pa = prediction_agreement(scores_a.cuda(), scores_b.cuda(), y10.cuda())
    for group, metrics in cpu_pa.items():
        assert gpu_pa[group] == pytest.approx(metrics, abs=1e-6), group


def test_separability_with_a_cuda_model() -> None:
    model = models()[0]
    data = batches()
    cpu = separability(model, data[:4], data[4:], layers=["blocks.*"], pool=("mean", "flatten"), k=5)
    gpu = separability(model.cuda(), data[:4], data[4:], layers=["blocks.*"], pool=("mean", "flatten"), k=5)
    assert gpu.keys() == cpu.keys()
    for pool in cpu:
        assert gpu[pool].keys() == cpu[pool].keys()
        for layer in cpu[pool]:
            assert gpu[pool][layer] == pytest.approx(cpu[pool][layer], abs=1e-12)
