"""Data parallelism under `torchrun`: detection, process-group set-up and teardown.

`torchrun --nproc_per_node N -m racli train ...` starts N processes with
WORLD_SIZE, RANK and LOCAL_RANK in their environment. Each rank trains a
replica wrapped in DistributedDataParallel on its own shard of every batch
(the BatchSampler hands rank r the r-th slice of a shared draw); only rank 0
writes to the database and the checkpoint. NCCL on CUDA, gloo on CPU.
With gradient accumulation (`train.batch_tokens`), the micro-batches before the
last of a step run under `no_sync()` (`grad_sync`): one all-reduce per step.

`train.grad_reduce: step` trains without DistributedDataParallel: every rank starts
from rank 0's weights (`broadcast_parameters`) and runs the one-process step of
racli_models.step, whose `reduce` (`GradMean`) all-reduces the gradients once, after
the step's last micro-batch; on CUDA that step, all-reduce included, is one CUDA graph.
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


def finish() -> None:
    """Every rank waits here for the others at the end of a run that ended well, so that no
    rank leaves the process group while another still works in it (rank 0 writing its
    checkpoint): a gloo rank that exits then can abort in its transport's teardown."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Leave the process group. What still refers to it (a DDP model, pending work) is
    collected first, so that gloo's threads end here rather than in the interpreter's
    shutdown, where a thread still running aborts the process."""
    if dist.is_available() and dist.is_initialized():
        import gc

        gc.collect()
        dist.destroy_process_group()
        gc.collect()


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


def broadcast_parameters(model: torch.nn.Module, info: DistInfo) -> None:
    """Every rank takes rank 0's parameters and buffers (what DDP does when it wraps a
    model), so that ranks that reduce their gradients themselves start alike."""
    if info.enabled:
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t, src=0)


class GradMean:
    """The mean over the ranks of every gradient, in one all-reduce per dtype.

    The gradients live in one flat buffer per dtype: `start()` zeroes it and makes each
    parameter's `.grad` its view there (the backward then accumulates into it in place, as
    DDP's gradient_as_bucket_view does); `__call__` sums the buffers over the ranks and
    divides by their number. Nothing waits for the host, so a CUDA graph can hold it.
    `agree(ok)`: whether every rank says ok (a host read; outside a graph only)."""

    def __init__(self, params: list[torch.nn.Parameter], info: DistInfo):
        self.info = info
        self.params = list(params)
        self.flat: dict[torch.dtype, torch.Tensor] = {}
        self.views: list[torch.Tensor] = []
        sizes: dict[torch.dtype, int] = {}
        for p in self.params:
            sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
        for dtype, n in sizes.items():
            self.flat[dtype] = torch.zeros(n, dtype=dtype, device=self.params[0].device)
        at = dict.fromkeys(sizes, 0)
        for p in self.params:
            flat, i = self.flat[p.dtype], at[p.dtype]
            self.views.append(flat[i : i + p.numel()].view_as(p))
            at[p.dtype] = i + p.numel()

    def start(self) -> None:
        for flat in self.flat.values():
            flat.zero_()
        for p, view in zip(self.params, self.views):
            if p.grad is not view:
                p.grad = view

    def __call__(self) -> None:
        if not self.info.enabled:
            return
        for flat in self.flat.values():
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(self.info.world_size)

    def agree(self, ok: bool) -> bool:
        if not self.info.enabled:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0], device=self.params[0].device)
        dist.all_reduce(flag, op=dist.ReduceOp.SUM)
        return float(flag.item()) == 0.0


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
