"""Layer-by-layer comparison of models over a stream of batches: :func:`compare`.

Runs each distinct model once per batch (a model compared with itself, or with several others, is not run
again) and feeds every layer to the parts that the requested measures need (the :class:`._layout.Part`
contract), chosen from :data:`PARTS` by the ``stream`` each measure declares: one set of moments for all
moment-based measures (:class:`._parts.MomentPart`: moments per layer, a cross co-moment per compared pair),
one minibatch CKA accumulator per pair and kernel (:class:`._parts.MinibatchPart`), and, for sample-space
measures and permutation tests, every row of the layers (:class:`._features.FeaturePart`: in memory, or spilled
to temporary files beyond ``Runtime.feature_memory``). :func:`compare_stores` and the torchrun reduction drive
the same parts. Models may be put in eval mode for the duration; every module's ``training`` flag is restored
afterwards, also after an exception. Models are never moved or cast: batches are moved to each model's device
instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union, overload

import numpy as np
import torch
from torch import nn
from typing_extensions import TypedDict, Unpack

from .._validation import check_bool, format_bytes
from .._version import __version__
from ..errors import (
    DeviceMismatchError,
    InvalidParameterError,
    ReprsimWarning,
    ShapeMismatchError,
)
from ..measures._base import Measure, get_measure
from ._distributed import (
    Distributed,
    agree_description,
    agree_finished,
    all_sum,
    check_supported,
    fingerprint,
    rows_of,
    setup,
    shard_loader,
)
from ._extract import Extractor, LayerSpec, Pool, eval_mode, exclusive, model_device, move_batch
from ._features import FeaturePart, FeatureStore, KeptFeatures
from ._layout import Batch, Checks, Layout, Part, Run, commit
from ._options import FEATURE_MEMORY, Runtime, Uncertainty, checked_runtime, checked_uncertainty, migration_error
from ._parts import EXACT_MAX_WIDTH, FOLD_MEMORY, MinibatchPart, MomentPart, PartSettings, Transform, moment_bytes
from ._result import SimilarityResult
from ._store import ActivationStore, StoreWriter

__all__ = ["compare"]

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


#: The part that accumulates what each kind of measure needs from a pass, by the ``stream`` the measure declares
#: (every moment measure shares one set of moments; the permutation test also needs the kept features).
PARTS: dict[str, Callable[[dict[str, Measure], PartSettings], Part]] = {
    "moments": MomentPart,
    "minibatch": MinibatchPart,
    "samples": FeaturePart,
}


class _ModelRuns:
    """The forward passes: one Extractor per run, on its device. A model under two names, or compared with
    itself, runs once per batch, capturing the union of the layers its names select."""

    unit = "batch"

    def __init__(self, extractors: Mapping[str, Extractor], used: list[str], device: torch.device | str | None) -> None:
        self.models = {n: e.model for n, e in extractors.items()}
        #: each model's pooling (in the metadata, the stores it writes, and the hint when a width changes)
        self.pool_of = {n: _pool_name(e.pool) for n, e in extractors.items() if n in used}
        captures = {n: e.capture for n, e in extractors.items() if n in used}
        self.config: dict[str, Any] = {"pool": _one_or_each(self.pool_of), "capture": _one_or_each(captures)}
        self.layer_names = {n: list(extractors[n].layers) for n in used}
        settings: list[tuple[Any, ...]] = []
        self.run_of: dict[str, Run] = {}
        for n in used:
            setting = _settings(extractors[n])
            if setting not in settings:
                settings.append(setting)
            self.run_of[n] = Run(id(extractors[n].model), settings.index(setting))
        self.extractors: dict[Run, Extractor] = {}
        #: the transform each run's Extractor was given (a Gram transform, when installed, is applied after it)
        self.given: dict[Run, Callable[[str, torch.Tensor], torch.Tensor] | None] = {}
        self.device: dict[Run, torch.device] = {}
        for n in used:
            key = self.run_of[n]
            if key in self.extractors:
                continue
            union = list(dict.fromkeys(l for m in used if self.run_of[m] == key for l in self.layer_names[m]))
            e = extractors[n]
            self.given[key] = e.transform
            self.extractors[key] = Extractor(e.model, union, capture=e.capture, select=e.select, pool=e.pool,
                                             calls=e.calls, stop_early=e.stop_early, no_grad=e.no_grad,
                                             transform=e.transform, inputs=e.inputs)  # fmt: skip
            own = model_device(e.model)
            target = torch.device(device) if device is not None else own
            if device is not None and any(t.device != target for t in e.model.parameters()):
                raise DeviceMismatchError(
                    f"{n!r} has parameters on {own} but Runtime(device={str(target)!r}); compare never moves a "
                    f"model: move it with .to({str(target)!r}) first, or leave the device unset"
                )
            self.device[key] = target

    def activations(self, batch: Any) -> dict[Run, dict[str, torch.Tensor]]:
        """Every run's pooled layers for one batch: a forward pass per model."""
        return {key: e(move_batch(batch, self.device[key])) for key, e in self.extractors.items()}

    def hook(self, transform: Callable[[Run, Transform | None], Transform]) -> None:
        """From the next batch on, apply ``transform(run, given)`` inside each run's hooks."""
        for key, e in self.extractors.items():
            e.transform = transform(key, self.given[key])


class _StoreRuns:
    """Stored activations: each store is one run, its chunks (already keyed by run) standing in for the passes."""

    unit = "chunk"

    def __init__(self, stored: Mapping[str, ActivationStore], specs: Mapping[str, Any], used: list[str]) -> None:
        self.models: dict[str, nn.Module] = {}
        self.extractors: dict[Run, Extractor] = {}
        self.layer_names = {n: stored[n].select(specs[n]) for n in used}
        self.run_of = {n: Run(id(stored[n]), 0) for n in used}
        self.pool_of: dict[str, Any] = {}
        self.config: dict[str, Any] = {"pool": {n: stored[n].pools for n in used}, "capture": "stored"}

    def activations(self, batch: Any) -> dict[Run, dict[str, torch.Tensor]]:
        return dict(batch)

    def hook(self, transform: Callable[[Run, Transform | None], Transform]) -> None:
        return None  # nothing runs


class _Writers:
    """The activation stores a comparison writes (``stores=``), one per model, with each batch's sample IDs."""

    def __init__(
        self,
        stores: Mapping[str, Any] | None,
        sample_ids: Callable[[Any], Any] | None,
        used: list[str],
        pool_of: Mapping[str, Any],
        dist: Distributed | None,
    ) -> None:
        self.sample_ids = sample_ids
        self.writers: dict[str, StoreWriter] = {}
        if stores:
            if dist is not None:
                check_supported(dist, writing=True)
            unknown = [n for n in stores if n not in used]
            if unknown:
                raise InvalidParameterError(f"stores= names {unknown}, which are not among the models {used}")
            if sample_ids is not None and not callable(sample_ids):
                raise InvalidParameterError("sample_ids must be a function of a batch that returns its sample IDs")
            self.writers = {n: StoreWriter(path, model=n, pool=pool_of[n]) for n, path in stores.items()
                            if path is not None}  # fmt: skip
        elif sample_ids is not None:
            raise InvalidParameterError(
                "sample_ids= names the rows of the stores that stores= writes; pass stores= too"
            )

    def __bool__(self) -> bool:
        return bool(self.writers)

    def write(self, batch: Any, acts: Mapping[Run, Mapping[str, torch.Tensor]], layout: Layout) -> None:
        if not self.writers:
            return
        ids = self.sample_ids(batch) if self.sample_ids is not None else None
        for model, writer in self.writers.items():
            run = acts[layout.run_of[model]]
            writer.write({k: run[k] for k in layout.keys[model]}, ids=ids)

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()  # the stores stay incomplete, and are refused if opened

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _feed(
    data: Iterable[Any], d: Distributed | None, step: Callable[[Any, int | None], int], bar: Any, prints: bool
) -> None:
    """Feed every batch of ``data`` to ``step(batch, start) -> rows``; under torchrun, only this rank's batches,
    recording where each is in the stream (``start``, the global index of its first sample, while known) and,
    with ``prints``, every batch's fingerprint (to check that the ranks iterate the same data)."""
    began = time.perf_counter()
    samples = 0
    index: int | None = 0
    stream = shard_loader(d, data) if d is not None else data
    for i, batch in enumerate(stream):
        if d is not None and d.shard == "batches":
            rows = rows_of(batch)
            if prints and not d.loader_sharded:  # stores and split loaders: the same by design
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
        rows = step(batch, index if d is not None else None)
        samples += rows
        index = None if index is None else index + rows
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{samples / max(time.perf_counter() - began, 1e-9):,.0f} samples/s", refresh=False)


class _Plan:
    """What a comparison computes: the measures as keyed, the uncertainty with its blocks resolved, the folds the
    moments keep, the parts the pass feeds (from :data:`PARTS`, by each measure's declared ``stream``), the
    default measure's choice, and each result from the parts."""

    def __init__(
        self,
        measures: dict[str, Measure],
        uncertainty: Uncertainty,
        layout: Layout,
        store: FeatureStore,
        dist: Distributed | None,
        default_measure: bool,
    ) -> None:
        self.uncertainty, self.layout, self.store, self.dist = uncertainty, layout, store, dist
        #: what every rank must have asked for (the default measure is chosen later, from the pooled widths)
        self.requested: Any = (
            "the default measure"
            if default_measure
            else sorted((k, m.id, repr(m.describe())) for k, m in measures.items())
        )
        #: while True, the default measure waits for the first batch's pooled widths (see choose_default)
        self.default_pending = default_measure
        self.default_choice: str | None = None  # why the default measure is the one it is, for the metadata
        self.use(measures)

    def use(self, measures: dict[str, Measure]) -> None:
        """Set up for ``measures``: the parts the pass feeds, the folds the moments keep (the jackknife's blocks
        with ``ci``), and which measures the permutation test leaves out."""
        self.measures = measures
        kinds = {kind: {k: m for k, m in measures.items() if m.stream == kind} for kind in PARTS}
        folds = max((m.folds for m in kinds["moments"].values()), default=1)
        u = self.uncertainty
        if u.ci is not None:
            if u.blocks is not None and folds > 1 and u.blocks != folds:
                raise InvalidParameterError(
                    f"a cross-validated measure keeps {folds} folds, which are also the jackknife's blocks: "
                    f"pass blocks={folds} (or leave blocks unset)"
                )
            blocks = u.blocks if u.blocks is not None else (folds if folds > 1 else 20)
            u = self.uncertainty = dataclasses.replace(u, blocks=blocks)  # the default made explicit
            folds = blocks if kinds["moments"] else folds
        self.folds = folds
        # the permutation test needs every sample's features, as the sample-space measures do
        tested = {"samples"} if u.permutations is not None else set()
        needed = {kind for kind, given in kinds.items() if given} | tested
        settings = PartSettings(self.layout, u, folds, self.store, self.dist)
        self.parts = {kind: make(kinds[kind], settings) for kind, make in PARTS.items() if kind in needed}
        part = self.parts.get("samples")
        self.features = part if isinstance(part, FeaturePart) else None
        #: measures the permutation test leaves out, with the reason (minibatch CKA is defined over batches)
        self.untested = {k: why for k, m in measures.items() if (why := self.parts[m.stream].untestable) is not None}
        if u.permutations is not None and self.untested:
            bad, why = list(self.untested), next(iter(self.untested.values()))
            if len(bad) == len(measures):
                raise InvalidParameterError(
                    f"{bad}: {why}; use measure='cka' or 'cka_unbiased' with Uncertainty(permutations=...)"
                )
            warnings.warn(
                f"{bad} {'is' if len(bad) == 1 else 'are'} not tested ({why}); the other measures are, and 'cka' or "
                "'cka_unbiased' would be",
                ReprsimWarning,
                stacklevel=5,
            )

    def minibatch(self) -> MinibatchPart | None:
        """The minibatch part when it is the only one, with one kernel (its Grams can be built in the hooks)."""
        only = list(self.parts.values())
        return only[0] if len(only) == 1 and isinstance(only[0], MinibatchPart) and len(only[0].configs) == 1 else None

    def choose_default(self, widths: Mapping[tuple[str, str], int]) -> None:
        """The measure when none is named, the same in compare(), compare_stores() and ``reprsim compare``:
        exact linear CKA (set up already) where its moments fit, i.e. every pooled width (``(model, layer)`` to
        width) is at most EXACT_MAX_WIDTH and the moments, with the jackknife's blocks under ``ci``, take at most
        FOLD_MEMORY; minibatch CKA otherwise. Every rank with data decides alike (their widths agree); a rank
        without data adopts the first one's choice in :meth:`adopt`."""
        self.default_pending = False
        (model, layer), width = max(widths.items(), key=lambda kv: kv[1])
        need = moment_bytes(self.layout, {self.layout.slot(m, k): w for (m, k), w in widths.items()}, self.folds)
        if width <= EXACT_MAX_WIDTH and need <= FOLD_MEMORY:
            self.default_choice = f"cka (every pooled width is at most {EXACT_MAX_WIDTH:,})"
            return
        if width > EXACT_MAX_WIDTH:
            why = f"{model}:{layer} has {width:,} features after pooling, more than exact CKA's {EXACT_MAX_WIDTH:,}"
        else:
            blocks = f", with {self.folds} blocks for the interval," if self.folds > 1 else ""
            why = (f"exact CKA's moments for these layers{blocks} would take {format_bytes(need)}, more than "
                   f"{format_bytes(FOLD_MEMORY)}")  # fmt: skip
        self.default_choice = f"cka_minibatch ({why})"
        if self.uncertainty.permutations is not None:
            raise InvalidParameterError(
                f"permutations= needs exact CKA, but the default measure for these layers is minibatch CKA ({why}), "
                "which has no permutation test: pool tokens (pool='mean' or 'cls') or select fewer, narrower layers"
            )
        self.use({"cka": get_measure("cka_minibatch")})

    def adopt(self, choice: str | None) -> None:
        """On a rank that saw no data, the default measure the ranks with data chose."""
        if self.default_pending and choice is not None:
            self.use({"cka": get_measure(choice.split()[0])})
            self.default_pending, self.default_choice = False, choice

    def results(
        self, pairs: list[tuple[str, str]], samples: int, meta: dict[str, Any], progress: bool
    ) -> dict[tuple[str, str], dict[str, SimilarityResult]]:
        """Every pair's result for every measure. The work after the pass (intervals, permutation tests,
        sample-space measures) can take as long as the pass itself: with ``progress``, a second bar, one step
        per result."""
        u = self.uncertainty
        slow = u.ci is not None or u.permutations is not None or self.features is not None
        phase = _progress(range(len(pairs) * len(self.measures)), progress and slow, "results", "result")
        try:
            out: dict[tuple[str, str], dict[str, SimilarityResult]] = {}
            for i, p in enumerate(pairs):
                out[p] = {}
                for k, m in self.measures.items():
                    if phase is not None:
                        phase.set_postfix_str(f"{k}: {p[0]} vs {p[1]}", refresh=False)
                    out[p][k] = self.result(p, i, k, m, samples, meta)
                    if phase is not None:
                        phase.update(1)
            return out
        finally:
            if phase is not None:
                phase.close()
            for part in self.parts.values():
                part.close()

    def result(
        self, pair: tuple[str, str], index: int, key: str, measure: Measure, samples: int, meta: dict[str, Any]
    ) -> SimilarityResult:
        """``measure``'s result for ``pair`` (the ``index``-th pair), with its interval and test as requested;
        ``samples``: how many the pass saw; ``meta`` describes the pass."""
        a, b = pair
        part = self.parts[measure.stream]
        matrix = part.matrix(pair, index, measure)
        meta = {"model_a": a, "model_b": b, "measure": measure.describe(),
                **({"default_measure": self.default_choice} if self.default_choice is not None else {}),
                **({"features": self.features.describe()} if self.features is not None else {}), **meta}  # fmt: skip
        extras: dict[str, torch.Tensor] = {}
        u = self.uncertainty
        if u.ci is not None and u.blocks is not None:
            low, high, bias, meta["ci"] = part.interval(pair, index, measure, matrix, u.ci, u.blocks, samples)
            extras["low"], extras["high"] = low, high
            if bias is not None:
                extras["bias"] = bias
        if u.permutations is not None and key in self.untested:
            meta["permutation"] = {"method": None, "reason": self.untested[key]}
        elif u.permutations is not None and self.features is not None:
            extras["p_values"], extras["calibrated"], extras["chance"], meta["permutation"] = self.features.permutation(
                pair, measure, u.permutations
            )
        return SimilarityResult(matrix, self.layout.keys[a], self.layout.keys[b], meta, **extras)


class _Comparison:
    """One streaming comparison: the runs, the layout of compared layers, and the plan of what to compute."""

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
        features: FeatureStore | None = None,
        notes: Mapping[str, Any] | None = None,
    ) -> None:
        used = [n for n in models if any(n in p for p in pairs)]
        self.pairs, self.dist = pairs, dist
        stored = {n: m for n, m in models.items() if isinstance(m, ActivationStore)}
        self.runs: _ModelRuns | _StoreRuns = (
            _StoreRuns(stored, specs, used) if stored
            else _ModelRuns({n: m for n, m in models.items() if isinstance(m, Extractor)}, used, device)
        )  # fmt: skip
        self.config = {**self.runs.config, **(notes or {})}  # notes: what the caller records (the stores' paths)
        self.layout = Layout(pairs, self.runs.run_of, self.runs.layer_names, self.runs.pool_of)
        self.writers = _Writers(stores, sample_ids, used, self.runs.pool_of, dist)
        # sample-space measures and permutation tests need every sample's pooled features, n × width per layer: in
        # memory up to feature_memory bytes in all, then in memory-mapped temporary files (or read from stores)
        store = features if features is not None else KeptFeatures(feature_memory)
        u = uncertainty if uncertainty is not None else Uncertainty()
        self.plan = _Plan(measures, u, self.layout, store, dist, default_measure)
        # which parts need features is fixed by the request (a default measure that changes never needs them)
        self.keep_features = self.plan.features is not None
        self._hook_grams()
        self.grams_next = False  # build Grams inside the hooks from the next batch on (see _choose_default)
        self.samples = self.batches = 0

    def _hook_grams(self) -> None:
        """Minibatch CKA alone needs only each layer's Gram: build it inside the hook, so no activation outlives
        its layer (kept activations cost the allocator fresh memory on every layer)."""
        part = self.plan.minibatch()
        if part is not None and not self.writers:
            self.runs.hook(part.hook_transform)

    def run(
        self, data: Iterable[Any], *, eval_models: bool, progress: bool
    ) -> dict[tuple[str, str], dict[str, SimilarityResult]]:
        d = self.dist
        # the samples the data hold, where they say so without being iterated (one process: a rank's shard is not
        # the whole)
        expected = _known_samples(data) if d is None or d.world == 1 else None
        bar = _progress(data, progress and (d is None or d.rank == 0), "compare", self.runs.unit)
        models = self.runs.models.values()
        manager = eval_mode(models) if eval_models else contextlib.nullcontext()
        error: Exception | None = None
        try:
            # claimed before eval mode: a call that finds a model busy in another thread changes no flag
            with exclusive(models), manager, torch.no_grad():
                _feed(data, d, lambda batch, start: self._step(batch, start, expected), bar, bool(self.runs.models))
        except Exception as exc:
            self.writers.abort()
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
        u = self.plan.uncertainty
        blocks = u.blocks if u.ci is not None else None
        if self.batches == 0 or (blocks is not None and blocks > self.samples):
            self.writers.abort()
            if self.batches == 0:
                raise InvalidParameterError("data yielded no batches; nothing to compare")
            raise InvalidParameterError(
                f"blocks={blocks} exceeds the {self.samples} samples seen: a jackknife leaves out one block of "
                "samples at a time, so it needs at least one sample per block; pass blocks ≤ the sample count"
            )
        self.writers.close()
        d = self.dist
        return self.plan.results(self.pairs, self.samples, self._meta(), progress and (d is None or d.rank == 0))

    def _choose_default(self, widths: Mapping[tuple[str, str], int]) -> None:
        """The default measure, from the first batch's pooled widths (see :meth:`_Plan.choose_default`); when it
        is minibatch CKA, each layer's Gram is built inside its hook after this batch, as when minibatch CKA is
        named (this batch's activations were captured whole, to measure their widths)."""
        self.plan.choose_default(widths)
        self.grams_next = True

    def _step(self, batch: Any, start: int | None = None, expected: int | None = None) -> int:
        """Feed one batch to every part (nothing is added unless every check passes); returns its samples."""
        acts = self.runs.activations(batch)
        sizes = {_batch_size(a) for a in acts.values()}
        if len(sizes) != 1:
            raise ShapeMismatchError(f"the models produced different batch sizes {sorted(sizes)} for one batch")
        self.layout.learn_keys(acts)
        if self.plan.default_pending:
            self._choose_default({(m, k): t.reshape(t.shape[0], -1).shape[1]
                                  for m, k, t in self.layout.named_layers(acts)})  # fmt: skip
        seen = Batch(acts, start, self.batches, expected, sizes.pop())
        checks: Checks = []  # checked at once, in commit(): a rejected batch changes no state
        parts = self.plan.parts.values()
        if any(part.reads_layers for part in parts):
            self.layout.check_layers(acts, checks)
        pending = [p for part in parts for p in part.prepare(seen, checks)]
        commit(checks, pending, next(iter(next(iter(acts.values())).values())).device)
        for part in parts:
            part.keep(seen)
        self.writers.write(batch, acts, self.layout)
        self.samples += seen.rows
        self.batches += 1
        if self.grams_next:
            self.grams_next = False
            self._hook_grams()
        return seen.rows

    def _reduce(self, d: Distributed, progress: bool = False) -> None:
        """Make every rank's state the state of all ranks' data (see :mod:`._distributed`); with ``progress``,
        rank 0 shows a bar, one step per state reduced (the moments, each minibatch accumulator, each layer's
        gathered features), which can take seconds for wide layers or kept features."""
        layout, plan = self.layout, self.plan
        u = plan.uncertainty
        options = repr((plan.requested, self.pairs,
                        layout.layer_names, (u.ci, u.blocks, u.permutations, u.alpha, u.seed), d.shard,
                        self.keep_features, self.config))  # fmt: skip
        mine = {"options": options, "keys": layout.keys, "batches": self.batches,
                "features": plan.features.kept() if plan.features is not None else {},
                "fingerprints": d.checked_prints(), "default": plan.default_choice,
                "widths": {f"{m}:{l}": w for (m, l), w in layout.pooled_widths.items()}}  # fmt: skip
        first = agree_description(d, mine)
        local_rows = self.samples
        self.samples, self.batches = all_sum(d, [self.samples, self.batches])
        if self.batches == 0:
            return  # nobody saw data: run() raises the same error on every rank
        if local_rows == 0 and not layout.keys:
            layout.keys.update({n: list(v) for n, v in first["keys"].items()})
        plan.adopt(first["default"])  # where this rank saw no data: the others chose the default measure
        steps = range(sum(part.reduce_steps(first) for part in plan.parts.values()))
        bar = _progress(steps, progress and d.rank == 0 and len(steps) > 0, "reduce", "state")

        def done(what: str) -> None:
            if bar is not None:
                bar.set_postfix_str(what, refresh=False)
                bar.update(1)

        try:
            for part in plan.parts.values():  # every rank runs the same collectives in the same order
                part.reduce(d, first, done)
        finally:
            if bar is not None:
                bar.close()

    def _meta(self) -> dict[str, Any]:
        """What every result records about the pass."""
        return {
            **self.config,
            **({"distributed": self.dist.describe()} if self.dist is not None else {}),
            "samples": self.samples,
            "batches": self.batches,
            "reprsim": __version__,
        }
