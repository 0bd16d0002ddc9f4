"""Shard a dataset over processes and all-reduce the accumulators (gloo on CPU; NCCL works the same on GPUs)."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reprsim.streaming import LinearCKA, MinibatchCKAMatrix

WORLD, N, BATCH = 2, 2048, 128


def data(batch_index):
    g = torch.Generator().manual_seed(batch_index)
    x = torch.randn(BATCH, 32, generator=g, dtype=torch.float64)
    return x, x[:, :8] ** 2 + 0.5 * torch.randn(BATCH, 8, generator=g, dtype=torch.float64)


def worker(rank, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    exact, layers = LinearCKA(unbiased=True), MinibatchCKAMatrix()
    for b in range(rank, N // BATCH, WORLD):  # each rank sees its own shard
        x, y = data(b)
        exact.update(x, y)
        layers.update([x], [y])
    exact.all_reduce()  # every rank now holds the statistics of all shards
    layers.all_reduce()
    if rank == 0:
        minibatch = float(layers.compute())
        print(f"{exact.num_samples} samples, unbiased CKA {exact.compute():.6f}, minibatch CKA {minibatch:.6f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port,), nprocs=WORLD, join=True)

    single = LinearCKA(unbiased=True)
    for b in range(N // BATCH):
        single.update(*data(b))
    print(f"single process: unbiased CKA {single.compute():.6f}")
