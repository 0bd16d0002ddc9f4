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
from reprsim import Extractor, LinearCKA, cka, compare

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
    res = compare(model, model, [x[:100], x[100:]], layers_a=["0", "1"], estimator="exact", progress=False)
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
    res = compare(model, model, [x[:12], x[12:]], layers_a=layers, estimator="exact", progress=False)
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
    got = reprsim.separability(model, train, test, layers=["act"], pools=pools, k=7, probe=True)
    with torch.no_grad():
        ftr, fte = model(x[:100]), model(x[100:])
    for p in pools:
        a, b = reprsim.pool_tokens(ftr, p), reprsim.pool_tokens(fte, p)
        expected = reprsim.knn_accuracy((a, y[:100]), b, y[100:], k=7, topk=(1, 5), num_classes=5)
        probe = reprsim.RidgeProbe(num_classes=5)
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
