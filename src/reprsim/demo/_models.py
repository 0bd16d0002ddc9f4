"""A tiny Vision Transformer with the module names of timm's ViT, and the two self-supervised objectives.

:class:`TinyViT` has a patch embedding, a CLS token, learned position embeddings and pre-norm blocks whose
sub-layers are named like timm's (``blocks.3.norm1``, ``blocks.3.attn.qkv``, ``blocks.3.mlp.fc1``), so the same
layer selections work on it and on a real ViT-B/16. :class:`SimCLRObjective` (contrastive, InfoNCE over two
augmented views) and :class:`MAEObjective` (reconstructive, masked patches) pretrain it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MAEObjective", "SimCLRObjective", "TinyViT", "augment"]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        y: torch.Tensor = self.proj(out.transpose(1, 2).reshape(b, t, d))
        return y


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return y


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        y: torch.Tensor = x + self.mlp(self.norm2(x))
        return y


class TinyViT(nn.Module):
    """A small pre-norm Vision Transformer for 8×8 single-channel images (scikit-learn's digits).

    Parameters
    ----------
    img_size, patch_size, in_chans : int
        8×8 images in 2×2 patches give 16 patch tokens plus a CLS token.
    dim, depth, heads, mlp_ratio : int
        Width, number of blocks, attention heads, MLP expansion.
    num_classes : int
        Size of the classification head (used when fine-tuning).
    """

    def __init__(
        self,
        img_size: int = 8,
        patch_size: int = 2,
        in_chans: int = 1,
        dim: int = 64,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: int = 2,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.num_patches, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens plus position embeddings, with the CLS token first; ``keep`` (b, k) keeps only those
        patches (the MAE encoder's visible set)."""
        p = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        if keep is not None:
            p = p.gather(1, keep[..., None].expand(-1, -1, p.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(p.shape[0], -1, -1)
        return torch.cat([cls, p], dim=1)

    def forward_features(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        t = self.tokens(x, keep)
        for block in self.blocks:
            t = block(t)
        y: torch.Tensor = self.norm(t)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.head(self.forward_features(x)[:, 0])
        return y


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small rotation, scaling and translation, intensity jitter and noise, for 8×8 digit images."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=generator) - 0.5) * (math.pi / 6)
    scale = 0.9 + 0.2 * torch.rand(b, generator=generator)
    shift = (torch.rand(b, 2, generator=generator) - 0.5) * 0.5
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    gain = 0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=generator)
    return out * gain + 0.1 * torch.randn(out.shape, generator=generator)


class SimCLRObjective(nn.Module):
    """Contrastive pretraining: InfoNCE (NT-Xent) between the CLS embeddings of two augmented views."""

    def __init__(self, model: TinyViT, out_dim: int = 32, temperature: float = 0.2) -> None:
        super().__init__()
        dim = model.head.in_features
        self.model = model
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out_dim))
        self.temperature = temperature

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        views = torch.cat([augment(x, generator), augment(x, generator)])
        z = F.normalize(self.projector(self.model.forward_features(views)[:, 0]), dim=1)
        sim = z @ z.T / self.temperature
        n = x.shape[0]
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        return F.cross_entropy(sim, target)


class MAEObjective(nn.Module):
    """Reconstructive pretraining: encode a random 25% of the patches, reconstruct the pixels of the rest."""

    def __init__(self, model: TinyViT, decoder_dim: int = 48, mask_ratio: float = 0.75) -> None:
        super().__init__()
        dim = model.head.in_features
        self.model = model
        self.mask_ratio = mask_ratio
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.randn(1, 1 + model.num_patches, decoder_dim) * 0.02)
        self.decoder = Block(decoder_dim, 4, 2)
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.predict = nn.Linear(decoder_dim, model.patch_size**2)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        p = self.model.patch_size
        b, c, h, w = x.shape
        return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), -1)

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, n = x.shape[0], self.model.num_patches
        keep_n = max(1, round(n * (1 - self.mask_ratio)))
        order = torch.rand(b, n, generator=generator).argsort(dim=1)
        keep, masked = order[:, :keep_n], order[:, keep_n:]
        latent = self.decoder_embed(self.model.forward_features(x, keep))
        full = self.mask_token.expand(b, n, -1).clone()
        full.scatter_(1, keep[..., None].expand(-1, -1, full.shape[-1]), latent[:, 1:])
        tokens = torch.cat([latent[:, :1], full], dim=1) + self.decoder_pos
        pred = self.predict(self.decoder_norm(self.decoder(tokens)))[:, 1:]
        target = self.patchify(x)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        idx = masked[..., None].expand(-1, -1, target.shape[-1])
        return F.mse_loss(pred.gather(1, idx), target.gather(1, idx))
