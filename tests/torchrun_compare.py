"""A user's comparison script, launched by torchrun in tests/test_compare_distributed.py.

    torchrun --standalone --nproc_per_node=N tests/torchrun_compare.py CASE OUT

Except for the DistributedSampler case, nothing here initialises torch.distributed or shards the data: compare()
does both under torchrun (the one-line change a user makes is the launch command). Each rank saves its results
under OUT; the test runs ``run(CASE, distributed=False)`` in one process and compares.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import reprsim
from reprsim.measures import RSA, ShapeMetric, available_measures, get_measure

#: Batch sizes of the stream: uneven, so the ranks' shards differ in size.
SIZES = {"moments": [40, 33, 47, 25, 38, 41, 29], "samples": [30, 41, 26, 37, 33], "two": [50, 44]}
#: every moment measure of the registry, a configured shape metric, RSA on squared-Euclidean RDMs (which streams
#: from moments) and minibatch CKA
MOMENTS: list[Any] = [
    *(n for n in available_measures() if get_measure(n).stream == "moments"),
    ShapeMetric(alpha=0.5),
    RSA(rdm="sqeuclidean", compare="pearson"),
    "cka_minibatch",
]
SAMPLES = ["mutual_knn", "rsa", "distance_correlation", "cka_rbf", "cka"]


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 6)).double()


def wide(seed: int) -> nn.Module:
    """A layer of 9,000 features: more than exact CKA's moments allow, so the default measure is minibatch CKA."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 9000), nn.Tanh(), nn.Linear(9000, 5)).double()


def batches(sizes: list[int], seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 8, generator=g, dtype=torch.float64) for b in sizes]


def run(case: str, *, distributed: bool | None = None) -> dict[str, reprsim.SimilarityResult]:
    a, b = net(0), net(1)
    options: dict[str, Any] = {
        "layers": ["1", "3", "4"],
        "progress": False,
        "runtime": reprsim.Runtime(distributed=distributed),
    }
    rank = int(os.environ.get("RANK", "0"))
    if case in ("moments", "two"):
        return compare(
            a, b, batches(SIZES[case]), measures=MOMENTS, uncertainty=reprsim.Uncertainty(ci=0.9, blocks=5), **options
        )
    if case == "samples":  # with progress bars under torchrun: rank 0 shows the reduction too
        options["progress"] = distributed is not False
        return compare(
            a,
            b,
            batches(SIZES[case]),
            measures=SAMPLES,
            uncertainty=reprsim.Uncertainty(ci=0.9, blocks=4, permutations=30),
            **options,
        )
    if case == "sampler":
        x = torch.cat(batches([48, 48, 48, 48]))  # 192 samples: the sampler's shards are even, nothing repeated
        dataset = TensorDataset(x)
        sampler = None
        if distributed is not False:  # a script that shards with a sampler initialises the group itself
            torch.distributed.init_process_group("gloo")
            sampler = DistributedSampler(dataset, shuffle=False)
        loader = DataLoader(dataset, batch_size=32, sampler=sampler)
        return compare(a, b, loader, measures=["cka", "procrustes", "mutual_knn"], **options)
    if case == "stores":  # two stores written by write_stores(); each rank reads every other chunk
        folder = Path(os.environ["REPRSIM_TEST_STORES"])
        return reprsim.compare_stores(folder / "a", folder / "b", measures=["cka", "procrustes", "cka_minibatch",
                                      "mutual_knn"], chunk_rows=45, uncertainty=reprsim.Uncertainty(ci=0.9, blocks=4),
                                      progress=False, runtime=reprsim.Runtime(distributed=distributed))  # fmt: skip
    if case == "loader":  # a shuffled DataLoader without a seed: rank 0's order is used, each rank loads its share
        dataset = _Counting(torch.cat(batches([48, 48, 48, 48, 30])))
        loader = DataLoader(dataset, batch_size=32, shuffle=distributed is not False)
        out = compare(a, b, loader, measures=["cka", "procrustes", "mutual_knn"], **options)
        if distributed is not False:
            (Path(os.environ["REPRSIM_TEST_STORES"]) / f"rank{rank}.loaded").write_text(str(dataset.loaded))
        return out
    if case == "mismatch":  # rank 1 selects other layers
        options["layers"] = ["1", "3"] if rank == 1 else ["1", "3", "4"]
        return compare(a, b, batches(SIZES["moments"]), measures=["cka"], **options)
    if case == "options":  # rank 1 asks for another measure
        return compare(a, b, batches(SIZES["moments"]), measures=["cka" if rank != 1 else "procrustes"], **options)
    if case == "shuffled":  # each rank draws its own batches: a shuffled loader without a shared seed
        return compare(a, b, batches(SIZES["moments"], seed=rank), measures=["cka"], **options)
    if case == "dictmask":  # dict batches whose first entry (the mask) agrees but whose inputs differ on rank 1
        data = [{"attention_mask": torch.ones(x.shape[0], 4), "x": x} for x in batches(SIZES["two"], seed=rank)]
        return compare(_Masked(a), _Masked(b), data, measures=["cka"], **{**options, "layers": ["net.1"]})
    if case == "default":  # no measure named and a layer too wide for exact CKA: minibatch CKA on every rank,
        # the one without data too (2 batches over 3 ranks), which learns the choice from the others
        wide_a, wide_b = wide(0), wide(1)
        result = reprsim.compare(wide_a, wide_b, batches(SIZES["two"]), layers=["1", "2"], progress=False,
                                 runtime=reprsim.Runtime(distributed=distributed))  # fmt: skip
        return {"default": result}
    if case == "failure":  # rank 1 meets a batch with NaN
        data = batches(SIZES["moments"])
        data[1][3, 2] = float("nan")
        return compare(a, b, data, measures=["cka"], **options)
    raise SystemExit(f"unknown case {case!r}")


class _Masked(nn.Module):
    """A model called with keyword batches, as a Hugging Face model is."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, attention_mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class _Counting(TensorDataset):
    """A dataset that counts the samples it loads."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__(x)
        self.loaded = 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        self.loaded += 1
        return super().__getitem__(index)


def write_stores(folder: Path) -> None:
    """The stores of case "stores": a model's pooled layers and another's, 310 samples, string IDs."""
    a, b = net(0), net(1)
    data = [(x, [f"s{i}-{j}" for j in range(x.shape[0])]) for i, x in enumerate(batches(SIZES["samples"] * 2))]
    reprsim.compare(a, b, data, layers=["1", "3", "4"], measure="cka", progress=False,
                    runtime=reprsim.Runtime(distributed=False), stores=(folder / "a", folder / "b"),
                    sample_ids=lambda batch: batch[1])  # fmt: skip


def compare(a: nn.Module, b: nn.Module, data: Any, *, measures: list[Any], **options: Any) -> Any:
    return reprsim.compare(a, b, data, measures=measures, **options)


def main() -> None:
    case, out = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    try:
        results = run(case)
    except reprsim.ReprsimError as exc:
        (out / f"rank{rank}.err").write_text(f"{type(exc).__name__}: {exc}")
        raise SystemExit(3) from None
    for key, result in results.items():
        result.save(out / f"rank{rank}-{key if isinstance(key, str) else key.id}.npz")


if __name__ == "__main__":
    main()
