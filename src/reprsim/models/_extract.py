"""Hook-based activation capture from any ``nn.Module``: :class:`Extractor`, :func:`list_layers`, pooling.

An :class:`Extractor` runs one forward pass per call with forward hooks on the selected modules and
returns ``{layer name: (batch, features) tensor}``: the tensor picked out of each module's output (or input),
detached and pooled. Hooks live only for the duration of the call and are removed in a ``finally``, so an
exception in the forward never leaves them behind; the model is never moved, cast, or switched between train
and eval here. Similarity arithmetic lives elsewhere (:mod:`reprsim.models._compare` feeds these dicts into the
accumulators).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Union

import numpy as np
import torch
from torch import nn

from .._validation import check_bool
from ..errors import (
    ConcurrentUseError,
    InvalidParameterError,
    LayerNotFoundError,
    MultipleCallsError,
    ShapeMismatchError,
)

__all__ = ["Extractor", "LayerInfo", "eval_mode", "list_layers", "model_device", "pool_tokens"]

LayerSelector = Union[str, int, "re.Pattern[str]", type, Callable[[str, nn.Module], bool]]
LayerSpec = Union[LayerSelector, Sequence[LayerSelector]]
Pool = Union[str, Callable[[torch.Tensor], torch.Tensor]]
POOLS = ("flatten", "mean", "cls", "mean_no_cls", "masked_mean")


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once every selected layer has been recorded."""


# -- selecting layers ------------------------------------------------------------------------------------


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """``*`` matches within one dotted name component, ``**`` across components, ``?`` one character."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "[":
            j = pattern.find("]", i)
            if j < 0:
                out.append(re.escape(c))
            else:
                out.append(pattern[i : j + 1])
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def _closest(target: str, names: list[str]) -> str:
    close = difflib.get_close_matches(target, names, n=5, cutoff=0.4)
    if not close:
        close = names[:5]
    return ", ".join(repr(c) for c in close)


def resolve_layers(model: nn.Module, spec: LayerSpec) -> list[str]:
    """Module names selected by ``spec``, in the order given (patterns expand in module order)."""
    modules = dict(model.named_modules())
    names = [n for n in modules if n]
    items: Sequence[Any] = spec if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise LayerNotFoundError(
            "no layers selected: pass a name, a glob, an index, a regex, a module type or a callable"
        )
    selected: list[str] = []
    for item in items:
        if isinstance(item, str):
            if any(c in item for c in "*?["):
                rx = _glob_to_regex(item)
                matched = [n for n in names if rx.fullmatch(n)]
                if not matched:
                    literal = re.sub(r"[*?\[\]]", "", item)
                    raise LayerNotFoundError(
                        f"no layer of {type(model).__name__} matches the pattern {item!r} ('*' stays within "
                        f"one dotted level, '**' crosses levels); close names: {_closest(literal, names)}. "
                        "reprsim.list_layers(model) shows them all"
                    )
            elif item in modules:
                matched = [item]
            else:
                raise LayerNotFoundError(
                    f"{type(model).__name__} has no layer {item!r}; did you mean {_closest(item, names)}? "
                    "reprsim.list_layers(model) shows them all"
                )
        elif isinstance(item, int) and not isinstance(item, bool):
            # the item-th module in list_layers order (every named module but the model itself), from the end when
            # negative, as pytorch-cka's users write layers=[-1]
            if not -len(names) <= item < len(names):
                raise LayerNotFoundError(
                    f"{type(model).__name__} has {len(names)} modules, so layer index {item} is out of range (from "
                    f"{-len(names)} to {len(names) - 1}, in the order of reprsim.list_layers(model))"
                )
            matched = [names[item]]
        elif isinstance(item, re.Pattern):
            matched = [n for n in names if item.fullmatch(n)]
            if not matched:
                raise LayerNotFoundError(f"no layer of {type(model).__name__} fully matches the regex {item.pattern!r}")
        elif isinstance(item, type) and issubclass(item, nn.Module):
            matched = [n for n in names if isinstance(modules[n], item)]
            if not matched:
                raise LayerNotFoundError(f"{type(model).__name__} has no module of type {item.__name__}")
        elif callable(item):
            matched = [n for n in names if item(n, modules[n])]
            if not matched:
                raise LayerNotFoundError("the layer-selecting callable accepted no module")
        else:
            raise InvalidParameterError(
                f"a layer selector must be a name, a glob, an integer index, a compiled regex, an nn.Module subclass "
                f"or a callable (name, module) -> bool; got {item!r}"
            )
        selected.extend(n for n in matched if n not in selected)
    return selected


# -- picking and pooling tensors -------------------------------------------------------------------------


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor in a (nested) tuple / list / dict / ModelOutput / dataclass, depth first."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        values: Iterator[Any] = iter(obj.values())
    elif isinstance(obj, (tuple, list)):
        values = iter(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        values = (getattr(obj, f.name) for f in dataclasses.fields(obj))
    else:
        return None
    for v in values:
        t = first_tensor(v)
        if t is not None:
            return t
    return None


def _select(obj: Any, select: int | str | Callable[[Any], torch.Tensor] | None, where: str) -> torch.Tensor:
    if select is None:
        t = first_tensor(obj)
    elif callable(select):
        t = select(obj)
    elif isinstance(select, int):
        t = obj[select] if isinstance(obj, (tuple, list)) else None
    else:
        t = obj[select] if isinstance(obj, Mapping) else getattr(obj, select, None)
    if not isinstance(t, torch.Tensor):
        raise InvalidParameterError(
            f"could not pick a tensor out of the {where} (a {type(obj).__name__}) with select={select!r}; "
            "pass select=<index>, <key> or a callable returning the tensor to compare"
        )
    return t


def pool_tokens(x: torch.Tensor, pool: Pool = "flatten", attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a layer's activation to one vector per sample: shape (batch, features).

    Parameters
    ----------
    x : torch.Tensor
        ``(batch, features)`` is returned as is. ``(batch, tokens, features)`` is read as a token sequence
        (transformers, ViTs); ``(batch, channels, *spatial)`` with 4 or more dims as a feature map (CNNs).
    pool : {"flatten", "mean", "cls", "mean_no_cls", "masked_mean"} or callable
        ``flatten``: every value a feature. ``mean``: average over tokens, or over spatial positions.
        ``cls``: the first token. ``mean_no_cls``: average over all tokens but the first. ``masked_mean``:
        average over the tokens whose ``attention_mask`` is 1 (padding excluded). A callable receives ``x``
        and returns the (batch, features) tensor.
    attention_mask : torch.Tensor, optional
        (batch, tokens) mask for ``masked_mean``.

    Returns
    -------
    torch.Tensor, shape (batch, features)

    Examples
    --------
    >>> import torch
    >>> from reprsim import pool_tokens
    >>> tokens = torch.arange(24.0).reshape(2, 3, 4)  # 2 samples, 3 tokens, 4 features
    >>> pool_tokens(tokens, "cls")
    tensor([[ 0.,  1.,  2.,  3.],
            [12., 13., 14., 15.]])
    >>> pool_tokens(tokens, "masked_mean", torch.tensor([[1, 1, 0], [1, 1, 1]]))
    tensor([[ 2.,  3.,  4.,  5.],
            [16., 17., 18., 19.]])
    """
    if not isinstance(x, torch.Tensor):
        if isinstance(x, (str, bytes)) or (not hasattr(x, "__len__") and not hasattr(x, "__array__")):
            raise InvalidParameterError(f"pool_tokens takes a tensor (or an array); got {type(x).__name__}")
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InvalidParameterError(
                f"pool_tokens takes a tensor (or an array of numbers); could not read a {type(x).__name__} as one"
            ) from exc
    if x.ndim < 1:
        raise ShapeMismatchError("pool_tokens needs a (batch, ...) activation; got a scalar")
    if callable(pool):
        out = pool(x)
        if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != x.shape[0]:
            raise InvalidParameterError(
                f"the pooling callable must return a tensor with the batch ({x.shape[0]}) first; got "
                f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
            )
        return out.reshape(out.shape[0], -1)
    if pool not in POOLS:
        raise InvalidParameterError(f"pool must be one of {POOLS} or a callable; got {pool!r}")
    if x.ndim <= 2 or pool == "flatten":
        return x.reshape(x.shape[0], -1)
    if pool == "mean":
        return x.mean(dim=1) if x.ndim == 3 else x.flatten(2).mean(dim=2)
    if x.ndim != 3:
        raise ShapeMismatchError(
            f"pool={pool!r} needs a (batch, tokens, features) activation; got shape {tuple(x.shape)}. "
            "Use 'mean' or 'flatten' for feature maps"
        )
    if pool == "cls":
        return x[:, 0]
    if pool == "mean_no_cls":
        if x.shape[1] < 2:
            raise ShapeMismatchError(f"pool='mean_no_cls' needs at least 2 tokens; got shape {tuple(x.shape)}")
        return x[:, 1:].mean(dim=1)
    if attention_mask is None:
        raise InvalidParameterError(
            "pool='masked_mean' needs an attention mask: feed dict batches with an 'attention_mask' entry "
            "(as Hugging Face tokenizers return them)"
        )
    if attention_mask.shape != x.shape[:2]:
        raise ShapeMismatchError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the activation has "
            f"{tuple(x.shape[:2])} (batch, tokens); masked_mean needs one mask entry per token"
        )
    m = attention_mask.to(device=x.device, dtype=x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


# -- running a model -------------------------------------------------------------------------------------

_IN_USE: dict[int, tuple[int, int]] = {}  # id(model) -> (thread ident, nesting depth)
_IN_USE_LOCK = threading.Lock()


@contextlib.contextmanager
def exclusive(models: Iterable[nn.Module]) -> Iterator[None]:
    """Claim ``models`` for this thread for the block; a model claimed by another thread raises
    :class:`ConcurrentUseError` before anything (hooks, training flags) is touched.

    Hooks fire for every forward of a module, whoever runs it, and a training flag saved by one call and
    restored by another ends up wrong; so one model is run by one reprsim call at a time. The same thread may
    nest claims (compare runs its extractors inside its own claim).
    """
    me = threading.get_ident()
    claimed: list[int] = []
    with _IN_USE_LOCK:
        unique = list({id(m): m for m in models}.items())
        for key, model in unique:
            owner = _IN_USE.get(key)
            if owner is not None and owner[0] != me:
                raise ConcurrentUseError(
                    f"this {type(model).__name__} is already being run by a reprsim call in another thread; its "
                    "hooks would record both calls' forwards. Run the calls one after another, or give each "
                    "thread its own copy (copy.deepcopy(model))"
                )
        for key, _ in unique:
            owner = _IN_USE.get(key)
            _IN_USE[key] = (me, 1 if owner is None else owner[1] + 1)
            claimed.append(key)
    try:
        yield
    finally:
        with _IN_USE_LOCK:
            for key in claimed:
                thread, depth = _IN_USE[key]
                if depth == 1:
                    del _IN_USE[key]
                else:
                    _IN_USE[key] = (thread, depth - 1)


def _remove_all(handles: list[torch.utils.hooks.RemovableHandle]) -> None:
    for h in handles:
        h.remove()


def owned(recorded: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``recorded``, copied if it shares memory with the module's tensor ``source``.

    A hook sees the module's own output (or input) tensor, and the model may write into it after the hook
    returns: ``ReLU(inplace=True)`` after a batch norm, ``out += identity`` in a residual block. A view of it
    (flatten and CLS pooling are views) would then silently hold the later value, so anything recorded that
    aliases the model's memory is cloned; pooled results that are new tensors (means, Grams) cost nothing.
    """
    if recorded.layout != torch.strided or source.layout != torch.strided:
        return recorded.clone()
    if recorded.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
        return recorded.clone()
    return recorded


def batch_inputs(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """How a batch is passed to a model: a tensor as is, (inputs, labels, ...) by its first element, a
    mapping as keyword arguments (so ``attention_mask`` reaches a Hugging Face model)."""
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)) and batch:
        return (batch[0],), {}
    raise InvalidParameterError(
        f"a batch must be a tensor, an (inputs, labels, ...) tuple or a dict of model keyword arguments; got "
        f"{type(batch).__name__}. Give the model an adapter, Extractor(model, layers, inputs=...), for other "
        "batch formats"
    )


def attention_mask_of(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        return mask if isinstance(mask, torch.Tensor) else None
    return None


def move_batch(batch: Any, device: torch.device) -> Any:
    """The batch with every tensor in it on ``device`` (structure kept; non-tensors untouched)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        moved = {k: move_batch(v, device) for k, v in batch.items()}
        try:
            return type(batch)(moved)  # type: ignore[call-arg]  # dict subclasses (BatchEncoding) keep their type
        except TypeError:
            return moved
    if isinstance(batch, tuple):
        return tuple(move_batch(v, device) for v in batch)
    if isinstance(batch, list):
        return [move_batch(v, device) for v in batch]
    return batch


class Extractor:
    """Capture pooled activations of selected layers, one forward pass per call.

    Parameters
    ----------
    model : nn.Module
        Any PyTorch model. It is never moved, cast, or switched between train and eval modes here.
    layers : str, int, re.Pattern, type, callable, or a sequence of them
        Exact dotted names (``"blocks.3.attn.qkv"``), globs (``"blocks.*.attn.qkv"``: ``*`` stays within one
        dotted level, ``**`` crosses levels), integer indices into the rows of :func:`list_layers` (every
        named module in registration order; ``-1`` is the last), compiled regexes (full match),
        ``nn.Module`` subclasses, or callables ``(name, module) -> bool``. Unknown names fail with the closest
        existing names; :func:`list_layers` shows them all.
    capture : {"output", "input"}, default "output"
        Record what each module returns, or the first tensor it receives (forward pre-hook).
    select : int, str or callable, optional
        Which tensor to take from a tuple / list / dict / ``ModelOutput`` / dataclass; by default the first
        tensor found (depth first).
    pool : str, callable, or a mapping from layer name to either, default "flatten"
        How to reduce each activation to (batch, features); see :func:`pool_tokens`.
    calls : {"error", "each", "first", "last"}, default "error"
        What to do when a selected module runs more than once in one forward (shared weights, loops):
        raise, record every call as ``name#0``, ``name#1``, ..., or keep the first or the last.
    stop_early : bool, default False
        End each forward as soon as every selected layer has been recorded (saves the rest of the network
        when only early layers are compared). Not available with ``calls="each"``.
    no_grad : bool, default True
        Run the forward under ``torch.no_grad()``. Recorded tensors are detached either way, and copied when
        they share memory with the module's tensor, so an in-place operation later in the forward
        (``ReLU(inplace=True)``, ``out += identity``) cannot change what was recorded.
    transform : callable (layer name, pooled tensor) -> tensor, optional
        Applied inside the hook, right after pooling; what it returns is recorded instead. Reducing each
        activation there (e.g. to the n×n Gram a minibatch CKA accumulator needs) frees it before the next
        layer runs, which saves the allocator fresh memory on every layer.
    inputs : callable, optional
        Adapts each batch before it is fed to the model (``inputs(batch)`` is what the model receives), when two
        models compared on the same samples need different preprocessing. The attention mask that
        ``pool="masked_mean"`` reads still comes from the batch itself.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from reprsim import Extractor
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> acts = Extractor(model, ["0", "2"])(torch.randn(5, 4))
    >>> {name: tuple(a.shape) for name, a in acts.items()}
    {'0': (5, 8), '2': (5, 2)}
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec,
        *,
        capture: Literal["output", "input"] = "output",
        select: int | str | Callable[[Any], torch.Tensor] | None = None,
        pool: Pool | Mapping[str, Pool] = "flatten",
        calls: Literal["error", "each", "first", "last"] = "error",
        stop_early: bool = False,
        no_grad: bool = True,
        transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
        inputs: Callable[[Any], Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidParameterError(f"Extractor takes an nn.Module; got {type(model).__name__}")
        if capture not in ("output", "input"):
            raise InvalidParameterError(f"capture must be 'output' or 'input'; got {capture!r}")
        if calls not in ("error", "each", "first", "last"):
            raise InvalidParameterError(f"calls must be one of 'error', 'each', 'first', 'last'; got {calls!r}")
        if stop_early and calls == "each":
            raise InvalidParameterError("stop_early cannot know when every call has run with calls='each'")
        self.model = model
        self.layers = resolve_layers(model, layers)
        self.capture = capture
        self.select = select
        self.pool = pool
        self.calls = calls
        self.stop_early = check_bool(stop_early, "stop_early")
        self.no_grad = check_bool(no_grad, "no_grad")
        self.transform = transform
        if inputs is not None and not callable(inputs):
            raise InvalidParameterError(f"inputs must be a function of a batch; got {type(inputs).__name__}")
        self.inputs = inputs
        if isinstance(pool, Mapping):
            missing = [n for n in self.layers if n not in pool]
            if missing:
                raise InvalidParameterError(f"pool mapping has no entry for layers {missing}")
        self._modules = dict(model.named_modules())

    def _pool_for(self, name: str) -> Pool:
        return self.pool[name] if isinstance(self.pool, Mapping) else self.pool

    def __enter__(self) -> Extractor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None  # hooks never outlive a call; nothing to release

    def __call__(self, batch: Any, *, model_inputs: Any = None) -> dict[str, torch.Tensor]:
        """Run the model on ``batch`` and return ``{layer: (batch, features)}`` in selection order.

        ``model_inputs``, when given, is what is passed to the model instead of ``batch`` (``batch`` still
        supplies the attention mask for ``masked_mean``); by default it is ``inputs(batch)`` when the extractor
        has an ``inputs`` adapter.
        """
        mask = attention_mask_of(batch)
        if model_inputs is None and self.inputs is not None:
            model_inputs = self.inputs(batch)
        args, kwargs = batch_inputs(batch if model_inputs is None else model_inputs)
        records: dict[str, list[torch.Tensor]] = {n: [] for n in self.layers}
        expected = set(self.layers)
        done: set[str] = set()

        def make_hook(name: str) -> Callable[..., None]:
            def record(obj: Any, where: str) -> None:
                t = _select(obj, self.select, f"{where} of layer {name!r}")
                calls = records[name]
                if calls and self.calls == "error":
                    raise MultipleCallsError(
                        f"layer {name!r} ran more than once in one forward pass (shared weights or a loop); "
                        f"pass calls='each' to record every call as '{name}#0', '{name}#1', ..., or "
                        "calls='first' / calls='last' to keep one"
                    )
                if calls and self.calls == "first":
                    return
                pooled = pool_tokens(t.detach(), self._pool_for(name), mask)
                if self.transform is not None:
                    pooled = self.transform(name, pooled)
                pooled = owned(pooled, t)
                if self.calls == "last":
                    calls.clear()
                calls.append(pooled)
                done.add(name)
                if self.stop_early and done == expected:
                    raise _StopForward

            if self.capture == "output":

                def hook(module: nn.Module, inputs: Any, output: Any) -> None:
                    record(output, "output")

                return hook

            def pre_hook(module: nn.Module, inputs: Any, kw: Any) -> None:
                record((*inputs, *kw.values()), "input")

            return pre_hook

        handles: list[torch.utils.hooks.RemovableHandle] = []
        with exclusive([self.model]), contextlib.ExitStack() as cleanup:
            cleanup.callback(_remove_all, handles)
            for name in self.layers:
                module = self._modules[name]
                if self.capture == "output":
                    handles.append(module.register_forward_hook(make_hook(name)))
                else:
                    handles.append(module.register_forward_pre_hook(make_hook(name), with_kwargs=True))
            grad = torch.no_grad() if self.no_grad else contextlib.nullcontext()
            with grad, contextlib.suppress(_StopForward):
                self.model(*args, **kwargs)
        missing = [n for n, r in records.items() if not r]
        if missing:
            raise LayerNotFoundError(
                f"layers {missing} did not run during the forward pass, so nothing was recorded for them; "
                "select layers the forward actually uses (list_layers(model, example) shows which ran)"
            )
        out: dict[str, torch.Tensor] = {}
        for name, recs in records.items():
            if self.calls == "each" and len(recs) > 1:
                out.update({call_key(name, i): r for i, r in enumerate(recs)})
            else:
                out[name] = recs[0]
        return out


def call_key(module: str, call: int) -> str:
    """The key of one call of a module that ran several times in a forward pass (``calls="each"``)."""
    return f"{module}#{call}"


def module_of(key: str) -> str:
    """The module a captured key belongs to: the key itself, or the module of one of its calls."""
    return key.split("#")[0]


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One selectable module: its dotted name, type, and (when an example was run) how often it ran and
    the shape of its first output tensor."""

    name: str
    type: str
    calls: int | None = None
    output_shape: tuple[int, ...] | None = None


class LayerTable(list[LayerInfo]):
    """A list of :class:`LayerInfo` that prints as a table."""

    def __repr__(self) -> str:
        ran = any(i.calls is not None for i in self)
        width = max([len(i.name) for i in self] + [4])
        head = f"{'name':<{width}}  {'type':<24}" + ("  calls  output shape" if ran else "")
        rows = [head, "-" * len(head)]
        for i in self:
            row = f"{i.name:<{width}}  {i.type:<24}"
            if ran:
                shape = "" if i.output_shape is None else str(tuple(i.output_shape))
                row += f"  {i.calls if i.calls is not None else '':>5}  {shape}"
            rows.append(row)
        return "\n".join(rows)


def list_layers(model: nn.Module, example: Any = None, *, pattern: str | None = None) -> LayerTable:
    """The modules of ``model`` that an :class:`Extractor` can select.

    Parameters
    ----------
    model : nn.Module
    example : batch, optional
        When given, one forward pass is run on it (under ``no_grad``, hooks removed afterwards) to record how
        often each module runs and the shape of its output; modules that did not run show 0 calls.
    pattern : str, optional
        Only names matching this glob (same rules as layer selection).

    Returns
    -------
    LayerTable
        A list of :class:`LayerInfo`; its repr is a readable table.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from reprsim import list_layers
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> list_layers(model, torch.randn(3, 4))
    name  type                      calls  output shape
    ---------------------------------------------------
    0     Linear                        1  (3, 8)
    1     ReLU                          1  (3, 8)
    2     Linear                        1  (3, 2)
    """
    rx = _glob_to_regex(pattern) if pattern else None
    named = [(n, m) for n, m in model.named_modules() if n and (rx is None or rx.fullmatch(n))]
    if example is None:
        return LayerTable(LayerInfo(n, type(m).__name__) for n, m in named)
    calls: dict[str, int] = {n: 0 for n, _ in named}
    shapes: dict[str, tuple[int, ...]] = {}

    def make(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            calls[name] += 1
            t = first_tensor(output)
            if t is not None and name not in shapes:
                shapes[name] = tuple(t.shape)

        return hook

    args, kwargs = batch_inputs(example)
    with exclusive([model]):
        handles = [m.register_forward_hook(make(n)) for n, m in named]
        try:
            with torch.no_grad():
                model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
    return LayerTable(LayerInfo(n, type(m).__name__, calls[n], shapes.get(n)) for n, m in named)


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
