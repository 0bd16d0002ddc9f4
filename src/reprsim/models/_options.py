"""The option groups of :func:`~reprsim.compare` and :func:`~reprsim.compare_stores`: :class:`Uncertainty` (what
is reported beside each value) and :class:`Runtime` (where and how the comparison runs).

A group is a small frozen value, checked when it is made, so that a wrong setting fails where it is written
rather than after the first batch, and one value can be built once and passed to every comparison of a study.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TypeVar

import torch

from .._validation import check_bool, check_int, check_probability, check_seed, refuse_keywords
from ..errors import InvalidParameterError
from ._distributed import Shard

__all__ = ["Runtime", "Uncertainty"]

_Group = TypeVar("_Group", "Uncertainty", "Runtime")

#: Default bytes of pooled features that compare keeps in memory for sample-space measures before spilling.
FEATURE_MEMORY = 2 * 2**30


@dataclass(frozen=True)
class Uncertainty:
    """What a comparison reports beside each value: a confidence interval, a permutation test, or both.

    Passed as ``compare(..., uncertainty=Uncertainty(ci=0.95))`` (and likewise to :func:`compare_stores`).
    Everything comes from the same single pass over the data; what each measure's interval estimates, and the
    simulations behind the coverage, are in docs/uncertainty.md.

    Parameters
    ----------
    ci : float, optional
        Attach a confidence interval at this level (e.g. 0.95) to every cell (``result.low``/``result.high``):
        exact moment measures by a delete-a-block jackknife over ``blocks`` blocks of samples (sample ``i`` in
        block ``i % blocks``; the moments are then kept per block, ``blocks`` times their memory), minibatch CKA
        by the jackknife over its batches, sample-space measures by 100 half-samples without replacement of their
        kept features (the same half-samples for every cell). Each measure's ``describe()["resampling"]`` names
        its scheme, and the result's ``metadata["ci"]["target"]`` what the intervals estimate (the population
        value, or the estimator's expectation at this n).
    blocks : int, optional
        Blocks of the jackknife (at least 2, and at most the number of samples); by default 20, or the folds of
        a cross-validated measure in the run. Only with ``ci``.
    permutations : int or "moments", optional
        Run a permutation test with this many permutations of the second model's samples (the same permutation
        for all its layers): ``result.p_values`` and ``result.calibrated`` per cell, and in
        ``metadata["permutation"]`` the test of the best cell (corrected for the search over all cells) and of
        the mean. ``"moments"`` uses the exact moments of the permutation distribution where a measure has
        them (no Monte Carlo). The test needs every sample's pooled features, kept as for the sample-space
        measures; minibatch CKA has none (it is left untested with a warning).
    alpha : float, default 0.05
        Level of the permutation test: of the calibrated scores (0 at the 1 − alpha quantile of the null) and of
        the significance marks of the plots.
    seed : int, default 0
        Seeds the permutations and the half-samples.

    Raises
    ------
    InvalidParameterError
        When ``blocks`` comes without ``ci``, or a value is out of range. ``Uncertainty()`` (neither ``ci`` nor
        ``permutations``) is valid and asks for values only, as ``uncertainty=None`` does.

    Examples
    --------
    >>> from reprsim import Uncertainty
    >>> Uncertainty(ci=0.95, blocks=10)
    Uncertainty(ci=0.95, blocks=10, permutations=None, alpha=0.05, seed=0)
    >>> Uncertainty(ci=95)
    Traceback (most recent call last):
    ...
    reprsim.errors.InvalidParameterError: ci must be a finite number in (0, 1) (a confidence level, e.g. 0.95); got 95
    """

    ci: float | None = None
    blocks: int | None = None
    permutations: int | Literal["moments"] | None = None
    alpha: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        ci, blocks, permutations = self.ci, self.blocks, self.permutations
        if ci is not None:
            ci = check_probability(ci, "ci", "a confidence level, e.g. 0.95")
        if blocks is not None:
            blocks = check_int(blocks, "blocks", minimum=2, hint="the number of jackknife blocks")
            if ci is None:
                raise InvalidParameterError("blocks= sets the jackknife of ci=; pass ci=0.95 too (or drop blocks)")
        if permutations is not None and permutations != "moments":
            permutations = check_int(permutations, "permutations", minimum=1, hint="or 'moments' for the exact null")
        object.__setattr__(self, "ci", ci)
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "permutations", permutations)
        object.__setattr__(self, "alpha", check_probability(self.alpha, "alpha", "e.g. 0.05"))
        object.__setattr__(self, "seed", check_seed(self.seed))


@dataclass(frozen=True)
class Runtime:
    """Where and how a comparison runs: devices, memory, processes. None of it changes a number.

    Passed as ``compare(..., runtime=Runtime(device="cuda"))`` (and likewise to :func:`compare_stores`, where
    only ``device`` and ``distributed`` apply).

    Parameters
    ----------
    device : torch.device or str, optional
        :func:`compare`: where batches go; by default each model's own device. Models are never moved: a model
        with parameters elsewhere is refused. :func:`compare_stores`: where the statistics are computed (default
        CPU).
    eval : bool, default True
        Run the models in eval mode for the duration (dropout off, batch-norm statistics frozen); each module's
        ``training`` flag is restored afterwards, also after an exception.
    feature_memory : int or None, default 2 GiB
        Sample-space measures (neighbours, RSA, distance correlation, RBF CKA) and permutation tests need every
        sample's pooled features (n × width per layer). They are kept in memory up to this many bytes in all;
        beyond, every layer's features go to a memory-mapped temporary file (deleted when ``compare`` returns),
        read back one layer at a time. ``None`` never spills; ``0`` always does. The result's metadata says which
        happened, under ``features``.
    distributed : bool, optional
        Under torchrun (or any initialised ``torch.distributed`` group of several processes, detected when None),
        each rank runs its share of the batches and the ranks' statistics are all-reduced before the measures are
        computed, so every rank returns the result of one process on all the data. Sample-space measures and
        permutation tests gather every rank's pooled features to every rank (n × width per layer on each); the
        permutations of a test are shared out among the ranks. ``False`` keeps each rank on its own. When
        torchrun launched the script and no group exists, the comparison initialises one (gloo; NCCL for CUDA
        tensors). See the scaling guide in the docs.
    shard : {"auto", "batches", "data"}, default "auto"
        How the ranks split ``data``: ``"batches"``, each rank runs the forward pass of every world_size-th batch
        (a ``DataLoader`` is split by index, so each rank loads only its own batches, in rank 0's order; any other
        iterable must yield the same batches on every rank, which is checked; exact equality with one process,
        including folds and resampling order); ``"data"``, ``data`` is already this rank's shard (a DataLoader
        with a ``DistributedSampler``, which ``"auto"`` detects; note that the sampler repeats samples to even out
        the shards unless the dataset divides evenly).

    Examples
    --------
    >>> from reprsim import Runtime
    >>> Runtime(device="cpu", feature_memory=0)  # doctest: +NORMALIZE_WHITESPACE
    Runtime(device=device(type='cpu'), eval=True, feature_memory=0, distributed=None, shard='auto')
    """

    device: torch.device | str | None = None
    eval: bool = True
    feature_memory: int | None = FEATURE_MEMORY
    distributed: bool | None = None
    shard: Shard = "auto"

    def __post_init__(self) -> None:
        device = self.device
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as exc:
                raise InvalidParameterError(
                    f"device must be a torch device such as 'cpu' or 'cuda:0' (or None for each model's own); got "
                    f"{device!r}"
                ) from exc
        memory = self.feature_memory
        if memory is not None:
            memory = check_int(memory, "feature_memory", minimum=0, hint="bytes, or None never to spill")
        if self.distributed is not None and not isinstance(self.distributed, bool):
            raise InvalidParameterError(
                f"distributed must be True, False or None (automatic); got {self.distributed!r}"
            )
        if self.shard not in ("auto", "batches", "data"):
            raise InvalidParameterError(f"shard must be 'auto', 'batches' or 'data'; got {self.shard!r}")
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "eval", check_bool(self.eval, "eval"))
        object.__setattr__(self, "feature_memory", memory)


def _checked_group(value: object, cls: type[_Group], keyword: str, example: str) -> _Group:
    """An option group as compare and compare_stores accept it: None (the group's defaults) or a ``cls``."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    raise InvalidParameterError(
        f"{keyword}= takes {'an' if cls.__name__[0] in 'AEIOU' else 'a'} {cls.__name__} (e.g. {keyword}="
        f"reprsim.{cls.__name__}({example})) or None; got {type(value).__name__}"
    )


def checked_runtime(value: object) -> Runtime:
    """``runtime=`` as compare and compare_stores accept it: None (the defaults) or a :class:`Runtime`."""
    return _checked_group(value, Runtime, "runtime", "device='cuda'")


#: The fields of each option group, which compare() and compare_stores() took as keywords before 0.3.
GROUPS = {
    "uncertainty": ("Uncertainty", ("ci", "blocks", "permutations", "alpha", "seed")),
    "runtime": ("Runtime", ("device", "eval", "feature_memory", "distributed", "shard")),
}
#: compare()'s extraction keywords before 0.3: the Extractor field that replaces each, and which model gets it.
EXTRACTION = {
    "capture": ("capture", "the model"),
    "select": ("select", "the model"),
    "calls": ("calls", "the model"),
    "stop_early": ("stop_early", "the model"),
    "inputs_a": ("inputs", "model_a"),
    "inputs_b": ("inputs", "model_b"),
    "inputs": ("inputs", "each model"),
}
#: Keywords removed in 0.2, and what to pass instead.
REMOVED = {
    "estimator": "measure='cka_minibatch' (the old default), measure='cka' (estimator='exact') or "
    "measure='cka_unbiased' (estimator='exact_unbiased')",
    "kernel": "measure=reprsim.measures.CKA(estimator='minibatch', kernel='rbf')",
    "sigma": "measure=reprsim.measures.CKA(estimator='minibatch', kernel='rbf', sigma=...)",
    "median_fraction": "measure=reprsim.measures.CKA(estimator='minibatch', kernel='rbf', median_fraction=...)",
    "names": "model_names=(...) (the models' names; layer names are the result's names_a and names_b)",
}


def migration_error(function: str, given: Mapping[str, Any]) -> NoReturn:
    """Raise for keywords ``function`` does not take: for keywords it took before, the migration error with the
    replacement (the old keywords of a group as one value of it, holding the values given); a TypeError, as
    Python's own, for any other."""
    advice = []
    for keyword, (cls, fields) in GROUPS.items():
        moved = {k: v for k, v in given.items() if k in fields}
        if moved:
            values = ", ".join(f"{k}={v!r}" for k, v in moved.items())
            advice.append(f"instead of {'=, '.join(moved)}=, pass {keyword}=reprsim.{cls}({values})")
    for k, v in given.items():
        if k in EXTRACTION:
            field, whose = EXTRACTION[k]
            shown = "<the adapter>" if callable(v) or isinstance(v, Mapping) else repr(v)
            advice.append(
                f"instead of {k}=, pass {whose} as reprsim.Extractor(model, layers, {field}={shown}) (an Extractor "
                "carries its own extraction settings)"
            )
    advice += [f"instead of {k}=, pass {REMOVED[k]}" for k in given if k in REMOVED]
    refuse_keywords(function, given, advice)
    raise AssertionError("unreachable: compare and compare_stores call this with unknown keywords only")


def checked_uncertainty(value: object) -> Uncertainty:
    """``uncertainty=`` as compare and compare_stores accept it: None (values only) or an :class:`Uncertainty`."""
    return _checked_group(value, Uncertainty, "uncertainty", "ci=0.95")
