"""What a comparison compares, and the contract of the parts that accumulate for its measures.

:class:`Layout` says who is compared with whom and where each layer is filed (a :class:`Slot`: a layer of a
:class:`Run`). :class:`Part` is what a kind of measure needs from a pass over the data: every layer's moments
(:mod:`._parts`), every batch's Grams (:mod:`._parts`), or every sample's features (:mod:`._features`). The
comparison (:mod:`._compare`) feeds each batch to the parts its measures need, commits their contributions
only when every check of the batch has passed, reduces them across processes under torchrun, and asks each
measure's part for its matrix and interval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch

from ..errors import NonFiniteError, ShapeMismatchError
from ._extract import module_of

if TYPE_CHECKING:
    from ..measures._base import Measure
    from ..streaming import Pending
    from ._distributed import Distributed

__all__ = ["Batch", "Checks", "Layout", "Part", "Run", "Slot", "commit"]


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


#: A batch's checks: device flags (one host synchronisation for all of them) and what to raise when one fails.
Checks = list[tuple[torch.Tensor, Callable[[list[bool]], None]]]


def commit(checks: Checks, pending: list[Pending], device: torch.device) -> None:
    """Commit every contribution of a batch, or none: every check (NaN/inf in any layer, overflow in any
    statistic) shares one host synchronisation, and nothing is added before all pass, so a rejected batch
    changes no state."""
    flags = [f.to(device) for f, _ in checks] + [p.flags().to(device) for p in pending]
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


class Batch(NamedTuple):
    """One batch as the parts see it."""

    #: every run's pooled layers (or Grams, where they are built inside the hooks)
    acts: dict[Run, dict[str, torch.Tensor]]
    #: the index of its first sample in the whole stream, where known under torchrun (it places samples in folds)
    start: int | None
    #: how many batches came before it in this process
    number: int
    #: how many samples the data hold, where they say so without being iterated
    expected: int | None
    #: its samples
    rows: int


class Layout:
    """The compared pairs of model names, each name's run and selected layers, and (from the first batch) each
    name's activation keys and each layer's pooled width."""

    def __init__(
        self,
        pairs: list[tuple[str, str]],
        run_of: dict[str, Run],
        layer_names: dict[str, list[str]],
        pool_of: Mapping[str, Any],
    ) -> None:
        self.pairs, self.run_of, self.layer_names, self.pool_of = pairs, run_of, layer_names, pool_of
        #: every compared name, in the order the pairs name them
        self.names = list(dict.fromkeys(n for p in pairs for n in p))
        #: each name's activation keys (``layer#k`` keys when each call is recorded), from the first batch
        self.keys: dict[str, list[str]] = {}
        self.pooled_widths: dict[tuple[str, str], int] = {}

    def slot(self, name: str, layer: str) -> Slot:
        """The slot of layer ``layer`` of the model named ``name``."""
        return Slot(self.run_of[name], layer)

    def slots(self, name: str) -> list[Slot]:
        return [self.slot(name, k) for k in self.keys[name]]

    def labels(self, name: str) -> list[str]:
        """``name:layer`` for each of ``name``'s layers (how results and errors name them)."""
        return [f"{name}:{k}" for k in self.keys[name]]

    def learn_keys(self, acts: Mapping[Run, Mapping[str, torch.Tensor]]) -> None:
        for name in self.names:
            if name not in self.keys:
                wanted = set(self.layer_names[name])
                self.keys[name] = [k for k in acts[self.run_of[name]] if module_of(k) in wanted]

    def named_layers(self, acts: Mapping[Run, Mapping[str, torch.Tensor]]) -> list[tuple[str, str, torch.Tensor]]:
        return [(n, k, acts[self.run_of[n]][k]) for n in self.names for k in self.keys[n]]

    def canonical_slots(self) -> dict[Slot, str]:
        """Each kept layer's name across processes, "model:layer" under the first name of its run (the run keys
        themselves are object ids, which differ between processes)."""
        canonical: dict[Slot, str] = {}
        for n in self.names:
            for k in self.keys.get(n, []):
                canonical.setdefault(self.slot(n, k), f"{n}:{k}")
        return canonical

    def check_layers(self, acts: Mapping[Run, Mapping[str, torch.Tensor]], checks: Checks) -> None:
        """Check every layer's pooled width against the first batch's, and queue one finiteness flag per layer,
        whose failure names the model and the layer."""
        named = self.named_layers(acts)
        first = named[0][2].device
        for model, layer, t in named:
            width = t[0].numel() if t.shape[0] else t.reshape(0, -1).shape[1]
            self.check_width(model, layer, width, f"activations of shape {tuple(t.shape)}")

        def fail(ok: list[bool]) -> None:
            for (model, layer, t), fine in zip(named, ok):
                if not fine and not bool(torch.isfinite(t).all()):
                    raise NonFiniteError(
                        f"{model}: layer {layer!r} produced NaN or infinite values in this batch (shape "
                        f"{tuple(t.shape)}); check the model and its inputs"
                    )

        checks.append((torch.stack([torch.isfinite(t.sum()).to(first) for _, _, t in named]), fail))

    def check_width(self, model: str, layer: str, width: int, what: str) -> None:
        """A layer's pooled width must be the first batch's: say which layer changed, and why it usually does."""
        seen = self.pooled_widths.setdefault((model, layer), width)
        if width == seen:
            return
        hint = (
            "with pool='flatten' this happens when the token count varies between batches (padding to each "
            "batch's longest sequence): use pool='masked_mean' (or 'mean', 'cls'), or pad every batch to one length"
            if self.pool_of.get(model) == "flatten"
            else "every batch must give each layer the same number of features after pooling"
        )
        raise ShapeMismatchError(
            f"{model}: layer {layer!r} has {width} features after pooling in this batch but {seen} in the first "
            f"(this batch: {what}); {hint}"
        )


class Part(Protocol):
    """What one kind of measure needs from a pass, accumulated for every compared pair.

    A part never changes its state in :meth:`prepare`: it returns its contributions, which the comparison commits
    once every check of the batch has passed (one host synchronisation for all parts), then calls :meth:`keep`.
    """

    #: whether the part reads the pooled layers, so the batch's layers are checked (widths, NaN/inf) for it
    reads_layers: bool
    #: why its measures have no permutation test, or None when they have one
    untestable: str | None

    def prepare(self, batch: Batch, checks: Checks) -> list[Pending]:
        """The batch's contributions, computed and shape-checked but not added; failures queued on ``checks``."""
        ...

    def keep(self, batch: Batch) -> None:
        """After every check of the batch passed: keep what is not an accumulator's contribution."""
        ...

    def reduce_steps(self, first: dict[str, Any]) -> int:
        """How many states :meth:`reduce` reduces (``first``: the description of the first rank with data)."""
        ...

    def reduce(self, d: Distributed, first: dict[str, Any], done: Callable[[str], None]) -> None:
        """Make the state that of every rank's data, calling ``done`` after each state (every rank in one order)."""
        ...

    def matrix(self, pair: tuple[str, str], index: int, measure: Measure) -> torch.Tensor:
        """The measure's matrix for ``pair`` (the ``index``-th pair)."""
        ...

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
        """Each cell's interval by the resampling the measure declares, the bias it sees (or None), and how
        (``samples``: how many the pass saw, in every process)."""
        ...

    def close(self) -> None: ...
