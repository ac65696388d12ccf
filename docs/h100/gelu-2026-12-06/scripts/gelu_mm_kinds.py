"""Not part of ra (docs/h100/gelu-2026-12-06/scripts/README.md). gelu'(h) * (dy @ W) in one Triton GEMM: three ways of feeding the tensor cores.

ptr   pointer loads with int32 offsets and contiguity hints, grouped tiles (one tile a program)
tma   tiles moved by TMA (host tensor descriptors), one tile a program
pers  TMA, persistent: one program an SM walking the tiles, its loop flattened so that a
      tile's epilogue overlaps the next tile's loads (`ws`: warp specialised as well)

EPI=False stores the product alone (to set each beside cuBLAS's GEMM).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def _tile_of(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    rows = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % rows, (pid % per_group) // rows


@triton.jit
def _dgelu(acc, h):
    # gelu(h) = h * Phi(h), so gelu'(h) = Phi(h) + h * phi(h)
    h = h.to(tl.float32)
    cdf = 0.5 * (1.0 + tl.erf(h * 0.7071067811865476))
    return acc * (cdf + h * tl.exp(-0.5 * h * h) * 0.3989422804014327)


@triton.jit
def _ptr_kernel(
    a_ptr, b_ptr, h_ptr, out_ptr, M, N, K, stride_am, stride_bk, stride_hm, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, EPI: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = _tile_of(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    rm = tl.max_contiguous(tl.multiple_of(rm, BLOCK_M), BLOCK_M)
    rn = tl.max_contiguous(tl.multiple_of(rn, BLOCK_N), BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a = a_ptr + rm[:, None] * stride_am + rk[None, :]
    b = b_ptr + rk[:, None] * stride_bk + rn[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        left = K - k * BLOCK_K
        x = tl.load(a, mask=rk[None, :] < left, other=0.0)
        w = tl.load(b, mask=rk[:, None] < left, other=0.0)
        acc = tl.dot(x, w, acc)
        a += BLOCK_K
        b += BLOCK_K * stride_bk
    om = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    on = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = (om[:, None] < M) & (on[None, :] < N)
    if EPI:
        h = tl.load(h_ptr + om[:, None] * stride_hm + on[None, :], mask=inside, other=0.0)
        acc = _dgelu(acc, h)
    tl.store(
        out_ptr + om[:, None] * stride_om + on[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=inside,
    )


@triton.jit
def _tma_kernel(
    a_desc, b_desc, h_desc, out_desc, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, EPI: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = _tile_of(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        acc = tl.dot(a_desc.load([off_m, k * BLOCK_K]), b_desc.load([k * BLOCK_K, off_n]), acc)
    if EPI:
        acc = _dgelu(acc, h_desc.load([off_m, off_n]))
    out_desc.store([off_m, off_n], acc.to(out_desc.dtype))


@triton.jit
def _pers_kernel(
    a_desc, b_desc, h_desc, out_desc, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, EPI: tl.constexpr, PROGRAMS: tl.constexpr,
    FLATTEN: tl.constexpr, WS: tl.constexpr,
):  # fmt: skip
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    steps = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(tl.program_id(0), tiles, PROGRAMS, flatten=FLATTEN, warp_specialize=WS):
        pid_m, pid_n = _tile_of(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, steps):
            x = a_desc.load([off_m, k * BLOCK_K])
            acc = tl.dot(x, b_desc.load([k * BLOCK_K, off_n]), acc)
        if EPI:
            acc = _dgelu(acc, h_desc.load([off_m, off_n]))
        out_desc.store([off_m, off_n], acc.to(out_desc.dtype))


_SMS: dict[int, int] = {}


def dgelu_mm(dy, weight, h, kind="ptr", bm=128, bn=128, bk=64, group=8, stages=3, warps=4,
             epi=True, flatten=True, ws=False):  # fmt: skip
    """gelu'(h) * (dy @ weight) for dy (M, R), weight (R, N), h (M, N), each row-major."""
    M, R = dy.shape
    N = weight.shape[1]
    out = torch.empty((M, N), dtype=dy.dtype, device=dy.device)
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group, EPI=epi)
    run = dict(num_stages=stages, num_warps=warps)
    if kind == "ptr":
        _ptr_kernel[(tiles,)](
            dy, weight, h, out, M, N, R, dy.stride(0), weight.stride(0), h.stride(0),
            out.stride(0), **meta, **run,
        )  # fmt: skip
        return out
    descs = (
        TensorDescriptor.from_tensor(dy, [bm, bk]),
        TensorDescriptor.from_tensor(weight, [bk, bn]),
        TensorDescriptor.from_tensor(h, [bm, bn]),
        TensorDescriptor.from_tensor(out, [bm, bn]),
    )
    if kind == "tma":
        _tma_kernel[(tiles,)](*descs, M, N, R, **meta, **run)
        return out
    dev = dy.device.index or 0
    if dev not in _SMS:
        cuda = dy.is_cuda
        _SMS[dev] = torch.cuda.get_device_properties(dev).multi_processor_count if cuda else 3
    programs = min(_SMS[dev], tiles)
    _pers_kernel[(programs,)](
        *descs, M, N, R, **meta, PROGRAMS=programs, FLATTEN=flatten, WS=ws, **run
    )
    return out


def dgelu_reference(dy, weight, h):
    """gelu'(h) * (dy @ weight) in float64."""
    dy, weight, h = dy.double(), weight.double(), h.double()
    cdf = 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * h * h) / math.sqrt(2.0 * math.pi)
    return (dy @ weight) * (cdf + h * pdf)
