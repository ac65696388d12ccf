"""Not part of ra (docs/h100/gelu-2026-12-06/scripts/README.md). Second round: where the epilogue's time goes. TMA kernels (one tile a program, or
persistent with its loop flattened), the epilogue in SUB column slices, and EPI:
0 the product alone, 1 the product times a loaded tensor (no GELU arithmetic: the cost of
reading h, or of reading a gelu'(h) written in the forward), 2 gelu'(h) with tl.erf and
tl.exp, 3 gelu'(h) with one exp shared by erf (Abramowitz-Stegun 7.1.26, |error| <=
1.5e-7) and phi."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def _tile_of(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    per_group = GROUP_M * tl.cdiv(N, BLOCK_N)
    first_m = (pid // per_group) * GROUP_M
    rows = tl.minimum(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    return first_m + (pid % per_group) % rows, (pid % per_group) // rows


@triton.jit
def _apply(acc, h, EPI: tl.constexpr):
    if EPI == 0:
        return acc
    h = h.to(tl.float32)
    if EPI == 1:
        return acc * h
    if EPI == 2:
        cdf = 0.5 * (1.0 + tl.erf(h * 0.7071067811865476))
        return acc * (cdf + h * tl.exp(-0.5 * h * h) * 0.3989422804014327)
    # EPI == 3: e = exp(-h^2/2) serves erf(|h|/sqrt 2) = 1 - poly(t) e and phi(h) = e / sqrt(2 pi)
    e = tl.exp(-0.5 * h * h)
    t = 1.0 / (1.0 + 0.3275911 * 0.7071067811865476 * tl.abs(h))
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    half_erf = 0.5 - 0.5 * poly * e  # erf(|h| / sqrt 2) / 2
    cdf = 0.5 + tl.where(h >= 0, half_erf, -half_erf)
    return acc * (cdf + h * e * 0.3989422804014327)


@triton.jit
def _epilogue(acc, h_desc, out_desc, off_m, off_n, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, EPI: tl.constexpr, SUB: tl.constexpr):  # fmt: skip
    if SUB == 1:
        if EPI > 0:
            acc = _apply(acc, h_desc.load([off_m, off_n]), EPI)
        out_desc.store([off_m, off_n], acc.to(out_desc.dtype))
    elif SUB == 2:
        a0, a1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        w = BLOCK_N // 2
        if EPI > 0:
            a0 = _apply(a0, h_desc.load([off_m, off_n]), EPI)
        out_desc.store([off_m, off_n], a0.to(out_desc.dtype))
        if EPI > 0:
            a1 = _apply(a1, h_desc.load([off_m, off_n + w]), EPI)
        out_desc.store([off_m, off_n + w], a1.to(out_desc.dtype))
    else:  # SUB == 4
        a0, a1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        a00, a01 = tl.split(tl.permute(tl.reshape(a0, (BLOCK_M, 2, BLOCK_N // 4)), (0, 2, 1)))
        a10, a11 = tl.split(tl.permute(tl.reshape(a1, (BLOCK_M, 2, BLOCK_N // 4)), (0, 2, 1)))
        w = BLOCK_N // 4
        if EPI > 0:
            a00 = _apply(a00, h_desc.load([off_m, off_n]), EPI)
        out_desc.store([off_m, off_n], a00.to(out_desc.dtype))
        if EPI > 0:
            a01 = _apply(a01, h_desc.load([off_m, off_n + w]), EPI)
        out_desc.store([off_m, off_n + w], a01.to(out_desc.dtype))
        if EPI > 0:
            a10 = _apply(a10, h_desc.load([off_m, off_n + 2 * w]), EPI)
        out_desc.store([off_m, off_n + 2 * w], a10.to(out_desc.dtype))
        if EPI > 0:
            a11 = _apply(a11, h_desc.load([off_m, off_n + 3 * w]), EPI)
        out_desc.store([off_m, off_n + 3 * w], a11.to(out_desc.dtype))


@triton.jit
def _tma_kernel(a_desc, b_desc, h_desc, out_desc, M, N, K,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_M: tl.constexpr, EPI: tl.constexpr, SUB: tl.constexpr):  # fmt: skip
    pid_m, pid_n = _tile_of(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        acc = tl.dot(a_desc.load([off_m, k * BLOCK_K]), b_desc.load([k * BLOCK_K, off_n]), acc)
    _epilogue(acc, h_desc, out_desc, off_m, off_n, BLOCK_M, BLOCK_N, EPI, SUB)


@triton.jit
def _pers_kernel(a_desc, b_desc, h_desc, out_desc, M, N, K,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr, EPI: tl.constexpr, SUB: tl.constexpr,
                 PROGRAMS: tl.constexpr, WS: tl.constexpr):  # fmt: skip
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), tiles, PROGRAMS, flatten=True, warp_specialize=WS):
        pid_m, pid_n = _tile_of(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            x = a_desc.load([off_m, k * BLOCK_K])
            acc = tl.dot(x, b_desc.load([k * BLOCK_K, off_n]), acc)
        _epilogue(acc, h_desc, out_desc, off_m, off_n, BLOCK_M, BLOCK_N, EPI, SUB)


_SMS: dict[int, int] = {}


def dgelu_mm(dy, weight, h, kind="pers", bm=128, bn=256, bk=64, group=8, stages=3, warps=8,
             epi=2, sub=2, ws=False):  # fmt: skip
    M, R = dy.shape
    N = weight.shape[1]
    out = torch.empty((M, N), dtype=dy.dtype, device=dy.device)
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    descs = (
        TensorDescriptor.from_tensor(dy, [bm, bk]),
        TensorDescriptor.from_tensor(weight, [bk, bn]),
        TensorDescriptor.from_tensor(h, [bm, bn // sub]),
        TensorDescriptor.from_tensor(out, [bm, bn // sub]),
    )
    meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group, EPI=epi, SUB=sub)
    run = dict(num_stages=stages, num_warps=warps)
    if kind == "tma":
        _tma_kernel[(tiles,)](*descs, M, N, R, **meta, **run)
        return out
    dev = dy.device.index or 0
    if dev not in _SMS:
        _SMS[dev] = torch.cuda.get_device_properties(dev).multi_processor_count if dy.is_cuda else 3
    programs = min(_SMS[dev], tiles)
    _pers_kernel[(programs,)](*descs, M, N, R, **meta, PROGRAMS=programs, WS=ws, **run)
    return out


def reference(dy, weight, h, epi):
    dy, weight, h = dy.double(), weight.double(), h.double()
    p = dy @ weight
    if epi == 0:
        return p
    if epi == 1:
        return p * h
    cdf = 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))
    return p * (cdf + h * torch.exp(-0.5 * h * h) / math.sqrt(2.0 * math.pi))
