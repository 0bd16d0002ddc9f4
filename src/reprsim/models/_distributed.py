"""compare() under torchrun: which batches a rank handles, and the collectives that make every rank's result
equal a single process's on all the data.

Ranks only talk after their loops: first whether each one finished (so an error on one rank is raised on all of
them instead of leaving the others waiting), then what each one saw (layers, widths, options), then the
accumulators' all-reduces and the gathering of pooled features. Every step has the same shape on every rank,
so ranks that disagree raise the same error instead of waiting in mismatched collectives.
"""

from __future__ import annotations

import atexit
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..errors import IncompatibleStateError, InvalidParameterError, ReprsimError, ReprsimWarning, ShapeMismatchError

Shard = Literal["auto", "batches", "data"]


@dataclass
class Distributed:
    """The process group a compare() call reduces over, and how the data are sharded."""

    group: Any
    rank: int
    world: int
    shard: Literal["batches", "data"]
    #: global index of each own batch's first sample, and its row count (shard="batches")
    starts: list[tuple[int, int]] = field(default_factory=list)
    #: global index of each own batch in the stream
    batch_index: list[int] = field(default_factory=list)
    #: seconds this rank waited at the end of its loop for the slowest rank to finish its own
    wait_seconds: float = 0.0
    #: seconds of the reduction itself, once every rank had finished (agreeing, all-reduces, gathers)
    reduce_seconds: float = 0.0
    #: (rows, checksum) of every batch of the stream (shard="batches"), to check that every rank saw the same;
    #: the checksums stay on their device until the end (no synchronisation per batch)
    fingerprints: list[tuple[int, Any]] = field(default_factory=list)
    #: a DataLoader's batches were split by index (only this rank's were loaded): no checksums needed
    loader_sharded: bool = False

    def checked_prints(self) -> list[tuple[int, list[float]]]:
        if not self.fingerprints:
            return []
        device = next((f.device for _, f in self.fingerprints if isinstance(f, torch.Tensor)), torch.device("cpu"))
        parts = [torch.as_tensor(f, dtype=torch.float64, device=device).reshape(-1) for _, f in self.fingerprints]
        values = torch.cat(parts).tolist()  # one transfer
        out, at = [], 0
        for (rows, _), part in zip(self.fingerprints, parts):
            out.append((rows, values[at : at + part.numel()]))
            at += part.numel()
        return out

    def comm_device(self, t: torch.Tensor | None = None) -> torch.device:
        """Where a collective on ``t`` runs: the CPU under gloo, ``t``'s device where the backend serves several
        (``"cpu:gloo,cuda:nccl"``), the current CUDA device under NCCL alone."""
        import torch.distributed as dist

        backend = str(dist.get_backend(self.group))
        if backend == "gloo":
            return torch.device("cpu")
        if "gloo" in backend and t is not None:
            return t.device
        if "gloo" in backend:
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())

    def describe(self) -> dict[str, Any]:
        how = (
            "each rank ran every world_size-th batch"
            if self.shard == "batches"
            else "each rank ran its own shard of the data"
        )
        return {"world_size": self.world, "rank": self.rank, "shard": self.shard, "how": how,
                "batches_run": len(self.batch_index), "wait_seconds": round(self.wait_seconds, 4),
                "reduce_seconds": round(self.reduce_seconds, 4)}  # fmt: skip


def _torchrun_env() -> bool:
    return (
        all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
    )


def setup(distributed: bool | None, shard: Any, data: Iterable[Any]) -> Distributed | None:
    """The run's process group (initialising it from torchrun's environment if nobody has), or None.
    ``distributed`` and ``shard`` come checked by :class:`~reprsim.models._options.Runtime`."""
    if distributed is False:
        return None
    import torch.distributed as dist

    available = dist.is_available()
    if available and not dist.is_initialized() and _torchrun_env():
        # launched by torchrun and nobody initialised the group: do it, so the script needs no change
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(_destroy)
    if not (available and dist.is_initialized()):
        if distributed:
            raise InvalidParameterError(
                "Runtime(distributed=True) needs torch.distributed: launch the script with torchrun "
                "--nproc_per_node=N, or call torch.distributed.init_process_group(...) on every rank first"
            )
        return None
    world = dist.get_world_size()
    if world == 1 and distributed is None:
        return None
    mode = shard
    if mode == "batches" and _distributed_sampler(data) is not None:
        raise InvalidParameterError(
            "shard='batches' splits one stream of batches between the ranks, but this DataLoader's "
            "DistributedSampler already gives each rank its own shard: pass runtime=Runtime(shard='data') (or "
            "leave shard='auto')"
        )
    if mode == "auto":
        mode = "data" if _distributed_sampler(data) is not None else "batches"
    if mode == "data":
        sampler = _distributed_sampler(data)
        if sampler is not None:
            total, size = int(getattr(sampler, "total_size", 0)), len(getattr(sampler, "dataset", []))
            if total > size:
                warnings.warn(
                    f"the DistributedSampler repeats {total - size} samples so that every rank gets the same number "
                    "(drop_last=False): they are counted twice, and the result differs from one process on the "
                    "dataset. For an exact result, pass a plain DataLoader with Runtime(shard='batches') (each rank "
                    "then runs every world_size-th batch)",
                    ReprsimWarning,
                    stacklevel=4,
                )
    return Distributed(None, dist.get_rank(), world, mode)


class SkippedBatch:
    """Another rank's batch (or chunk), never loaded: only its row count, as ``shape[0]``."""

    def __init__(self, rows: int) -> None:
        self.shape = (rows,)


def shard_loader(d: Distributed, data: Any) -> Any:
    """With shard="batches", a DataLoader that batches by index lists loads only this rank's batches: rank 0's
    batch order (its sampler's draw, shuffled or not) is sent to every rank, and each rank loads every
    world_size-th batch with the loader's own dataset, collate function and workers; the others' batches stand
    in as :class:`SkippedBatch`. Any other iterable is returned as is (every rank iterates it)."""
    from torch.utils.data import DataLoader

    if d.shard != "batches" or not isinstance(data, DataLoader) or data.batch_sampler is None:
        return data
    import torch.distributed as dist

    order: list[Any] = [[list(b) for b in data.batch_sampler] if d.rank == 0 else None]
    dist.broadcast_object_list(order, src=0 if d.group is None else dist.get_global_rank(d.group, 0), group=d.group)
    every: list[list[int]] = order[0]
    mine = [b for i, b in enumerate(every) if i % d.world == d.rank]
    options: dict[str, Any] = {
        "num_workers": data.num_workers,
        "collate_fn": data.collate_fn,
        "pin_memory": data.pin_memory,
        "timeout": data.timeout,
        "worker_init_fn": data.worker_init_fn,
        "multiprocessing_context": data.multiprocessing_context,
        "persistent_workers": data.persistent_workers,
    }
    if data.num_workers > 0:
        options["prefetch_factor"] = data.prefetch_factor
    loader = DataLoader(data.dataset, batch_sampler=mine, **options)
    d.loader_sharded = True

    def batches() -> Any:
        own = iter(loader)
        for i, b in enumerate(every):
            yield next(own) if i % d.world == d.rank else SkippedBatch(len(b))

    return batches()


def _destroy() -> None:  # pragma: no cover - runs at interpreter exit
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _distributed_sampler(data: Any) -> Any:
    from torch.utils.data.distributed import DistributedSampler

    for candidate in (getattr(data, "sampler", None), getattr(getattr(data, "batch_sampler", None), "sampler", None)):
        if isinstance(candidate, DistributedSampler):
            return candidate
    return None


def rows_of(batch: Any) -> int | None:
    """The number of samples in a batch (a tensor, a sequence whose first element is one, or a dict)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    if isinstance(batch, (list, tuple)) and batch:
        return rows_of(batch[0])
    if isinstance(batch, Mapping):  # a dict, or a Hugging Face BatchEncoding (a UserDict)
        for v in batch.values():
            got = rows_of(v)
            if got is not None:
                return got
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape else None


def fingerprint(batch: Any) -> tuple[int, Any]:
    """(rows, checksums) of a batch: for every tensor in it (a tensor, nested tuples and lists, dict values), a
    float64 sum and a sum weighted by position (so that reordered rows differ too), as one tensor on the batch's
    device. Equal on every rank that iterates the same data; a dict batch whose attention mask agrees but whose
    inputs differ does not pass."""
    tensors = [t for t in _tensors(batch) if not t.is_complex()]
    if not tensors:
        return (-1, 0.0)
    sums = []
    for t in tensors:
        flat = t.detach().reshape(-1).to(torch.float64)
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device).remainder_(9973).add_(1)
        sums += [flat.sum(), (flat * weights).sum()]
    first = tensors[0]
    return (int(first.shape[0]) if first.ndim else 1, torch.stack([s.to(sums[0].device) for s in sums]))


def _tensors(batch: Any) -> list[torch.Tensor]:
    """Every tensor of a batch, depth first (tuples, lists and mapping values in their order)."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, (list, tuple)):
        return [t for item in batch for t in _tensors(item)]
    if isinstance(batch, Mapping):
        return [t for item in batch.values() for t in _tensors(item)]
    return []


def agree_finished(d: Distributed, error: BaseException | None) -> None:
    """Every rank learns whether every other finished its loop; a failure on any rank is raised on all."""
    import torch.distributed as dist

    mine = None if error is None else f"{type(error).__name__}: {error}"
    every: list[Any] = [None] * d.world
    dist.all_gather_object(every, mine, group=d.group)
    failed = [(r, m) for r, m in enumerate(every) if m is not None]
    if error is not None:
        raise error
    if failed:
        rank, message = failed[0]
        raise IncompatibleStateError(
            f"compare failed on rank {rank} of {d.world} ({message}); every rank stops. Fix the error that rank reports"
        )


def agree_description(d: Distributed, mine: dict[str, Any]) -> dict[str, Any]:
    """Exchange what each rank saw; ranks with data must agree on the layers and widths, every rank on the
    options. Returns the description of the first rank with data (for ranks that saw none)."""
    import torch.distributed as dist

    every: list[Any] = [None] * d.world
    dist.all_gather_object(every, mine, group=d.group)
    prints = {r: e["fingerprints"] for r, e in enumerate(every)}
    if any(p != prints[0] for p in prints.values()):
        r = next(r for r, p in prints.items() if p != prints[0])
        a, b = prints[0], prints[r]
        where = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
        raise InvalidParameterError(
            f"ranks 0 and {r} iterated different data (batch {where} differs, or their numbers of batches: "
            f"{len(a)} and {len(b)}); with shard='batches' every rank must iterate the same batches in the same "
            "order. A shuffled DataLoader needs a shared seed (DataLoader(..., generator=torch.Generator()"
            ".manual_seed(0))); or give each rank its own shard (a DistributedSampler, or "
            "runtime=Runtime(shard='data'))"
        )
    options = {r: e["options"] for r, e in enumerate(every)}
    if any(o != options[0] for o in options.values()):
        bad = [r for r, o in options.items() if o != options[0]]
        raise InvalidParameterError(
            f"ranks {bad} called compare with other measures, layers, pairs or options than rank 0; every rank must "
            "make the same call"
        )
    seen = [(r, e) for r, e in enumerate(every) if e["batches"] > 0]
    if not seen:
        return mine
    first_rank = seen[0][0]
    first: dict[str, Any] = seen[0][1]
    for r, e in seen[1:]:
        for what in ("keys", "widths"):
            if e[what] != first[what]:
                raise ShapeMismatchError(
                    f"rank {r} captured {what} {e[what]} but rank {first_rank} {first[what]}; every rank must run the "
                    "same models on batches of the same kind"
                )
    return first


def all_sum(d: Distributed, values: list[int]) -> list[int]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.int64, device=d.comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=d.group)
    return [int(v) for v in t.tolist()]


def gather_rows(d: Distributed, t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order (ranks may hold different numbers, or none)."""
    import torch.distributed as dist

    from ..streaming._protocol import _all_gather_rows

    device = d.comm_device(t)
    return _all_gather_rows(t.to(device), d.world, d.group, dist).to(t.device)


def stream_order(d: Distributed, own: list[int] | torch.Tensor) -> torch.Tensor:
    """The permutation (on the CPU) that puts rows gathered rank by rank back in stream order, given each own
    row's global index."""
    gathered = gather_rows(d, torch.as_tensor(own, dtype=torch.int64).to(d.comm_device()))
    return torch.argsort(gathered.cpu())


def check_supported(d: Distributed, writing: bool) -> None:
    if writing:
        raise ReprsimError(
            "compare(stores=...) writes one store per model, which under torchrun every rank would write at once; "
            "write the stores from a single process, or one store per rank with reprsim.StoreWriter"
        )
