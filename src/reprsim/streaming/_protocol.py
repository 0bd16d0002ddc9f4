"""The accumulator protocol every streaming statistic follows.

Each accumulator declares its state once (name, shape, and how it reduces: summed, or concatenated), so
``reset``, ``merge``, ``state_dict``/``load_state_dict``, ``to`` and ``all_reduce`` are written once, in
:class:`_Accumulator`. State is a set of sufficient statistics whose size does not grow with the number of
samples (the minibatch per-batch HSIC records, three numbers a batch, are the one exception). A batch is
validated and its contribution computed in full before the state is touched, so a rejected batch never
corrupts it. Concrete accumulators live beside this module; their mathematics in :mod:`reprsim.measures`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

import torch

from .._validation import as_matrix, check_same_samples
from ..errors import (
    DeviceMismatchError,
    IncompatibleStateError,
    InsufficientSamplesError,
    InvalidParameterError,
    NonFiniteError,
    ShapeMismatchError,
)

__all__ = ["Accumulator", "Pending", "shifted_cross_sum"]

_Self = TypeVar("_Self", bound="_Accumulator")


class DimsError(Exception):
    """Raised by an accumulator's ``_specs_for`` when ``dims`` cannot describe its state (too few entries, or
    layers its configuration names that ``dims`` lacks); callers turn it into the user-facing error."""


Dims = tuple[int, ...]


class _StateSpec(NamedTuple):
    shape: Callable[[Dims], tuple[int, ...]]
    reduce: Literal["sum", "cat", "frame", "max"]


class Pending(NamedTuple):
    """A batch's contribution, computed and shape-checked but not yet added (see ``prepare``/``commit``).

    Callers that feed several accumulators per batch (:func:`reprsim.compare`) prepare every one, check all
    their :meth:`flags` with one host synchronisation, and commit only when all pass, so a rejected batch
    changes no state anywhere.
    """

    owner: _Accumulator
    dims: Dims
    device: torch.device
    contribution: dict[str, torch.Tensor]

    def flags(self) -> torch.Tensor:
        """One flag per statistic: is it finite? (On the device; no synchronisation.)"""
        return _Accumulator._finite_flags(self.contribution)

    def fail(self) -> None:
        """Raise the accumulator's overflow error (call when :meth:`flags` were not all true)."""
        self.owner._raise_overflow()


class _Accumulator:
    """Shared protocol: declared state, generic reset / merge / save / load / to / all_reduce.

    Subclasses call :meth:`_add_state` in ``__init__``, and implement ``_config`` (plain values that must
    match for two accumulators to be merged) and ``compute``. States are allocated at the first update, when
    the feature widths (``dims``) are known. ``"frame"`` states are a reference point that sums are taken
    relative to; a subclass that has them implements :meth:`_shift_state` to re-express its sums in another
    frame, which merging and all-reduce use to bring every contribution into one frame before summing.
    """

    _version: ClassVar[int] = 1
    #: Older format versions that :meth:`_upgrade` turns into the current one.
    _readable: ClassVar[tuple[int, ...]] = ()

    def __init__(self, dtype: torch.dtype) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise InvalidParameterError(
                f"an accumulator's state dtype must be torch.float64 (the default) or torch.float32; got {dtype}. "
                "Sums of squares and fourth powers overflow float16 and lose all digits in bfloat16; "
                "float16/bfloat16 batches are accepted and accumulated in the state dtype"
            )
        self._dtype = dtype
        self._device: torch.device | None = None
        self._dims: Dims | None = None
        self._specs: dict[str, _StateSpec] = {}
        self._state: dict[str, torch.Tensor] = {}
        # the buffers behind "cat" states, with room to grow (a batch's rows are appended in amortised O(1))
        self._room: dict[str, torch.Tensor] = {}
        # bumped whenever the state changes, so anything derived from it (a fitted probe) knows it is stale
        self._generation = 0

    # -- declaration ------------------------------------------------------------------------------------
    def _add_state(
        self, name: str, shape: Callable[[Dims], tuple[int, ...]], reduce: Literal["sum", "cat", "frame", "max"]
    ) -> None:
        self._specs[name] = _StateSpec(shape, reduce)

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _allocate(self, dims: Dims, device: torch.device) -> None:
        self._dims = dims
        self._device = device
        self._generation += 1
        self._state = {
            name: torch.zeros(spec.shape(dims), dtype=self._dtype, device=device)
            for name, spec in self._specs_for(dims).items()
        }

    def _shift_state(self, state: dict[str, torch.Tensor], frame: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return state

    def _specs_for(self, dims: Dims) -> dict[str, _StateSpec]:
        """The declared states for feature widths ``dims`` (fixed by default; a subclass may derive them)."""
        return self._specs

    @property
    def _frame_names(self) -> list[str]:
        if self._dims is None:
            return []
        return [n for n, s in self._specs_for(self._dims).items() if s.reduce == "frame"]

    # -- public protocol --------------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Number of samples seen so far."""
        return int(self._state["n"].sum()) if self._dims is not None else 0

    def reset(self: _Self) -> _Self:
        """Forget everything seen; the configuration and device stay."""
        self._dims = None
        self._state = {}
        self._room = {}
        self._generation += 1
        return self

    def to(self: _Self, device: torch.device | str) -> _Self:
        """Move the state to ``device``; later batches must live there too. Returns ``self``."""
        self._device = torch.device(device)
        self._state = {k: v.to(self._device) for k, v in self._state.items()}
        self._room = {}
        self._generation += 1  # anything derived from the state lives on the old device
        return self

    def merge(self: _Self, other: _Accumulator) -> _Self:
        """Add the statistics of ``other`` (same kind and configuration) into ``self``; returns ``self``.

        The result equals one accumulator fed both streams. ``other`` is left unchanged.
        """
        self._check_compatible(other.__class__.__name__, other._config(), "merge")
        if other._dims is None:
            return self
        device = self._device or other._device or torch.device("cpu")
        theirs = {k: v.to(device) for k, v in other._state.items()}
        if self._dims is None:
            self._allocate(other._dims, device)
            self._state = {k: v.clone() for k, v in theirs.items()}
            return self
        self._check_dims(other._dims, "merge")
        if self._frame_names:
            theirs = self._shift_state(theirs, {k: self._state[k] for k in self._frame_names})
        self._add(theirs)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The state as tensors and plain values, loadable with ``torch.load(..., weights_only=True)``."""
        return {
            "kind": self.__class__.__name__,
            "version": self._version,
            "config": self._config(),
            "dims": None if self._dims is None else list(self._dims),
            "state": {k: v.detach().clone() for k, v in self._state.items()},
        }

    def load_state_dict(self: _Self, state_dict: Mapping[str, Any]) -> _Self:
        """Replace the state by one saved by :meth:`state_dict` of an identically configured accumulator.

        Everything is checked before anything changes (kind, version, configuration, widths, every tensor's
        shape and values, the sample count): a rejected dict leaves this accumulator exactly as it was.
        """
        if not isinstance(state_dict, Mapping) or not {"kind", "config", "dims", "state"} <= set(state_dict):
            raise IncompatibleStateError(
                f"not a reprsim state dict (expected keys kind, version, config, dims, state); got {state_dict!r:.200}"
            )
        kind, config, dims, state = (state_dict[k] for k in ("kind", "config", "dims", "state"))
        if kind != self.__class__.__name__:
            raise IncompatibleStateError(
                f"cannot load a {kind} into a {self.__class__.__name__}; both must be of the same kind"
            )
        version = state_dict.get("version")
        if version != self._version and version not in self._readable:
            raise IncompatibleStateError(
                f"this state dict has format version {version!r} but this reprsim reads version {self._version}; "
                "save it again with the reprsim version that loads it"
            )
        if not isinstance(config, Mapping) or not isinstance(state, Mapping):
            raise IncompatibleStateError("a state dict's config and state must be mappings")
        if version != self._version:
            state = self._upgrade(int(version), dict(state))
            config = self._upgrade_config(int(version), dict(config))
        self._check_compatible(str(kind), config, "load")
        if dims is None:
            if state:
                raise IncompatibleStateError(
                    f"state dict has dims=None (nothing seen) but holds tensors {sorted(state)}; it is inconsistent"
                )
            return self.reset()
        new_dims = self._checked_dims(dims)
        new_state = self._checked_state(state, new_dims)
        device = self._device if self._device is not None else next(iter(new_state.values())).device
        converted = {k: v.to(device=device, dtype=self._dtype).clone() for k, v in new_state.items()}
        self._check_invariants(converted, new_dims)
        self._dims, self._device, self._state = new_dims, device, converted  # swapped only once all is valid
        self._room = {}
        self._generation += 1
        return self

    def _upgrade(self, version: int, state: dict[str, Any]) -> dict[str, Any]:
        """A state saved in an older format version (one of :attr:`_readable`), in the current format."""
        return state  # pragma: no cover - only accumulators with older readable versions override it

    def _upgrade_config(self, version: int, config: dict[str, Any]) -> dict[str, Any]:
        """The configuration of a state saved in an older format version, as the current version writes it."""
        return config

    def _check_invariants(self, state: Mapping[str, torch.Tensor], dims: Dims) -> None:
        """Refuse a loaded state that no stream of data could have produced (negative sums of squares, sums that
        violate Cauchy–Schwarz): its measures would be meaningless numbers. Subclasses check their own."""

    def _checked_dims(self, dims: Any) -> Dims:
        ok = isinstance(dims, (list, tuple)) and all(isinstance(d, int) and not isinstance(d, bool) for d in dims)
        if not ok or any(d < 0 for d in dims):
            raise IncompatibleStateError(f"a state dict's dims must be a list of non-negative integers; got {dims!r}")
        try:
            for spec in self._specs_for(tuple(dims)).values():
                spec.shape(tuple(dims))
        except DimsError as exc:
            raise IncompatibleStateError(f"dims {list(dims)} do not describe a {type(self).__name__}: {exc}") from exc
        except IndexError as exc:  # a shape rule indexing past the entries it was given
            raise IncompatibleStateError(
                f"dims {list(dims)} do not describe a {type(self).__name__} (too few entries)"
            ) from exc
        return tuple(int(d) for d in dims)

    def _checked_state(self, state: Mapping[str, Any], dims: Dims) -> dict[str, torch.Tensor]:
        specs = self._specs_for(dims)
        if set(state) != set(specs):
            raise IncompatibleStateError(
                f"state dict holds {sorted(state)} but {self.__class__.__name__} needs {sorted(specs)}"
            )
        out: dict[str, torch.Tensor] = {}
        for name, spec in specs.items():
            t = state[name]
            if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
                raise IncompatibleStateError(
                    f"state entry {name!r} must be a floating-point tensor; got {type(t).__name__}"
                    + (f" of dtype {t.dtype}" if isinstance(t, torch.Tensor) else "")
                )
            want = spec.shape(dims)
            shape_ok = t.shape[1:] == want[1:] and t.ndim == len(want) if spec.reduce == "cat" else t.shape == want
            if not shape_ok:
                raise IncompatibleStateError(
                    f"state entry {name!r} has shape {tuple(t.shape)} but dims {list(dims)} need "
                    f"{('(any, ' + ', '.join(map(str, want[1:])) + ')') if spec.reduce == 'cat' else want}"
                )
            if t.layout != torch.strided or t.device.type == "meta":
                raise IncompatibleStateError(
                    f"state entry {name!r} is a {t.layout} tensor on {t.device}; a state holds dense tensors with "
                    "values"
                )
            if not bool(torch.isfinite(t).all()):
                raise IncompatibleStateError(f"state entry {name!r} holds NaN or infinite values")
            out[name] = t
        for n in out["n"].flatten().tolist():
            if n < 0 or n != round(n):
                raise IncompatibleStateError(f"a state dict's sample count n must be a non-negative integer; got {n}")
        return out

    def all_reduce(self: _Self, group: Any = None) -> _Self:
        """Sum the state over the processes of ``group`` (torch.distributed); every rank then holds the total.

        Call it once, on every rank, after the last update (a second call would count everything twice).
        Works with gloo (CPU tensors) and NCCL (CUDA tensors: move the accumulator with ``.to("cuda")``).
        Ranks that saw no data take part and receive the total.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise IncompatibleStateError(
                "all_reduce needs an initialised torch.distributed process group; "
                "call torch.distributed.init_process_group(...) on every rank first"
            )
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        device = self._collective_device(dist, group)
        has_data = self._dims is not None
        # Ranks that saw no data do not know the widths: agree on them first (one small collective).
        # The first collective has the same shape on every rank whatever its accumulator, so ranks holding
        # different kinds, configurations or dtypes all learn it here and raise the same error, instead of
        # mixing their sums, waiting in mismatched collectives, or aborting inside the backend.
        big = torch.iinfo(torch.int64).max
        own = len(self._dims) if self._dims is not None else 0
        config = self._config_fingerprint()
        length = torch.tensor([own, -own if has_data else -big, config, -config], dtype=torch.int64, device=device)
        dist.all_reduce(length, op=dist.ReduceOp.MAX, group=group)  # [longest, -shortest among ranks with data]
        if int(length[2]) != -int(length[3]):
            raise IncompatibleStateError(
                f"ranks hold differently configured accumulators (this rank: {self.__class__.__name__} with "
                f"{self._config()}); every rank must create the same accumulator with the same arguments before "
                "all_reduce"
            )
        if int(length[0]) == 0:
            return self  # nobody has data
        if int(length[0]) != -int(length[1]):
            raise ShapeMismatchError(
                f"ranks fed different numbers of layers (between {-int(length[1])} and {int(length[0])} "
                "dimensions of state); every rank must feed the same layers"
            )
        n_dims = int(length[0])
        mine = torch.tensor(self._dims if self._dims is not None else [-1] * n_dims, device=device)
        hi = mine.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
        lo = mine.clone() if has_data else torch.full_like(mine, big)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
        if not torch.equal(lo, hi):
            raise ShapeMismatchError(
                f"ranks disagree on the feature widths they saw (between {lo.tolist()} and {hi.tolist()}); "
                "every rank must feed the same layers"
            )
        if not has_data:
            self._allocate(tuple(int(d) for d in hi.tolist()), device)
        self.to(device)
        self._reduce_states(dist, group, rank, world, has_data)
        self._generation += 1
        return self

    def _reduce_states(self, dist: Any, group: Any, rank: int, world: int, has_data: bool) -> None:
        """Sum (or gather) every rank's state into every rank, once the widths agree; see :meth:`all_reduce`."""
        device = self._device
        if self._frame_names:
            first = torch.tensor(rank if has_data else world, device=device)
            dist.all_reduce(first, op=dist.ReduceOp.MIN, group=group)
            src = int(first)
            src_global = src if group is None else dist.get_global_rank(group, src)
            frame = {k: self._state[k].clone() for k in self._frame_names}
            for t in frame.values():
                dist.broadcast(t, src=src_global, group=group)
            if has_data:
                self._state = self._shift_state(self._state, frame)
            self._state.update(frame)
        for name, spec in self._specs_for(self._dims or ()).items():
            if spec.reduce == "sum":
                dist.all_reduce(self._state[name], op=dist.ReduceOp.SUM, group=group)
            elif spec.reduce == "max":
                dist.all_reduce(self._state[name], op=dist.ReduceOp.MAX, group=group)
            elif spec.reduce == "cat":
                self._state[name] = _all_gather_rows(self._state[name], world, group, dist)

    def _reorder_rows(self, order: torch.Tensor) -> None:
        """Put the rows of every concatenated state (per-batch records) in ``order`` (e.g. the stream's batch
        order, after an all-reduce gathered them rank by rank)."""
        for name, spec in self._specs_for(self._dims or ()).items():
            if spec.reduce == "cat" and self._dims is not None:
                self._state[name] = self._state[name][order.to(self._state[name].device)]

    # -- helpers ----------------------------------------------------------------------------------------
    def _config_fingerprint(self) -> int:
        """A signed 62-bit digest of kind, format version and configuration, equal on identical accumulators."""
        text = repr((self.__class__.__name__, self._version, sorted(self._config().items())))
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 2

    def _collective_device(self, dist: Any, group: Any) -> torch.device:
        if self._device is not None:
            return self._device
        if dist.get_backend(group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _check_compatible(self, kind: str, config: Mapping[str, Any], action: str) -> None:
        if kind != self.__class__.__name__:
            raise IncompatibleStateError(
                f"cannot {action} a {kind} into a {self.__class__.__name__}; both must be of the same kind"
            )
        mine = self._config()
        if dict(config) != mine:
            diff = {k: (mine.get(k), config.get(k)) for k in set(mine) | set(config) if mine.get(k) != config.get(k)}
            raise IncompatibleStateError(
                f"cannot {action}: configurations differ (this, other): {diff}; "
                f"create both {kind} accumulators with the same arguments"
            )

    def _check_dims(self, dims: Dims, action: str) -> None:
        if self._dims is not None and tuple(dims) != self._dims:
            raise ShapeMismatchError(
                f"cannot {action}: this accumulator has seen feature widths {self._describe(self._dims)} "
                f"but the other has {self._describe(tuple(dims))}"
            )

    def _describe(self, dims: Dims) -> str:
        return str(dims)

    def _prepare_device(self, device: torch.device) -> None:
        if self._device is not None and device != self._device:
            raise DeviceMismatchError(
                f"this batch is on {device} but the accumulator's state is on {self._device}; move the batch "
                f"with .to({str(self._device)!r}) or the accumulator with .to({str(device)!r})"
            )

    def commit(self, pending: Pending, *, checked: bool = False) -> None:
        """Add a contribution made by this accumulator's ``prepare``; ``checked=True`` when the caller has
        already verified ``pending.flags()`` (otherwise they are checked here, with one host sync)."""
        if pending.owner is not self:
            raise IncompatibleStateError("this contribution was prepared by another accumulator")
        if checked:
            self._apply(pending.dims, pending.device, pending.contribution)
        else:
            self._commit(pending.dims, pending.device, pending.contribution)

    def _commit(self, dims: Dims, device: torch.device, contribution: dict[str, torch.Tensor]) -> None:
        """Validate a batch's full contribution (one host sync), then add it to the state."""
        if not bool(self._finite_flags(contribution).all()):
            self._raise_overflow()
        self._apply(dims, device, contribution)

    @staticmethod
    def _finite_flags(contribution: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One flag per statistic of a batch: is it finite? (On the device: no synchronisation yet.)"""
        return torch.isfinite(torch.stack([v.sum() for v in contribution.values()]))

    def _raise_overflow(self, where: str = "") -> None:
        fix = (
            "Use dtype=torch.float64 or rescale the inputs"
            if self._dtype != torch.float64
            else "Rescale the inputs (e.g. divide by their largest magnitude; CKA is scale invariant)"
        )
        raise NonFiniteError(
            f"this batch's statistics{where} overflowed to infinity: its values are too large for the "
            f"{self._dtype} state. {fix}"
        )

    def _apply(self, dims: Dims, device: torch.device, contribution: Mapping[str, torch.Tensor]) -> None:
        """Add a validated contribution to the state."""
        if self._dims is None:
            self._allocate(dims, device)
        self._add(contribution)

    def _add(self, contribution: Mapping[str, torch.Tensor]) -> None:
        self._generation += 1
        for name, spec in self._specs_for(self._dims or ()).items():
            if name not in contribution:
                continue
            if spec.reduce == "sum":
                self._state[name] += contribution[name]
            elif spec.reduce == "max":
                self._state[name] = torch.maximum(self._state[name], contribution[name])
            elif spec.reduce == "cat":
                self._append_rows(name, contribution[name])

    def _append_rows(self, name: str, rows: torch.Tensor) -> None:
        """Append ``rows`` to the concatenated state ``name`` in amortised O(rows): the state is a view of a
        buffer with room to grow, doubled when full (a torch.cat per batch would copy every earlier row, and
        10⁶ batches would cost 10¹² copies)."""
        current = self._state[name]
        used, extra = current.shape[0], rows.shape[0]
        room = self._room.get(name)
        if (
            room is None
            or room.data_ptr() != current.data_ptr()
            or room.shape[1:] != current.shape[1:]
            or room.shape[0] < used + extra
        ):
            grown = current.new_empty((max(16, 2 * (used + extra)), *current.shape[1:]))
            grown[:used] = current
            room = grown
            self._room[name] = room
        room[used : used + extra] = rows
        self._state[name] = room[: used + extra]

    def _require_samples(self, need: int, what: str) -> int:
        if self._dims is None:
            raise IncompatibleStateError(
                f"{self.__class__.__name__} has seen no samples; call update(...) with at least one batch "
                "before compute()"
            )
        n = int(self._state["n"].sum())
        if n < need:
            raise InsufficientSamplesError(f"{what} needs at least {need} samples; got {n} so far")
        return n

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{self.__class__.__name__}({cfg}) [{self.num_samples} samples]"


def _all_gather_rows(t: torch.Tensor, world: int, group: Any, dist: Any) -> torch.Tensor:
    """Concatenate in rank order the (k_r, ...) tensors of every rank, whose k_r may differ."""
    size = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    counts = [int(s) for s in sizes]
    padded = torch.zeros((max(counts), *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return torch.cat([g[:c] for g, c in zip(gathered, counts)])


def shifted_cross_sum(
    n: torch.Tensor, su: torch.Tensor, sv: torch.Tensor, suv: torch.Tensor, d: torch.Tensor, e: torch.Tensor
) -> torch.Tensor:
    """Σ(u − d)(v − e)ᵀ from n, Σu, Σv and Σuvᵀ: re-expresses a cross sum in a frame shifted by (d, e)."""
    return suv - torch.outer(su, e) - torch.outer(d, sv) + n * torch.outer(d, e)


def batch_layers(values: Sequence[Any], names: Sequence[str]) -> tuple[list[torch.Tensor], int, torch.Tensor]:
    """One batch's representations as (b, features) tensors, checked to hold the same b samples on one device.

    Returns the tensors, b, and an empty tensor on their device (no values are read: no host sync).
    """
    tensors = [as_matrix(v, nm).detach() for v, nm in zip(values, names)]
    if not tensors:
        raise ShapeMismatchError("update needs at least one representation on each side; got none")
    b, device = check_same_samples(dict(zip(names, tensors))), tensors[0].device
    for name, t in zip(names, tensors):
        if t.device != device:
            raise DeviceMismatchError(f"{names[0]} is on {device} but {name} is on {t.device}; use one device")
    return tensors, b, tensors[0].new_empty(0)


def _coerce_batch(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xt = as_matrix(x, "x").detach()
    yt = as_matrix(y, "y").detach()
    check_same_samples({"x": xt, "y": yt})
    if xt.device != yt.device:
        raise DeviceMismatchError(f"x is on {xt.device} but y is on {yt.device}; move both to one device")
    return xt, yt


#: The accumulator protocol's base class, for type annotations.
Accumulator = _Accumulator
