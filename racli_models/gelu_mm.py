"""The MLP's c_proj(gelu(h)) with GELU's backward inside the product's kernel.

The backward of y = gelu(h) W^T needs dh = gelu'(h) * (dy W). Run as torch ops, the GEMM
writes dy W (B*T x 4C) to memory, and GELU's backward reads it back with h and writes dh.
Here the forward, which reads h to make gelu(h), writes gelu'(h) beside it (one pointwise
kernel under torch.compile), and the backward's GEMM multiplies dy W by it before the
product leaves the registers: dy W never goes to memory, and the backward does no GELU
arithmetic (in a GEMM's epilogue that arithmetic cost more than the whole memory pass it
saves: docs/performance.md). GELU is the exact one (erf), as nn.GELU().

The GEMM's tiles move by TMA (tensor descriptors), one tile a program (TILE["kind"]
"tma") or one program an SM walking the tiles, its loop flattened so that a tile's
epilogue overlaps the next tile's loads ("pers"); the epilogue stores in `sub` slices of
columns.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .switch import setting

try:  # Triton ships with CUDA builds of torch
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

HAS_TRITON = triton is not None
#: MLP's c_proj(gelu(h)) through `gelu_proj` when training compiled on CUDA (False:
#: torch's ops, nn.GELU's backward). It saves gelu(h) and gelu'(h) for the backward where
#: torch.compile saves h alone: 2 bytes a hidden unit a token more (GPT-2 124M at 32 x 1024
#: tokens: 2.4 GB)
KERNEL = True
#: the GEMM: a tile a program or persistent ("tma", "pers"), rows, columns and depth of a
#: tile, row tiles per group (the order tiles are taken in, for L2 reuse), pipeline
#: stages, warps a program, for "pers" whether its loop is warp specialised, and the
#: epilogue's column slices (1, 2 or 4)
TILE = {
    "kind": "tma",
    "block_m": 128,
    "block_n": 128,
    "block_k": 64,
    "group_m": 8,
    "stages": 3,
    "warps": 4,
    "ws": False,
    "sub": 1,
}
KINDS = ("tma", "pers")


_VALID = {  # TILE's settings that are not positive ints, and what they take
    "kind": lambda v: v in KINDS,
    "ws": lambda v: type(v) is bool,
    "sub": lambda v: v in (1, 2, 4),
}


def check_tile(values: dict) -> None:
    """ValueError naming the first of `values` that TILE cannot take."""
    for name, value in values.items():
        valid = _VALID.get(name, lambda v: type(v) is int and v >= 1)
        if name not in TILE or not valid(value):
            raise ValueError(
                f"gelu_mm setting {name}={value!r}: one of {', '.join(TILE)} (kind: "
                f"{', '.join(KINDS)}; sub: 1, 2 or 4; ws: true or false; the rest positive ints)"
            )


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
    in float16 or bfloat16 or under autocast (the kernel's products run on tensor cores), a
    backward to come (without one, saving gelu'(h) is wasted work), widths that are
    multiples of 8 (TMA moves rows of a multiple of 16 bytes), and torch.compile
    tracing (which makes gelu(h) and gelu'(h) in one kernel; run eagerly, gelu'(h) takes
    a pass over memory per operation, more than the kernel saves)."""
    half = h.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled("cuda")
    grad = torch.is_grad_enabled() and (h.requires_grad or proj.weight.requires_grad)
    rows16 = h.shape[-1] % 8 == 0 and proj.weight.shape[0] % 8 == 0  # TMA: 16-byte rows
    return (
        KERNEL
        and HAS_TRITON
        and h.is_cuda
        and half
        and grad
        and rows16
        and proj.bias is None
        and torch.compiler.is_compiling()
    )


def gelu_proj(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """gelu(h) @ weight.T for h (..., K) and weight (N, K), as nn.Linear(gelu(h)) computes it
    (under autocast in its dtype); the backward's dh comes from `mm_times`."""
    if torch.is_autocast_enabled(h.device.type):
        dtype = torch.get_autocast_dtype(h.device.type)  # what nn.Linear computes in
        h, weight = h.to(dtype), weight.to(dtype)
    return _GeluProj.apply(h, weight)


#: 1/sqrt(2) as the compiler's GELU writes it (torch._refs' M_SQRT1_2, 0.7071067811865476):
#: with the same constant, erf(h / sqrt(2)) is one expression in `gelu_slope` and in
#: F.gelu's decomposition, so the compiled forward computes it once for both
SQRT1_2 = math.sqrt(0.5)
#: whether `gelu_slope` writes erf's argument with SQRT1_2 (True), or with 1.0 /
#: math.sqrt(2.0) (0.7071067811865475) as before 2026-12-07. Both round to the same float32,
#: so the values are the same; with the latter the CPU's generated forward computes erf
#: twice (Triton merges the two calls on a GPU, docs/performance.md, twenty-fourth round).
SHARED_ERF = True


def shared_erf(on: bool = True) -> contextlib.AbstractContextManager[None]:
    """Inside the block `SHARED_ERF` is `on` (the compiled forward traced there keeps it)."""
    return setting(__name__, "SHARED_ERF", on)


def gelu_slope(h: torch.Tensor) -> torch.Tensor:
    """gelu'(h) = Phi(h) + h phi(h) (gelu(h) = h Phi(h)), computed in float32, in h's dtype."""
    x = h.float()
    cdf = 0.5 * (1.0 + torch.erf(x * (SQRT1_2 if SHARED_ERF else 1.0 / math.sqrt(2.0))))
    return (cdf + x * torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))).to(h.dtype)


class _GeluProj(torch.autograd.Function):
    """y = gelu(h) W^T; dh = gelu'(h) * (dy W) in one kernel, dW = dy^T gelu(h)."""

    @staticmethod
    def forward(ctx, h, weight):
        a = F.gelu(h)
        ctx.save_for_backward(gelu_slope(h), a, weight)
        return a @ weight.T

    @staticmethod
    def backward(ctx, dy):
        slope, a, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dh = dw = None
        if ctx.needs_input_grad[0]:
            s2 = slope.reshape(-1, slope.shape[-1])
            dh = torch.ops.racli.mm_times(dy2, weight, s2).view(slope.shape)
        if ctx.needs_input_grad[1]:
            dw = dy2.T @ a.reshape(-1, a.shape[-1])
        return dh, dw


@torch.library.custom_op("racli::mm_times", mutates_args=())
def _mm_times_op(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return mm_times(a, b, g)


@_mm_times_op.register_fake
def _(a, b, g):
    return a.new_empty((a.shape[0], b.shape[1]))


def mm_times(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(a @ b) * g for a (M, K), b (K, N), g (M, N), in a's dtype: the product accumulated
    in float32 and multiplied by g before it is rounded and stored."""
    M, K = a.shape
    N = b.shape[1]
    if b.shape[0] != K or g.shape != (M, N):
        raise ValueError(f"mm_times: a {tuple(a.shape)}, b {tuple(b.shape)}, g {tuple(g.shape)}")
    a, b, g = a.contiguous(), b.contiguous(), g.contiguous()
    out = torch.empty((M, N), dtype=a.dtype, device=a.device)
    t = TILE
    bm, bn, bk, sub = t["block_m"], t["block_n"], t["block_k"], t["sub"]
    descs = (
        TensorDescriptor.from_tensor(a, [bm, bk]),
        TensorDescriptor.from_tensor(b, [bk, bn]),
        TensorDescriptor.from_tensor(g, [bm, bn // sub]),
        TensorDescriptor.from_tensor(out, [bm, bn // sub]),
    )
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=t["group_m"], SUB=sub)
    meta.update(num_stages=t["stages"], num_warps=t["warps"])
    if t["kind"] == "tma":
        _tma_kernel[(tiles,)](*descs, M, N, K, **meta)
        return out
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count if a.is_cuda else 3
    programs = min(sms, tiles)  # (3 programs in Triton's interpreter, on the CPU)
    _pers_kernel[(programs,)](*descs, M, N, K, PROGRAMS=programs, WS=t["ws"], **meta)
    return out


if HAS_TRITON:

    @triton.jit
    def _tile_of(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        """(row tile, column tile) of program `pid`: GROUP_M row tiles at a time down each
        column of tiles, so that a group's B columns stay in L2."""
        per_group = GROUP_M * tl.cdiv(N, BLOCK_N)
        first_m = (pid // per_group) * GROUP_M
        rows = tl.minimum(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
        return first_m + (pid % per_group) % rows, (pid % per_group) // rows

    @triton.jit
    def _slice(acc, g_desc, out_desc, off_m, off_n):
        g = g_desc.load([off_m, off_n]).to(tl.float32)
        out_desc.store([off_m, off_n], (acc * g).to(out_desc.dtype))

    @triton.jit
    def _halves(acc, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        return tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))

    @triton.jit
    def _epilogue(acc, g_desc, out_desc, off_m, off_n, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, SUB: tl.constexpr):  # fmt: skip
        """Store acc * g, in SUB slices of columns."""
        if SUB == 1:
            _slice(acc, g_desc, out_desc, off_m, off_n)
        elif SUB == 2:
            a0, a1 = _halves(acc, BLOCK_M, BLOCK_N)
            _slice(a0, g_desc, out_desc, off_m, off_n)
            _slice(a1, g_desc, out_desc, off_m, off_n + BLOCK_N // 2)
        else:
            a0, a1 = _halves(acc, BLOCK_M, BLOCK_N)
            a00, a01 = _halves(a0, BLOCK_M, BLOCK_N // 2)
            a10, a11 = _halves(a1, BLOCK_M, BLOCK_N // 2)
            w = BLOCK_N // 4
            _slice(a00, g_desc, out_desc, off_m, off_n)
            _slice(a01, g_desc, out_desc, off_m, off_n + w)
            _slice(a10, g_desc, out_desc, off_m, off_n + 2 * w)
            _slice(a11, g_desc, out_desc, off_m, off_n + 3 * w)

    @triton.jit
    def _tma_kernel(
        a_desc, b_desc, g_desc, out_desc, M, N, K,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr, SUB: tl.constexpr,
    ):  # fmt: skip
        """out (M, N) = (A (M, K) @ B (K, N)) * G, a tile a program, its operands moved by
        TMA (which fills past the edges with zeros and stores inside them)."""
        pid_m, pid_n = _tile_of(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            x = a_desc.load([off_m, k * BLOCK_K])
            acc = tl.dot(x, b_desc.load([k * BLOCK_K, off_n]), acc)
        _epilogue(acc, g_desc, out_desc, off_m, off_n, BLOCK_M, BLOCK_N, SUB)

    @triton.jit
    def _pers_kernel(
        a_desc, b_desc, g_desc, out_desc, M, N, K,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr, SUB: tl.constexpr, PROGRAMS: tl.constexpr, WS: tl.constexpr,
    ):  # fmt: skip
        """As `_tma_kernel`, PROGRAMS programs each taking every PROGRAMS-th tile; the loop
        over tiles and depth flattened into one pipeline."""
        tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile in tl.range(tl.program_id(0), tiles, PROGRAMS, flatten=True, warp_specialize=WS):
            pid_m, pid_n = _tile_of(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k in range(0, tl.cdiv(K, BLOCK_K)):
                x = a_desc.load([off_m, k * BLOCK_K])
                acc = tl.dot(x, b_desc.load([k * BLOCK_K, off_n]), acc)
            _epilogue(acc, g_desc, out_desc, off_m, off_n, BLOCK_M, BLOCK_N, SUB)


def gelu_slope_reference(h: torch.Tensor) -> torch.Tensor:
    """gelu'(h) in float64."""
    h = h.double()
    return 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0))) + h * torch.exp(-0.5 * h * h) / math.sqrt(
        2.0 * math.pi
    )
