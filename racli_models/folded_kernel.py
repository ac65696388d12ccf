"""The folded-RA measures' per-row sums in one Triton kernel (`measures.folded_stats`).

For each measured query row (b, h, r) at position i, over its visible keys j <= i,
from the two score terms S (standard) and R (reciprocal) of that row:

    v_std = sum_j (S_j - mean S)^2,   v_rec = sum_j (R_j - mean R)^2
    q = softmax(S),  x = R - E_q[R],  u = E_q[expm1(x)],  a = E_q[x expm1(x)]

so that KL(softmax(S + R) || softmax(S)) = a / (1 + u) - log1p(u) (`measures.kl_sum`).
One program reads the row's S and R once and writes these four numbers; the torch
version makes about twenty passes over the (B, H, 2, n, T) terms.
"""

from __future__ import annotations

import torch

from .fused import HAS_TRITON, _launch, _pow2, tl, triton

if HAS_TRITON:

    @triton.jit
    def _expm1(x):
        """exp(x) - 1 without the cancellation near 0: a Taylor polynomial for |x| < 1/4
        (truncation below 2^-26 relative), exp(x) - 1 elsewhere."""
        poly = x * (1 + x * (1 / 2 + x * (1 / 6 + x * (1 / 24 + x * (1 / 120 + x / 720)))))
        return tl.where(tl.abs(x) < 0.25, poly, tl.exp(x) - 1)

    @triton.jit
    def _row_sums_kernel(terms_ptr, rows_ptr, out_ptr, n, T, BLOCK_T: tl.constexpr):
        p = tl.program_id(0)  # one measured row: (b, h) = p // n, r = p % n
        r = p % n
        last = tl.load(rows_ptr + r)  # keys 0..last are visible
        j = tl.arange(0, BLOCK_T)
        seen = j <= last
        row = terms_ptr + ((p // n) * 2 * n + r).to(tl.int64) * T
        s = tl.load(row + j, mask=seen, other=0.0)  # S, 0 where hidden
        rec = tl.load(row + n * T + j, mask=seen, other=0.0)  # R, 0 where hidden
        count = (last + 1).to(tl.float32)
        cs = tl.where(seen, s - tl.sum(s, 0) / count, 0.0)
        cr = tl.where(seen, rec - tl.sum(rec, 0) / count, 0.0)
        e = tl.where(seen, tl.exp(s - tl.max(tl.where(seen, s, -float("inf")), 0)), 0.0)
        q = e / tl.sum(e, 0)  # softmax(S) over the visible keys, 0 elsewhere
        x = rec - tl.sum(q * rec, 0)  # R centred under q
        qe = q * _expm1(x)
        out = out_ptr + p * 4
        tl.store(out, tl.sum(cs * cs, 0))
        tl.store(out + 1, tl.sum(cr * cr, 0))
        tl.store(out + 2, tl.sum(qe * x, 0))
        tl.store(out + 3, tl.sum(qe, 0))


def applies(terms: torch.Tensor) -> bool:
    """Whether the kernel serves these terms: float32 on CUDA, where Triton imports."""
    return HAS_TRITON and terms.is_cuda and terms.dtype == torch.float32


def row_sums(terms: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, H, n, 4): v_std, v_rec, a, u of each measured row (module docstring), from
    terms (B, H, 2, n, T) (S rows, then R rows) and the rows' positions (n,)."""
    B, H, _, n, T = terms.shape
    terms = terms.contiguous()
    out = torch.empty(B, H, n, 4, device=terms.device, dtype=torch.float32)
    block = _pow2(T)
    _launch(_row_sums_kernel, (B * H * n,), (terms, rows.contiguous(), out, n, T),
            dict(BLOCK_T=block), num_warps=4 if block <= 1024 else 8)  # fmt: skip
    return out
