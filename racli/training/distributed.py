"""Data parallelism under `torchrun`: detection, process-group set-up and teardown.

`torchrun --nproc_per_node N -m racli train ...` starts N processes with
WORLD_SIZE, RANK and LOCAL_RANK in their environment. Each rank trains a
replica wrapped in DistributedDataParallel on its own shard of every batch
(the BatchSampler hands rank r the r-th slice of a shared draw); only rank 0
writes to the database and the checkpoint. NCCL on CUDA, gloo on CPU.
With gradient accumulation (`train.batch_tokens`), the micro-batches before the
last of a step run under `no_sync()` (`grad_sync`): one all-reduce per step.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistInfo:
    """The torchrun environment of this process (world size 1 outside torchrun)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return DistInfo()
    if world <= 1:
        return DistInfo()
    return DistInfo(rank=rank, local_rank=local, world_size=world)


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def setup(info: DistInfo, device: str) -> torch.device:
    """Join the process group (if distributed) and return this rank's device.

    `device` is "cpu", "cuda" or "cuda:N"; under torchrun a CUDA rank uses
    cuda:LOCAL_RANK whatever N says.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if info.enabled:
            dev = torch.device("cuda", info.local_rank)
        elif dev.index is None:
            dev = torch.device("cuda", 0)
        torch.cuda.set_device(dev)
    if info.enabled and not dist.is_initialized():
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(
            backend=backend_for(dev.type), rank=info.rank, world_size=info.world_size, **kwargs
        )
    return dev


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `t` over ranks in place (no-op on one process)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def grad_sync(model: torch.nn.Module, last: bool):
    """The context of one micro-batch's backward: gradients are all-reduced only on the last
    micro-batch of an optimizer step (DDP's `no_sync()` before it); a plain model needs none."""
    from torch.nn.parallel import DistributedDataParallel

    if last or not isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def wrap_ddp(model: torch.nn.Module, device: torch.device, info: DistInfo) -> torch.nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # buffers here are diagnostics (e.g. sdpa_gate's last-batch gate mean): not synced at
    # forward, so a forward pass (evaluation included) never waits on the other ranks
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in params
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(model, device_ids=ids, **no_sync)
