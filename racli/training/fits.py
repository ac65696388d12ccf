"""Whether one training step can fit the device at all, checked before anything is recorded.

A lower bound of what one step holds at once: the logits of a micro-batch (unless the fused
loss never builds them), the residual stream every layer keeps for the backward pass, and
the evaluation batches kept on the device. When that bound already exceeds the device's
memory (the GPU's, or the machine's RAM for the CPU), the run is refused with one line
instead of failing at its first step with an allocation error.
"""

from __future__ import annotations

import os

from racli.errors import BadInput


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def device_memory(device: str) -> int | None:
    """Bytes of memory of `device` (a CUDA device's, or the machine's RAM), None if unknown."""
    if device.startswith("cuda"):
        import torch

        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def step_lower_bound(
    *,
    micro: int,
    eval_seqs: int,
    block: int,
    vocab: int,
    n_embd: int,
    n_layer: int,
    fused_loss: bool,
    elem: int,
) -> tuple[int, str]:
    """(bytes, what dominates) that one training step needs at the least."""
    tokens = micro * block
    parts = {
        "the logits of one micro-batch": 0 if fused_loss else tokens * vocab * elem,
        "the activations kept for the backward pass": tokens * n_embd * elem * n_layer,
        "the evaluation batches": eval_seqs * block * 16,  # x and y, int64
    }
    return sum(parts.values()), max(parts, key=parts.get)


def check_fits(spec, mcfg, micro: int) -> None:
    """BadInput when the step of `spec` (model `mcfg`, micro-batches of `micro` sequences)
    cannot fit its device whatever else happens."""
    total = device_memory(spec.device)
    if total is None:
        return
    t = spec.train
    need, what = step_lower_bound(
        micro=micro,
        eval_seqs=t.batch_size * max(t.eval_batches, t.final_eval_batches),
        block=mcfg.block_size,
        vocab=mcfg.vocab_size,
        n_embd=mcfg.n_embd,
        n_layer=mcfg.n_layer,
        fused_loss=bool(getattr(mcfg, "fused_loss", False)),
        elem=2 if spec.device.startswith("cuda") else 4,
    )
    if need > total:
        where = "the GPU" if spec.device.startswith("cuda") else "this machine"
        raise BadInput(
            f"train.batch_size {t.batch_size} cannot fit: one step needs at least "
            f"{_gib(need)} (mostly {what}), {where} has {_gib(total)}; lower --batch-size "
            f"(with train.batch_tokens, larger batches accumulate smaller micro-batches)"
        )
