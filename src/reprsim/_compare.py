"""Layer-by-layer comparison of models over a stream of batches: :func:`compare`.

Runs each distinct model once per batch (a model compared with itself, or with several others, is not run
again), builds each model's per-batch Grams once, and streams them into the accumulators of
:mod:`reprsim._accumulators`; nothing proportional to the dataset is kept. Models may be put in eval mode for
the duration; every module's ``training`` flag is restored afterwards, also after an exception. Models are
never moved or cast: batches are moved to each model's device instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import torch
from torch import nn
from typing_extensions import TypedDict, Unpack

from ._accumulators import LinearCKA, MinibatchCKAMatrix
from ._cka import batch_gram, zero_diagonals_
from ._errors import (
    DeviceMismatchError,
    InsufficientSamplesError,
    InvalidParameterError,
    NonFiniteError,
    ShapeMismatchError,
)
from ._extract import Extractor, LayerSpec, Pool, exclusive, move_batch, resolve_layers
from ._result import SimilarityResult
from ._validation import check_kernel

__all__ = ["compare"]

ESTIMATORS = ("minibatch", "exact", "exact_unbiased")
EXACT_MAX_WIDTH = 8192
Adapter = Callable[[Any], Any]


@contextlib.contextmanager
def eval_mode(models: Iterable[nn.Module]) -> Iterator[None]:
    """Put ``models`` in eval mode for the block; restore every submodule's own ``training`` flag after."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, was_training in flags:
            m.training = was_training


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _progress(data: Iterable[Any], enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True)


def _batch_size(acts: Mapping[str, torch.Tensor]) -> int:
    return int(next(iter(acts.values())).shape[0])


def _pool_name(pool: Any) -> Any:
    if isinstance(pool, Mapping):
        return {k: _pool_name(v) for k, v in pool.items()}
    return pool if isinstance(pool, str) else getattr(pool, "__name__", repr(pool))


class CompareOptions(TypedDict, total=False):
    """The keyword options of :func:`compare` (for type checkers)."""

    layers_a: LayerSpec | None
    layers_b: LayerSpec | None
    layers: LayerSpec | Mapping[str, LayerSpec] | None
    estimator: str
    kernel: str
    sigma: float | None
    median_fraction: float
    pool: Pool | Mapping[str, Pool]
    capture: str
    select: Any
    calls: str
    inputs_a: Adapter | None
    inputs_b: Adapter | None
    inputs: Mapping[str, Adapter] | None
    pairs: Sequence[tuple[str, str]] | None
    names: tuple[str, str]
    device: torch.device | str | None
    eval: bool
    stop_early: bool
    progress: bool


@overload
def compare(
    model_a: nn.Module, model_b: nn.Module | None, data: Iterable[Any], **options: Unpack[CompareOptions]
) -> SimilarityResult: ...


@overload
def compare(
    model_a: Mapping[str, nn.Module],
    model_b: Iterable[Any],
    data: None = None,
    **options: Unpack[CompareOptions],
) -> dict[tuple[str, str], SimilarityResult]: ...


def compare(
    model_a: nn.Module | Mapping[str, nn.Module],
    model_b: Any = None,
    data: Iterable[Any] | None = None,
    *,
    layers_a: LayerSpec | None = None,
    layers_b: LayerSpec | None = None,
    layers: LayerSpec | Mapping[str, LayerSpec] | None = None,
    estimator: str = "minibatch",
    kernel: str = "linear",
    sigma: float | None = None,
    median_fraction: float = 1.0,
    pool: Pool | Mapping[str, Pool] = "flatten",
    capture: str = "output",
    select: Any = None,
    calls: str = "error",
    inputs_a: Adapter | None = None,
    inputs_b: Adapter | None = None,
    inputs: Mapping[str, Adapter] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    names: tuple[str, str] = ("model A", "model B"),
    device: torch.device | str | None = None,
    eval: bool = True,
    stop_early: bool = False,
    progress: bool = True,
) -> SimilarityResult | dict[tuple[str, str], SimilarityResult]:
    """Compare two models (or every pair of several) layer by layer over a dataset, streaming.

    Parameters
    ----------
    model_a, model_b : nn.Module
        The models. ``model_b`` None (or the same object as ``model_a``) compares ``model_a`` with itself,
        running it once per batch. Instead of two models, ``model_a`` may be a mapping of names to models
        (e.g. ``{"moco": m1, "dino": m2, "mae": m3}``), with the data as second argument: every model runs
        once per batch and every pair is compared (existing libraries run two forwards per pair).
    data : iterable of batches
        E.g. a DataLoader. A batch is a tensor, an ``(inputs, labels, ...)`` tuple whose first element is fed
        to the model, or a dict passed as keyword arguments (so ``attention_mask`` reaches a Hugging Face
        model and ``pool="masked_mean"``). Batches are moved to each model's device.
    layers_a, layers_b : layer selection
        Names, globs (``"blocks.*.attn.qkv"``), regexes, module types or callables; see
        :class:`Extractor`. ``layers_b`` defaults to ``layers_a``; ``layers`` sets both.
    layers : layer selection, or a mapping from model name to one
        For several models: one selection for all, or one per model.
    estimator : {"minibatch", "exact", "exact_unbiased"}, default "minibatch"
        ``minibatch``: minibatch CKA of Nguyen et al. (2021), unbiased HSIC summed over batches (any
        kernel, any width). ``exact`` / ``exact_unbiased``: exact streaming linear CKA of the whole
        dataset (biased or unbiased), which keeps p×p sums per layer: for pooled widths up to 8192.
    kernel, sigma, median_fraction
        As in :class:`MinibatchCKAMatrix` (the exact estimators are linear).
    pool : str, callable, or a mapping from layer name to either, default "flatten"
        Token / spatial pooling before similarity; see :func:`pool_tokens`.
    capture, select, calls, stop_early
        As in :class:`Extractor`.
    inputs_a, inputs_b : callable, optional
        Adapt a batch before it is fed to model A / B, when the two need different preprocessing of the
        same samples (``inputs`` maps model names to adapters for several models).
    pairs : sequence of (name, name), optional
        With several models, which pairs to compare; by default every pair once, in mapping order.
    names : (str, str), default ("model A", "model B")
        Names of the two models in the result (axis labels of the heatmap).
    device : torch.device or str, optional
        Where batches go; by default each model's own device. Models are never moved.
    eval : bool, default True
        Run the models in eval mode for the duration (dropout off, batch-norm statistics frozen); each
        module's ``training`` flag is restored afterwards.
    progress : bool, default True
        Show a progress bar with samples/s when tqdm is installed.

    Returns
    -------
    SimilarityResult, or dict mapping (name_a, name_b) to SimilarityResult for several models
        Matrix rows are model A's layers, columns model B's.

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
    """
    if data is None and isinstance(model_a, Mapping):
        models = dict(model_a)
        data = model_b
        if len(models) < 2 and pairs is None:
            raise InvalidParameterError("compare needs at least two models in the mapping (or explicit pairs)")
        spec = layers if layers is not None else layers_a
        specs = dict(spec) if isinstance(spec, Mapping) else dict.fromkeys(models, spec)
        adapters = dict(inputs or {})
        todo = (
            list(pairs) if pairs is not None else [(a, b) for i, a in enumerate(models) for b in list(models)[i + 1 :]]
        )
        multi = True
    else:
        if not isinstance(model_a, nn.Module) or data is None:
            raise InvalidParameterError(
                "call compare(model_a, model_b, data, layers_a=...) or compare({'name': model, ...}, data, layers=...)"
            )
        b = model_a if model_b is None else model_b
        na, nb = names
        if na == nb:
            raise InvalidParameterError(f"the two models need different names; got {names}")
        models = {na: model_a, nb: b}
        sa = layers_a if layers_a is not None else layers
        sb = layers_b if layers_b is not None else sa
        specs = {na: sa, nb: sb}
        adapters = {k: v for k, v in ((na, inputs_a), (nb, inputs_b)) if v is not None}
        todo = [(na, nb)]
        multi = False
    for name in models:
        if specs.get(name) is None:
            raise InvalidParameterError(f"no layers selected for {name!r}: pass layers_a= (and layers_b=) or layers=")
    for a, b in todo:
        for n in (a, b):
            if n not in models:
                raise InvalidParameterError(f"pair ({a!r}, {b!r}) names {n!r}, which is not among {list(models)}")
    if estimator not in ESTIMATORS:
        raise InvalidParameterError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}")
    check_kernel(kernel, sigma, median_fraction)
    if estimator != "minibatch" and kernel != "linear":
        raise InvalidParameterError(
            f"estimator={estimator!r} is exact linear CKA; use estimator='minibatch' for {kernel!r}"
        )

    results = _Comparison(
        models,
        specs,
        adapters,
        todo,
        estimator=estimator,
        kernel=kernel,
        sigma=sigma,
        median_fraction=median_fraction,
        pool=pool,
        capture=capture,
        select=select,
        calls=calls,
        device=device,
        stop_early=stop_early,
    ).run(data, eval_models=eval, progress=progress)
    return results if multi else results[todo[0]]


class _Comparison:
    """One streaming comparison: extractors grouped by model, accumulators per pair."""

    def __init__(
        self,
        models: dict[str, nn.Module],
        specs: dict[str, Any],
        adapters: dict[str, Adapter],
        pairs: list[tuple[str, str]],
        *,
        estimator: str,
        kernel: str,
        sigma: float | None,
        median_fraction: float,
        pool: Any,
        capture: str,
        select: Any,
        calls: str,
        device: torch.device | str | None,
        stop_early: bool,
    ) -> None:
        used = [n for n in models if any(n in p for p in pairs)]
        self.kernel, self.sigma, self.median_fraction = kernel, sigma, median_fraction
        self.widths: dict[tuple[int, int], dict[str, int]] = {}
        self.models = models
        self.pairs = pairs
        self.estimator = estimator
        self.config = {
            "estimator": estimator,
            "kernel": kernel,
            "sigma": sigma,
            "median_fraction": median_fraction,
            "pool": _pool_name(pool),
            "capture": capture,
        }
        self.layer_names = {n: resolve_layers(models[n], specs[n]) for n in used}
        # One run per (model object, input adapter): a model under two names, or compared with itself, is run
        # once per batch, capturing the union of the layers its names select.
        self.run_of: dict[str, tuple[int, int]] = {n: (id(models[n]), id(adapters.get(n))) for n in used}
        self.runs: dict[tuple[int, int], Extractor] = {}
        self.run_adapter: dict[tuple[int, int], Adapter | None] = {}
        self.run_device: dict[tuple[int, int], torch.device] = {}
        for n in used:
            key = self.run_of[n]
            union = [l for m in used if self.run_of[m] == key for l in self.layer_names[m]]
            union = list(dict.fromkeys(union))
            if key not in self.runs:
                # Minibatch CKA only needs each layer's n×n Gram: build it inside the hook, so no activation
                # outlives its layer (kept activations cost the allocator fresh memory on every layer).
                transform = self._gram_transform(key) if estimator == "minibatch" else None
                self.runs[key] = Extractor(
                    models[n],
                    union,
                    capture=capture,
                    select=select,
                    pool=pool,
                    calls=calls,
                    stop_early=stop_early,
                    transform=transform,
                )
                self.run_adapter[key] = adapters.get(n)
                own = model_device(models[n])
                target = torch.device(device) if device is not None else own
                if device is not None and any(t.device != target for t in models[n].parameters()):
                    raise DeviceMismatchError(
                        f"{n!r} has parameters on {own} but device={str(target)!r}; compare never moves a model: "
                        f"move it with .to({str(target)!r}) first, or leave device=None"
                    )
                self.run_device[key] = target
        self.matrices = (
            {p: MinibatchCKAMatrix(kernel=kernel, sigma=sigma, median_fraction=median_fraction) for p in pairs}
            if estimator == "minibatch"
            else {}
        )
        self.exact: dict[tuple[str, str], list[list[LinearCKA]]] = {}
        self.keys: dict[str, list[str]] = {}
        self.samples = 0
        self.batches = 0

    def _keys_for(self, name: str, acts: Mapping[str, torch.Tensor]) -> list[str]:
        """Activation keys of ``name``'s layers (``layer#k`` keys when each call is recorded)."""
        if name not in self.keys:
            wanted = set(self.layer_names[name])
            self.keys[name] = [k for k in acts if k.split("#")[0] in wanted]
        return self.keys[name]

    def run(self, data: Iterable[Any], *, eval_models: bool, progress: bool) -> dict[tuple[str, str], SimilarityResult]:
        bar = _progress(data, progress, "compare")
        start = time.perf_counter()
        manager = eval_mode(self.models.values()) if eval_models else contextlib.nullcontext()
        try:
            # claimed before eval mode: a call that finds a model busy in another thread changes no flag
            with exclusive(self.models.values()), manager, torch.no_grad():
                for batch in data:
                    self._step(batch)
                    if bar is not None:
                        bar.update(1)
                        rate = self.samples / max(time.perf_counter() - start, 1e-9)
                        bar.set_postfix_str(f"{rate:,.0f} samples/s", refresh=False)
        finally:
            if bar is not None:
                bar.close()
        if self.batches == 0:
            raise InvalidParameterError("data yielded no batches; nothing to compare")
        return {p: self._result(p) for p in self.pairs}

    def _step(self, batch: Any) -> None:
        acts: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        for key, extractor in self.runs.items():
            moved = move_batch(batch, self.run_device[key])
            adapter = self.run_adapter[key]
            acts[key] = extractor(moved, model_inputs=None if adapter is None else adapter(moved))
        sizes = {_batch_size(a) for a in acts.values()}
        if len(sizes) != 1:
            raise ShapeMismatchError(f"the models produced different batch sizes {sorted(sizes)} for one batch")
        if self.estimator == "minibatch":
            self._step_minibatch(acts)
        else:
            self._step_exact(acts)
        self.samples += sizes.pop()
        self.batches += 1

    def _gram_transform(self, key: tuple[int, int]) -> Callable[[str, torch.Tensor], torch.Tensor]:
        widths = self.widths.setdefault(key, {})

        def transform(layer: str, pooled: torch.Tensor) -> torch.Tensor:
            widths[layer] = pooled.shape[1]
            return batch_gram(pooled, self.kernel, self.sigma, self.median_fraction, layer)

        return transform

    def _step_minibatch(self, grams_of: dict[tuple[int, int], dict[str, torch.Tensor]]) -> None:
        grams: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {}
        stacked: dict[tuple[int, int], tuple[torch.Tensor, list[str], str]] = {}
        for name in {n for p in self.pairs for n in p}:
            key = self.run_of[name]
            if key not in stacked:
                run_keys = list(grams_of[key])
                g = zero_diagonals_(torch.stack([grams_of[key][k] for k in run_keys]))
                if g.shape[-1] < 4:
                    raise InsufficientSamplesError(
                        f"minibatch CKA needs batches of at least 4 samples; got {g.shape[-1]}. Drop the "
                        "incomplete last batch (DataLoader(drop_last=True))"
                    )
                stacked[key] = (g, run_keys, name)
            g, run_keys, _ = stacked[key]
            keys = self._keys_for(name, grams_of[key])
            idx = [run_keys.index(k) for k in keys]
            widths = tuple(self.widths[key][k.split("#")[0]] for k in keys)
            grams[name] = (g if idx == list(range(len(run_keys))) else g[idx], widths)
        updates = []
        for a, b in self.pairs:
            ga, wa = grams[a]
            acc = self.matrices[(a, b)]
            if self.run_of[a] == self.run_of[b] and self.keys[a] == self.keys[b]:
                dims, contribution = acc._grams_contribution(ga, wa, None, None)
            else:
                gb, wb = grams[b]
                dims, contribution = acc._grams_contribution(ga, wa, gb.to(ga.device), wb)
            updates.append((acc, dims, ga.device, contribution))
        # Every check of the batch (NaN/inf in any model's layers, overflow in any pair's sums) shares one
        # host synchronisation, and nothing is added before all pass: a rejected batch changes no state.
        first = next(iter(stacked.values()))[0].device
        flags = [torch.isfinite(g.sum(dim=(1, 2))).to(first) for g, _, _ in stacked.values()]
        flags += [acc._finite_flags(contribution).to(first) for acc, _, _, contribution in updates]
        ok = torch.cat(flags).tolist()
        pos = 0
        for g, run_keys, model in stacked.values():
            if not all(ok[pos : pos + len(run_keys)]):
                bad = [k for k, fine in zip(run_keys, ok[pos : pos + len(run_keys)]) if not fine]
                raise NonFiniteError(
                    f"{model}: layers {bad} produced NaN or infinite values in this batch (or values too large "
                    f"for {g.dtype}); check the model and its inputs"
                )
            pos += len(run_keys)
        for (acc, _, _, _), f in zip(updates, flags[len(stacked) :]):
            if not all(ok[pos : pos + len(f)]):
                acc._raise_overflow()
            pos += len(f)
        for acc, dims, device, contribution in updates:
            acc._apply(dims, device, contribution)

    def _step_exact(self, acts: dict[tuple[int, int], dict[str, torch.Tensor]]) -> None:
        # every layer's values are checked here, where model and layer are known, with one host sync
        named = [(name, k, acts[self.run_of[name]][k]) for name in {n for p in self.pairs for n in p} for k in
                 self._keys_for(name, acts[self.run_of[name]])]  # fmt: skip
        first = named[0][2].device
        ok = torch.stack([torch.isfinite(t.sum()).to(first) for _, _, t in named]).tolist()
        for (model, layer, t), fine in zip(named, ok):
            if not fine and not bool(torch.isfinite(t).all()):
                raise NonFiniteError(
                    f"{model}: layer {layer!r} produced NaN or infinite values in this batch (shape "
                    f"{tuple(t.shape)}); check the model and its inputs"
                )
        for a, b in self.pairs:
            xa = [acts[self.run_of[a]][k] for k in self._keys_for(a, acts[self.run_of[a]])]
            xb = [acts[self.run_of[b]][k] for k in self._keys_for(b, acts[self.run_of[b]])]
            if (a, b) not in self.exact:
                for name, xs in ((a, xa), (b, xb)):
                    for k, x in zip(self.keys[name], xs):
                        width = x.reshape(x.shape[0], -1).shape[1]
                        if width > EXACT_MAX_WIDTH:
                            raise InvalidParameterError(
                                f"estimator={self.estimator!r} keeps width×width sums per layer, but {name}:{k} has "
                                f"{width} features after pooling (limit {EXACT_MAX_WIDTH}); pool tokens "
                                "(pool='mean' or 'cls') or use estimator='minibatch'"
                            )
                unbiased = self.estimator == "exact_unbiased"
                self.exact[(a, b)] = [[LinearCKA(unbiased=unbiased) for _ in xb] for _ in xa]
            grid = self.exact[(a, b)]
            for i, x in enumerate(xa):
                for j, y in enumerate(xb):
                    grid[i][j].update(x, y.to(x.device))

    def _result(self, pair: tuple[str, str]) -> SimilarityResult:
        a, b = pair
        if self.estimator == "minibatch":
            matrix = self.matrices[pair]._compute_named(
                [f"{a}:{k}" for k in self.keys[a]], [f"{b}:{k}" for k in self.keys[b]]
            )
        else:
            matrix = torch.tensor([[acc.compute() for acc in row] for row in self.exact[pair]], dtype=torch.float64)
        from . import __version__

        meta = {
            "model_a": a,
            "model_b": b,
            **self.config,
            "samples": self.samples,
            "batches": self.batches,
            "reprsim": __version__,
        }
        return SimilarityResult(matrix, self.keys[a], self.keys[b], meta)
