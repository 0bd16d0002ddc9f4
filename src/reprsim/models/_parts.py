"""The accumulating parts of a comparison (see :class:`._layout.Part`) for moment measures and minibatch CKA.

:class:`MomentPart` keeps one :class:`~reprsim.streaming.CrossMoments` for every moment measure: one set of
moments per layer, one cross co-moment per compared pair. :class:`MinibatchPart` keeps one
:class:`~reprsim.streaming.MinibatchCKAMatrix` per pair and kernel. The sample-space part is in :mod:`._features`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from .._validation import format_bytes
from ..errors import (
    IncompatibleStateError,
    InsufficientSamplesError,
    InvalidParameterError,
    MemoryBudgetError,
    NonFiniteError,
)
from ..inference._interval import jackknife_matrix
from ..inference._stream import batch_jackknife_matrix
from ..measures._cka import CKA, batch_gram, zero_diagonals_
from ..streaming import CrossMoments, MinibatchCKAMatrix, Pending
from ._distributed import stream_order
from ._extract import module_of
from ._layout import Batch, Checks, Layout, Run, Slot

if TYPE_CHECKING:
    from ..measures._base import Measure
    from ._distributed import Distributed
    from ._features import FeatureStore
    from ._options import Uncertainty

__all__ = ["EXACT_MAX_WIDTH", "FOLD_MEMORY", "MinibatchPart", "MomentPart", "PartSettings", "moment_bytes"]

#: The widest pooled layer whose moments (width × width) a comparison keeps.
EXACT_MAX_WIDTH = 8192
#: The most bytes of moments kept per block (or fold) before a comparison refuses at the first batch.
FOLD_MEMORY = 4 * 2**30

Transform = Callable[[str, torch.Tensor], torch.Tensor]


class PartSettings(NamedTuple):
    """What every part is made with, beside its measures."""

    layout: Layout
    #: with the jackknife's blocks resolved
    uncertainty: Uncertainty
    #: the folds (or, under ci, the jackknife's blocks) the moments keep
    folds: int
    #: where the sample-space part keeps every sample's features
    store: FeatureStore
    dist: Distributed | None


def moment_bytes(layout: Layout, widths: Mapping[Slot, int], folds: int) -> int:
    """The float64 moments of these layers (each layer's own, each pair's cross ones), for every fold kept."""
    per_fold = sum(w * w for w in widths.values())
    for a, b in layout.pairs:
        wa = sum(widths[layout.slot(a, k)] for k in layout.keys[a])
        wb = sum(widths[layout.slot(b, k)] for k in layout.keys[b])
        per_fold += wa * wb
    return 8 * max(folds, 1) * per_fold


class MomentPart:
    """Every moment measure's statistics: one :class:`CrossMoments` over every compared layer, made at the first
    batch (when the layers and their widths are known), with one group of cross co-moments per pair."""

    reads_layers: bool = True
    untestable: str | None = None

    def __init__(self, measures: dict[str, Measure], settings: PartSettings) -> None:
        self.layout, self.measures, self.folds = settings.layout, measures, settings.folds
        self.fourth = any(m.fourth for m in measures.values())
        self.moments: CrossMoments | None = None
        self.slots: dict[Slot, int] = {}
        self.caches: dict[int, dict[Any, Any]] = {}

    def prepare(self, batch: Batch, checks: Checks) -> list[Pending]:
        named = self.layout.named_layers(batch.acts)
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
            widths = {self.layout.slot(m, k): t.reshape(t.shape[0], -1).shape[1] for m, k, t in named}
            self._check_fold_memory(widths)
            self._check_samples(widths, batch.expected)
            self.moments = self._new_moments()
        layers: list[torch.Tensor] = [torch.empty(0)] * len(self.slots)
        for (run, layer), slot in self.slots.items():
            layers[slot] = batch.acts[run][layer].to(first)
        return [self.moments.prepare(layers, checked=True, start=batch.start)]

    def keep(self, batch: Batch) -> None:
        return None  # everything is in the committed contribution

    def _new_moments(self) -> CrossMoments:
        layout = self.layout
        for name in layout.names:
            for slot in layout.slots(name):
                self.slots.setdefault(slot, len(self.slots))
        groups = [([self.slots[s] for s in layout.slots(a)], [self.slots[s] for s in layout.slots(b)])
                  for a, b in layout.pairs]  # fmt: skip
        return CrossMoments(groups=groups, fourth=self.fourth, folds=self.folds)

    def _check_samples(self, widths: Mapping[Slot, int], n: int | None) -> None:
        """Where the data say how many samples they hold, refuse at the first batch a moment measure that no
        data of that size can give at these widths (exact CCA of p + q ≥ n dimensions), instead of after the
        whole pass."""
        if n is None:
            return
        layout = self.layout
        for key, measure in self.measures.items():
            for a, b in layout.pairs:
                for la in layout.keys[a]:
                    for lb in layout.keys[b]:
                        p, q = widths[layout.slot(a, la)], widths[layout.slot(b, lb)]
                        try:
                            measure.check_samples(n, p, q)
                        except InsufficientSamplesError as exc:
                            raise InsufficientSamplesError(
                                f"{key} of {a}:{la} (width {p}) and {b}:{lb} (width {q}), refused at the first "
                                f"batch since the data hold {n} samples: {exc}"
                            ) from exc

    def _check_fold_memory(self, widths: Mapping[Slot, int]) -> None:
        """Per-block (or per-fold) moments cost G copies of the moments: refuse more than FOLD_MEMORY at the first
        batch, before any of it is allocated (blocks=10⁴ took 8.9 GiB)."""
        if self.folds < 2:
            return
        need = moment_bytes(self.layout, widths, self.folds)
        if need > FOLD_MEMORY:
            raise MemoryBudgetError(
                f"{self.folds} blocks (or folds) keep {self.folds} sets of moments, {format_bytes(need)} for these "
                f"layers (at most {format_bytes(FOLD_MEMORY)}); use fewer blocks (20 is the default), fewer or "
                "narrower layers"
            )

    def reduce_steps(self, first: dict[str, Any]) -> int:
        return 1

    def reduce(self, d: Distributed, first: dict[str, Any], done: Callable[[str], None]) -> None:
        if self.moments is None:  # this rank saw no data
            self.moments = self._new_moments()
        self.moments.all_reduce(d.group)
        done("moments")

    def _accumulated(self) -> CrossMoments:
        if self.moments is None:
            raise IncompatibleStateError("no moments were accumulated")  # pragma: no cover - run() checks
        return self.moments

    def matrix(self, pair: tuple[str, str], index: int, measure: Measure) -> torch.Tensor:
        a, b = pair
        return self._accumulated().compute_matrix(
            measure, group=index, caches=self.caches, names_a=self.layout.labels(a), names_b=self.layout.labels(b)
        )

    def interval(
        self,
        pair: tuple[str, str],
        index: int,
        measure: Measure,
        matrix: torch.Tensor,
        ci: float,
        blocks: int,
        samples: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        values = self._accumulated().jackknife_values(measure, group=index)
        low, high, bias = jackknife_matrix(matrix, values, ci)
        info = {"confidence": ci, "target": measure.target, "method": "jackknife", "blocks": blocks}
        return low, high, bias, info

    def close(self) -> None:
        self.caches.clear()


def minibatch_key(m: Measure) -> tuple[Any, ...]:
    """What makes two minibatch measures need different accumulators: the kernel and its bandwidth rule."""
    if not isinstance(m, CKA):  # pragma: no cover - CKA is the only minibatch measure
        raise InvalidParameterError(f"{m!r} claims to stream per batch, which only minibatch CKA does")
    return (m.kernel, m.sigma, m.median_fraction)


class MinibatchPart:
    """Minibatch CKA: one :class:`MinibatchCKAMatrix` per pair and kernel, fed each run's Grams once per batch
    (built after the pass, or inside the hooks once :meth:`hook_transform` is installed)."""

    reads_layers: bool = False
    untestable: str | None = "minibatch CKA is defined over batches, not over samples: it has no permutation test"

    def __init__(self, measures: dict[str, Measure], settings: PartSettings) -> None:
        self.layout = layout = settings.layout
        self.configs = list(dict.fromkeys(minibatch_key(m) for m in measures.values()))
        records = settings.uncertainty.ci is not None  # per-batch records for the jackknife over batches
        self.accumulators = {(p, c): MinibatchCKAMatrix(kernel=c[0], sigma=c[1], median_fraction=c[2], records=records)
                             for p in layout.pairs for c in self.configs}  # fmt: skip
        self.in_hook = False
        self.hook_widths: dict[Run, dict[str, int]] = {}  # each layer's pooled width, seen inside the hook

    def hook_transform(self, key: Run, given: Transform | None) -> Transform:
        """The transform that turns each pooled layer of run ``key`` into its Gram inside the hook, after the
        transform the run's Extractor was given (if any). From then on, batches arrive as Grams."""
        if len(self.configs) != 1:
            raise IncompatibleStateError("Grams are built in the hooks for one kernel only")  # pragma: no cover
        self.in_hook = True
        widths = self.hook_widths.setdefault(key, {})
        kernel, sigma, median_fraction = self.configs[0]

        def transform(layer: str, pooled: torch.Tensor) -> torch.Tensor:
            if given is not None:
                pooled = given(layer, pooled)
            widths[layer] = pooled.shape[1]
            return batch_gram(pooled, kernel, sigma, median_fraction, layer)

        return transform

    def prepare(self, batch: Batch, checks: Checks) -> list[Pending]:
        out: list[Pending] = []
        for config in self.configs:
            out.extend(self._prepare(config, batch.acts, checks))
        return out

    def _grams(
        self, config: tuple[Any, ...], run: Mapping[str, torch.Tensor], key: Run
    ) -> tuple[torch.Tensor, list[str], dict[str, int]]:
        """The run's layers' Grams stacked (diagonals zeroed), their keys and pooled widths."""
        run_keys = list(run)
        if self.in_hook:
            built = [run[k] for k in run_keys]
            widths = {module_of(k): w for k, w in self.hook_widths[key].items()}
        else:
            flat = {k: run[k].reshape(run[k].shape[0], -1) for k in run_keys}
            built = [batch_gram(flat[k], config[0], config[1], config[2], k) for k in run_keys]
            widths = {module_of(k): flat[k].shape[1] for k in run_keys}
        g = zero_diagonals_(torch.stack(built))
        if g.shape[-1] < 4:
            raise InsufficientSamplesError(
                f"minibatch CKA needs batches of at least 4 samples; got {g.shape[-1]}. Drop the incomplete last "
                "batch (DataLoader(drop_last=True))"
            )
        return g, run_keys, widths

    def _prepare(
        self, config: tuple[Any, ...], acts: dict[Run, dict[str, torch.Tensor]], checks: Checks
    ) -> list[Pending]:
        layout = self.layout
        grams: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {}
        stacked: dict[Run, tuple[torch.Tensor, list[str], dict[str, int]]] = {}
        for name in layout.names:
            key = layout.run_of[name]
            if key not in stacked:
                g, run_keys, widths = self._grams(config, acts[key], key)
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
            keys = layout.keys[name]
            for k in keys:
                layout.check_width(name, k, widths[module_of(k)], f"{tuple(g.shape[1:])} Grams")
            idx = [run_keys.index(k) for k in keys]
            grams[name] = (
                g if idx == list(range(len(run_keys))) else g[idx],
                tuple(widths[module_of(k)] for k in keys),
            )
        out = []
        for a, b in layout.pairs:
            ga, wa = grams[a]
            acc = self.accumulators[((a, b), config)]
            if layout.run_of[a] == layout.run_of[b] and layout.keys[a] == layout.keys[b]:
                out.append(acc.prepare_grams(ga, wa))
            else:
                gb, wb = grams[b]
                out.append(acc.prepare_grams(ga, wa, gb.to(ga.device), wb))
        return out

    def keep(self, batch: Batch) -> None:
        return None  # everything is in the committed contribution

    def reduce_steps(self, first: dict[str, Any]) -> int:
        return len(self.accumulators)

    def reduce(self, d: Distributed, first: dict[str, Any], done: Callable[[str], None]) -> None:
        order: torch.Tensor | None = None  # the batches' stream order, for per-batch records (one collective)
        for acc in self.accumulators.values():
            acc.all_reduce(d.group)
            if acc.records:
                order = stream_order(d, d.batch_index) if order is None else order
                acc._reorder_rows(order)
            done("minibatch CKA")

    def matrix(self, pair: tuple[str, str], index: int, measure: Measure) -> torch.Tensor:
        a, b = pair
        acc = self.accumulators[(pair, minibatch_key(measure))]
        return acc.compute(names_a=self.layout.labels(a), names_b=self.layout.labels(b))

    def interval(
        self,
        pair: tuple[str, str],
        index: int,
        measure: Measure,
        matrix: torch.Tensor,
        ci: float,
        blocks: int,
        samples: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        kl, kk, ll = self.accumulators[(pair, minibatch_key(measure))].hsic_records
        low, high, bias = batch_jackknife_matrix(kl, kk, ll, ci)
        info = {"confidence": ci, "target": measure.target, "method": "jackknife over batches",
                "batches": int(kl.shape[0])}  # fmt: skip
        return low, high, bias, info

    def close(self) -> None:
        return None
