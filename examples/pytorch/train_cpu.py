#!/usr/bin/env python3
"""Data-parallel PyTorch training on CPU over MPI, unchanged for any
transport: the launcher picks UCX tcp or FreeFlow through the environment.

What it is: plain PyTorch plus mpi4py, no torch.distributed (Debian's
PyTorch is built without its MPI backend). Each step every rank computes
the gradients of its own batch, copies them into one flat buffer, and
MPI_Allreduce sums that buffer across the ranks (Open MPI, pml ucx); each
rank then applies the average, so the replicas stay identical (checked at
the end). The data is scikit-learn's handwritten digits (1,797 8x8 images
that the package ships): each rank trains on its own shard, 297 images are
held out. Rank 0 prints one RESULT line with images/s, the loss at the
start and the end, the held-out accuracy, the time of one gradient
allreduce on its own (allreduce_ms: 10 back to back after a barrier) and
within the steps (step_allreduce_ms: including the wait for the slower
rank), and the script fails if the loss did not drop.
"""
import argparse
import os
import time

import numpy as np
import torch
from mpi4py import MPI
from sklearn.datasets import load_digits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32, help="per rank")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--width", type=int, default=2048,
                    help="hidden layer width (2048: 4.3M weights, a 17 MB allreduce per step)")
    ap.add_argument("--label", default=os.environ.get("FF_EXAMPLE_LABEL", "run"))
    a = ap.parse_args()

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    torch.set_num_threads(1)
    torch.manual_seed(42)

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, train = order[:297], order[297:]
    shard = train[rank::size]  # this rank's part of the training set

    model = torch.nn.Sequential(
        torch.nn.Linear(64, a.width), torch.nn.ReLU(),
        torch.nn.Linear(a.width, a.width), torch.nn.ReLU(),
        torch.nn.Linear(a.width, 10))
    params = list(model.parameters())
    # One flat buffer for the whole gradient, allreduced in one call.
    flat = torch.zeros(sum(p.numel() for p in params))
    buf = flat.numpy()  # the same memory, for mpi4py
    # Rank 0's initial weights on every rank.
    with torch.no_grad():
        torch.cat([p.view(-1) for p in params], out=flat)
        comm.Bcast(buf, root=0)
        for p, f in zip(params, flat.split([p.numel() for p in params])):
            p.copy_(f.view_as(p))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    lossf = torch.nn.CrossEntropyLoss()

    losses, ar_secs = [], 0.0
    gen = torch.Generator().manual_seed(1 + rank)
    comm.Barrier()
    for step in range(a.steps):
        if step == a.warmup:
            comm.Barrier()
            t0 = time.perf_counter()
        idx = shard[torch.randint(len(shard), (a.batch,), generator=gen)]
        opt.zero_grad()
        loss = lossf(model(x[idx]), y[idx])
        loss.backward()
        torch.cat([p.grad.view(-1) for p in params], out=flat)
        t = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        if step >= a.warmup:
            ar_secs += time.perf_counter() - t
        flat /= size
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p))
        opt.step()
        losses.append(loss.item())
    comm.Barrier()
    secs = time.perf_counter() - t0

    timed = a.steps - a.warmup
    images = timed * a.batch * size
    # The loss averaged over the ranks, over the first and the last 10 steps.
    first = comm.allreduce(float(np.mean(losses[:10]))) / size
    last = comm.allreduce(float(np.mean(losses[-10:]))) / size
    step_ar_ms = comm.allreduce(ar_secs / timed * 1e3, op=MPI.MAX)
    # The communication alone: 10 allreduces of the gradient, back to back.
    comm.Barrier()
    t = time.perf_counter()
    for _ in range(10):
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    ar_ms = comm.allreduce((time.perf_counter() - t) / 10 * 1e3, op=MPI.MAX)
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
        torch.cat([p.view(-1) for p in params], out=flat)
    # Every replica must hold the same weights.
    ref = buf.copy()
    comm.Bcast(ref, root=0)
    same = comm.allreduce(int(np.array_equal(ref, buf)), op=MPI.MIN)
    if rank == 0:
        print(f"RESULT label={a.label} ranks={size} images_per_sec={images / secs:.1f} "
              f"loss_first={first:.4f} loss_last={last:.4f} test_accuracy={acc:.3f} "
              f"allreduce_mb={flat.numel() * 4 / 1e6:.1f} allreduce_ms={ar_ms:.2f} "
              f"step_ms={secs / timed * 1e3:.2f} step_allreduce_ms={step_ar_ms:.2f}", flush=True)
    if not same:
        raise SystemExit("the replicas' weights differ")
    if not last < 0.5 * first:
        raise SystemExit(f"loss did not go down: {first:.4f} -> {last:.4f}")


if __name__ == "__main__":
    main()
