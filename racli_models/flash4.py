"""Causal attention with cuDNN's forward and FlashAttention-4's backward (`sdpa_backend: fa4`).

Measured on an H200 at GPT-2's attention shape (B=32, H=12, T=1024, D=64, bf16;
docs/performance.md, eleventh round): cuDNN's forward was the fastest there (FA4's took
1.27x its time) and FA4's backward the fastest (0.77x cuDNN's), so this pairs them. cuDNN's
forward returns the rows' log-sum-exp, which is what FA4's backward reads; the pair computes
the same attention as SDPA up to the kernels' rounding.

Optional: FA4 is the `flash-attn-4` package (`pip install -e ".[fa4]"`, CuTe DSL kernels
compiled at their first call) on a GPU of compute capability 9.x. `problem()` names what is
missing. Both halves are custom operators, so torch.compile traces them as one call each
and a CUDA graph captures their kernels. The backward runs in FA4's default mode, which
promises no fixed summation order; its deterministic mode cost 12% more (H100).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: the causal attention of every `CausalSelfAttention` uses this pair while True
#: (`racli.names.sdpa_backend_context("fa4")`)
ACTIVE = False
_DTYPES = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def active() -> Iterator[None]:
    """Inside the block, causal attention runs through `attention()`."""
    global ACTIVE
    before, ACTIVE = ACTIVE, True
    try:
        yield
    finally:
        ACTIVE = before


def problem(device: torch.device | str | None = None) -> str | None:
    """Why the pair cannot run on `device` (None: the current CUDA device), or None."""
    try:
        import flash_attn.cute.interface  # noqa: F401
    except ImportError as exc:
        return f'needs the flash-attn-4 package (pip install -e ".[fa4]"): {exc}'
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    major, minor = torch.cuda.get_device_capability(device)
    if major != 9:
        return f"needs a GPU of compute capability 9.x (Hopper); this one is {major}.{minor}"
    return None


def _check(q: torch.Tensor) -> None:
    D = q.shape[-1]
    if D % 8 or not 8 <= D <= 256:
        raise ValueError(f"sdpa_backend fa4 needs a head size in 8..256, a multiple of 8; got {D}")
    if not q.is_cuda or q.dtype not in _DTYPES:
        raise ValueError(
            f"sdpa_backend fa4 runs float16/bfloat16 CUDA tensors (autocast), got {q.dtype} on "
            f"{q.device.type}"
        )


def _bhtd(t: torch.Tensor) -> torch.Tensor:
    """A (B, T, H, D) result seen as (B, H, T, D) (the layout SDPA returns)."""
    return t.transpose(1, 2)


def _token_major(t: torch.Tensor) -> torch.Tensor:
    """`t` (B, H, T, D) laid out as (B, T, H, D) in memory, as FA4 and the fakes return it
    (cuDNN does so already for q, k, v cut from one (B, T, 3C) projection: no copy then)."""
    return _bhtd(_bhtd(t).contiguous())


def _empty(x: torch.Tensor) -> torch.Tensor:
    """An empty (B, H, T, D) tensor like `x`, laid out as `_token_major` lays it."""
    return _bhtd(torch.empty(_bhtd(x).shape, dtype=x.dtype, device=x.device))


@torch.library.custom_op("racli::fa4_attention", mutates_args=())
def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cuDNN's causal forward over (B, H, T, D): (y, the rows' log-sum-exp (B, H, T) float32)."""
    _check(q)
    y, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, None, True, 0.0, True, False
    )[:2]
    return _token_major(y), lse.reshape(q.shape[:3]).contiguous()


@_forward.register_fake
def _(q, k, v):
    return _empty(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("racli::fa4_attention_backward", mutates_args=())
def _backward_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    y: torch.Tensor,
    dy: torch.Tensor,
    lse: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FA4's causal backward: (dq, dk, dv) over (B, H, T, D)."""
    from flash_attn.cute.interface import _flash_attn_bwd

    t = _bhtd
    dq, dk, dv = _flash_attn_bwd(t(q), t(k), t(v), t(y), t(_token_major(dy)), lse, causal=True)[:3]
    return tuple(_token_major(t(g)) for g in (dq, dk, dv))


@_backward_op.register_fake
def _(q, k, v, y, dy, lse):
    return _empty(q), _empty(k), _empty(v)


def _save(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, *output)


def _backward(ctx, dy, dlse):
    q, k, v, y, lse = ctx.saved_tensors
    return _backward_op(q, k, v, y, dy, lse)


_forward.register_autograd(_backward, setup_context=_save)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + causal mask) v over (B, H, T, D), float16 or bfloat16."""
    return _forward(q, k, v)[0]
