"""float32 products on TF32 tensor cores, at float32's precision (split operands).

TF32 keeps 10 of float32's 23 stored mantissa bits: a plain TF32 product is off by
about 5e-4 relative, too coarse for the measures (the ablation reads loss changes
of 1e-5). Each float32 operand is split exactly into a TF32 part and the rest,
a = a_hi + a_lo with a_hi = a rounded to TF32 (|a_lo| <= 2^-11 |a|), and

    a b = a_hi b_hi + a_lo b_hi + a_hi b_lo + a_lo b_lo

is computed without its last term (at most 2^-22 of each product) as ONE TF32
GEMM over three times the inner dimension: [a_hi | a_lo | a_hi] [b_hi ; b_hi ; b_lo].
The parts a_hi, b_hi are exact in TF32, so the only other error is TF32's reading
of a_lo, b_lo (at most 2^-10 of them, so 2^-21 of the product); the sum
accumulates in float32. This is the 3xTF32 scheme of cuBLAS / CUTLASS, here from
plain torch ops: three times the multiply-adds, at TF32's rate (the H200's
datasheet: about 495 TFLOP/s dense TF32 against 67 TFLOP/s float32).

`float32_on_tensor_cores()` applies it to every float32 F.linear and matmul on
CUDA inside the block (not under autocast, whose products are 16-bit anyway). On
CUDA one Triton kernel reads each operand once and writes its stacked parts
(`KERNEL`); elsewhere, and without Triton, the same bits come from torch ops.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .fused import HAS_TRITON, _launch, tl, triton

#: the stacked operand from one Triton kernel on CUDA (False: split and concatenate with
#: torch ops, five kernels; tools/reciprocity_cost.py --split-ops times both)
KERNEL = True

# 0-dim int32 tensors rather than Python ints: a Python scalar is wrapped and converted
# to int32 on every call (four more aten ops each), a 0-dim CPU tensor is passed as is
_ROUND = torch.tensor(1 << 12, dtype=torch.int32)  # half of TF32's last kept mantissa bit
_KEEP = torch.tensor(-(1 << 13), dtype=torch.int32)  # clears float32's 13 low mantissa bits


def tf32_split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo), t = hi + lo exactly: hi is float32 t rounded to nearest TF32 (its low
    13 mantissa bits 0, so TF32 reads it exactly), lo = t - hi (|lo| <= 2^-11 |t|)."""
    hi = t.view(torch.int32).add(_ROUND).bitwise_and_(_KEEP).view(torch.float32)
    return hi, t - hi


if HAS_TRITON:

    @triton.jit
    def _stacked_kernel(t_ptr, out_ptr, n, seg, LO_FIRST: tl.constexpr, BLOCK: tl.constexpr):
        """t viewed as (n / seg, seg) rows, seg = the split dimension times everything after
        it; out as (n / seg, 3, seg): each row's parts [hi, lo, hi] (or [hi, hi, lo])."""
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = i < n
        t = tl.load(t_ptr + i, mask=mask)
        bits = t.to(tl.int32, bitcast=True)
        hi = ((bits + 4096) & -8192).to(tl.float32, bitcast=True)  # _ROUND, _KEEP
        lo = t - hi
        at = out_ptr + (i // seg) * 2 * seg + i  # row r's first part starts at 3 r seg
        tl.store(at, hi, mask=mask)
        tl.store(at + seg, lo if not LO_FIRST else hi, mask=mask)
        tl.store(at + 2 * seg, hi if not LO_FIRST else lo, mask=mask)


def _stacked_by_kernel(t: torch.Tensor, dim: int, lo_first: bool) -> torch.Tensor:
    """`stacked` in one launch: t is read once, its three parts written in place."""
    t = t.contiguous()
    dim = dim % t.dim()
    shape = list(t.shape)
    seg = math.prod(shape[dim:])  # the split dimension and all after it
    shape[dim] *= 3
    out = torch.empty(shape, device=t.device, dtype=t.dtype)
    n, block = t.numel(), 1024
    _launch(_stacked_kernel, (triton.cdiv(n, block),), (t, out, n, seg),
            dict(LO_FIRST=lo_first, BLOCK=block), num_warps=4)  # fmt: skip
    return out


def stacked(t: torch.Tensor, dim: int, lo_first: bool) -> torch.Tensor:
    """t's parts stacked along `dim` (its inner dimension): [hi | lo | hi] for the left
    operand (lo_first False), [hi | hi | lo] for the right one."""
    if KERNEL and HAS_TRITON and t.is_cuda and t.dtype == torch.float32 and t.numel():
        return _stacked_by_kernel(t, dim, lo_first)
    hi, lo = tf32_split(t)
    return torch.cat([hi, lo, hi] if not lo_first else [hi, hi, lo], dim=dim)


@contextlib.contextmanager
def _tf32() -> Iterator[None]:
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _applies(*tensors) -> bool:
    return all(
        isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in tensors
    ) and not torch.is_autocast_enabled(tensors[0].device.type)


class _Split(TorchFunctionMode):
    """Routes float32 F.linear and matmul through the split TF32 GEMM; each weight is
    split once per block, keyed by its address, shape, strides and version (the
    weight is kept alive with its split, so no other tensor can take its address)."""

    def __init__(self, device_types: tuple[str, ...]):
        super().__init__()
        self.device_types = device_types
        self.weights: dict = {}

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        key = (w.data_ptr(), tuple(w.shape), w.stride(), w._version)
        if key not in self.weights:
            self.weights[key] = (w, stacked(w, 1, lo_first=True))
        return self.weights[key][1]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and args[0].device.type in self.device_types:
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if _applies(x, w):
                with _tf32():
                    return F.linear(stacked(x, -1, lo_first=False), self.weight(w), b)
        if func in (torch.matmul, torch.Tensor.__matmul__) and not kwargs:
            a, b = args
            if a.device.type in self.device_types and _applies(a, b):
                with _tf32():
                    return torch.matmul(stacked(a, -1, False), stacked(b, -2, True))
        return func(*args, **kwargs)


_ACTIVE: list[_Split] = []  # the blocks open now, innermost last


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


@contextlib.contextmanager
def float32_on_tensor_cores(enabled: bool = True, devices=("cuda",)) -> Iterator[None]:
    """Inside the block, float32 F.linear and matmul (outside autocast) on `devices` run
    as split TF32 GEMMs: float32-level results on tensor cores. `devices=("cpu",)`
    runs the same arithmetic on the CPU (tests: there TF32 does not exist, so the
    split is exact up to float32's own rounding). A block opened inside another for
    the same devices adds nothing: the outer one's weights, split once, serve both
    (but for inside a CUDA-graph capture, which must read only weights split in it)."""
    if not enabled:
        yield
        return
    if _ACTIVE and _ACTIVE[-1].device_types == tuple(devices) and not _capturing():
        yield
        return
    mode = _Split(tuple(devices))
    _ACTIVE.append(mode)
    try:
        with mode:
            yield
    finally:
        _ACTIVE.pop()
