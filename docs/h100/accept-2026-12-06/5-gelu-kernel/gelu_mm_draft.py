"""DRAFT, measured once (docs/results.md, 2026-12-06, twenty-fourth session), not part of ra:
the MLP's c_proj(gelu(h)) with GELU's backward inside the product's kernel, on CUDA.

The backward of y = gelu(h) W^T needs dh = gelu'(h) * (dy W). Run as torch ops, the GEMM
writes dy W (B*T x 4C) to memory and GELU's backward reads it back with h and writes dh:
at GPT-2's step shape about 0.6 GB a layer. `gelu_proj` is one autograd node whose
backward computes dy W in a Triton GEMM and multiplies by gelu'(h) before the product
leaves the registers, so only h is read and dh written. GELU is the exact one
(erf), as nn.GELU(); the forward is the same torch ops as MLP's. Design notes and
timings: docs/performance.md.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of torch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

HAS_TRITON = triton is not None
#: MLP's c_proj(gelu(h)) through `gelu_proj` on CUDA (False: torch's ops, nn.GELU's backward)
KERNEL = False
#: the GEMM's tiles and launch: rows, columns and depth of a tile, row tiles per group
#: (the order programs take tiles in, for L2 reuse), pipeline stages, warps a program
TILE = {"block_m": 128, "block_n": 128, "block_k": 64, "group_m": 8, "stages": 3, "warps": 4}


def check_tile(values: dict) -> None:
    """ValueError naming the first of `values` that is not a key of TILE or not a positive int."""
    for name, value in values.items():
        if name not in TILE or type(value) is not int or value < 1:
            raise ValueError(f"gelu_mm tile setting {name}={value!r}: one of {', '.join(TILE)}")


@contextlib.contextmanager
def kernel(on: bool = True, **tile) -> Iterator[None]:
    """Inside the block `KERNEL` is `on` and TILE takes `tile`'s values."""
    global KERNEL
    check_tile(tile)
    before = KERNEL, dict(TILE)
    KERNEL = on
    TILE.update(tile)
    try:
        yield
    finally:
        KERNEL = before[0]
        TILE.clear()
        TILE.update(before[1])


def use_kernel(h: torch.Tensor, proj: torch.nn.Linear) -> bool:
    """Whether MLP's c_proj(gelu(h)) goes through `gelu_proj`: a bias-free c_proj, h on CUDA
    in float16 or bfloat16 or under autocast (the kernel's products run on tensor cores)."""
    half = h.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled("cuda")
    return KERNEL and HAS_TRITON and h.is_cuda and half and proj.bias is None


def gelu_proj(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """gelu(h) @ weight.T for h (..., K) and weight (N, K), as nn.Linear(gelu(h)) computes it
    (under autocast in its dtype); the backward's dh comes from `dgelu_mm`."""
    if torch.is_autocast_enabled(h.device.type):
        dtype = torch.get_autocast_dtype(h.device.type)  # what nn.Linear computes in
        h, weight = h.to(dtype), weight.to(dtype)
    return _GeluProj.apply(h, weight)


class _GeluProj(torch.autograd.Function):
    """y = gelu(h) W^T; dh = gelu'(h) * (dy W) in one kernel, dW = dy^T gelu(h)."""

    @staticmethod
    def forward(ctx, h, weight):
        a = F.gelu(h)
        ctx.save_for_backward(h, a, weight)
        return a @ weight.T

    @staticmethod
    def backward(ctx, dy):
        h, a, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dh = dw = None
        if ctx.needs_input_grad[0]:
            dh = dgelu_mm(dy2, weight, h.reshape(-1, h.shape[-1])).view(h.shape)
        if ctx.needs_input_grad[1]:
            dw = dy2.T @ a.reshape(-1, a.shape[-1])
        return dh, dw


def dgelu_mm(dy: torch.Tensor, weight: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """gelu'(h) * (dy @ weight) for dy (M, R), weight (R, N), h (M, N), in dy's dtype: the
    product accumulated in float32 and multiplied by GELU's derivative in the kernel."""
    M, R = dy.shape
    N = weight.shape[1]
    if weight.shape[0] != R or h.shape != (M, N):
        raise ValueError(
            f"dgelu_mm: dy {tuple(dy.shape)}, weight {tuple(weight.shape)}, h {tuple(h.shape)}"
        )
    out = torch.empty((M, N), dtype=dy.dtype, device=dy.device)
    t = TILE
    grid = (triton.cdiv(M, t["block_m"]) * triton.cdiv(N, t["block_n"]),)
    _dgelu_mm_kernel[grid](
        dy,
        weight,
        h,
        out,
        M,
        N,
        R,
        dy.stride(0),
        dy.stride(1),
        weight.stride(0),
        weight.stride(1),
        h.stride(0),
        h.stride(1),
        out.stride(0),
        BLOCK_M=t["block_m"],
        BLOCK_N=t["block_n"],
        BLOCK_K=t["block_k"],
        GROUP_M=t["group_m"],
        EVEN_M=M % t["block_m"] == 0,
        EVEN_N=N % t["block_n"] == 0,
        EVEN_K=R % t["block_k"] == 0,
        num_stages=t["stages"],
        num_warps=t["warps"],
    )
    return out


if HAS_TRITON:

    @triton.jit
    def _dgelu_mm_kernel(
        a_ptr,
        b_ptr,
        h_ptr,
        out_ptr,
        M,
        N,
        K,
        stride_am,
        stride_ak,
        stride_bk,
        stride_bn,
        stride_hm,
        stride_hn,
        stride_om,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
        EVEN_M: tl.constexpr,
        EVEN_N: tl.constexpr,
        EVEN_K: tl.constexpr,
    ):
        """out (M, N) = gelu'(h) * (A (M, K) @ B (K, N)); a program computes one tile, the
        tiles taken GROUP_M row tiles at a time down each column of tiles."""
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        group_m = min(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_m
        pid_n = (pid % per_group) // group_m

        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        # past the last row or column a tile reads row or column 0 again rather than masking
        # its loads; the store leaves those out
        am = rm if EVEN_M else rm % M
        bn = rn if EVEN_N else rn % N
        a = a_ptr + am.to(tl.int64)[:, None] * stride_am + rk[None, :] * stride_ak
        b = b_ptr + rk[:, None] * stride_bk + bn.to(tl.int64)[None, :] * stride_bn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                x = tl.load(a)
                w = tl.load(b)
            else:
                left = K - k * BLOCK_K
                x = tl.load(a, mask=rk[None, :] < left, other=0.0)
                w = tl.load(b, mask=rk[:, None] < left, other=0.0)
            acc = tl.dot(x, w, acc)
            a += BLOCK_K * stride_ak
            b += BLOCK_K * stride_bk

        rm64 = rm.to(tl.int64)
        rn64 = rn.to(tl.int64)
        inside = (rm[:, None] < M) & (rn[None, :] < N)
        h = tl.load(
            h_ptr + rm64[:, None] * stride_hm + rn64[None, :] * stride_hn, mask=inside, other=0.0
        ).to(tl.float32)
        # gelu(h) = h * Phi(h), so gelu'(h) = Phi(h) + h * phi(h)
        cdf = 0.5 * (1.0 + tl.erf(h * 0.7071067811865476))
        pdf = tl.exp(-0.5 * h * h) * 0.3989422804014327
        out = acc * (cdf + h * pdf)
        tl.store(
            out_ptr + rm64[:, None] * stride_om + rn64[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=inside,
        )


def dgelu_reference(dy: torch.Tensor, weight: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """gelu'(h) * (dy @ weight) in float64, the formula the kernel computes."""
    dy, weight, h = dy.double(), weight.double(), h.double()
    cdf = 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * h * h) / math.sqrt(2.0 * math.pi)
    return (dy @ weight) * (cdf + h * pdf)
