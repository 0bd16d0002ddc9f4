"""Command line: ``reprsim demo [--quick] [--out DIR] [--models A B]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="reprsim",
        description="Representation similarity for PyTorch.",
        epilog="example: reprsim demo --quick --out demo-out   (a CI-sized run of the ViT study, under a minute)",
    )
    parser.add_argument("--version", action="version", version=f"reprsim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run the contrastive-vs-reconstructive ViT study in miniature, offline",
        description="Pretrain two tiny ViTs on scikit-learn's digits (contrastive and masked-autoencoder), "
        "fine-tune them, compare them with reprsim and write figures and a Markdown report.",
    )
    demo.add_argument("--out", type=Path, default=Path("reprsim-demo"), help="output folder (default: reprsim-demo)")
    demo.add_argument("--quick", action="store_true", help="CI-sized run (under a minute; numbers mean little)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--models",
        nargs=2,
        metavar="MODEL",
        help="compare two timm models instead of the built-in ones: NAME or NAME=CHECKPOINT.pth "
        "(e.g. vit_base_patch16_224=mae.pth vit_base_patch16_224=dino.pth)",
    )
    demo.add_argument("--img-size", type=int, help="input size for --models (default: the model's own)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import DemoSettings, run_demo

        try:
            run_demo(
                DemoSettings(out=args.out, quick=args.quick, seed=args.seed, models=args.models, img_size=args.img_size)
            )
        except ImportError as exc:
            print(f"reprsim demo: {exc}", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
