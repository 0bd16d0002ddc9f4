"""Command line: ``reprsim compare``, ``reprsim info``, ``reprsim demo``.

Exit codes, for scripts: 0 success; 2 a usage error (an unknown option or measure name); 3 an optional
dependency missing (the message names the extra to install); 4 an input that cannot be compared (a missing,
incomplete, truncated or mismatched store or file; the message names the file and the fix); 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE, EXIT_MISSING, EXIT_INPUT = 2, 3, 4

COMPARE_EXAMPLES = """examples:
  reprsim compare run1/vit.store run2/vit.store --measure cka --measure procrustes --out result.npz
  reprsim compare a.npz b.safetensors --measure cka --layers-a 'blocks.*' --ci 0.95 --plot cka.png
  reprsim compare acts.store --measure cka_unbiased          (every layer of one store against every other)

inputs: activation store folders (written by reprsim.StoreWriter or compare(..., stores=...)), or .npy,
.npz, .safetensors, .h5/.hdf5 (needs h5py) and .mat files (needs scipy; v7.3 needs h5py) with one (n, width)
array per layer. Stores with sample IDs must hold the same IDs in the same order, unless --align reorders the
second by ID; files without IDs are matched by position.

measure: without --measure, exact CKA where its moments fit, else minibatch CKA (the rule compare() follows);
the choice is printed.

exit codes: 0 success, 2 usage error, 3 missing optional dependency, 4 input error (the message names the
file and the fix), 1 anything else."""


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="reprsim",
        description="Representation similarity for PyTorch.",
        epilog="examples:\n  reprsim compare a.store b.store --measure cka --out result.npz\n"
        "  reprsim info a.store\n"
        "  reprsim demo --quick --out demo-out   (a CI-sized run of the ViT study, under a minute)\n\n"
        "exit codes: 0 success, 2 usage error, 3 missing optional dependency, 4 input error, 1 anything else",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"reprsim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_compare(commands)
    info = commands.add_parser(
        "info",
        help="list what stored activations hold (layers, widths, dtypes, samples, IDs)",
        description="List the layers, widths, dtypes, sample count and sample IDs of activation stores or "
        ".npy/.npz/.safetensors/.hdf5/.mat files, after checking them (an incomplete or truncated store is an error).",
        epilog="example: reprsim info run1/vit.store",
    )
    info.add_argument("paths", nargs="+", type=Path, metavar="STORE")
    _add_demo(commands)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "info":
        return _info(args.paths)
    return _compare(args, parser)


def _add_compare(commands: Any) -> None:
    compare = commands.add_parser(
        "compare",
        help="compare stored activations layer by layer (stores, .npy, .npz, .safetensors, .hdf5, .mat)",
        description="Compare two sets of stored activations layer by layer, reading each file once in chunks "
        "(memory flat in the number of samples). Prints one table per measure; --out saves the results and "
        "a heatmap.",
        epilog=COMPARE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("a", type=Path, metavar="A", help="first store or file (the heatmap's rows)")
    compare.add_argument("b", type=Path, nargs="?", metavar="B", help="second store or file (default: A itself)")
    compare.add_argument(
        "--measure",
        action="append",
        metavar="NAME",
        help="a measure, repeatable (default: exact CKA, or minibatch CKA where a layer is wider than 8,192 or "
        "the moments would not fit in 4 GiB); "
        '`python -c "import reprsim; '
        'print(reprsim.measures.available_measures())"` lists them',
    )
    compare.add_argument("--layers-a", nargs="+", metavar="LAYER", help="A's layers: names or globs (default: all)")
    compare.add_argument("--layers-b", nargs="+", metavar="LAYER", help="B's layers (default: as --layers-a)")
    compare.add_argument("--align", action="store_true", help="reorder B's rows to A's sample IDs")
    compare.add_argument("--ci", type=float, metavar="LEVEL", help="attach confidence intervals, e.g. 0.95")
    compare.add_argument(
        "--permutations",
        type=_permutations,
        metavar="N|moments",
        help="permutation test: N random permutations, or 'moments' for the exact-moment null (CKA, dCor, RSA)",
    )
    compare.add_argument("--chunk-rows", type=int, metavar="N", help="rows read per chunk (default: ~64 MiB)")
    compare.add_argument(
        "--out", type=Path, metavar="FILE.npz", help="save the result (one file per measure when several)"
    )
    compare.add_argument("--plot", type=Path, metavar="FILE.png", help="write the heatmap (default: beside --out)")
    compare.add_argument("--quiet", action="store_true", help="no progress bar")


def _permutations(text: str) -> int | str:
    if text == "moments":
        return text
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number of permutations or 'moments'; got {text!r}") from exc


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the contrastive-vs-reconstructive ViT study in miniature, offline",
        description="Pretrain two tiny ViTs on scikit-learn's digits (contrastive and masked-autoencoder), "
        "fine-tune them, compare them with reprsim and write figures and a Markdown report.",
        epilog="example: reprsim demo --quick --out demo-out",
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


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_demo

    try:
        run_demo(
            DemoSettings(out=args.out, quick=args.quick, seed=args.seed, models=args.models, img_size=args.img_size)
        )
    except ImportError as exc:
        print(f"reprsim demo: {exc}", file=sys.stderr)
        return EXIT_MISSING
    return 0


def _info(paths: list[Path]) -> int:
    from .errors import ReprsimError
    from .models import open_store

    status = 0
    for i, path in enumerate(paths):
        try:
            store = open_store(path)
        except ReprsimError as exc:
            print(f"reprsim info: {exc}", file=sys.stderr)
            status = EXIT_INPUT
            continue
        except ImportError as exc:  # an HDF5 or MATLAB file without its optional reader
            print(f"reprsim info: {exc}", file=sys.stderr)
            return EXIT_MISSING
        print(("\n" if i else "") + repr(store))
    return status


def _compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .errors import InvalidParameterError, ReprsimError
    from .measures import available_measures, get_measure
    from .models import Uncertainty, compare_stores

    names = args.measure or []  # none: the default measure, chosen from the layers' widths as compare() does
    for name in names:
        try:
            get_measure(name)
        except InvalidParameterError:
            print(
                f"reprsim compare: unknown measure {name!r}; known measures: {', '.join(available_measures())}",
                file=sys.stderr,
            )
            return EXIT_USAGE
    if len(set(names)) != len(names):
        print(f"reprsim compare: a measure is named twice in {names}", file=sys.stderr)
        return EXIT_USAGE
    try:
        found = compare_stores(
            args.a,
            args.b,
            measure=None,
            measures=names or None,
            layers_a=args.layers_a,
            layers_b=args.layers_b,
            align=args.align,
            chunk_rows=args.chunk_rows,
            progress=not args.quiet,
            uncertainty=Uncertainty(ci=args.ci, permutations=args.permutations),
        )
    except ReprsimError as exc:
        print(f"reprsim compare: {exc}", file=sys.stderr)
        # an option out of range is a usage error; a store or file that cannot be compared is an input error
        return EXIT_USAGE if isinstance(exc, InvalidParameterError) else EXIT_INPUT
    except OSError as exc:
        print(f"reprsim compare: cannot read {exc.filename or args.a}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INPUT
    except ImportError as exc:  # an HDF5 or MATLAB file without its optional reader
        print(f"reprsim compare: {exc}", file=sys.stderr)
        return EXIT_MISSING
    if names:
        results = found
    else:
        results = {found.measure["id"]: found}
        print(f"measure: {found.metadata['default_measure']}; --measure names another", file=sys.stderr)
    for name, result in results.items():
        if len(results) > 1:
            print(f"\n{name}:")
        print(result)
    if args.out is None and args.plot is None:
        return 0
    return _write(results, args.out, args.plot)


def _write(results: dict[str, Any], out: Path | None, plot: Path | None) -> int:
    several = len(results) > 1

    def named(path: Path, name: str, suffix: str) -> Path:
        stem = path.name.removesuffix(path.suffix) if path.suffix else path.name
        return path.with_name(f"{stem}-{name}{suffix}" if several else f"{stem}{suffix}")

    try:
        for name, result in results.items():
            if out is not None:
                saved = result.save(named(out, name, ".npz"))
                print(f"saved {saved}", file=sys.stderr)
    except OSError as exc:
        print(f"reprsim compare: cannot write {exc.filename}: {exc.strerror}; choose another --out", file=sys.stderr)
        return EXIT_INPUT
    target = plot if plot is not None else out
    if target is None:
        return 0
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        message = 'the heatmap needs matplotlib: pip install "reprsim[plot]"'
        if plot is not None:
            print(f"reprsim compare: {message}", file=sys.stderr)
            return EXIT_MISSING
        print(f"reprsim compare: no heatmap written ({message})", file=sys.stderr)
        return 0
    try:
        for name, result in results.items():
            fig = result.plot().figure  # its own size and constrained layout: every label inside the canvas
            path = named(target, name, ".png")
            fig.savefig(path, dpi=120)
            plt.close(fig)
            print(f"heatmap {path}", file=sys.stderr)
    except OSError as exc:
        print(f"reprsim compare: cannot write {exc.filename}: {exc.strerror}; choose another --plot", file=sys.stderr)
        return EXIT_INPUT
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
