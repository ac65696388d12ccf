"""The LM head's cross-entropy: a one-pass CUDA kernel, and a chunked form for any device.

Design notes: docs/models.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

try:  # Triton ships with CUDA builds of torch; CPU installs use F.cross_entropy
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

HAS_TRITON = triton is not None
KERNEL = True  # the model's CUDA loss through the kernel (False: the logits and F.cross_entropy)
CE_BLOCK = 8192  # logits per program and loop step of the kernel (H100 sweep: performance.md)
CE_WARPS = 16
# How the kernel's second pass over a row can find it in L2 rather than HBM (`launch_ce`):
CE_REVERSE = True  # the second pass reads a row's blocks last first
CE_EVICT = True  # the first pass's loads stay in L2 (evict_last), the second's leave first
CE_PROGRAMS_PER_SM = 0  # 0: a program a row; k: k programs an SM, each looping over rows
IGNORE_INDEX = -1  # the model's targets mark positions without a target by -1
CHUNK_ELEMENTS = 2**26  # logits per chunk (256 MiB in float32): 1334 rows at V = 50304


#: the kernel's settings a caller may change for a while (`settings`), as CE_<NAME>
SETTINGS = {"block": int, "warps": int, "reverse": bool, "evict": bool, "programs_per_sm": int}


def check_settings(values: dict) -> None:
    """ValueError naming the first of `values` that is not a setting of SETTINGS's type."""
    for name, value in values.items():
        if name not in SETTINGS or type(value) is not SETTINGS[name]:
            known = ", ".join(f"{n} ({t.__name__})" for n, t in SETTINGS.items())
            raise ValueError(f"loss kernel setting {name}={value!r}: one of {known}")


@contextlib.contextmanager
def settings(**values) -> Iterator[None]:
    """Inside the block the kernel runs with `values` (names of SETTINGS) instead of the
    module's CE_* values; they are read where the kernel is launched or compiled."""
    check_settings(values)
    names = {name: f"CE_{name.upper()}" for name in values}
    before = {name: globals()[g] for name, g in names.items()}
    globals().update({names[n]: v for n, v in values.items()})
    try:
        yield
    finally:
        globals().update({names[n]: v for n, v in before.items()})


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk so that one chunk's float32 logits hold about CHUNK_ELEMENTS values."""
    return max(1, CHUNK_ELEMENTS // vocab_size)


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_rows: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean cross-entropy of the logits h @ weight.T (N, V) against targets (N,).

    h (N, C), weight (V, C), targets (N,) integer class ids; rows whose target is
    `ignore_index` count neither in the sum nor in the mean (all rows ignored: NaN,
    as F.cross_entropy). `chunk_rows` (default: `default_chunk_rows(V)`) rows of
    logits exist at a time.
    """
    if h.dim() != 2 or weight.dim() != 2 or targets.shape != h.shape[:1]:
        raise ValueError(
            f"expected h (N, C), weight (V, C), targets (N,); got {tuple(h.shape)}, "
            f"{tuple(weight.shape)}, {tuple(targets.shape)}"
        )
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(weight.shape[0])
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows}")
    device = h.device.type
    if torch.is_autocast_enabled(device) and h.dtype != torch.float64:
        dtype = torch.get_autocast_dtype(device)  # what nn.Linear computes in under autocast
        h, weight = h.to(dtype), weight.to(dtype)
    with_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(h, weight, targets, chunk_rows, ignore_index, with_grad)


class _LinearCrossEntropy(torch.autograd.Function):
    """The loss and its gradients in one chunked pass (see the module docstring)."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_rows, ignore_index, with_grad):
        acc = torch.promote_types(h.dtype, torch.float32)  # float32, float64 for float64 inputs
        valid = targets != ignore_index
        n = valid.sum().to(acc)
        loss = torch.zeros((), dtype=acc, device=h.device)
        grad_h = torch.zeros(h.shape, dtype=acc, device=h.device) if with_grad else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=h.device) if with_grad else None
        for start in range(0, h.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            h_c, ok = h[rows], valid[rows]
            t = torch.where(ok, targets[rows], 0)[:, None]  # ignored rows: any class, masked below
            logits = (h_c @ weight.T).to(acc)
            lse = torch.logsumexp(logits, dim=1, keepdim=True)
            loss += torch.where(ok, (lse - logits.gather(1, t)).squeeze(1), 0).sum()
            if not with_grad:
                continue
            g = logits.sub_(lse).exp_()  # softmax, in the logits' memory
            g.scatter_add_(1, t, torch.full_like(t, -1, dtype=acc))  # - onehot(target)
            g *= (ok / n)[:, None]  # mean over the rows not ignored; ignored rows get 0
            g = g.to(h.dtype)  # the matmuls run in the inputs' dtype, as the LM head's do
            grad_h[rows] = g @ weight
            grad_w += g.T @ h_c
        ctx.save_for_backward(grad_h, grad_w)
        ctx.h_dtype, ctx.w_dtype = h.dtype, weight.dtype
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        dh = (grad_h * grad_loss).to(ctx.h_dtype) if ctx.needs_input_grad[0] else None
        dw = (grad_w * grad_loss).to(ctx.w_dtype) if ctx.needs_input_grad[1] else None
        return dh, dw, None, None, None, None


# ---------------------------------------------------------------- the CUDA kernel


def use_kernel(h: torch.Tensor) -> bool:
    """Whether `lm_head_loss` (the Triton kernel) serves a final hidden state like `h`."""
    return KERNEL and HAS_TRITON and h.is_cuda and h.dtype != torch.float64


if HAS_TRITON:

    @triton.jit
    def _ce_kernel(
        logits_ptr,
        targets_ptr,
        loss_ptr,
        grad_ptr,
        inv_n_ptr,
        N,
        V,
        ignore_index,
        BLOCK: tl.constexpr,
        GRAD: tl.constexpr,
        REVERSE: tl.constexpr,
        EVICT: tl.constexpr,
        PERSIST: tl.constexpr,
    ):
        """Per row: the log-sum-exp in one pass (online max and sum), the loss, then the
        gradient (softmax - onehot) / n in a second pass over the row. A program takes one
        row, or with PERSIST every num_programs-th row."""
        first = tl.program_id(0)
        stop = first + 1
        step = 1
        if PERSIST:
            stop = N
            step = tl.num_programs(0)
        offs = tl.arange(0, BLOCK)
        for r in range(first, stop, step):
            row = tl.cast(r, tl.int64)
            x_row = logits_ptr + row * V
            m = tl.zeros([], dtype=tl.float32) - float("inf")  # running max
            s = tl.zeros([], dtype=tl.float32)  # running sum of exp(x - m)
            for start in range(0, V, BLOCK):
                cols = start + offs
                if EVICT:  # keep the row in L2 for the second pass
                    x = tl.load(
                        x_row + cols,
                        mask=cols < V,
                        other=-float("inf"),
                        eviction_policy="evict_last",
                    )
                else:
                    x = tl.load(x_row + cols, mask=cols < V, other=-float("inf"))
                x = x.to(tl.float32)
                m_new = tl.maximum(m, tl.max(x, axis=0))
                s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
                m = m_new
            lse = m + tl.log(s)
            t = tl.load(targets_ptr + row)
            valid = t != ignore_index
            x_t = tl.load(x_row + tl.where(valid & (t >= 0) & (t < V), t, 0)).to(tl.float32)
            tl.store(loss_ptr + row, tl.where(valid, lse - x_t, 0.0))
            if GRAD:
                coef = tl.where(valid, tl.load(inv_n_ptr), 0.0)  # 1/n, or 0 on an ignored row
                g_row = grad_ptr + row * V
                blocks = tl.cdiv(V, BLOCK)
                for i in range(0, blocks):
                    b = i
                    if REVERSE:  # the blocks the first pass read last, likelier still in L2
                        b = blocks - 1 - i
                    cols = b * BLOCK + offs
                    if EVICT:
                        x = tl.load(
                            x_row + cols, mask=cols < V, other=0.0, eviction_policy="evict_first"
                        )
                    else:
                        x = tl.load(x_row + cols, mask=cols < V, other=0.0)
                    p = tl.exp(x.to(tl.float32) - lse)
                    g = (tl.where(cols == t, p - 1.0, p) * coef).to(grad_ptr.dtype.element_ty)
                    if EVICT:
                        tl.store(g_row + cols, g, mask=cols < V, eviction_policy="evict_first")
                    else:
                        tl.store(g_row + cols, g, mask=cols < V)


def launch_ce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor,
    grad: torch.Tensor,
    inv_n: torch.Tensor,
    *,
    with_grad: bool = True,
    ignore_index: int = IGNORE_INDEX,
    block: int | None = None,
    warps: int | None = None,
    reverse: bool | None = None,
    evict: bool | None = None,
    programs_per_sm: int | None = None,
) -> None:
    """The loss kernel over contiguous logits (N, V): each row's loss into `rows` (N,),
    and with `with_grad` the gradient of the mean loss into `grad` (N, V). The settings
    default to the module's CE_* values."""
    N, V = logits.shape
    block = CE_BLOCK if block is None else block
    per_sm = CE_PROGRAMS_PER_SM if programs_per_sm is None else programs_per_sm
    programs = N
    if per_sm and logits.is_cuda:
        sms = torch.cuda.get_device_properties(logits.device).multi_processor_count
        programs = min(N, per_sm * sms)
    elif per_sm:  # Triton's interpreter on the CPU: a few programs, each looping over rows
        programs = min(N, per_sm * 4)
    _ce_kernel[(programs,)](
        logits,
        targets,
        rows,
        grad,
        inv_n,
        N,
        V,
        ignore_index,
        BLOCK=block,
        GRAD=with_grad,
        REVERSE=CE_REVERSE if reverse is None else reverse,
        EVICT=CE_EVICT if evict is None else evict,
        PERSIST=programs < N,
        num_warps=CE_WARPS if warps is None else warps,
    )


def lm_head_loss(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy of h @ weight.T against targets, the logits) on CUDA.

    h (N, C), weight (V, C), targets (N,); rows whose target is `ignore_index`
    count neither in the sum nor in the mean (all ignored: NaN, as F.cross_entropy).
    The logits (N, V) come back in the GEMM's dtype and carry no gradient."""
    if h.dim() != 2 or weight.dim() != 2 or targets.shape != h.shape[:1]:
        raise ValueError(
            f"expected h (N, C), weight (V, C), targets (N,); got {tuple(h.shape)}, "
            f"{tuple(weight.shape)}, {tuple(targets.shape)}"
        )
    if torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")  # what nn.Linear computes in under autocast
        h, weight = h.to(dtype), weight.to(dtype)
    with_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _LMHeadLoss.apply(h, weight, targets, ignore_index, with_grad)


class _LMHeadLoss(torch.autograd.Function):
    """The LM head's GEMM and the one-pass loss kernel (see the module docstring)."""

    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index, with_grad):
        logits = h @ weight.T  # (N, V), contiguous
        N = logits.shape[0]
        targets = targets.contiguous()
        n = (targets != ignore_index).sum().to(torch.float32)
        inv_n = 1.0 / n  # inf when every row is ignored: the loss is then 0 * inf = NaN
        rows = torch.empty(N, device=h.device, dtype=torch.float32)
        grad = torch.empty_like(logits) if with_grad else rows
        launch_ce(
            logits, targets, rows, grad, inv_n, with_grad=with_grad, ignore_index=ignore_index
        )
        ctx.mark_non_differentiable(logits)
        if with_grad:
            ctx.save_for_backward(grad, h, weight)
        return rows.sum() * inv_n, logits

    @staticmethod
    def backward(ctx, grad_loss, _grad_logits):
        grad, h, weight = ctx.saved_tensors
        dh = (grad @ weight) * grad_loss if ctx.needs_input_grad[0] else None
        dw = (grad.T @ h) * grad_loss if ctx.needs_input_grad[1] else None
        return dh, dw, None, None, None
