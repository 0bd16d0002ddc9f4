"""The part of a comparison that keeps every sample's pooled features (see :class:`._layout.Part`): for the
sample-space measures, their intervals (a jackknife over blocks of samples, or half-samples), and for every
permutation test.

Features are kept by a :class:`FeatureStore`: :class:`KeptFeatures` in memory up to a budget, then in
memory-mapped temporary files; ``compare_stores`` reads them from the activation stores instead.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ..errors import IncompatibleStateError, InsufficientSamplesError, ReprsimError, ReprsimWarning, ShapeMismatchError
from ..inference._interval import half_matrix, jackknife_matrix
from ..inference._permutation import FALLBACK_PERMUTATIONS, PermutationTest, assemble, moments_tests, null_values
from ..measures._base import (
    BUDGET,
    CacheBudget,
    NoTraceForm,
    at_full_size,
    evaluate_validated,
    prepared_side,
    side_stats,
)
from ._distributed import gather_rows, stream_order
from ._layout import Batch, Checks, Slot

if TYPE_CHECKING:
    from ..measures._base import Measure
    from ..streaming import Pending
    from ._distributed import Distributed
    from ._options import Uncertainty
    from ._parts import PartSettings

__all__ = ["CACHE_MEMORY", "HALF_SAMPLES", "FeaturePart", "FeatureStore", "KeptFeatures"]

#: Half-samples for the intervals of sample-space measures in compare (the same ones for every cell).
HALF_SAMPLES = 100
#: Large per-layer results (RSA's ranked triangles) kept for the other pairs a layer is in, up to this much.
CACHE_MEMORY = 2 * 2**30

Interval = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, Any]]
#: each cell's p-value, calibrated score and chance level, and the test's summary
Tested = tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]


class FeatureStore(Protocol):
    """Where every sample's pooled features of each layer are kept, and read back one layer at a time."""

    #: each kept slot's (name, width, dtype, device), for the slots this process holds rows of
    meta: dict[Slot, Any]
    #: True when every process reads the same rows (from files), so nothing is gathered under torchrun
    shared: bool
    #: bytes kept in memory before spilling to files (None: no limit)
    budget: int | None

    def add(self, slot: Slot, name: str, tensor: torch.Tensor, batch: int) -> None: ...

    def get(self, slot: Slot) -> torch.Tensor: ...

    def release(self) -> None:
        """Drop the layer read back last (the next :meth:`get` reads it again)."""
        ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class KeptFeatures:
    """Every sample's pooled features per layer, for the sample-space measures: tensors in memory until their
    total passes ``budget`` bytes, then raw bytes appended to one temporary file per layer and read back
    through a memory map (the layer's dtype and device restored), one layer at a time."""

    shared = False

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self.memory: dict[Slot, list[torch.Tensor]] = {}
        self.meta: dict[Slot, Any] = {}  # name, width, dtype, device
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

    def release(self) -> None:
        self.read.clear()

    def close(self) -> None:
        self.release()
        for handle in self.files.values():
            handle.close()
        if self.folder is not None:
            self.folder.cleanup()


class FeaturePart:
    """Every sample's pooled features of every compared layer: the sample-space measures' matrices and
    intervals, and every measure's permutation test."""

    reads_layers: bool = True
    untestable: str | None = None

    def __init__(self, measures: dict[str, Measure], settings: PartSettings) -> None:
        self.layout, self.store, self.dist = settings.layout, settings.store, settings.dist
        self.uncertainty = settings.uncertainty
        self.caches: dict[Slot, dict[Any, Any]] = {}
        self.layer_stats: dict[Slot, tuple[float, float]] = {}
        self.cache_budget = CacheBudget(CACHE_MEMORY)
        self.rows = 0  # the samples this process kept

    def prepare(self, batch: Batch, checks: Checks) -> list[Pending]:
        return []  # rows are kept, not accumulated: nothing to commit

    def keep(self, batch: Batch) -> None:
        for model, layer, tensor in self.layout.named_layers(batch.acts):
            self.store.add(self.layout.slot(model, layer), f"{model}:{layer}", tensor, batch.number)
        self.rows += batch.rows

    def kept(self) -> dict[str, list[Any]]:
        """Each layer this process keeps rows of, by its name across processes: its width and dtype."""
        return {name: [self.store.meta[slot][1], str(self.store.meta[slot][2]).removeprefix("torch.")]
                for slot, name in self.layout.canonical_slots().items() if slot in self.store.meta}  # fmt: skip

    def reduce_steps(self, first: dict[str, Any]) -> int:
        return 0 if self.store.shared else len(first["features"])

    def reduce(self, d: Distributed, first: dict[str, Any], done: Callable[[str], None]) -> None:
        """Gather every rank's rows of each layer, in the order one process would have kept them."""
        if self.store.shared:
            return  # a store's rows are on disk for every rank to read
        if d.shard == "batches" and all(s >= 0 for s, _ in d.starts):
            own = torch.cat([torch.arange(s, s + rows) for s, rows in d.starts] or [torch.zeros(0).long()])
        else:
            own = torch.arange(self.rows) + (d.rank << 40)
        order = stream_order(d, own)
        gathered = KeptFeatures(self.store.budget)
        by_name = {v: k for k, v in self.layout.canonical_slots().items()}
        for name, (width, dtype) in first["features"].items():
            slot = by_name[name]
            if slot in self.store.meta:
                local = self.store.get(slot)
            else:
                local = torch.empty(0, width, dtype=getattr(torch, dtype))
            gathered.add(slot, name, gather_rows(d, local)[order.to(local.device)], 0)
            self.store.release()
            done(name)
        self.store.close()
        self.store = gathered

    def _side_stats(self, slot: Slot, t: torch.Tensor) -> tuple[float, float]:
        if slot not in self.layer_stats:
            self.layer_stats[slot] = side_stats(t)
        return self.layer_stats[slot]

    def _side(self, measure: Measure, slot: Slot, label: str) -> torch.Tensor:
        """A layer's kept features as ``measure`` takes them (constant layers refused, extreme magnitudes rescaled,
        as on two arrays; each layer's spread and magnitude found once)."""
        x = self.store.get(slot)
        return prepared_side(measure, x, label, self._side_stats(slot, x))

    def matrix(self, pair: tuple[str, str], index: int, measure: Measure) -> torch.Tensor:
        a, b = pair
        slots_a, slots_b = self.layout.slots(a), self.layout.slots(b)
        values = torch.empty(len(slots_a), len(slots_b), dtype=torch.float64)
        for i, sa in enumerate(slots_a):
            x = self.store.get(sa)  # read once per row of the matrix
            for j, sb in enumerate(slots_b):
                try:
                    # every batch was checked for NaN/inf and shapes as it streamed: no second pass over the data
                    if x.shape[0] < measure.min_samples:
                        raise InsufficientSamplesError(
                            f"this measure needs at least {measure.min_samples} samples; got {x.shape[0]}"
                        )
                    y = self.store.get(sb)
                    dtype = torch.promote_types(x.dtype, y.dtype)
                    xv = prepared_side(measure, x, f"{a}:{sa[1]}", self._side_stats(sa, x)).to(dtype)
                    yv = prepared_side(measure, y, f"{b}:{sb[1]}", self._side_stats(sb, y)).to(x.device, dtype)
                    cx = self.caches.setdefault(sa, {BUDGET: self.cache_budget})
                    cy = self.caches.setdefault(sb, {BUDGET: self.cache_budget})
                    values[i, j] = float(measure.from_samples(xv, yv, cx, cy))
                except ReprsimError as exc:
                    where = f"{a}:{sa[1]} and {b}:{sb[1]}"
                    raise type(exc)(f"{measure.label} of {where}: {exc}") from exc
        return values

    def interval(
        self,
        pair: tuple[str, str],
        index: int,
        measure: Measure,
        matrix: torch.Tensor,
        ci: float,
        blocks: int,
        samples: int,
    ) -> Interval:
        """A sample-space measure recomputed without each block of samples (sample i in block i % G), or on the
        same half-samples for every cell (m = n/2, without replacement, the draws of bootstrap())."""
        info: dict[str, Any] = {"confidence": ci, "target": measure.target}
        n = samples
        if measure.resampling == "blocks":
            block_of = torch.arange(n) % blocks
            kept = [torch.nonzero(block_of != g).flatten() for g in range(blocks)]
            values = self._subset_values(pair, measure, kept, n)
            low, high, bias = jackknife_matrix(matrix, values, ci)
            return low, high, bias, {**info, "method": "jackknife", "blocks": blocks}
        generator = torch.Generator().manual_seed(self.uncertainty.seed)
        halves = [torch.sort(torch.randperm(n, generator=generator)[: n // 2]).values for _ in range(HALF_SAMPLES)]
        values = self._subset_values(pair, measure, halves, n)
        low, high, bias = half_matrix(matrix, values, n, n // 2, ci)
        return low, high, bias, {**info, "method": "half-sample", "resamples": HALF_SAMPLES}

    def _subset_values(
        self, pair: tuple[str, str], measure: Measure, subsets: list[torch.Tensor], n: int
    ) -> torch.Tensor:
        """(S, A, B): a sample-space measure of every cell on each subset of the n kept samples' rows (scaled to
        n samples where the measure grows with n)."""
        a, b = pair
        out = torch.empty(len(subsets), len(self.layout.keys[a]), len(self.layout.keys[b]), dtype=torch.float64)
        for i, ka in enumerate(self.layout.keys[a]):
            x = self._side(measure, self.layout.slot(a, ka), f"{a}:{ka}")
            for j, kb in enumerate(self.layout.keys[b]):
                y = self._side(measure, self.layout.slot(b, kb), f"{b}:{kb}").to(x.device)
                dtype = torch.promote_types(x.dtype, y.dtype)
                xd, yd = x.to(dtype), y.to(dtype)
                out[:, i, j] = torch.tensor(
                    [float(evaluate_validated(measure, xd[r.to(xd.device)], yd[r.to(yd.device)])) for r in subsets],
                    dtype=torch.float64,
                )
        return at_full_size(measure, out, n, [len(r) for r in subsets])

    def permutation(self, pair: tuple[str, str], measure: Measure, permutations: int | str) -> Tested:
        """Each cell's p-value, calibrated score and chance level (the null mean), and the test's summary."""
        a, b = pair
        xs = [self.store.get(s) for s in self.layout.slots(a)]
        ys = [self.store.get(s).to(xs[0].device) for s in self.layout.slots(b)]
        return layer_test(xs, ys, measure, permutations, self.uncertainty, self.dist)

    def describe(self) -> str:
        return self.store.describe()

    def close(self) -> None:
        self.caches.clear()
        self.store.close()


def layer_test(
    xs: list[torch.Tensor],
    ys: list[torch.Tensor],
    measure: Measure,
    permutations: int | str,
    u: Uncertainty,
    d: Distributed | None,
) -> Tested:
    """The permutation test of every layer pair at once, by exact moments or Monte Carlo (under torchrun, each
    rank evaluates every world_size-th permutation of the same draws, and the nulls are gathered)."""
    note = None
    if permutations == "moments":
        try:
            best, mean = moments_tests(xs, ys, measure, u.alpha, ("best", "mean"), layered=True)
            return _summary(best, mean, u, "moments")
        except NoTraceForm as exc:
            note = f"Monte Carlo with {FALLBACK_PERMUTATIONS} permutations: {exc}"
            warnings.warn(f"{measure.label}: the exact-moment null is not used ({note})", ReprsimWarning,
                          stacklevel=6)  # fmt: skip
            permutations = FALLBACK_PERMUTATIONS
    count = int(permutations)
    if d is None or d.world == 1:
        observed, null = null_values(xs, ys, measure, count, u.seed)
    else:
        own = range(d.rank, count, d.world)
        observed, mine = null_values(xs, ys, measure, count, u.seed, keep=own)
        gathered = gather_rows(d, mine.permute(2, 0, 1).contiguous())  # (K, a, b), rank by rank
        null = gathered[stream_order(d, list(own))].permute(1, 2, 0).contiguous()  # one process's layout
    best = assemble(observed, null, measure, u.alpha, "best", layered=True)
    mean = assemble(observed, null, measure, u.alpha, "mean", layered=True)
    return _summary(best, mean, u, "monte_carlo", count, note)


def _summary(
    best: PermutationTest,
    mean: PermutationTest,
    u: Uncertainty,
    method: str,
    count: int | None = None,
    note: str | None = None,
) -> Tested:
    """The cells' p-values, calibrated scores and chance levels, and the metadata's account of the test."""
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
