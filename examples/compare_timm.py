"""Compare two timm Vision Transformers block by block and sub-layer by sub-layer, and save the heatmaps.

Random weights here (pretrained=False) so that it runs offline; with pretrained checkpoints (e.g. MAE and DINO
ViT-B/16) the same code reproduces the layer and sub-layer CKA of Shekhar et al. (2022).
"""

import matplotlib

matplotlib.use("Agg")
import timm
import torch

from reprsim import compare

torch.manual_seed(0)
vit_a = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=4)
vit_b = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=4)
images = [torch.randn(32, 3, 32, 32) for _ in range(4)]  # stand-in for a DataLoader of images

blocks = compare(vit_a, vit_b, images, layers_a="blocks.*", pool="mean_no_cls", model_names=("ViT A", "ViT B"))
print(blocks)
blocks.plot().figure.savefig("vit_blocks.png")

# sub-layers: the attention's qkv projection, the first LayerNorm and the first MLP linear of every block
sublayers = compare(
    vit_a,
    vit_b,
    images,
    layers_a=["blocks.*.attn.qkv", "blocks.*.norm1", "blocks.*.mlp.fc1"],
    pool="mean_no_cls",
    model_names=("ViT A", "ViT B"),
)
for kind in ("attn.qkv", "norm1", "mlp.fc1"):
    same_block = [sublayers[f"blocks.{i}.{kind}", f"blocks.{i}.{kind}"] for i in range(4)]
    print(f"{kind:9s}", " ".join(f"{v:.3f}" for v in same_block))
