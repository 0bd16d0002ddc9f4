"""all_reduce over a real torch.distributed group: 2 processes with gloo on localhost."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reprsim.errors import IncompatibleStateError
from reprsim.probes import RidgeProbe
from reprsim.streaming import CrossMoments, LinearCKA, MinibatchCKA, MinibatchCKAMatrix

N, BATCH = 256, 32


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 6)) + 10.0
    y = np.tanh(x - 10.0) @ rng.normal(size=(6, 4)) + 0.2 * rng.normal(size=(N, 4))
    return x, y


def accumulators() -> dict[str, Any]:
    return {
        "linear": LinearCKA(),
        "linear_unbiased": LinearCKA(unbiased=True),
        "minibatch_rbf": MinibatchCKA(kernel="rbf"),
        "matrix": MinibatchCKAMatrix(),
        # every moment measure from one state, several layers per side, folds kept (pooled here)
        "moments": CrossMoments(fourth=True, folds=2),
    }


MOMENT_MEASURES = ("cka", "cka_unbiased", "procrustes", "nbs", "cca", "svcca", "pwcca", "predictivity")


def feed(accs: dict[str, Any], x: np.ndarray, y: np.ndarray, batches: list[int], device: str = "cpu") -> None:
    for b in batches:
        xb = torch.from_numpy(x[b * BATCH : (b + 1) * BATCH]).to(device)
        yb = torch.from_numpy(y[b * BATCH : (b + 1) * BATCH]).to(device)
        for name, acc in accs.items():
            if name == "matrix":
                acc.update([xb, yb], [yb])
            elif name == "moments":
                acc.update([xb, xb.tanh()], [yb, yb[:, :2]])
            else:
                acc.update(xb, yb)


def results(accs: dict[str, Any]) -> dict[str, Any]:
    out = {k: (a.compute().tolist() if k == "matrix" else a.compute()) for k, a in accs.items() if k != "moments"}
    out.update({f"moments:{m}": accs["moments"].compute(m).tolist() for m in MOMENT_MEASURES})
    return out


def worker(rank: int, world: int, port: int, out: str, empty_rank: int | None, device: str = "cpu") -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, y = make_data()
        accs = accumulators()
        n_batches = N // BATCH
        mine = [] if rank == empty_rank else [b for b in range(n_batches) if b % world == rank]
        if empty_rank is not None and rank != empty_rank:
            mine = list(range(n_batches))
        feed(accs, x, y, mine, device)
        for acc in accs.values():
            acc.all_reduce()
        res = results(accs)
        res["samples"] = accs["linear"].num_samples
        res["records"] = accs["minibatch_rbf"].hsic_records.shape[0]
        torch.save(res, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("empty_rank", [None, 1], ids=["split-evenly", "one-rank-empty"])
def test_all_reduce_equals_single_process(tmp_path: Path, empty_rank: int | None, device: str) -> None:
    # on CUDA the states live on the GPU and gloo runs its collectives on CUDA tensors (NCCL needs one GPU per
    # rank, which a single-GPU machine cannot give two processes)
    world = 2
    mp.spawn(worker, args=(world, free_port(), str(tmp_path), empty_rank, device), nprocs=world, join=True)
    x, y = make_data()
    single = accumulators()
    feed(single, x, y, list(range(N // BATCH)))
    expected = results(single)
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["samples"] == N
        assert got["records"] == N // BATCH
        for key in ("linear", "linear_unbiased", "minibatch_rbf"):
            assert abs(got[key] - expected[key]) <= 1e-10, key
        np.testing.assert_allclose(got["matrix"], expected["matrix"], rtol=0, atol=1e-10)
        for m in MOMENT_MEASURES:
            np.testing.assert_allclose(got[f"moments:{m}"], expected[f"moments:{m}"], rtol=0, atol=1e-10, err_msg=m)


MISMATCHES: dict[str, Any] = {
    "unbiased": (lambda: LinearCKA(), lambda: LinearCKA(unbiased=True)),
    "kernel": (lambda: MinibatchCKA(), lambda: MinibatchCKA(kernel="rbf")),
    "dtype": (lambda: MinibatchCKA(), lambda: MinibatchCKA(dtype=torch.float32)),
    "kind": (lambda: MinibatchCKA(), lambda: LinearCKA()),
    "folds": (lambda: CrossMoments(folds=2), lambda: CrossMoments(folds=3)),
}


def mismatch_worker(rank: int, world: int, port: int, out: str, case: str) -> None:
    import datetime

    # a short timeout: a rank left waiting in a collective fails the test instead of hanging it
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        x, y = make_data()
        acc = MISMATCHES[case][rank]()
        acc.update(torch.from_numpy(x[:32]), torch.from_numpy(y[:32]))
        before = acc.state_dict()
        try:
            acc.all_reduce()
            message = "no error"
        except IncompatibleStateError as exc:
            message = str(exc)
        unchanged = all(torch.equal(before["state"][k], v) for k, v in acc.state_dict()["state"].items())
        torch.save({"message": message, "unchanged": unchanged}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_all_reduce_of_differently_configured_accumulators_raises_on_every_rank(tmp_path: Path, case: str) -> None:
    mp.spawn(mismatch_worker, args=(2, free_port(), str(tmp_path), case), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert "differently configured accumulators" in got["message"]
        assert got["unchanged"]


def probe_worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, y = make_data()
        labels = (y[:, 0] > 0).astype(np.int64)
        probe = RidgeProbe(2)
        half = slice(0, N // 2) if rank == 0 else slice(N // 2, N)
        probe.update(x[half], labels[half])
        probe.fit()  # weights of this rank's half only
        probe.all_reduce()
        torch.save({"weights": probe.fit()[0]}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ridge_probe_refits_after_all_reduce(tmp_path: Path) -> None:
    mp.spawn(probe_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    x, y = make_data()
    single = RidgeProbe(2)
    single.update(x, (y[:, 0] > 0).astype(np.int64))
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)["weights"]
        torch.testing.assert_close(got, single.fit()[0], rtol=1e-9, atol=1e-12)
