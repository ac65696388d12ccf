"""Whether a run's batch can fit in memory: a lower bound checked before anything is
recorded, and an allocation failure on the first step said as bad input.

The bound counts only what one optimizer step must hold at once, at its smallest: the
weights with their gradients and AdamW's two moments (16 bytes a parameter), the batch and
the validation batches on the device, the activations a block keeps for the backward
(14 values per token and layer, in bf16 on CUDA, float32 on the CPU) and, without the fused
loss, the logits in float32. A batch above the device's whole memory can never fit: that is
bad input, refused at once. One that is close may still fail to allocate on the first step,
which is reported the same way. torch is imported only when a check runs.
"""

from __future__ import annotations

import os

from racli.errors import BadInput

_ACTIVATIONS_PER_TOKEN_LAYER = 14  # values kept for the backward, per token, layer and C
_GIB = 1 << 30


def step_bytes(mcfg, *, micro: int, batch_size: int, eval_batches: int, cuda: bool) -> int:
    """A lower bound of the bytes one training step at `micro` sequences holds (`batch_size`
    and `eval_batches`: the validation batches, held on the device)."""
    t, c, v, layers = mcfg.block_size, mcfg.n_embd, mcfg.vocab_size, mcfg.n_layer
    params = 12 * layers * c * c + v * c + t * c
    tokens = micro * t
    act_bytes = 2 if cuda else 4
    total = 16 * params
    total += 2 * 8 * tokens  # inputs and targets (int64)
    total += 2 * 8 * eval_batches * batch_size * t  # the validation batches
    total += _ACTIVATIONS_PER_TOKEN_LAYER * act_bytes * tokens * c * layers
    if not getattr(mcfg, "fused_loss", False):
        total += 4 * tokens * v  # the logits, in float32 for the loss
    return total


def device_bytes(device: str) -> int | None:
    """The whole memory of `device` (a CUDA device's, else the machine's RAM); None when
    it cannot be told."""
    if device.startswith("cuda"):
        import torch

        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(spec, dataset, world_size: int = 1, *, on_this_host: bool = True) -> None:
    """BadInput when the spec's batch cannot fit on its device whatever else happens, or
    its forced SDPA backend has no kernel there (checked on the CPU). `on_this_host=False`:
    the device is another machine's (a cluster's node), whose memory is not known here."""
    from racli.names import FA4, check_sdpa_backend_on_cpu
    from racli.training.spec import model_config

    mcfg = model_config(spec, dataset)
    if spec.device_type == "cpu":
        check_sdpa_backend_on_cpu(spec.train.sdpa_backend, mcfg.head_dim)
    if not on_this_host:
        return
    if spec.train.sdpa_backend == FA4:
        from racli_models import flash4

        why = flash4.problem(spec.device)
        if why:
            raise BadInput(f"train.sdpa_backend=fa4 {why}")
    micro = spec.batch_layout(mcfg.block_size, world_size).micro
    t = spec.train
    evals = max(t.eval_batches, t.final_eval_batches)
    cuda = spec.device_type == "cuda"
    need = step_bytes(mcfg, micro=micro, batch_size=t.batch_size, eval_batches=evals, cuda=cuda)
    have = device_bytes(spec.device)
    if have is not None and need > have:
        what = f"train.batch_size {t.batch_size}"
        if micro != t.batch_size:
            what += f" (micro-batches of {micro})"
        raise BadInput(
            f"{what} cannot fit: "
            f"one step needs at least {need / _GIB:,.1f} GiB, {spec.device} has "
            f"{have / _GIB:,.1f} GiB in all; lower --batch-size (or train.eval_batches)"
        )


def allocation_failed(exc: BaseException) -> bool:
    """Whether `exc` is torch failing to allocate memory (CUDA or CPU)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc) if isinstance(exc, RuntimeError) else ""
    return any(s in text for s in ("out of memory", "can't allocate memory", "not enough memory"))


def too_big(exc: BaseException, spec) -> BadInput:
    """The bad input an allocation failure at the start of a run stands for."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BadInput(
        f"train.batch_size {spec.train.batch_size} does not fit in memory on {spec.device} "
        f"({first[:160]}); lower --batch-size"
    )
