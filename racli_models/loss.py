"""Cross-entropy of a linear layer's output, computed chunk by chunk over rows.

    loss = linear_cross_entropy(h, weight, targets)
    # same value and gradients as F.cross_entropy(h @ weight.T, targets, ignore_index=-1)

The LM head's logits are the largest tensor of a GPT-2 step: N = B*T rows by
V = 50304 columns: 3.3 GB in bfloat16 at B=32, T=1024, and the plain loss keeps
a float32 copy (6.6 GB) for the backward pass. This loss never holds them
whole. Its forward walks over `chunk_rows` rows at a time and, per chunk,
computes the logits in float32, their log-sum-exp, the loss, and at once the
gradient of the mean loss with respect to the chunk's logits,

    dL/dlogits[i] = (softmax(logits[i]) - onehot(targets[i])) / n     (0 on ignored rows)

(n: the number of rows not ignored), which it pushes through the matmul into
grad_h (N, C) and grad_weight (V, C), accumulated in float32. The backward pass
only scales those by the incoming gradient (a scalar). Memory is
O(chunk_rows * V) instead of O(N * V); the logits are computed once, as before.

Under autocast, h and weight are cast to the autocast dtype as `nn.Linear`
would cast them, so the logits are rounded as the plain LM head rounds them,
and the loss is computed in float32 as `F.cross_entropy` computes it under
autocast. Without gradients (evaluation, `torch.no_grad()`) only the loss is
computed.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -1  # the model's targets mark positions without a target by -1
CHUNK_ELEMENTS = 2**26  # logits per chunk (256 MiB in float32): 1334 rows at V = 50304


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
