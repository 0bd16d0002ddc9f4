"""Comparing stored activations: :func:`compare_stores`, the same streaming comparison as :func:`compare` with
chunks of activation stores (or array files) in place of forward passes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .._validation import check_bool, check_int
from ..errors import InvalidParameterError
from ._compare import MeasureSpec, _Comparison, _measures
from ._distributed import SkippedBatch, setup
from ._layout import Run, Slot
from ._options import Runtime, Uncertainty, checked_runtime, checked_uncertainty, migration_error
from ._store import ActivationStore, alignment, as_store, chunks

__all__ = ["compare_stores"]

#: Bytes of one layer's rows per chunk when chunk_rows is not given.
CHUNK_BYTES = 64 * 2**20


class _StoredFeatures:
    """Every sample's features for the sample-space measures, read straight from the stores (copy-on-write
    memory maps where the file allows): nothing is collected while streaming, and one layer is held at a time."""

    shared = True  # every rank reads the files: nothing to gather
    budget: int | None = None

    def __init__(self, sources: dict[Run, tuple[ActivationStore, np.ndarray[Any, Any] | None]],
                 device: torch.device) -> None:  # fmt: skip
        self.sources, self.device = sources, device
        self.held: dict[Slot, torch.Tensor] = {}
        self.meta: dict[Slot, Any] = {}  # nothing kept in memory (no rows to gather under torchrun)

    def add(self, slot: Slot, name: str, tensor: torch.Tensor, batch: int) -> None:
        return None  # already on disk

    def get(self, slot: Slot) -> torch.Tensor:
        if slot not in self.held:
            store, order = self.sources[slot[0]]
            self.held = {slot: store.tensor(slot[1], order).to(self.device)}  # one layer held at a time
        return self.held[slot]

    def release(self) -> None:
        self.held.clear()

    def describe(self) -> str:
        return "read from the stores (memory-mapped; nothing collected while streaming)"

    def close(self) -> None:
        self.release()


class _Chunks:
    """The stores' chunks as a sized iterable (the progress bar's total), each chunk keyed by run; under
    torchrun, only this rank's chunks are read (every world_size-th), the others stand in as :class:`SkippedBatch`."""

    def __init__(
        self,
        sides: Sequence[tuple[Run, ActivationStore, list[str], np.ndarray[Any, Any] | None]],
        rows: int,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.sides, self.rows, self.device, self.rank, self.world = sides, rows, device, rank, world

    def __len__(self) -> int:
        n = self.sides[0][1].samples
        return -(-n // self.rows)

    def __iter__(self) -> Iterator[dict[Run, dict[str, torch.Tensor]] | SkippedBatch]:
        keys = [key for key, *_ in self.sides]
        n = self.sides[0][1].samples
        every = list(range(0, n, self.rows))
        mine = [s for i, s in enumerate(every) if i % self.world == self.rank]
        read = chunks([(s, layers, order) for _, s, layers, order in self.sides], self.rows, mine)
        for i, start in enumerate(every):
            if i % self.world != self.rank:
                yield SkippedBatch(min(self.rows, n - start))
                continue
            chunk = next(read)
            yield {key: {k: t.to(self.device) for k, t in side.items()} for key, side in zip(keys, chunk)}


def compare_stores(
    a: Any,
    b: Any = None,
    *,
    measure: MeasureSpec | None = None,
    measures: Sequence[MeasureSpec] | None = None,
    layers_a: Any = None,
    layers_b: Any = None,
    align: bool = False,
    chunk_rows: int | None = None,
    model_names: tuple[str, str] | None = None,
    progress: bool = True,
    uncertainty: Uncertainty | None = None,
    runtime: Runtime | None = None,
    **removed: Any,
) -> Any:
    """Compare stored activations layer by layer, reading each file once in chunks (memory flat in n).

    The stored counterpart of :func:`compare`: the same measures, intervals, permutation tests and result,
    with chunks of two activation stores (or ``.npy``/``.npz``/``.safetensors`` files, see
    :func:`open_store`) in place of forward passes.

    Parameters
    ----------
    a, b : path or ActivationStore
        The two sides. ``b`` None compares ``a``'s layers with each other.
    measure, measures
        As in :func:`compare`, with the same default: exact CKA where its moments fit (layers at most 8,192
        wide), else minibatch CKA, whose batches are then the chunks (pass ``chunk_rows`` to choose them).
    layers_a, layers_b : name, glob, regex or list of those, optional
        Which stored layers to compare (default all; ``layers_b`` defaults to ``layers_a`` when ``b`` is None).
    align : bool, default False
        Both stores must hold the same sample IDs in the same order, or the comparison is refused. With
        ``align=True``, ``b``'s rows are reordered to ``a``'s order by ID (the sets must still be equal).
        Files without IDs are matched by position.
    chunk_rows : int, optional
        Rows per chunk; by default about 64 MiB of the widest selected layer.
    model_names : (str, str), optional
        The sides' names in the result; by default each store's recorded model, or its file name.
    progress, uncertainty
        As in :func:`compare`.
    runtime : Runtime, optional
        Of its fields, two apply here: ``device``, where the statistics are computed (default CPU), and
        ``distributed``: under torchrun (detected when None), each rank reads every world_size-th chunk and the
        ranks' statistics are all-reduced, so every rank returns the one-process result having read 1/N of the
        files (sample-space measures read the layers they need from the files on every rank); ``False``, each
        rank compares everything alone. The others concern models and batches, and are refused when set.

    Returns
    -------
    SimilarityResult or dict of str to SimilarityResult
        As :func:`compare` for two models; the metadata names the stores under ``stores``.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from reprsim import StoreWriter, compare_stores
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 8)).astype(np.float32)
    >>> folder = tempfile.mkdtemp()
    >>> with StoreWriter(folder + "/a", model="a") as w:
    ...     w.write({"fc": x, "relu": np.maximum(x, 0)})
    >>> with StoreWriter(folder + "/b", model="b") as w:
    ...     w.write({"fc": 2 * x})
    >>> result = compare_stores(folder + "/a", folder + "/b", measure="cka", progress=False)
    >>> result.names_a, result.names_b, round(result["fc", "fc"], 6)
    (['fc', 'relu'], ['fc'], 1.0)
    """
    if removed:
        migration_error("compare_stores", removed)
    chosen = _measures(measure, measures)
    uncertainty = checked_uncertainty(uncertainty)
    runtime = checked_runtime(runtime)
    inapplicable = [f for f in ("eval", "feature_memory", "shard") if getattr(runtime, f) != getattr(Runtime(), f)]
    if inapplicable:
        raise InvalidParameterError(
            f"compare_stores reads stored activations: Runtime's {inapplicable} concern models and batches and do not "
            "apply here (it runs no model, reads kept features from the files and shards by chunk); drop them"
        )
    align = check_bool(align, "align")
    progress = check_bool(progress, "progress")
    sa = as_store(a, "a")
    sb = sa if b is None else as_store(b, "b")
    order = alignment(sa, sb, align) if sb is not sa else None
    if model_names is None:
        na, nb = sa.name, sb.name
        if na == nb:
            na, nb = f"{na} (a)", f"{nb} (b)"
    else:
        na, nb = model_names
        if na == nb:
            raise InvalidParameterError(f"the two sides need different model_names; got {model_names}")
    target = torch.device(runtime.device if runtime.device is not None else "cpu")
    specs = {na: layers_a, nb: layers_b if layers_b is not None else layers_a}
    dist = setup(runtime.distributed, "batches", ())
    # each store is one run of the comparison, keyed (id(store), 0); its rows in the first store's sample order
    rows_of = {Run(id(sb), 0): (sb, order), Run(id(sa), 0): (sa, None)}
    notes: dict[str, Any] = {"stores": {na: str(sa.path), nb: str(sb.path)}}
    if order is not None:
        notes["aligned"] = "the second store's rows were reordered by sample ID"
    comparison = _Comparison(
        {na: sa, nb: sb},
        specs,
        [(na, nb)],
        measures=chosen,
        device=None,
        feature_memory=None,
        uncertainty=uncertainty,
        dist=dist,
        default_measure=measure is None and measures is None,
        features=_StoredFeatures(rows_of, target),
        notes=notes,
    )
    # one entry per distinct store, reading the union of the layers its sides select
    sides: dict[Run, tuple[ActivationStore, list[str], np.ndarray[Any, Any] | None]] = {}
    for name, store, rows_order in ((na, sa, None), (nb, sb, order)):
        key = comparison.layout.run_of[name]
        layers = comparison.layout.layer_names[name]
        if key in sides:
            sides[key] = (store, list(dict.fromkeys(sides[key][1] + layers)), rows_order)
        else:
            sides[key] = (store, layers, rows_order)
    widest = max(s.widths[k] * s.dtypes[k].itemsize for s, layers, _ in sides.values() for k in layers)
    if chunk_rows is None:
        chunk_rows = max(1024, CHUNK_BYTES // widest)
    else:
        chunk_rows = check_int(chunk_rows, "chunk_rows", minimum=1)
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    data = _Chunks([(k, s, layers, o) for k, (s, layers, o) in sides.items()], chunk_rows, target, rank, world)
    results = comparison.run(data, eval_models=False, progress=progress)
    shaped = results[(na, nb)]
    return next(iter(shaped.values())) if measures is None else shaped
