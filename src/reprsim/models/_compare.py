"""Layer-by-layer comparison of models over a stream of batches: :func:`compare`.

Runs each distinct model once per batch (a model compared with itself, or with several others, is not run
again) and streams every layer into the accumulators that the requested measures need: one
:class:`~reprsim.streaming.CrossMoments` for all moment-based measures (one set of moments per layer, one
cross co-moment per compared pair), one :class:`~reprsim.streaming.MinibatchCKAMatrix` per pair and kernel for
minibatch CKA, and, for sample-space measures only, every row of the layers they need (in memory, or spilled to a
temporary file beyond ``Runtime.feature_memory``). Measures reach this module through the measure protocol
(:class:`~reprsim.measures.Measure`), routed by the ``stream`` each declares. Models may be put in eval mode for
the duration; every module's ``training`` flag is restored afterwards, also after an exception. Models are
never moved or cast: batches are moved to each model's device instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Union, overload

import numpy as np
import torch
from torch import nn
from typing_extensions import TypedDict, Unpack

from .._validation import check_bool, format_bytes
from .._version import __version__
from ..errors import (
    DeviceMismatchError,
    IncompatibleStateError,
    InsufficientSamplesError,
    InvalidParameterError,
    MemoryBudgetError,
    NonFiniteError,
    ReprsimError,
    ReprsimWarning,
    ShapeMismatchError,
)
from ..inference._interval import half_matrix, jackknife_matrix
from ..inference._permutation import FALLBACK_PERMUTATIONS, PermutationTest, assemble, moments_tests, null_values
from ..inference._stream import batch_jackknife_matrix
from ..measures._base import (
    BUDGET,
    CacheBudget,
    Measure,
    NoTraceForm,
    evaluate_validated,
    get_measure,
    prepared_side,
    side_stats,
)
from ..measures._cka import CKA, batch_gram, zero_diagonals_
from ..streaming import CrossMoments, MinibatchCKAMatrix, Pending
from ._distributed import (
    Distributed,
    agree_description,
    agree_finished,
    all_sum,
    check_supported,
    fingerprint,
    gather_rows,
    rows_of,
    setup,
    shard_loader,
    stream_order,
)
from ._extract import (
    Extractor,
    LayerSpec,
    Pool,
    eval_mode,
    exclusive,
    model_device,
    module_of,
    move_batch,
)
from ._options import FEATURE_MEMORY, Runtime, Uncertainty, checked_runtime, checked_uncertainty, migration_error
from ._result import SimilarityResult
from ._store import ActivationStore, StoreWriter

__all__ = ["compare"]

EXACT_MAX_WIDTH = 8192
Adapter = Callable[[Any], Any]


class _PlainProgress:
    """A progress line on stderr every 10 seconds, where tqdm is not installed."""

    def __init__(self, total: int | None, desc: str, unit: str = "batch") -> None:
        self.total, self.desc, self.unit, self.done, self.postfix = total, desc, unit, 0, ""
        self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= 10.0:
            self.last = now
            of = f"/{self.total}" if self.total is not None else ""
            units = self.unit + ("es" if self.unit.endswith("ch") else "s")
            print(f"{self.desc}: {self.done}{of} {units} {self.postfix}", file=sys.stderr, flush=True)

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self.postfix = text

    def close(self) -> None:
        return None


def _progress(data: Iterable[Any], enabled: bool, desc: str, unit: str = "batch") -> Any:
    if not enabled:
        return None
    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _PlainProgress(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)


def _batch_size(acts: Mapping[str, torch.Tensor]) -> int:
    return int(next(iter(acts.values())).shape[0])


def _pool_name(pool: Any) -> Any:
    if isinstance(pool, Mapping):
        return {k: _pool_name(v) for k, v in pool.items()}
    return pool if isinstance(pool, str) else getattr(pool, "__name__", repr(pool))


MeasureSpec = Union[str, Measure]
#: The most memory large per-layer results (RSA's ranked RDM triangles) may take while a comparison runs.
CACHE_MEMORY = 2 * 2**30
#: The most memory the per-block (or per-fold) copies of the moments may take (ci= with blocks=G keeps G copies).
FOLD_MEMORY = 4 * 2**30


class CompareOptions(TypedDict, total=False):
    """The keyword options of :func:`compare` other than the measures (for type checkers)."""

    layers_a: LayerSpec | None
    layers_b: LayerSpec | None
    layers: LayerSpec | Mapping[str, LayerSpec] | None
    pool: Pool | Mapping[str, Pool] | None
    pairs: Sequence[tuple[str, str]] | None
    model_names: tuple[str, str]
    progress: bool
    uncertainty: Uncertainty | None
    runtime: Runtime | None
    stores: Mapping[str, Any] | Sequence[Any] | None
    sample_ids: Callable[[Any], Any] | None


@overload
def compare(
    model_a: nn.Module | Extractor,
    model_b: nn.Module | Extractor | None,
    data: Iterable[Any],
    *,
    measure: MeasureSpec | None = None,
    measures: None = None,
    **options: Unpack[CompareOptions],
) -> SimilarityResult: ...


@overload
def compare(
    model_a: nn.Module | Extractor,
    model_b: nn.Module | Extractor | None,
    data: Iterable[Any],
    *,
    measure: None = None,
    measures: Sequence[MeasureSpec],
    **options: Unpack[CompareOptions],
) -> dict[str, SimilarityResult]: ...


@overload
def compare(
    model_a: Mapping[str, nn.Module | Extractor],
    model_b: None = None,
    *,
    data: Iterable[Any],
    measure: MeasureSpec | None = None,
    measures: None = None,
    **options: Unpack[CompareOptions],
) -> dict[tuple[str, str], SimilarityResult]: ...


@overload
def compare(
    model_a: Mapping[str, nn.Module | Extractor],
    model_b: None = None,
    *,
    data: Iterable[Any],
    measure: None = None,
    measures: Sequence[MeasureSpec],
    **options: Unpack[CompareOptions],
) -> dict[tuple[str, str], dict[str, SimilarityResult]]: ...


def compare(
    model_a: nn.Module | Extractor | Mapping[str, nn.Module | Extractor],
    model_b: Any = None,
    data: Iterable[Any] | None = None,
    *,
    measure: MeasureSpec | None = None,
    measures: Sequence[MeasureSpec] | None = None,
    layers_a: LayerSpec | None = None,
    layers_b: LayerSpec | None = None,
    layers: LayerSpec | Mapping[str, LayerSpec] | None = None,
    pool: Pool | Mapping[str, Pool] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    model_names: tuple[str, str] = ("model A", "model B"),
    progress: bool = True,
    uncertainty: Uncertainty | None = None,
    runtime: Runtime | None = None,
    stores: Mapping[str, Any] | Sequence[Any] | None = None,
    sample_ids: Callable[[Any], Any] | None = None,
    **removed: Any,
) -> Any:
    """Compare two models (or every pair of several) layer by layer over a dataset, streaming.

    Parameters
    ----------
    model_a, model_b : nn.Module or Extractor
        The models: each a bare module, whose layers and pooling come from ``layers``/``pool``, or an
        :class:`Extractor` that carries its own (layers, pooling, which tensor to capture and select, repeated
        calls, stopping early, an input adapter). ``model_b`` None (or the same object as ``model_a``) compares
        ``model_a`` with itself, running it once per batch. Instead of two models, ``model_a`` may be a mapping
        of names to models (e.g. ``compare({"moco": m1, "dino": m2, "mae": m3}, data=loader, layers=...)``, the
        data then passed by keyword): every model runs once per batch and every pair is compared (existing
        libraries run two forwards per pair).
    data : iterable of batches
        E.g. a DataLoader. A batch is a tensor, an ``(inputs, labels, ...)`` tuple whose first element is fed
        to the model, or a dict passed as keyword arguments (so ``attention_mask`` reaches a Hugging Face
        model and ``pool="masked_mean"``). Batches are moved to each model's device.
    measure : str or Measure, optional
        The measure: a name from :func:`reprsim.measures.available_measures` (``"cka"``, ``"procrustes"``,
        ``"cca"``, ...) or a configured object (``reprsim.measures.ShapeMetric(alpha=0.5)``). Moment-based
        measures (every one but minibatch CKA and the sample-space ones) stream exact statistics of the whole
        dataset and need pooled widths up to 8,192. **Default**, the same rule in :func:`compare_stores` and
        ``reprsim compare``: exact linear CKA (``"cka"``) where its moments fit (every compared layer's pooled
        width at most 8,192, and the moments, kept per block with ``ci``, within 4 GiB), minibatch CKA
        (``"cka_minibatch"``, Nguyen et al. 2021, which works for any width) otherwise. It is chosen at the
        first batch, and the result's ``metadata["default_measure"]`` says which and why.
    measures : sequence of str or Measure, optional
        Several measures from one pass over the data (instead of ``measure``); the result is then a dict
        keyed by each measure as given (a name, or the object's ``id``).
    layers_a, layers_b : layer selection
        The layers of a bare ``model_a`` / ``model_b``: names, globs (``"blocks.*.attn.qkv"``), indices (``-1``:
        the last row of :func:`list_layers`), regexes, module types or callables; see :class:`Extractor`.
        ``layers_b`` defaults to ``layers_a``; ``layers`` sets both. An Extractor's layers are its own: naming
        them again here is refused.
    layers : layer selection, or a mapping from model name to one
        For several models: one selection for every bare module, or one per model name.
    pool : str, callable, or a mapping from layer name to either, optional
        Token / spatial pooling of the bare modules' layers before similarity (default ``"flatten"``); see
        :func:`pool_tokens`. An Extractor pools as it was told.
    pairs : sequence of (name, name), optional
        With several models, which pairs to compare; by default every pair once, in mapping order.
    model_names : (str, str), default ("model A", "model B")
        Names of the two models in the result (axis labels of the heatmap; layer names are the result's
        ``names_a``/``names_b``).
    progress : bool, default True
        Show a progress bar with samples/s when tqdm is installed.
    uncertainty : Uncertainty, optional
        Confidence intervals (``Uncertainty(ci=0.95)``), a permutation test (``Uncertainty(permutations=1000)``),
        or both, from the same single pass; see :class:`Uncertainty`. A permutation test needs every sample's
        pooled features, which are kept as for the sample-space measures (see ``Runtime(feature_memory=...)``).
    runtime : Runtime, optional
        Where and how the comparison runs: the device batches go to, eval mode, the memory kept for pooled
        features, torchrun; see :class:`Runtime`. None of it changes a number.
    stores : mapping of model name to path, or (path_a, path_b), optional
        Also write each named model's pooled layers to an activation store as the batches stream (memory flat
        in n; see :class:`StoreWriter`), for later comparisons without the model (:func:`compare_stores`, the
        ``reprsim compare`` command). A store is finished when compare returns; after an error it stays
        incomplete and is refused when opened.
    sample_ids : callable, optional
        ``sample_ids(batch)`` returns the batch's sample IDs (integers or strings) for the stores; by default
        rows are numbered from 0 in data order.

    Returns
    -------
    SimilarityResult
        With ``measure`` and two models. Matrix rows are model A's layers, columns model B's.
    dict
        With ``measures``: ``{measure: SimilarityResult}``; with several models: ``{(name_a, name_b): ...}``
        holding a SimilarityResult (``measure``) or such a dict (``measures``) per pair.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from reprsim import compare
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    >>> data = [torch.randn(64, 10) for _ in range(4)]
    >>> result = compare(net, net, data, layers_a=["0", "2", "4"], progress=False)
    >>> result.matrix.shape, round(result["2", "2"], 6)
    (torch.Size([3, 3]), 1.0)
    >>> several = compare(net, net, data, layers_a=["0", "4"], measures=["cka", "procrustes"], progress=False)
    >>> sorted(several), several["procrustes"].measure["direction"]
    (['cka', 'procrustes'], 'distance')
    """
    if removed:
        migration_error("compare", removed)
    uncertainty = checked_uncertainty(uncertainty)
    runtime = checked_runtime(runtime)
    chosen = _measures(measure, measures)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        raise InvalidParameterError(
            f"data is one array of shape {tuple(data.shape)}; compare iterates over data expecting batches, and "
            "iterating over an array yields one sample at a time. Pass batches: torch.split(x, 128), or "
            "DataLoader(TensorDataset(x), batch_size=128)"
        )
    if isinstance(model_a, Mapping):
        if model_b is not None:
            raise InvalidParameterError(
                "with a mapping of models, pass the data by keyword: compare({'a': m1, 'b': m2}, data=loader, "
                "layers=...) (the second argument is model_b, which a mapping already contains)"
            )
        if data is None:
            raise InvalidParameterError("compare(models, data=...) needs the data")
        given = dict(model_a)
        bad = [k for k, v in given.items() if not isinstance(k, str) or not isinstance(v, (nn.Module, Extractor))]
        if bad:
            raise InvalidParameterError(
                f"a mapping of models maps names (str) to nn.Modules or Extractors; not so for {bad}"
            )
        if len(given) < 2 and pairs is None:
            raise InvalidParameterError("compare needs at least two models in the mapping (or explicit pairs)")
        spec = layers if layers is not None else layers_a
        specs: dict[str, Any]
        if isinstance(spec, Mapping):
            specs, named = dict(spec), set(spec)
        else:
            specs, named = dict.fromkeys(given, spec), set()
        todo = list(pairs) if pairs is not None else [(a, b) for i, a in enumerate(given) for b in list(given)[i + 1 :]]
        multi = True
    else:
        if not isinstance(model_a, (nn.Module, Extractor)) or data is None:
            raise InvalidParameterError(
                "call compare(model_a, model_b, data, layers_a=...) or "
                "compare({'name': model, ...}, data=data, layers=...)"
            )
        if model_b is not None and not isinstance(model_b, (nn.Module, Extractor)):
            raise InvalidParameterError(
                f"model_b must be an nn.Module, an Extractor or None; got {type(model_b).__name__}"
            )
        if pairs is not None:
            raise InvalidParameterError(
                "pairs= chooses which of several models to compare; with two models there is one pair. Pass a "
                "mapping of models (compare({'a': m1, 'b': m2, 'c': m3}, data=..., pairs=[('a', 'c')])) or drop "
                "pairs"
            )
        if (
            not isinstance(model_names, (tuple, list))
            or len(model_names) != 2
            or not all(isinstance(v, str) and v for v in model_names)
        ):
            raise InvalidParameterError(f"model_names must be two non-empty strings; got {model_names!r}")
        na, nb = model_names
        if na == nb:
            raise InvalidParameterError(f"the two models need different model_names; got {model_names}")
        given = {na: model_a, nb: model_a if model_b is None else model_b}
        sa = layers_a if layers_a is not None else layers
        sb = layers_b if layers_b is not None else sa
        specs = {na: sa, nb: sb}
        # the sides whose layers were named for them alone (an Extractor there is told its layers twice)
        named = {n for n, own in ((na, layers_a), (nb, layers_b)) if own is not None}
        todo = [(na, nb)]
        multi = False
    extractors = {n: _extractor(n, m, specs.get(n), n in named, pool) for n, m in given.items()}
    if all(isinstance(m, Extractor) for m in given.values()):
        for keyword, value in (("pool", pool), ("layers", layers)):
            if value is not None:
                raise InvalidParameterError(
                    f"{keyword}= applies to bare modules, and every model here is an Extractor, which has its own "
                    f"(Extractor(model, layers, pool=...)); drop {keyword}="
                )
    progress = check_bool(progress, "progress")
    for pair in todo:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InvalidParameterError(f"pairs= holds (name, name) pairs; got {pair!r}")
        for n in pair:
            if n not in extractors:
                raise InvalidParameterError(f"pair {tuple(pair)!r} names {n!r}, which is not among {list(extractors)}")

    count = _known_samples(data)
    blocks = uncertainty.blocks
    if blocks is not None and count is not None and blocks > count:
        raise InvalidParameterError(
            f"blocks={blocks} exceeds the {count} samples of data: a jackknife leaves out one block of samples at a "
            "time, so it needs at least one sample per block; pass blocks ≤ the sample count"
        )
    dist = setup(runtime.distributed, runtime.shard, data)
    if stores is not None and not isinstance(stores, Mapping):
        paths = list(stores)
        if multi or len(paths) != 2:
            raise InvalidParameterError(
                "stores= is a mapping of model name to path (or, for two models, a pair (path_a, path_b))"
            )
        stores = dict(zip(extractors, paths))
    results = _Comparison(
        extractors,
        {},
        todo,
        measures=chosen,
        device=runtime.device,
        feature_memory=runtime.feature_memory,
        uncertainty=uncertainty,
        dist=dist,
        stores=stores,
        sample_ids=sample_ids,
        default_measure=measure is None and measures is None,
    ).run(data, eval_models=runtime.eval, progress=progress)
    single = measures is None
    shaped = {p: (next(iter(r.values())) if single else r) for p, r in results.items()}
    return shaped if multi else shaped[todo[0]]


def _extractor(name: str, model: nn.Module | Extractor, spec: Any, named: bool, pool: Any) -> Extractor:
    """What compare runs for one model: an Extractor as given, or one built from a bare module's layers and
    pooling (compare's sugar)."""
    if isinstance(model, Extractor):
        if named:
            raise InvalidParameterError(
                f"{name!r} is an Extractor, which selects its own layers {model.layers}; drop the layers named for "
                "it here (or pass the bare module)"
            )
        return model
    if spec is None:
        raise InvalidParameterError(f"no layers selected for {name!r}: pass layers_a= (and layers_b=) or layers=")
    return Extractor(model, spec, pool=pool if pool is not None else "flatten")


def _settings(e: Extractor) -> tuple[Any, ...]:
    """What makes two extractors of one model capture differently (values compared by equality where they are
    plain, by identity where they are functions or mappings)."""
    plain = (str, bool, int, type(None))
    return tuple(
        v if isinstance(v, plain) else id(v)
        for v in (e.capture, e.select, e.pool, e.calls, e.stop_early, e.no_grad, e.transform, e.inputs)
    )


def _one_or_each(values: Mapping[str, Any]) -> Any:
    """One value when every model has the same, else the mapping of model name to value (for the metadata)."""
    distinct = list({repr(v): v for v in values.values()}.values())
    return distinct[0] if len(distinct) == 1 else dict(values)


def _known_samples(data: Any) -> int | None:
    """The number of samples ``data`` holds when it says so without being iterated: a list or tuple of batches,
    or a DataLoader over a sized sampler that keeps its last batch; else None."""
    from torch.utils.data import DataLoader

    if isinstance(data, (list, tuple)):
        rows = [rows_of(b) for b in data]
        return None if any(r is None for r in rows) else sum(r for r in rows if r is not None)
    if isinstance(data, DataLoader) and data.batch_size is not None and not data.drop_last:
        try:
            return len(data.sampler)  # type: ignore[arg-type]
        except TypeError:
            return None
    return None


def _measures(measure: MeasureSpec | None, measures: Sequence[MeasureSpec] | None) -> dict[str, Measure]:
    """The requested measures keyed as the user named them (a registry name, or the object's id)."""
    if measure is not None and measures is not None:
        raise InvalidParameterError("pass either measure= (one measure) or measures= (several), not both")
    if measures is not None:
        if isinstance(measures, (str, Measure)):
            raise InvalidParameterError(
                f"measures= takes a list (e.g. measures=[{measures!r}]); for one measure pass measure={measures!r}"
            )
        specs = list(measures)
        if not specs:
            raise InvalidParameterError("measures= is empty; name at least one measure")
    else:
        specs = [measure if measure is not None else "cka"]  # the default, revised at the first batch (_choose_default)
    out: dict[str, Measure] = {}
    for s in specs:
        m = get_measure(s)
        key = s if isinstance(s, str) else m.id
        if key in out:
            raise InvalidParameterError(f"measure {key!r} is requested twice")
        out[key] = m
    folds = {m.folds for m in out.values() if m.stream == "moments" and m.folds > 1}
    if len(folds) > 1:
        raise InvalidParameterError(
            f"the cross-validated measures ask for different fold counts {sorted(folds)}; one pass keeps one set of "
            "folds: give them the same folds="
        )
    return out


def _minibatch_key(m: Measure) -> tuple[Any, ...]:
    if not isinstance(m, CKA):  # pragma: no cover - CKA is the only minibatch measure
        raise InvalidParameterError(f"{m!r} claims to stream per batch, which only minibatch CKA does")
    return (m.kernel, m.sigma, m.median_fraction)


class Run(NamedTuple):
    """One forward pass per batch: a model (by identity) with one set of extraction settings (the index among
    the distinct settings its names use), or an activation store (settings 0). Two names share a run when they
    share both, so a model compared with itself runs once."""

    source: int
    settings: int


class Slot(NamedTuple):
    """One layer of one run: where its moments, Grams and kept features are filed."""

    run: Run
    layer: str


#: Half-samples for the intervals of sample-space measures in compare (the same ones for every cell).
HALF_SAMPLES = 100


class _FeatureStore:
    """Every sample's pooled features per layer, for the sample-space measures: tensors in memory until their
    total passes ``budget`` bytes, then raw bytes appended to one temporary file per layer and read back
    through a memory map (the layer's dtype and device restored), one layer at a time."""

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self.memory: dict[Slot, list[torch.Tensor]] = {}
        self.meta: dict[Slot, tuple[str, int, torch.dtype, torch.device]] = {}  # name, width, dtype, device
        self.rows: dict[Slot, int] = {}
        self.last_batch: dict[Slot, int] = {}
        self.bytes = 0
        self.folder: tempfile.TemporaryDirectory[str] | None = None
        self.files: dict[Slot, Any] = {}
        self.read: dict[Slot, torch.Tensor] = {}

    def add(self, slot: Slot, name: str, tensor: torch.Tensor, batch: int) -> None:
        if self.last_batch.get(slot) == batch:
            return  # a model under two names: its layers are kept once per batch
        flat = tensor.reshape(tensor.shape[0], -1)
        if slot in self.meta:
            width = self.meta[slot][1]
            if flat.shape[1] != width:
                raise ShapeMismatchError(
                    f"{name}: the pooled width changed from {width} to {flat.shape[1]} between batches (e.g. a "
                    "token count that varies with padding); sample-space measures need one width per layer: use "
                    "pool='mean' or pool='masked_mean', or pad every batch to one length"
                )
        else:
            self.meta[slot] = (name, flat.shape[1], flat.dtype, flat.device)
            self.rows[slot] = 0
        self.last_batch[slot] = batch
        self.rows[slot] += flat.shape[0]
        self.bytes += flat.numel() * flat.element_size()
        if self.folder is None and self.budget is not None and self.bytes > self.budget:
            self.folder = tempfile.TemporaryDirectory(prefix="reprsim-features-")
            for kept_slot, kept in self.memory.items():
                for t in kept:
                    self._write(kept_slot, t)
            self.memory.clear()
        if self.folder is None:
            self.memory.setdefault(slot, []).append(flat)
        else:
            self._write(slot, flat)

    def _write(self, slot: Slot, flat: torch.Tensor) -> None:
        if slot not in self.files:
            if self.folder is None:
                raise IncompatibleStateError("features are written only after spilling")  # pragma: no cover
            self.files[slot] = open(os.path.join(self.folder.name, f"layer{len(self.files)}.bin"), "wb")  # noqa: SIM115
        self.files[slot].write(flat.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())

    def get(self, slot: Slot) -> torch.Tensor:
        if slot in self.read:
            return self.read[slot]
        _, width, dtype, device = self.meta[slot]
        if slot in self.memory:
            kept = self.memory[slot]
            if len(kept) > 1:
                kept[:] = [torch.cat(kept)]
            return kept[0]
        handle = self.files[slot]
        handle.flush()
        raw = np.memmap(handle.name, dtype=np.uint8, mode="c")  # copy-on-write: torch wants a writable buffer
        out = torch.from_numpy(raw).view(dtype).reshape(self.rows[slot], width).to(device)
        self.read = {slot: out}  # one layer read back at a time
        return out

    def describe(self) -> str:
        where = "in memory" if self.folder is None else "spilled to memory-mapped temporary files"
        return f"{where} (n × width per layer, {self.bytes / 2**20:.1f} MiB in all)"

    def close(self) -> None:
        self.read.clear()
        for handle in self.files.values():
            handle.close()
        if self.folder is not None:
            self.folder.cleanup()


class _Comparison:
    """One streaming comparison: extractors grouped by model run, accumulators shared by measures."""

    def __init__(
        self,
        models: Mapping[str, Extractor | ActivationStore],
        specs: dict[str, Any],
        pairs: list[tuple[str, str]],
        *,
        measures: dict[str, Measure],
        device: torch.device | str | None,
        feature_memory: int | None = FEATURE_MEMORY,
        uncertainty: Uncertainty | None = None,
        dist: Distributed | None = None,
        stores: Mapping[str, Any] | None = None,
        sample_ids: Callable[[Any], Any] | None = None,
        default_measure: bool = False,
        features: Any = None,
        notes: Mapping[str, Any] | None = None,
    ) -> None:
        used = [n for n in models if any(n in p for p in pairs)]
        self.uncertainty = uncertainty if uncertainty is not None else Uncertainty()
        #: what every rank must have asked for (the default measure is chosen later, from the pooled widths)
        self.requested: Any = (
            "the default measure"
            if default_measure
            else sorted((k, m.id, repr(m.describe())) for k, m in measures.items())
        )
        #: while True, the default measure waits for the first batch's pooled widths (see _choose_default)
        self.default_pending = default_measure
        #: why the default measure is the one it is, for the results' metadata
        self.default_choice: str | None = None
        self.grams_next = False  # build Grams inside the hooks from the next batch on (see _choose_default)
        self.pairs = pairs
        self._use(measures)
        moment = self.use_moments
        u = self.uncertainty
        # sample-space measures and permutation tests need every sample's pooled features
        self.keep_features = bool(self.sample_measures) or u.permutations is not None
        # sample-space measures need every sample's pooled features, n × width per layer: in memory up to
        # feature_memory bytes in all, then in memory-mapped temporary files (or, from stores, read from them)
        self.store = features if features is not None else _FeatureStore(feature_memory)
        self.sample_caches: dict[Slot, dict[Any, Any]] = {}
        self.layer_stats: dict[Slot, tuple[float, float]] = {}
        # large per-layer results (RSA's ranked triangles) kept for the other pairs a layer is in, up to this much
        self.cache_budget = CacheBudget(CACHE_MEMORY)
        # Minibatch CKA alone only needs each layer's Gram: build it inside the hook, so no activation
        # outlives its layer (kept activations cost the allocator fresh memory on every layer).
        self.grams_in_hook = (
            not moment
            and len(self.minibatch_configs) == 1
            and not self.keep_features
            and not any(isinstance(m, ActivationStore) for m in models.values())
            and not stores
        )
        self.dist = dist
        self.sample_ids = sample_ids
        self.last_rows = 0
        self.widths: dict[Run, dict[str, int]] = {}
        extractors = {n: m for n, m in models.items() if isinstance(m, Extractor)}
        self.models = {n: e.model for n, e in extractors.items()}
        #: each model's pooling (in the metadata, the stores it writes, and the hint when a width changes)
        self.pool_of = {n: _pool_name(e.pool) for n, e in extractors.items() if n in used}
        captures = {n: e.capture for n, e in extractors.items() if n in used}
        self.config = {"pool": _one_or_each(self.pool_of), "capture": _one_or_each(captures)}
        self.runs: dict[Run, Extractor] = {}
        #: the transform each run's Extractor was given (the Gram transform, when used, is applied after it)
        self.run_transform: dict[Run, Callable[[str, torch.Tensor], torch.Tensor] | None] = {}
        self.run_device: dict[Run, torch.device] = {}
        self.sources: dict[Run, ActivationStore] = {}
        stored = {n: m for n, m in models.items() if isinstance(m, ActivationStore)}
        if stored:
            # stored activations: each store is one "run", its chunks stand in for the forward passes
            self.layer_names = {n: stored[n].select(specs[n]) for n in used}
            self.run_of = {n: Run(id(stored[n]), 0) for n in used}
            self.sources = {self.run_of[n]: stored[n] for n in used}
            self.config = {"pool": {n: stored[n].pools for n in used}, "capture": "stored"}
        else:
            self.layer_names = {n: list(extractors[n].layers) for n in used}
            # One run per model object and extraction settings: a model under two names, or compared with
            # itself, is run once per batch, capturing the union of the layers its names select.
            settings: list[tuple[Any, ...]] = []
            self.run_of = {}
            for n in used:
                setting = _settings(extractors[n])
                if setting not in settings:
                    settings.append(setting)
                self.run_of[n] = Run(id(extractors[n].model), settings.index(setting))
        self.config.update(notes or {})  # what the caller records about its inputs (the stores' paths)
        for n in used if not stored else ():
            key = self.run_of[n]
            if key in self.runs:
                continue
            union = list(dict.fromkeys(l for m in used if self.run_of[m] == key for l in self.layer_names[m]))
            given = extractors[n]
            self.run_transform[key] = given.transform
            self.runs[key] = Extractor(
                given.model,
                union,
                capture=given.capture,
                select=given.select,
                pool=given.pool,
                calls=given.calls,
                stop_early=given.stop_early,
                no_grad=given.no_grad,
                transform=self._gram_transform(key) if self.grams_in_hook else given.transform,
                inputs=given.inputs,
            )
            own = model_device(given.model)
            target = torch.device(device) if device is not None else own
            if device is not None and any(t.device != target for t in given.model.parameters()):
                raise DeviceMismatchError(
                    f"{n!r} has parameters on {own} but Runtime(device={str(target)!r}); compare never moves a "
                    f"model: move it with .to({str(target)!r}) first, or leave the device unset"
                )
            self.run_device[key] = target
        self.moments: CrossMoments | None = None  # created at the first batch, when the layers are known
        self.expected_samples: int | None = None  # set by run() where the data say how many samples they hold
        self.slots: dict[Slot, int] = {}
        self.pooled_widths: dict[tuple[str, str], int] = {}
        self.keys: dict[str, list[str]] = {}
        self.samples = 0
        self.batches = 0
        self.writers: dict[str, StoreWriter] = {}
        if stores:
            if dist is not None:
                check_supported(dist, writing=True)
            unknown = [n for n in stores if n not in used]
            if unknown:
                raise InvalidParameterError(f"stores= names {unknown}, which are not among the models {used}")
            if sample_ids is not None and not callable(sample_ids):
                raise InvalidParameterError("sample_ids must be a function of a batch that returns its sample IDs")
            self.writers = {
                n: StoreWriter(path, model=n, pool=self.pool_of[n]) for n, path in stores.items() if path is not None
            }
        elif sample_ids is not None:
            raise InvalidParameterError(
                "sample_ids= names the rows of the stores that stores= writes; pass stores= too"
            )

    def _slot(self, model: str, layer: str) -> Slot:
        """The slot of layer ``layer`` of the model named ``model``."""
        return Slot(self.run_of[model], layer)

    def _keys_for(self, name: str, acts: Mapping[str, torch.Tensor]) -> list[str]:
        """Activation keys of ``name``'s layers (``layer#k`` keys when each call is recorded)."""
        if name not in self.keys:
            wanted = set(self.layer_names[name])
            self.keys[name] = [k for k in acts if module_of(k) in wanted]
        return self.keys[name]

    def _use(self, measures: dict[str, Measure]) -> None:
        """Set up for ``measures``: which accumulators the pass feeds, the folds the moments keep (the jackknife's
        blocks with ``ci``), and which measures the permutation test leaves out."""
        self.measures = measures
        moment = [m for m in measures.values() if m.stream == "moments"]
        self.minibatch_configs = list(
            dict.fromkeys(_minibatch_key(m) for m in measures.values() if m.stream == "minibatch")
        )
        self.fourth = any(m.fourth for m in moment)
        self.folds = max((m.folds for m in moment), default=1)
        self.use_moments = bool(moment)
        self.sample_measures = [m for m in measures.values() if m.stream == "samples"]
        u = self.uncertainty
        records = u.ci is not None  # per-batch records for the jackknife over batches
        self.minibatch = {(p, c): MinibatchCKAMatrix(kernel=c[0], sigma=c[1], median_fraction=c[2], records=records)
                          for p in self.pairs for c in self.minibatch_configs}  # fmt: skip
        if u.ci is not None:
            if u.blocks is not None and self.folds > 1 and u.blocks != self.folds:
                raise InvalidParameterError(
                    f"a cross-validated measure keeps {self.folds} folds, which are also the jackknife's blocks: "
                    f"pass blocks={self.folds} (or leave blocks unset)"
                )
            blocks = u.blocks if u.blocks is not None else (self.folds if self.folds > 1 else 20)
            u = self.uncertainty = dataclasses.replace(u, blocks=blocks)  # the default made explicit
            if moment:
                self.folds = blocks
        #: measures the permutation test leaves out, with the reason (minibatch CKA is defined over batches)
        self.untested: dict[str, str] = {}
        if u.permutations is not None:
            bad = [k for k, m in measures.items() if m.stream == "minibatch"]
            why = "minibatch CKA is defined over batches, not over samples: it has no permutation test"
            if bad and len(bad) == len(measures):
                raise InvalidParameterError(
                    f"{bad}: {why}; use measure='cka' or 'cka_unbiased' with Uncertainty(permutations=...)"
                )
            if bad:  # test the others; these results say why they have no p-values
                self.untested = {k: why for k in bad}
                warnings.warn(
                    f"{bad} {'is' if len(bad) == 1 else 'are'} not tested ({why}); the other measures are, and "
                    "'cka' or 'cka_unbiased' would be",
                    ReprsimWarning,
                    stacklevel=4,
                )

    def _choose_default(self, widths: Mapping[tuple[str, str], int]) -> None:
        """The measure when none is named, the same in compare(), compare_stores() and ``reprsim compare``:
        exact linear CKA (set up already) where its moments fit, i.e. every pooled width (``(model, layer)`` to
        width) is at most EXACT_MAX_WIDTH and the moments, with the jackknife's blocks under ``ci``, take at most
        FOLD_MEMORY; minibatch CKA otherwise. Every rank with data decides alike (their widths agree); a rank
        without data adopts the first one's choice in :meth:`_reduce`."""
        self.default_pending = False
        (model, layer), width = max(widths.items(), key=lambda kv: kv[1])
        slots = {self._slot(m, k): w for (m, k), w in widths.items()}
        need = self._moment_bytes(slots)
        if width <= EXACT_MAX_WIDTH and need <= FOLD_MEMORY:
            self.default_choice = f"cka (every pooled width is at most {EXACT_MAX_WIDTH:,})"
            return
        if width > EXACT_MAX_WIDTH:
            why = f"{model}:{layer} has {width:,} features after pooling, more than exact CKA's {EXACT_MAX_WIDTH:,}"
        else:
            blocks = f", with {self.folds} blocks for the interval," if self.folds > 1 else ""
            why = (
                f"exact CKA's moments for these layers{blocks} would take {format_bytes(need)}, more than "
                f"{format_bytes(FOLD_MEMORY)}"
            )
        self.default_choice = f"cka_minibatch ({why})"
        if self.uncertainty.permutations is not None:
            raise InvalidParameterError(
                f"permutations= needs exact CKA, but the default measure for these layers is minibatch CKA ({why}), "
                "which has no permutation test: pool tokens (pool='mean' or 'cls') or select fewer, narrower layers"
            )
        self._use({"cka": get_measure("cka_minibatch")})
        # as when minibatch CKA is named: after this batch, each layer's Gram is built inside its hook, so no
        # wide activation outlives its layer (this batch's were captured whole, to measure their widths)
        self.grams_next = bool(self.runs) and not (self.keep_features or self.sources or self.writers)

    def run(
        self, data: Iterable[Any], *, eval_models: bool, progress: bool
    ) -> dict[tuple[str, str], dict[str, SimilarityResult]]:
        d = self.dist
        # the samples the data hold, where they say so without being iterated (one process: a rank's shard is not
        # the whole)
        self.expected_samples = _known_samples(data) if d is None or d.world == 1 else None
        unit = "chunk" if self.sources else "batch"
        bar = _progress(data, progress and (d is None or d.rank == 0), "compare", unit)
        start = time.perf_counter()
        manager = eval_mode(self.models.values()) if eval_models else contextlib.nullcontext()
        error: Exception | None = None
        try:
            # claimed before eval mode: a call that finds a model busy in another thread changes no flag
            with exclusive(self.models.values()), manager, torch.no_grad():
                index: int | None = 0  # the global index of the batch's first sample, while it is known
                stream = shard_loader(d, data) if d is not None else data
                for i, batch in enumerate(stream):
                    if d is not None and d.shard == "batches":
                        rows = rows_of(batch)
                        if not self.sources and not d.loader_sharded:  # stores and split loaders: same by design
                            d.fingerprints.append(fingerprint(batch))
                        if i % d.world != d.rank:  # another rank's batch
                            index = None if index is None or rows is None else index + rows
                            if bar is not None:
                                bar.update(1)
                            continue
                        d.batch_index.append(i)
                        d.starts.append((-1 if index is None else index, rows or 0))
                    elif d is not None:
                        d.batch_index.append((d.rank << 40) + i)  # rank-major: the order is the shards'
                    self._step(batch, start=index if d is not None else None)
                    rows = self.last_rows
                    index = None if index is None else index + rows
                    if bar is not None:
                        bar.update(1)
                        rate = self.samples / max(time.perf_counter() - start, 1e-9)
                        bar.set_postfix_str(f"{rate:,.0f} samples/s", refresh=False)
        except Exception as exc:
            for writer in self.writers.values():
                writer.abort()  # the stores stay incomplete, and are refused if opened
            if d is None:
                raise
            error = exc
        finally:
            if bar is not None:
                bar.close()
        if d is not None:
            began = time.perf_counter()
            agree_finished(d, error)  # the first collective: it also waits for the slowest rank
            arrived = time.perf_counter()
            self._reduce(d, progress)
            d.wait_seconds, d.reduce_seconds = arrived - began, time.perf_counter() - arrived
        if self.batches == 0:
            for writer in self.writers.values():
                writer.abort()
            raise InvalidParameterError("data yielded no batches; nothing to compare")
        blocks = self.uncertainty.blocks if self.uncertainty.ci is not None else None
        if blocks is not None and blocks > self.samples:
            for writer in self.writers.values():
                writer.abort()
            raise InvalidParameterError(
                f"blocks={blocks} exceeds the {self.samples} samples seen: a jackknife leaves out one block of "
                "samples at a time, so it needs at least one sample per block; pass blocks ≤ the sample count"
            )
        for writer in self.writers.values():
            writer.close()
        caches: dict[int, dict[Any, Any]] = {}
        # the work after the pass (intervals, permutation tests, sample-space measures) can take as long as the
        # pass itself: a second bar, one step per result
        u = self.uncertainty
        slow = u.ci is not None or u.permutations is not None or bool(self.sample_measures)
        cells = range(len(self.pairs) * len(self.measures))
        phase = _progress(cells, progress and slow and (d is None or d.rank == 0), "results", "result")
        try:
            out: dict[tuple[str, str], dict[str, SimilarityResult]] = {}
            for i, p in enumerate(self.pairs):
                out[p] = {}
                for k, m in self.measures.items():
                    if phase is not None:
                        phase.set_postfix_str(f"{k}: {p[0]} vs {p[1]}", refresh=False)
                    out[p][k] = self._result(p, i, k, m, caches)
                    if phase is not None:
                        phase.update(1)
            return out
        finally:
            if phase is not None:
                phase.close()
            self.sample_caches.clear()
            self.store.close()

    def _activations(self, batch: Any) -> dict[Run, dict[str, torch.Tensor]]:
        """Every run's pooled layers for one batch: a forward pass per model (a chunk of each store as is)."""
        if self.sources:
            return dict(batch)
        acts: dict[Run, dict[str, torch.Tensor]] = {}
        for key, extractor in self.runs.items():
            acts[key] = extractor(move_batch(batch, self.run_device[key]))
        return acts

    def _step(self, batch: Any, start: int | None = None) -> None:
        acts = self._activations(batch)
        sizes = {_batch_size(a) for a in acts.values()}
        if len(sizes) != 1:
            raise ShapeMismatchError(f"the models produced different batch sizes {sorted(sizes)} for one batch")
        for name in {n for p in self.pairs for n in p}:
            self._keys_for(name, acts[self.run_of[name]])
        if self.default_pending:
            self._choose_default({(m, k): t.reshape(t.shape[0], -1).shape[1] for m, k, t in self._named_layers(acts)})
        # Every check of the batch (NaN/inf in any layer, overflow in any statistic) shares one host
        # synchronisation, and nothing is added before all pass: a rejected batch changes no state.
        checks: list[tuple[torch.Tensor, Callable[[list[bool]], None]]] = []
        pending: list[Pending] = []
        if self.use_moments or self.keep_features:
            self._check_layers(acts, checks)
        if self.use_moments:
            pending.append(self._prepare_moments(acts, start))
        for config in self.minibatch_configs:
            pending.extend(self._prepare_minibatch(config, acts, checks))
        first = next(iter(next(iter(acts.values())).values())).device
        flags = [f.to(first) for f, _ in checks] + [p.flags().to(first) for p in pending]
        ok = torch.cat(flags).tolist() if flags else []
        pos = 0
        for f, fail in checks:
            if not all(ok[pos : pos + len(f)]):
                fail(ok[pos : pos + len(f)])
            pos += len(f)
        for p in pending:
            if not all(ok[pos : pos + len(p.contribution)]):
                p.fail()
            pos += len(p.contribution)
        for p in pending:
            p.owner.commit(p, checked=True)
        if self.keep_features:
            for model, layer, tensor in self._named_layers(acts):
                self.store.add(self._slot(model, layer), f"{model}:{layer}", tensor, self.batches)
        if self.writers:
            ids = self.sample_ids(batch) if self.sample_ids is not None else None
            for model, writer in self.writers.items():
                run = acts[self.run_of[model]]
                writer.write({k: run[k] for k in self.keys[model]}, ids=ids)
        self.last_rows = sizes.pop()
        self.samples += self.last_rows
        self.batches += 1
        if self.grams_next:
            self.grams_next, self.grams_in_hook = False, True
            for key, extractor in self.runs.items():
                extractor.transform = self._gram_transform(key)

    def _named_layers(self, acts: dict[Run, dict[str, torch.Tensor]]) -> list[tuple[str, str, torch.Tensor]]:
        names = list(dict.fromkeys(n for p in self.pairs for n in p))
        return [(n, k, acts[self.run_of[n]][k]) for n in names for k in self.keys[n]]

    def _check_layers(
        self,
        acts: dict[Run, dict[str, torch.Tensor]],
        checks: list[tuple[torch.Tensor, Callable[[list[bool]], None]]],
    ) -> None:
        """Check every layer's pooled width against the first batch's, and queue one finiteness flag per layer,
        whose failure names the model and the layer."""
        named = self._named_layers(acts)
        first = named[0][2].device
        for model, layer, t in named:
            width = t[0].numel() if t.shape[0] else t.reshape(0, -1).shape[1]
            self._check_width(model, layer, width, f"activations of shape {tuple(t.shape)}")

        def fail(ok: list[bool]) -> None:
            for (model, layer, t), fine in zip(named, ok):
                if not fine and not bool(torch.isfinite(t).all()):
                    raise NonFiniteError(
                        f"{model}: layer {layer!r} produced NaN or infinite values in this batch (shape "
                        f"{tuple(t.shape)}); check the model and its inputs"
                    )

        checks.append((torch.stack([torch.isfinite(t.sum()).to(first) for _, _, t in named]), fail))

    def _check_width(self, model: str, layer: str, width: int, what: str) -> None:
        """A layer's pooled width must be the first batch's: say which layer changed, and why it usually does."""
        seen = self.pooled_widths.setdefault((model, layer), width)
        if width == seen:
            return
        how = self.pool_of.get(model)
        hint = (
            "with pool='flatten' this happens when the token count varies between batches (padding to each "
            "batch's longest sequence): use pool='masked_mean' (or 'mean', 'cls'), or pad every batch to one length"
            if how == "flatten"
            else "every batch must give each layer the same number of features after pooling"
        )
        raise ShapeMismatchError(
            f"{model}: layer {layer!r} has {width} features after pooling in this batch but {seen} in the first "
            f"(this batch: {what}); {hint}"
        )

    def _prepare_moments(self, acts: dict[Run, dict[str, torch.Tensor]], start: int | None) -> Pending:
        named = self._named_layers(acts)
        first = named[0][2].device
        if self.moments is None:
            for model, layer, t in named:
                width = t.reshape(t.shape[0], -1).shape[1]
                if width > EXACT_MAX_WIDTH:
                    raise InvalidParameterError(
                        f"moment-based measures keep width×width statistics per layer, but {model}:{layer} has "
                        f"{width} features after pooling (limit {EXACT_MAX_WIDTH}); pool tokens (pool='mean' or "
                        "'cls') or use measure='cka_minibatch'"
                    )
            widths = {self._slot(model, layer): t.reshape(t.shape[0], -1).shape[1] for model, layer, t in named}
            self._check_fold_memory(widths)
            self._check_samples(widths)
            self.moments = self._new_moments()
        layers: list[torch.Tensor] = [torch.empty(0)] * len(self.slots)
        for (run, layer), slot in self.slots.items():
            layers[slot] = acts[run][layer].to(first)
        return self.moments.prepare(layers, checked=True, start=start)

    def _new_moments(self) -> CrossMoments:
        """The accumulator of every layer's moments and every pair's cross moments (once the layers are known)."""
        for name in dict.fromkeys(n for p in self.pairs for n in p):
            for layer in self.keys[name]:
                self.slots.setdefault(self._slot(name, layer), len(self.slots))
        blocks = [
            (
                [self.slots[self._slot(a, k)] for k in self.keys[a]],
                [self.slots[self._slot(b, k)] for k in self.keys[b]],
            )
            for a, b in self.pairs
        ]
        return CrossMoments(groups=blocks, fourth=self.fourth, folds=self.folds)

    def _check_samples(self, widths: Mapping[Slot, int]) -> None:
        """Where the data say how many samples they hold, refuse at the first batch a moment measure that no
        data of that size can give at these widths (exact CCA of p + q ≥ n dimensions), instead of after the
        whole pass."""
        n = self.expected_samples
        if n is None:
            return
        for key, measure in self.measures.items():
            if measure.stream != "moments":
                continue
            for a, b in self.pairs:
                for la in self.keys[a]:
                    for lb in self.keys[b]:
                        p, q = widths[self._slot(a, la)], widths[self._slot(b, lb)]
                        try:
                            measure.check_samples(n, p, q)
                        except InsufficientSamplesError as exc:
                            raise InsufficientSamplesError(
                                f"{key} of {a}:{la} (width {p}) and {b}:{lb} (width {q}), refused at the first "
                                f"batch since the data hold {n} samples: {exc}"
                            ) from exc

    def _moment_bytes(self, widths: Mapping[Slot, int]) -> int:
        """The float64 moments of these layers (each layer's own, each pair's cross ones), for every fold kept."""
        per_fold = sum(w * w for w in widths.values())
        for a, b in self.pairs:
            wa = sum(widths[self._slot(a, k)] for k in self.keys[a])
            wb = sum(widths[self._slot(b, k)] for k in self.keys[b])
            per_fold += wa * wb
        return 8 * max(self.folds, 1) * per_fold

    def _check_fold_memory(self, widths: Mapping[Slot, int]) -> None:
        """Per-block (or per-fold) moments cost G copies of the moments: refuse more than FOLD_MEMORY at the first
        batch, before any of it is allocated (blocks=10⁴ took 8.9 GiB)."""
        if self.folds < 2:
            return
        need = self._moment_bytes(widths)
        if need > FOLD_MEMORY:
            raise MemoryBudgetError(
                f"{self.folds} blocks (or folds) keep {self.folds} sets of moments, {format_bytes(need)} for these "
                f"layers (at most {format_bytes(FOLD_MEMORY)}); use fewer blocks (20 is the default), fewer or "
                "narrower layers"
            )

    def _canonical_slots(self) -> dict[Slot, str]:
        """Each kept layer's name across processes, "model:layer" under the first name of its run (the run keys
        themselves are object ids, which differ between processes)."""
        canonical: dict[Slot, str] = {}
        for n in dict.fromkeys(n for p in self.pairs for n in p):
            for k in self.keys.get(n, []):
                canonical.setdefault(self._slot(n, k), f"{n}:{k}")
        return canonical

    def _reduce(self, d: Distributed, progress: bool = False) -> None:
        """Make every rank's state the state of all ranks' data (see :mod:`._distributed`); with ``progress``,
        rank 0 shows a bar, one step per state reduced (the moments, each minibatch accumulator, each layer's
        gathered features), which can take seconds for wide layers or kept features."""
        canonical = self._canonical_slots()
        features = {
            canonical[slot]: [self.store.meta[slot][1], str(self.store.meta[slot][2]).removeprefix("torch.")]
            for slot in canonical
            if slot in self.store.meta
        }
        u = self.uncertainty
        options = repr((self.requested, self.pairs,
                        self.layer_names, (u.ci, u.blocks, u.permutations, u.alpha, u.seed), d.shard,
                        self.keep_features, self.config))  # fmt: skip
        mine = {"options": options, "keys": self.keys, "batches": self.batches, "features": features,
                "fingerprints": d.checked_prints(), "default": self.default_choice,
                "widths": {f"{m}:{l}": w for (m, l), w in self.pooled_widths.items()}}  # fmt: skip
        first = agree_description(d, mine)
        local_rows = self.samples
        self.samples, self.batches = all_sum(d, [self.samples, self.batches])
        if self.batches == 0:
            return  # nobody saw data: run() raises the same error on every rank
        if local_rows == 0 and not self.keys:
            self.keys = {n: list(v) for n, v in first["keys"].items()}
            canonical = self._canonical_slots()
        if self.default_pending and first["default"] is not None:  # this rank saw no data: the others chose
            self._use({"cka": get_measure(first["default"].split()[0])})
            self.default_pending, self.default_choice = False, first["default"]
        gathers = self.keep_features and not self.sources  # a store's rows are on disk for every rank to read
        steps = range(int(self.use_moments) + len(self.minibatch) + (len(first["features"]) if gathers else 0))
        bar = _progress(steps, progress and d.rank == 0 and len(steps) > 0, "reduce", "state")

        def done(what: str) -> None:
            if bar is not None:
                bar.set_postfix_str(what, refresh=False)
                bar.update(1)

        try:
            self._reduce_states(d, first, canonical, local_rows, gathers, done)
        finally:
            if bar is not None:
                bar.close()

    def _reduce_states(
        self,
        d: Distributed,
        first: dict[str, Any],
        canonical: dict[Any, str],
        local_rows: int,
        gathers: bool,
        done: Callable[[str], None],
    ) -> None:
        """The collectives of :meth:`_reduce`, in the order every rank runs them; ``done`` after each state."""
        if self.use_moments:
            if self.moments is None:
                self.moments = self._new_moments()
            self.moments.all_reduce(d.group)
            done("moments")
        order: torch.Tensor | None = None  # the batches' stream order, for per-batch records (one collective)
        for acc in self.minibatch.values():
            acc.all_reduce(d.group)
            if acc.records:
                order = stream_order(d, d.batch_index) if order is None else order
                acc._reorder_rows(order)
            done("minibatch CKA")
        if gathers:
            if d.shard == "batches" and all(s >= 0 for s, _ in d.starts):
                own = torch.cat([torch.arange(s, s + rows) for s, rows in d.starts] or [torch.zeros(0).long()])
            else:
                own = torch.arange(local_rows) + (d.rank << 40)
            order = stream_order(d, own)
            gathered = _FeatureStore(self.store.budget)
            by_name = {v: k for k, v in canonical.items()}
            for name, (width, dtype) in first["features"].items():
                slot = by_name[name]
                if slot in self.store.meta:
                    local = self.store.get(slot)
                else:
                    local = torch.empty(0, width, dtype=getattr(torch, dtype))
                gathered.add(slot, name, gather_rows(d, local)[order.to(local.device)], 0)
                self.store.read.clear()
                done(name)
            self.store.close()
            self.store = gathered

    def _gram_transform(self, key: Run) -> Callable[[str, torch.Tensor], torch.Tensor]:
        """The transform that turns each pooled layer of run ``key`` into its Gram inside the hook, after the
        transform the run's Extractor was given (if any)."""
        widths = self.widths.setdefault(key, {})
        kernel, sigma, median_fraction = self.minibatch_configs[0]
        given = self.run_transform.get(key)

        def transform(layer: str, pooled: torch.Tensor) -> torch.Tensor:
            if given is not None:
                pooled = given(layer, pooled)
            widths[layer] = pooled.shape[1]
            return batch_gram(pooled, kernel, sigma, median_fraction, layer)

        return transform

    def _prepare_minibatch(
        self,
        config: tuple[Any, ...],
        acts: dict[Run, dict[str, torch.Tensor]],
        checks: list[tuple[torch.Tensor, Callable[[list[bool]], None]]],
    ) -> list[Pending]:
        grams: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {}
        stacked: dict[Run, tuple[torch.Tensor, list[str], dict[str, int]]] = {}
        for name in dict.fromkeys(n for p in self.pairs for n in p):
            key = self.run_of[name]
            if key not in stacked:
                run_keys = list(acts[key])
                if self.grams_in_hook:
                    built = [acts[key][k] for k in run_keys]
                    widths = {module_of(k): w for k, w in self.widths[key].items()}
                else:
                    flat = {k: acts[key][k].reshape(acts[key][k].shape[0], -1) for k in run_keys}
                    built = [batch_gram(flat[k], config[0], config[1], config[2], k) for k in run_keys]
                    widths = {module_of(k): flat[k].shape[1] for k in run_keys}
                g = zero_diagonals_(torch.stack(built))
                if g.shape[-1] < 4:
                    raise InsufficientSamplesError(
                        f"minibatch CKA needs batches of at least 4 samples; got {g.shape[-1]}. Drop the "
                        "incomplete last batch (DataLoader(drop_last=True))"
                    )
                stacked[key] = (g, run_keys, widths)

                def fail(
                    ok: list[bool], run_keys: list[str] = run_keys, model: str = name, dtype: Any = g.dtype
                ) -> None:
                    bad = [k for k, fine in zip(run_keys, ok) if not fine]
                    raise NonFiniteError(
                        f"{model}: layers {bad} produced NaN or infinite values in this batch (or values too large "
                        f"for {dtype}); check the model and its inputs"
                    )

                checks.append((torch.isfinite(g.sum(dim=(1, 2))), fail))
            g, run_keys, widths = stacked[key]
            keys = self.keys[name]
            for k in keys:
                self._check_width(name, k, widths[module_of(k)], f"{tuple(g.shape[1:])} Grams")
            idx = [run_keys.index(k) for k in keys]
            grams[name] = (
                g if idx == list(range(len(run_keys))) else g[idx],
                tuple(widths[module_of(k)] for k in keys),
            )
        out = []
        for a, b in self.pairs:
            ga, wa = grams[a]
            acc = self.minibatch[((a, b), config)]
            if self.run_of[a] == self.run_of[b] and self.keys[a] == self.keys[b]:
                out.append(acc.prepare_grams(ga, wa))
            else:
                gb, wb = grams[b]
                out.append(acc.prepare_grams(ga, wa, gb.to(ga.device), wb))
        return out

    def _sample_matrix(
        self, pair: tuple[str, str], measure: Measure, caches: dict[Slot, dict[Any, Any]]
    ) -> torch.Tensor:
        a, b = pair
        slots_a = [self._slot(a, k) for k in self.keys[a]]
        slots_b = [self._slot(b, k) for k in self.keys[b]]
        values = torch.empty(len(slots_a), len(slots_b), dtype=torch.float64)
        for i, sa in enumerate(slots_a):
            x = self._features(sa)  # read once per row of the matrix
            for j, sb in enumerate(slots_b):
                try:
                    # every batch was checked for NaN/inf and shapes as it streamed: no second pass over the data
                    if x.shape[0] < measure.min_samples:
                        raise InsufficientSamplesError(
                            f"this measure needs at least {measure.min_samples} samples; got {x.shape[0]}"
                        )
                    y = self._features(sb)
                    dtype = torch.promote_types(x.dtype, y.dtype)
                    # constant layers refused and extreme magnitudes rescaled, as on two arrays (the spread and
                    # magnitude of each layer found once)
                    xv = prepared_side(measure, x, f"{a}:{sa[1]}", self._side_stats(sa, x)).to(dtype)
                    yv = prepared_side(measure, y, f"{b}:{sb[1]}", self._side_stats(sb, y)).to(x.device, dtype)
                    cx = caches.setdefault(sa, {BUDGET: self.cache_budget})
                    cy = caches.setdefault(sb, {BUDGET: self.cache_budget})
                    values[i, j] = float(measure.from_samples(xv, yv, cx, cy))
                except ReprsimError as exc:
                    where = f"{a}:{sa[1]} and {b}:{sb[1]}"
                    raise type(exc)(f"{measure.label} of {where}: {exc}") from exc
        return values

    def _side_stats(self, slot: Slot, t: torch.Tensor) -> tuple[float, float]:
        if slot not in self.layer_stats:
            self.layer_stats[slot] = side_stats(t)
        return self.layer_stats[slot]

    def _features(self, slot: Slot) -> torch.Tensor:
        """A layer's pooled features of every batch (from memory, or read back from its file)."""
        return self.store.get(slot)

    def _result(
        self, pair: tuple[str, str], index: int, key: str, measure: Measure, caches: dict[int, dict[Any, Any]]
    ) -> SimilarityResult:
        a, b = pair
        if measure.stream == "samples":
            matrix = self._sample_matrix(pair, measure, self.sample_caches)
        elif measure.stream == "minibatch":
            matrix = self.minibatch[(pair, _minibatch_key(measure))].compute(
                names_a=[f"{a}:{k}" for k in self.keys[a]], names_b=[f"{b}:{k}" for k in self.keys[b]]
            )
        else:
            if self.moments is None:
                raise IncompatibleStateError("no moments were accumulated")  # pragma: no cover - run() checks
            matrix = self.moments.compute_matrix(
                measure,
                group=index,
                caches=caches,
                names_a=[f"{a}:{k}" for k in self.keys[a]],
                names_b=[f"{b}:{k}" for k in self.keys[b]],
            )
        meta = {
            "model_a": a,
            "model_b": b,
            "measure": measure.describe(),
            **({"default_measure": self.default_choice} if self.default_choice is not None else {}),
            **({"features": self.store.describe()} if self.keep_features else {}),
            **self.config,
            **({"distributed": self.dist.describe()} if self.dist is not None else {}),
            "samples": self.samples,
            "batches": self.batches,
            "reprsim": __version__,
        }
        extras: dict[str, torch.Tensor] = {}
        u = self.uncertainty
        if u.ci is not None and u.blocks is not None:
            low, high, bias, meta["ci"] = self._interval(pair, index, measure, matrix, u.ci, u.blocks)
            extras["low"], extras["high"] = low, high
            if bias is not None:
                extras["bias"] = bias
        if u.permutations is not None and key in self.untested:
            meta["permutation"] = {"method": None, "reason": self.untested[key]}
        elif u.permutations is not None:
            extras["p_values"], extras["calibrated"], extras["chance"], meta["permutation"] = self._permutation(
                pair, measure, u.permutations
            )
        return SimilarityResult(matrix, self.keys[a], self.keys[b], meta, **extras)

    def _interval(
        self, pair: tuple[str, str], index: int, measure: Measure, matrix: torch.Tensor, ci: float, blocks: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        """Each cell's interval by the resampling the measure declares, and the bias it sees (or None)."""
        info: dict[str, Any] = {"confidence": ci, "target": measure.target}
        if measure.resampling == "batches":
            acc = self.minibatch[(pair, _minibatch_key(measure))]
            kl, kk, ll = acc.hsic_records
            low, high, bias = batch_jackknife_matrix(kl, kk, ll, ci)
            return low, high, bias, {**info, "method": "jackknife over batches", "batches": int(kl.shape[0])}
        if measure.resampling == "blocks" and measure.stream == "moments":
            if self.moments is None:
                raise IncompatibleStateError("no moments were accumulated")  # pragma: no cover - run() checks
            values = self.moments.jackknife_values(measure, group=index)
            low, high, bias = jackknife_matrix(matrix, values, ci)
            return low, high, bias, {**info, "method": "jackknife", "blocks": blocks}
        n = self.samples
        if measure.resampling == "blocks":  # a sample-space measure recomputed without each block (index % G)
            block_of = torch.arange(n) % blocks
            values = self._subset_values(pair, measure, [torch.nonzero(block_of != g).flatten() for g in range(blocks)])
            low, high, bias = jackknife_matrix(matrix, values, ci)
            return low, high, bias, {**info, "method": "jackknife", "blocks": blocks}
        # the same half-samples (m = n/2, without replacement, the draws of bootstrap()) for every cell
        generator = torch.Generator().manual_seed(self.uncertainty.seed)
        halves = [torch.sort(torch.randperm(n, generator=generator)[: n // 2]).values for _ in range(HALF_SAMPLES)]
        values = self._subset_values(pair, measure, halves)
        low, high, bias = half_matrix(matrix, values, n, n // 2, ci)
        return low, high, bias, {**info, "method": "half-sample", "resamples": HALF_SAMPLES}

    def _subset_values(self, pair: tuple[str, str], measure: Measure, subsets: list[torch.Tensor]) -> torch.Tensor:
        """(S, A, B): a sample-space measure of every cell on each subset of the kept samples' rows."""
        a, b = pair
        out = torch.empty(len(subsets), len(self.keys[a]), len(self.keys[b]), dtype=torch.float64)
        for i, ka in enumerate(self.keys[a]):
            sa = self._slot(a, ka)
            x = self._features(sa)
            x = prepared_side(measure, x, f"{a}:{ka}", self._side_stats(sa, x))
            for j, kb in enumerate(self.keys[b]):
                sb = self._slot(b, kb)
                y = self._features(sb)
                y = prepared_side(measure, y, f"{b}:{kb}", self._side_stats(sb, y)).to(x.device)
                dtype = torch.promote_types(x.dtype, y.dtype)
                xd, yd = x.to(dtype), y.to(dtype)
                out[:, i, j] = torch.tensor(
                    [float(evaluate_validated(measure, xd[r.to(xd.device)], yd[r.to(yd.device)])) for r in subsets],
                    dtype=torch.float64,
                )
        return out

    def _permutation(
        self, pair: tuple[str, str], measure: Measure, permutations: int | str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Each cell's p-value, calibrated score and chance level (the null mean), and the test's summary."""
        u = self.uncertainty
        a, b = pair
        xs = [self._features(self._slot(a, k)) for k in self.keys[a]]
        ys = [self._features(self._slot(b, k)).to(xs[0].device) for k in self.keys[b]]
        note = None
        if permutations == "moments":
            try:
                best, mean = moments_tests(xs, ys, measure, u.alpha, ("best", "mean"), layered=True)
                return self._permutation_info(best, mean, "moments")
            except NoTraceForm as exc:
                note = f"Monte Carlo with {FALLBACK_PERMUTATIONS} permutations: {exc}"
                warnings.warn(f"{measure.label}: the exact-moment null is not used ({note})", ReprsimWarning,
                              stacklevel=4)  # fmt: skip
                permutations = FALLBACK_PERMUTATIONS
        count = int(permutations)
        d = self.dist
        if d is None or d.world == 1:
            observed, null = null_values(xs, ys, measure, count, u.seed)
        else:  # each rank evaluates every world_size-th permutation of the same draws; the nulls are gathered
            own = range(d.rank, count, d.world)
            observed, mine = null_values(xs, ys, measure, count, u.seed, keep=own)
            gathered = gather_rows(d, mine.permute(2, 0, 1).contiguous())  # (K, a, b), rank by rank
            null = gathered[stream_order(d, list(own))].permute(1, 2, 0).contiguous()  # one process's layout
        best = assemble(observed, null, measure, u.alpha, "best", layered=True)
        mean = assemble(observed, null, measure, u.alpha, "mean", layered=True)
        return self._permutation_info(best, mean, "monte_carlo", count, note)

    def _permutation_info(
        self,
        best: PermutationTest,
        mean: PermutationTest,
        method: str,
        count: int | None = None,
        note: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        u = self.uncertainty
        if best.cell_p_values is None or best.cell_calibrated is None or best.cell_null_moments is None:
            raise IncompatibleStateError("a layers × layers test returns its cells")  # pragma: no cover
        holm_p = best.cell_p_values_holm
        info = {
            "permutations": count if method == "monte_carlo" else "moments",
            "method": method,
            "alpha": u.alpha,
            "seed": u.seed,
            "best": {"observed": best.observed, "p_value": best.p_value, "threshold": best.threshold,
                     "calibrated": best.calibrated},
            "mean": {"observed": mean.observed, "p_value": mean.p_value, "threshold": mean.threshold,
                     "calibrated": mean.calibrated},
            "holm": None if holm_p is None else holm_p.tolist(),
            **({"note": note} if note else {}),
            **({"approximated": best.note} if best.note and method == "moments" else {}),
        }  # fmt: skip
        return best.cell_p_values, best.cell_calibrated, best.cell_null_moments[..., 0], info
