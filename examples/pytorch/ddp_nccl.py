#!/usr/bin/env python3
"""PyTorch DDP with the NCCL backend, for GPU machines: the training script
is ordinary; FreeFlow comes in through the environment only.

    python -m freeflow run --no-ucx -- torchrun --nproc_per_node=2 ddp_nccl.py

(`freeflow run` sets NCCL_NET_PLUGIN to libnccl-net-ff.so and
NCCL_NET=FreeFlow, so NCCL fails loudly instead of silently using sockets.)
Two ranks on one GPU also work for testing: give them distinct NCCL_HOSTID
values and set NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1, as bench/nccl_gpu.sh does.
"""
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def main():
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 10)
    ).to(dev)
    ddp = DDP(model, device_ids=[dev.index])
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    protos = torch.randn(10, 1024, generator=torch.Generator().manual_seed(1)).to(dev)
    losses, t0 = [], None
    steps, batch = 200, 256
    for step in range(steps):
        y = torch.randint(0, 10, (batch,), device=dev)
        x = protos[y] + torch.randn(batch, 1024, device=dev)
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 20:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
    torch.cuda.synchronize()
    ips = (steps - 21) * batch * world / (time.perf_counter() - t0)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    if rank == 0:
        print(f"RESULT ranks={world} samples_per_sec={ips:.0f} loss_first={first:.4f} loss_last={last:.4f}")
    dist.destroy_process_group()
    if not last < 0.9 * first:
        raise SystemExit(f"loss did not go down: {first:.4f} -> {last:.4f}")


if __name__ == "__main__":
    main()
