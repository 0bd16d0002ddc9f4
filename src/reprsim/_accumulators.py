"""Streaming accumulators: :class:`LinearCKA` (exact), :class:`MinibatchCKA`, :class:`MinibatchCKAMatrix`.

Each accumulator declares its state once (name, shape, and how it reduces: summed, or concatenated), so
``reset``, ``merge``, ``state_dict``/``load_state_dict``, ``to`` and ``all_reduce`` are written once, in
:class:`_Accumulator`. State is a set of sufficient statistics whose size does not grow with the number of
samples (the minibatch per-batch HSIC records, three numbers a batch, are the one exception). A batch is
validated and its contribution computed in full before the state is touched, so a rejected batch never
corrupts it. The mathematics of a single batch lives in :mod:`reprsim._cka`.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

import torch

from ._cka import amplification, frobenius, unbiased_hsic_pairs, unbiased_hsic_with_scale, zero_diagonal_grams
from ._errors import (
    ConstantRepresentationError,
    DeviceMismatchError,
    IncompatibleStateError,
    InsufficientSamplesError,
    InvalidParameterError,
    NonFiniteError,
    ReprsimWarning,
    ShapeMismatchError,
)
from ._precision import full_precision_matmul
from ._validation import as_matrix, check_finite, check_kernel

__all__ = ["LinearCKA", "MinibatchCKA", "MinibatchCKAMatrix"]

_Self = TypeVar("_Self", bound="_Accumulator")
Dims = tuple[int, ...]


class _StateSpec(NamedTuple):
    shape: Callable[[Dims], tuple[int, ...]]
    reduce: Literal["sum", "cat", "frame"]


class _Accumulator:
    """Shared protocol: declared state, generic reset / merge / save / load / to / all_reduce.

    Subclasses call :meth:`_add_state` in ``__init__``, and implement ``_config`` (plain values that must
    match for two accumulators to be merged) and ``compute``. States are allocated at the first update, when
    the feature widths (``dims``) are known. ``"frame"`` states are a reference point that sums are taken
    relative to; a subclass that has them implements :meth:`_shift_state` to re-express its sums in another
    frame, which merging and all-reduce use to bring every contribution into one frame before summing.
    """

    _version: ClassVar[int] = 1

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
        # bumped whenever the state changes, so anything derived from it (a fitted probe) knows it is stale
        self._generation = 0

    # -- declaration ------------------------------------------------------------------------------------
    def _add_state(
        self, name: str, shape: Callable[[Dims], tuple[int, ...]], reduce: Literal["sum", "cat", "frame"]
    ) -> None:
        self._specs[name] = _StateSpec(shape, reduce)

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _allocate(self, dims: Dims, device: torch.device) -> None:
        self._dims = dims
        self._device = device
        self._generation += 1
        self._state = {
            name: torch.zeros(spec.shape(dims), dtype=self._dtype, device=device) for name, spec in self._specs.items()
        }

    def _shift_state(self, state: dict[str, torch.Tensor], frame: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return state

    @property
    def _frame_names(self) -> list[str]:
        return [n for n, s in self._specs.items() if s.reduce == "frame"]

    # -- public protocol --------------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Number of samples seen so far."""
        return int(self._state["n"]) if self._dims is not None else 0

    def reset(self: _Self) -> _Self:
        """Forget everything seen; the configuration and device stay."""
        self._dims = None
        self._state = {}
        self._generation += 1
        return self

    def to(self: _Self, device: torch.device | str) -> _Self:
        """Move the state to ``device``; later batches must live there too. Returns ``self``."""
        self._device = torch.device(device)
        self._state = {k: v.to(self._device) for k, v in self._state.items()}
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
        version = state_dict.get("version")
        if version != self._version:
            raise IncompatibleStateError(
                f"this state dict has format version {version!r} but this reprsim reads version {self._version}; "
                "save it again with the reprsim version that loads it"
            )
        if not isinstance(config, Mapping) or not isinstance(state, Mapping):
            raise IncompatibleStateError("a state dict's config and state must be mappings")
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
        self._dims, self._device, self._state = new_dims, device, converted  # swapped only once all is valid
        self._generation += 1
        return self

    def _checked_dims(self, dims: Any) -> Dims:
        ok = isinstance(dims, (list, tuple)) and all(isinstance(d, int) and not isinstance(d, bool) for d in dims)
        if not ok or any(d < 0 for d in dims):
            raise IncompatibleStateError(f"a state dict's dims must be a list of non-negative integers; got {dims!r}")
        try:
            for spec in self._specs.values():
                spec.shape(tuple(dims))
        except IndexError as exc:
            raise IncompatibleStateError(
                f"dims {list(dims)} do not describe a {self.__class__.__name__} (too few entries)"
            ) from exc
        return tuple(int(d) for d in dims)

    def _checked_state(self, state: Mapping[str, Any], dims: Dims) -> dict[str, torch.Tensor]:
        if set(state) != set(self._specs):
            raise IncompatibleStateError(
                f"state dict holds {sorted(state)} but {self.__class__.__name__} needs {sorted(self._specs)}"
            )
        out: dict[str, torch.Tensor] = {}
        for name, spec in self._specs.items():
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
            if not bool(torch.isfinite(t).all()):
                raise IncompatibleStateError(f"state entry {name!r} holds NaN or infinite values")
            out[name] = t
        n = float(out["n"])
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
        for name, spec in self._specs.items():
            if spec.reduce == "sum":
                dist.all_reduce(self._state[name], op=dist.ReduceOp.SUM, group=group)
            elif spec.reduce == "cat":
                self._state[name] = _all_gather_rows(self._state[name], world, group, dist)
        self._generation += 1
        return self

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
        for name, spec in self._specs.items():
            if name not in contribution:
                continue
            if spec.reduce == "sum":
                self._state[name] += contribution[name]
            elif spec.reduce == "cat":
                self._state[name] = torch.cat([self._state[name], contribution[name]])

    def _require_samples(self, need: int, what: str) -> int:
        if self._dims is None:
            raise IncompatibleStateError(
                f"{self.__class__.__name__} has seen no samples; call update(...) with at least one batch "
                "before compute()"
            )
        n = int(self._state["n"])
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


def _coerce_batch(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xt = as_matrix(x, "x").detach()
    yt = as_matrix(y, "y").detach()
    if xt.shape[0] != yt.shape[0]:
        raise ShapeMismatchError(
            f"x and y must hold the same samples; this batch has {xt.shape[0]} rows in x "
            f"(shape {tuple(xt.shape)}) and {yt.shape[0]} in y (shape {tuple(yt.shape)})"
        )
    if xt.device != yt.device:
        raise DeviceMismatchError(f"x is on {xt.device} but y is on {yt.device}; move both to one device")
    return xt, yt


class LinearCKA(_Accumulator):
    """Exact streaming linear CKA: after any sequence of batches, equal to :func:`reprsim.cka` on their
    concatenation.

    The state is feature-space sufficient statistics (sample count, column sums, XᵀX, YᵀY, XᵀY and, for the
    unbiased estimator, the row-norm terms), so memory is O(p² + q² + pq) whatever the number of samples.
    Sums are taken relative to a reference point (the first sample seen); both estimators are translation
    invariant, and shifting by a typical sample avoids the cancellation of raw moments when the features
    have a large common offset.

    Parameters
    ----------
    unbiased : bool, default False
        Use the unbiased HSIC estimator of Song et al. (2012) (needs 4 samples in total; batches may have any
        size).
    dtype : {torch.float64, torch.float32}, default torch.float64
        Dtype of the state and of the per-batch products; float16/bfloat16 batches are accumulated in it.
        The unbiased estimator needs float64 (its fourth-order sums cancel in :meth:`compute`).

    Notes
    -----
    Accuracy: the biased estimator agrees with the float64 reference to about 1e-12 (float64 state) or 1e-6
    (float32). The unbiased one subtracts large terms (‖XᵀY‖² and Σ aᵢbᵢ, with aᵢ the squared row norms) that
    nearly cancel when a few rows dominate, e.g. with far more features than samples or heavy-tailed data;
    :meth:`compute` estimates that loss and warns (:class:`ReprsimWarning`) when the result may be off by more
    than 1e-10, in which case :func:`reprsim.cka` on the concatenated data, which centres the Grams, keeps
    full accuracy.

    Examples
    --------
    >>> import torch
    >>> from reprsim import LinearCKA, cka
    >>> x, y = torch.randn(1000, 16, dtype=torch.float64), torch.randn(1000, 8, dtype=torch.float64)
    >>> acc = LinearCKA()
    >>> for xb, yb in zip(x.split(128), y.split(128)):
    ...     acc.update(xb, yb)
    >>> abs(acc.compute() - float(cka(x, y))) < 1e-12
    True
    """

    def __init__(self, unbiased: bool = False, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(dtype)
        self.unbiased = bool(unbiased)
        if self.unbiased and dtype != torch.float64:
            raise InvalidParameterError(
                f"LinearCKA(unbiased=True) keeps fourth-order sums whose terms cancel in compute(); a {dtype} state "
                "loses up to 6e-2 of the result. Use the default dtype=torch.float64 (batches of any dtype are "
                "accepted)"
            )
        p: Callable[[Dims], tuple[int, ...]] = lambda d: (d[0],)  # noqa: E731
        q: Callable[[Dims], tuple[int, ...]] = lambda d: (d[1],)  # noqa: E731
        scalar: Callable[[Dims], tuple[int, ...]] = lambda d: ()  # noqa: E731
        self._add_state("n", scalar, "sum")
        self._add_state("shift_x", p, "frame")
        self._add_state("shift_y", q, "frame")
        self._add_state("sx", p, "sum")
        self._add_state("sy", q, "sum")
        self._add_state("sxx", lambda d: (d[0], d[0]), "sum")
        self._add_state("syy", lambda d: (d[1], d[1]), "sum")
        self._add_state("sxy", lambda d: (d[0], d[1]), "sum")
        if self.unbiased:
            for name in ("a", "b", "aa", "bb", "ab"):
                self._add_state(name, scalar, "sum")
            self._add_state("xa", p, "sum")
            self._add_state("xb", p, "sum")
            self._add_state("ya", q, "sum")
            self._add_state("yb", q, "sum")

    def _config(self) -> dict[str, Any]:
        return {"unbiased": self.unbiased, "dtype": str(self._dtype)}

    def _describe(self, dims: Dims) -> str:
        return f"x: {dims[0]}, y: {dims[1]}"

    @full_precision_matmul
    def update(self, x: Any, y: Any) -> None:
        """Add a batch: ``x`` of shape (b, ...) and ``y`` of shape (b, ...), the same b samples in order."""
        with torch.no_grad():
            xt, yt = _coerce_batch(x, y)
            self._prepare_device(xt.device)
            check_finite(xt, "x")
            check_finite(yt, "y")
            xt, yt = xt.to(self._dtype), yt.to(self._dtype)
            dims = (xt.shape[1], yt.shape[1])
            if self._dims is not None and dims != self._dims:
                raise ShapeMismatchError(
                    f"this batch has {dims[0]} features in x and {dims[1]} in y, but earlier batches had "
                    f"{self._dims[0]} and {self._dims[1]}; every batch must come from the same layers"
                )
            if xt.shape[0] == 0:
                return  # an empty batch adds nothing (and, first, would give no reference sample)
            if self._dims is None:
                shift_x, shift_y = xt[0].clone(), yt[0].clone()
            else:
                shift_x, shift_y = self._state["shift_x"], self._state["shift_y"]
            u, v = xt - shift_x, yt - shift_y
            c: dict[str, torch.Tensor] = {
                "n": torch.tensor(float(xt.shape[0]), dtype=self._dtype, device=xt.device),
                "sx": u.sum(dim=0),
                "sy": v.sum(dim=0),
                "sxx": u.T @ u,
                "syy": v.T @ v,
                "sxy": u.T @ v,
            }
            if self.unbiased:
                a, b = (u * u).sum(dim=1), (v * v).sum(dim=1)
                c.update(
                    a=a.sum(),
                    b=b.sum(),
                    aa=a @ a,
                    bb=b @ b,
                    ab=a @ b,
                    xa=u.T @ a,
                    xb=u.T @ b,
                    ya=v.T @ a,
                    yb=v.T @ b,
                )
            first = self._dims is None
            self._commit(dims, xt.device, c)
            if first:
                self._state["shift_x"], self._state["shift_y"] = shift_x, shift_y

    @full_precision_matmul
    def compute(self) -> float:
        """CKA of everything seen so far, as a Python float."""
        s = self._state
        n = self._require_samples(4 if self.unbiased else 2, f"{'unbiased' if self.unbiased else 'biased'} CKA")
        if self.unbiased:
            kl, kk, ll = self._unbiased_terms(n)
            self._check_self(kk[0], ll[0])
            self._warn_if_cancelled(float(amplification(kl, kk, ll)))
            return float(kl[0] / (kk[0] * ll[0]).sqrt())
        cxx = s["sxx"] - torch.outer(s["sx"], s["sx"]) / n
        cyy = s["syy"] - torch.outer(s["sy"], s["sy"]) / n
        cxy = s["sxy"] - torch.outer(s["sx"], s["sy"]) / n
        tx, ty = cxx.trace(), cyy.trace()
        self._check_self(tx, ty)
        cxx, cyy, cxy = cxx / tx, cyy / ty, cxy / (tx.sqrt() * ty.sqrt())
        return float((cxy * cxy).sum() / (frobenius(cxx) * frobenius(cyy)))

    def _unbiased_terms(
        self, n: int
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Unbiased HSIC(K, L), HSIC(K, K), HSIC(L, L) with the scales of their terms."""
        s = self._state
        sx, sy = s["sx"], s["sy"]
        sum_k, sum_l = sx @ sx - s["a"], sy @ sy - s["b"]
        kl = unbiased_hsic_with_scale(
            (s["sxy"] * s["sxy"]).sum(),
            s["ab"],
            sum_k,
            sum_l,
            sx @ s["sxy"] @ sy - sx @ s["xb"] - s["ya"] @ sy + s["ab"],
            n,
        )
        kk = unbiased_hsic_with_scale(
            (s["sxx"] * s["sxx"]).sum(), s["aa"], sum_k, sum_k, sx @ s["sxx"] @ sx - 2 * sx @ s["xa"] + s["aa"], n
        )
        ll = unbiased_hsic_with_scale(
            (s["syy"] * s["syy"]).sum(), s["bb"], sum_l, sum_l, sy @ s["syy"] @ sy - 2 * sy @ s["yb"] + s["bb"], n
        )
        return kl, kk, ll

    def _warn_if_cancelled(self, amp: float) -> None:
        """Warn when the unbiased terms cancel beyond the documented accuracy of the state dtype."""
        eps = float(torch.finfo(self._dtype).eps)  # float64: the unbiased state is never float32
        if amp * eps > 1e-10:
            warnings.warn(
                f"the unbiased estimator's terms cancel to 1/{amp:.1e} of their size on this data (rows whose norms "
                f"dominate, typically many more features than samples), so this streamed value is accurate to "
                f"about {amp * eps:.0e} only. reprsim.cka(x, y, unbiased=True) on the concatenated data keeps "
                "full accuracy there (it centres the n×n Grams)",
                ReprsimWarning,
                stacklevel=3,
            )

    @staticmethod
    def _check_self(kk: torch.Tensor, ll: torch.Tensor) -> None:
        for name, v in (("x", kk), ("y", ll)):
            if not bool(v > 0):
                raise ConstantRepresentationError(
                    f"{name} has been the same for every sample seen, so CKA is 0/0 (undefined); "
                    "check for a dead or saturated layer"
                )

    def _shift_state(self, state: dict[str, torch.Tensor], frame: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Re-express sums taken relative to ``state``'s shift as sums relative to ``frame``'s.

        With u = x − c and u' = u − δ (δ = c' − c), every sum expands into sums already held; e.g.
        Σu'u'ᵀ = Σuuᵀ − (Σu)δᵀ − δ(Σu)ᵀ + nδδᵀ, and the row-norm terms a' = a − 2u·δ + ‖δ‖² likewise.
        """
        s = state
        d = frame["shift_x"] - s["shift_x"]
        e = frame["shift_y"] - s["shift_y"]
        n, sx, sy, sxx, syy, sxy = s["n"], s["sx"], s["sy"], s["sxx"], s["syy"], s["sxy"]
        out = dict(s)
        out.update(
            shift_x=frame["shift_x"].clone(),
            shift_y=frame["shift_y"].clone(),
            sx=sx - n * d,
            sy=sy - n * e,
            sxx=shifted_cross_sum(n, sx, sx, sxx, d, d),
            syy=shifted_cross_sum(n, sy, sy, syy, e, e),
            sxy=shifted_cross_sum(n, sx, sy, sxy, d, e),
        )
        if self.unbiased:
            dd, ee, sxd, sye = d @ d, e @ e, sx @ d, sy @ e
            a, b = s["a"], s["b"]
            out.update(
                a=a - 2 * sxd + n * dd,
                b=b - 2 * sye + n * ee,
                aa=s["aa"] - 4 * s["xa"] @ d + 4 * d @ sxx @ d + 2 * dd * a - 4 * dd * sxd + n * dd * dd,
                bb=s["bb"] - 4 * s["yb"] @ e + 4 * e @ syy @ e + 2 * ee * b - 4 * ee * sye + n * ee * ee,
                ab=s["ab"]
                - 2 * s["ya"] @ e
                + ee * a
                - 2 * s["xb"] @ d
                + 4 * d @ sxy @ e
                - 2 * ee * sxd
                + dd * b
                - 2 * dd * sye
                + n * dd * ee,
                xa=s["xa"] - 2 * sxx @ d + dd * sx - d * a + 2 * d * sxd - n * dd * d,
                yb=s["yb"] - 2 * syy @ e + ee * sy - e * b + 2 * e * sye - n * ee * e,
                xb=s["xb"] - 2 * sxy @ e + ee * sx - d * b + 2 * d * sye - n * ee * d,
                ya=s["ya"] - 2 * sxy.T @ d + dd * sy - e * a + 2 * e * sxd - n * dd * e,
            )
        return out


class _MinibatchBase(_Accumulator):
    """Minibatch CKA of Nguyen, Raghu & Kornblith (2021): per batch, unbiased HSIC of (K, L), (K, K) and
    (L, L) for every pair of layers, summed over batches; CKA is the ratio of the sums."""

    def __init__(
        self,
        kernel: str = "linear",
        sigma: float | None = None,
        median_fraction: float = 1.0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(dtype)
        check_kernel(kernel, sigma, median_fraction)
        self.kernel = kernel
        self.sigma = None if sigma is None else float(sigma)
        self.median_fraction = float(median_fraction)
        self._declare_states()

    def _declare_states(self) -> None:
        """Each estimator declares its own state (see _Accumulator._add_state)."""
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "sigma": self.sigma,
            "median_fraction": self.median_fraction,
            "dtype": str(self._dtype),
        }

    @full_precision_matmul
    def layer_grams(self, values: Sequence[Any], names: Sequence[str]) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Check one batch of one side's layers and build their zero-diagonal Grams (no state touched).

        Returns the (L, b, b) Grams and the layers' widths. All layers are checked for NaN/inf with one host
        synchronisation; the exact per-input count is only computed when something is wrong.
        """
        tensors = [as_matrix(v, nm).detach() for v, nm in zip(values, names)]
        if not tensors:
            raise ShapeMismatchError("update needs at least one representation on each side; got none")
        b, device = tensors[0].shape[0], tensors[0].device
        for name, t in zip(names, tensors):
            if t.shape[0] != b:
                raise ShapeMismatchError(
                    f"every representation in a batch must hold the same samples; {names[0]} has {b} rows "
                    f"but {name} has {t.shape[0]} (shape {tuple(t.shape)})"
                )
            if t.device != device:
                raise DeviceMismatchError(f"{names[0]} is on {device} but {name} is on {t.device}")
        if b < 4:
            raise InsufficientSamplesError(
                f"minibatch CKA computes the unbiased HSIC of each batch, which needs at least 4 rows; got a "
                f"batch of {b}. Drop the incomplete last batch (DataLoader(drop_last=True)) or use larger "
                "batches"
            )
        self._prepare_device(device)
        sums = torch.stack([t.sum().to(torch.float64) for t in tensors])
        if not bool(torch.isfinite(sums).all()):
            for name, t in zip(names, tensors):
                check_finite(t, name)
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        grams = zero_diagonal_grams(
            [t.to(dtype) for t in tensors], self.kernel, self.sigma, self.median_fraction, names
        )
        return grams, tuple(t.shape[1] for t in tensors)

    def _pair_terms(
        self, ga: torch.Tensor, wa: tuple[int, ...], gb: torch.Tensor | None, wb: tuple[int, ...] | None
    ) -> tuple[Dims, torch.Tensor, torch.Tensor, torch.Tensor]:
        """HSIC terms of one batch from both sides' Grams (``gb`` None: the A side against itself)."""
        if gb is not None:
            if gb.shape[-1] != ga.shape[-1]:
                raise ShapeMismatchError(
                    f"both sides of a batch must hold the same samples; got {ga.shape[-1]} and {gb.shape[-1]} rows"
                )
            if gb.device != ga.device:
                raise DeviceMismatchError(f"the two sides of this batch are on {ga.device} and {gb.device}")
        wb = wa if wb is None else wb
        dims = (len(wa), len(wb), *wa, *wb)
        if self._dims is not None and dims != self._dims:
            raise ShapeMismatchError(
                f"this batch has layers of widths {self._describe(dims)} but earlier batches had "
                f"{self._describe(self._dims)}; every batch must come from the same layers"
            )
        # The pair arithmetic (L_a·L_b·b² operations, small next to building the Grams) runs in float64 whatever
        # the state dtype: the unbiased estimator's terms cancel, and float32 there cost 1.9e-4.
        wide = torch.float64 if ga.device.type != "mps" else torch.float32
        cross, self_a, self_b = unbiased_hsic_pairs(ga.to(wide), None if gb is None else gb.to(wide))
        return dims, cross.to(self._dtype), self_a.to(self._dtype), self_b.to(self._dtype)

    def _describe(self, dims: Dims) -> str:
        la, lb = dims[0], dims[1]
        return f"xs {list(dims[2 : 2 + la])}, ys {list(dims[2 + la : 2 + la + lb])}"


class MinibatchCKAMatrix(_MinibatchBase):
    """Minibatch CKA between every layer of model A and every layer of model B, streamed over batches.

    Per batch, each layer's Gram is built once and all pair HSICs come from one matrix product of the
    flattened zero-diagonal Grams plus row-sum and total-sum corrections; no loop over pairs and no host
    synchronisation per pair. The state is three sums of shape (n_a, n_b), (n_a,) and (n_b,).

    Parameters
    ----------
    kernel : {"linear", "rbf"}, default "linear"
    sigma : float, optional
        RBF bandwidth. By default the median convention of :func:`reprsim.cka`, computed per batch and per
        layer: the kernel then changes slightly from batch to batch.
    median_fraction : float, default 1.0
    dtype : torch.dtype, default torch.float64
        Dtype of the accumulated sums (per-batch Grams are computed in the batch's own precision, at least
        float32).

    Examples
    --------
    >>> import torch
    >>> from reprsim import MinibatchCKAMatrix
    >>> acc = MinibatchCKAMatrix()
    >>> for _ in range(4):
    ...     a = torch.randn(64, 32)
    ...     acc.update([a, a.tanh()], [2 * a, torch.randn(64, 8)])
    >>> m = acc.compute()
    >>> m.shape
    torch.Size([2, 2])
    >>> round(float(m[0, 0]), 6)
    1.0
    """

    def _declare_states(self) -> None:
        self._add_state("n", lambda d: (), "sum")
        self._add_state("batches", lambda d: (), "sum")
        self._add_state("kl", lambda d: (d[0], d[1]), "sum")
        self._add_state("kk", lambda d: (d[0],), "sum")
        self._add_state("ll", lambda d: (d[1],), "sum")

    @full_precision_matmul
    def update(self, xs: Sequence[Any], ys: Sequence[Any] | None = None) -> None:
        """Add one batch: ``xs`` holds every layer of model A, ``ys`` every layer of model B (default:
        ``xs``), each of shape (b, ...), the same b ≥ 4 samples in the same order."""
        with torch.no_grad():
            ga, wa = self.layer_grams(xs, [f"xs[{i}]" for i in range(len(xs))])
            gb, wb = (None, None) if ys is None else self.layer_grams(ys, [f"ys[{j}]" for j in range(len(ys))])
            self.update_grams(ga, wa, gb, wb)

    @full_precision_matmul
    def update_grams(
        self,
        grams_a: torch.Tensor,
        widths_a: tuple[int, ...],
        grams_b: torch.Tensor | None = None,
        widths_b: tuple[int, ...] | None = None,
    ) -> None:
        """Add one batch from Grams built by :meth:`layer_grams` (zero diagonals, shape (L, b, b)).

        Lets a caller that compares one model with several others build each model's Grams once per batch.
        ``grams_b`` None compares side A with itself.
        """
        with torch.no_grad():
            dims, contribution = self._grams_contribution(grams_a, widths_a, grams_b, widths_b)
            self._commit(dims, grams_a.device, contribution)

    def _grams_contribution(
        self,
        grams_a: torch.Tensor,
        widths_a: tuple[int, ...],
        grams_b: torch.Tensor | None,
        widths_b: tuple[int, ...] | None,
    ) -> tuple[Dims, dict[str, torch.Tensor]]:
        """What one batch adds to the state (checked for shapes, not yet for finiteness; no host sync)."""
        dims, cross, self_a, self_b = self._pair_terms(grams_a, widths_a, grams_b, widths_b)
        one = torch.ones((), dtype=self._dtype, device=grams_a.device)
        b = grams_a.shape[-1]
        return dims, {"n": one * b, "batches": one, "kl": cross, "kk": self_a, "ll": self_b}

    @full_precision_matmul
    def compute(self) -> torch.Tensor:
        """The (n_a, n_b) matrix of minibatch CKA; a layer constant in every batch gives NaN and a warning."""
        return self._compute_named(None, None)

    def _compute_named(self, names_a: Sequence[str] | None, names_b: Sequence[str] | None) -> torch.Tensor:
        self._require_samples(4, "minibatch CKA")
        s = self._state
        name_a = (lambda i: f"xs[{i}]") if names_a is None else names_a.__getitem__
        name_b = (lambda j: f"ys[{j}]") if names_b is None else names_b.__getitem__
        bad = [name_a(i) for i in torch.nonzero(s["kk"] <= 0).flatten().tolist()]
        bad += [name_b(j) for j in torch.nonzero(s["ll"] <= 0).flatten().tolist()]
        if bad:
            warnings.warn(
                f"{', '.join(bad)} had zero variation in every batch (the same value for every sample: a dead unit, "
                "or a token that does not depend on the input); CKA with it is undefined and reported as NaN",
                ReprsimWarning,
                stacklevel=2,
            )
        kk = torch.where(s["kk"] > 0, s["kk"], torch.nan)
        ll = torch.where(s["ll"] > 0, s["ll"], torch.nan)
        return s["kl"] / torch.sqrt(torch.outer(kk, ll))


class MinibatchCKA(_MinibatchBase):
    """Minibatch CKA (Nguyen, Raghu & Kornblith, 2021) between two representations, for any kernel.

    Per batch, the unbiased HSIC of (K, L), (K, K) and (L, L) is added to running sums and
    ``compute()`` returns ``Σ HSIC(K, L) / sqrt(Σ HSIC(K, K) · Σ HSIC(L, L))``. With one batch of all samples
    it equals ``cka(x, y, unbiased=True)``. The per-batch triples are kept (three numbers a batch) in
    :attr:`hsic_records`, for uncertainty estimates.

    Parameters
    ----------
    kernel, sigma, median_fraction, dtype
        As in :class:`MinibatchCKAMatrix`.

    Examples
    --------
    >>> import torch
    >>> from reprsim import MinibatchCKA
    >>> acc = MinibatchCKA()
    >>> for _ in range(8):
    ...     x = torch.randn(32, 10)
    ...     acc.update(x, x @ torch.linalg.qr(torch.randn(10, 10))[0])  # a rotation of x
    >>> round(acc.compute(), 6), acc.hsic_records.shape
    (1.0, torch.Size([8, 3]))
    """

    def _declare_states(self) -> None:
        self._add_state("n", lambda d: (), "sum")
        self._add_state("kl", lambda d: (), "sum")
        self._add_state("kk", lambda d: (), "sum")
        self._add_state("ll", lambda d: (), "sum")
        self._add_state("records", lambda d: (0, 3), "cat")

    def _describe(self, dims: Dims) -> str:
        return f"x: {dims[2]}, y: {dims[3]}"

    @property
    def hsic_records(self) -> torch.Tensor:
        """(batches, 3) tensor of per-batch unbiased HSIC(K, L), HSIC(K, K), HSIC(L, L)."""
        return self._state["records"].clone() if self._dims is not None else torch.zeros((0, 3), dtype=self._dtype)

    @full_precision_matmul
    def update(self, x: Any, y: Any) -> None:
        """Add one batch: ``x`` of shape (b, ...) and ``y`` of shape (b, ...), the same b ≥ 4 samples."""
        with torch.no_grad():
            ga, wa = self.layer_grams([x], ["x"])
            gb, wb = self.layer_grams([y], ["y"])
            dims, cross, self_a, self_b = self._pair_terms(ga, wa, gb, wb)
            kl, kk, ll = cross[0, 0], self_a[0], self_b[0]
            device = ga.device
            self._commit(
                dims,
                device,
                {
                    "n": torch.tensor(float(ga.shape[-1]), dtype=self._dtype, device=device),
                    "kl": kl,
                    "kk": kk,
                    "ll": ll,
                    "records": torch.stack([kl, kk, ll])[None],
                },
            )

    @full_precision_matmul
    def compute(self) -> float:
        """Minibatch CKA of everything seen so far, as a Python float."""
        self._require_samples(4, "minibatch CKA")
        s = self._state
        for name, v in (("x", s["kk"]), ("y", s["ll"])):
            if not bool(v > 0):
                raise ConstantRepresentationError(
                    f"{name} had zero variation in every batch, so CKA is 0/0 (undefined); check for a dead layer"
                )
        return float(s["kl"] / (s["kk"] * s["ll"]).sqrt())
