"""Causal attention with cuDNN's forward and FlashAttention-4's backward (`sdpa_backend: fa4`).

Measured on an H200 at GPT-2's attention shape (B=32, H=12, T=1024, D=64, bf16;
docs/performance.md, eleventh round): cuDNN's forward was the fastest there (FA4's took
1.27x its time) and FA4's backward the fastest (0.77x cuDNN's), so this pairs them. cuDNN's
forward returns the rows' log-sum-exp, which is what FA4's backward reads; the pair computes
the same attention as SDPA up to the kernels' rounding. Where q, k and v come from one
[q | k | v] projection (baseline, ra_v5, ra_v5_untied), `attention_qkv` can take that projection
whole, and its backward writes dq, dk and dv into one gradient of the projection's layout:
SDPA's (and `attention`'s) three gradients must be concatenated into it, a copy of the
layer's 3 x B x T x C values (0.83 ms of the H200 step's 60 ms). It serves while `QKV` is
on, the default since it passed the GPU tests and gained 1.1-1.3% of an H100 step
(docs/performance.md, twelfth round).

Optional: FA4 is the `flash-attn-4` package (`pip install -e ".[fa4]"`, CuTe DSL kernels
compiled at their first call) on a GPU of compute capability 9.x. `problem()` names what is
missing. Both halves are custom operators, so torch.compile traces them as one call each
and a CUDA graph captures their kernels. The backward runs in FA4's default mode, which
promises no fixed summation order; its deterministic mode cost 12% more (H100).
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from .switch import setting

#: the causal attention of every `CausalSelfAttention` uses this pair while True
#: (`racli.names.sdpa_backend_context("fa4")`)
ACTIVE = False
#: True: attention over one [q | k | v] projection goes through `attention_qkv`, whose
#: backward writes dq, dk and dv into one (B, T, 3C) gradient; False: through `attention`,
#: whose three gradients autograd then concatenates (a copy of 3 B T C values a layer).
#: On since timed and tested on an H100 (`qkv_operator()`; docs/performance.md, twelfth round)
QKV = True
_DTYPES = (torch.float16, torch.bfloat16)
#: the CuTe DSL's UserWarning as it compiles FA4's backward, that FA4's own `aux_data` (None
#: here) cannot become a JIT argument: a long line in a run's log, about nothing ra passes
DSL_NOISE = r"Argument aux_data \(position \d+\) cannot be converted to a JitArgument"


def _quiet_dsl() -> None:
    """Hide `DSL_NOISE`, and no other warning, unless the filters hold one for it already
    (read from them, not remembered: a `catch_warnings` block drops what was added inside)."""
    if not any(f[1] is not None and f[1].pattern == DSL_NOISE for f in warnings.filters):
        warnings.filterwarnings("ignore", message=DSL_NOISE, category=UserWarning)


def active() -> contextlib.AbstractContextManager[None]:
    """Inside the block, causal attention runs through `attention()`."""
    return setting(__name__, "ACTIVE", True)


def qkv_operator(on: bool = True) -> contextlib.AbstractContextManager[None]:
    """Inside the block `QKV` is `on`: whether `attention_qkv` serves [q | k | v] projections."""
    return setting(__name__, "QKV", on)


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


def _cudnn_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """cuDNN's causal attention over (B, H, T, D), with the rows' log-sum-exp: (y, lse)."""
    return torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, None, True, 0.0, True, False
    )[:2]


def _cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair's forward over (B, H, T, D): (y laid out (B, T, H, D), lse (B, H, T) float32)."""
    _check(q)
    y, lse = _cudnn_kernel(q, k, v)
    return _token_major(y), lse.reshape(q.shape[:3]).contiguous()


@torch.library.custom_op("racli::fa4_attention", mutates_args=())
def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cuDNN's causal forward over (B, H, T, D): (y, the rows' log-sum-exp (B, H, T) float32)."""
    return _cudnn(q, k, v)


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

    _quiet_dsl()
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


# ---- the same pair over one [q | k | v] projection: one gradient buffer, no concatenation


def qkv_heads(qkv: torch.Tensor, n_head: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a contiguous [q | k | v] (B, T, 3C), each (B, T, H, D): views, strided."""
    B, T, C3 = qkv.shape
    return qkv.view(B, T, 3, n_head, C3 // (3 * n_head)).unbind(2)


@torch.library.custom_op("racli::fa4_attention_qkv", mutates_args=())
def _forward_qkv(qkv: torch.Tensor, n_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cuDNN's causal forward over [q | k | v] (B, T, 3C): (y (B, T, C), the rows'
    log-sum-exp (B, H, T) float32)."""
    B, T, C3 = qkv.shape
    y, lse = _cudnn(*(_bhtd(t) for t in qkv_heads(qkv.contiguous(), n_head)))
    return _bhtd(y).reshape(B, T, C3 // 3), lse


@_forward_qkv.register_fake
def _(qkv, n_head):
    B, T, C3 = qkv.shape
    return qkv.new_empty(B, T, C3 // 3), qkv.new_empty(B, n_head, T, dtype=torch.float32)


@torch.library.custom_op("racli::fa4_attention_qkv_backward", mutates_args=())
def _backward_qkv_op(
    qkv: torch.Tensor, y: torch.Tensor, dy: torch.Tensor, lse: torch.Tensor, n_head: int
) -> torch.Tensor:
    """FA4's causal backward, dq, dk and dv written into the views of one (B, T, 3C)
    gradient, the layout of [q | k | v] (what the projection's backward reads as it is)."""
    from flash_attn.cute.interface import _flash_attn_bwd

    _quiet_dsl()
    q, k, v = qkv_heads(qkv.contiguous(), n_head)
    grad = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    dq, dk, dv = qkv_heads(grad, n_head)
    shape = (*y.shape[:2], n_head, y.shape[2] // n_head)  # (B, T, H, D)
    y, dy = y.view(shape), dy.contiguous().view(shape)
    _flash_attn_bwd(q, k, v, y, dy, lse, causal=True, dq=dq, dk=dk, dv=dv)
    return grad


@_backward_qkv_op.register_fake
def _(qkv, y, dy, lse, n_head):
    return qkv.new_empty(qkv.shape)


def _save_qkv(ctx, inputs, output) -> None:
    ctx.n_head = inputs[1]
    ctx.save_for_backward(inputs[0], *output)


def _backward_qkv(ctx, dy, dlse):
    qkv, y, lse = ctx.saved_tensors
    return _backward_qkv_op(qkv, y, dy, lse, ctx.n_head), None


_forward_qkv.register_autograd(_backward_qkv, setup_context=_save_qkv)


def attention_qkv(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """`attention` of the heads of [q | k | v] (B, T, 3C), float16 or bfloat16: y (B, T, C),
    the heads side by side (what the output projection reads). Its backward hands the
    projection one (B, T, 3C) gradient, with no concatenation of dq, dk and dv."""
    return _forward_qkv(qkv, n_head)[0]
