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

`float32_on_tensor_cores(model)` applies it, on CUDA inside the block, to the
float32 products of the model's linear layers and of `linear` and `matmul` (not
under autocast, whose products are 16-bit anyway), and to nothing else: the rest
of the forward pays no routing cost. On
CUDA one Triton kernel reads each operand once and writes its stacked parts
(`KERNEL`); elsewhere, and without Triton, the same bits come from torch ops.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

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


class _Block:
    """An open block: its devices and its weights, each split once, keyed by its address,
    shape, strides and version (the weight is kept alive with its split, so no other
    tensor can take its address)."""

    def __init__(self, devices: tuple[str, ...]):
        self.devices = devices
        self.weights: dict = {}

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        key = (w.data_ptr(), tuple(w.shape), w.stride(), w._version)
        if key not in self.weights:
            self.weights[key] = (w, stacked(w, 1, lo_first=True))
        return self.weights[key][1]


def _routing(*tensors) -> _Block | None:
    """The innermost open block for the operands' device, where they are float32 outside
    autocast; else None."""
    if not _ACTIVE:
        return None
    device = tensors[0].device.type
    for block in reversed(_ACTIVE):
        if device in block.devices:
            return block if _applies(*tensors) else None
    return None


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, w, b); inside a `float32_on_tensor_cores` block, where it applies, as
    one split TF32 GEMM ([x_hi | x_lo | x_hi] [w_hi ; w_hi ; w_lo])."""
    block = _routing(x, w)
    if block is None:
        return F.linear(x, w, b)
    with _tf32():
        return F.linear(stacked(x, -1, lo_first=False), block.weight(w), b)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b; inside a `float32_on_tensor_cores` block, where it applies, as one split
    TF32 GEMM."""
    if _routing(a, b) is None:
        return torch.matmul(a, b)
    with _tf32():
        return torch.matmul(stacked(a, -1, lo_first=False), stacked(b, -2, lo_first=True))


def _linear_forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, module.weight, module.bias)


@contextlib.contextmanager
def _routed_linears(model: nn.Module | None) -> Iterator[None]:
    """`model`'s nn.Linear layers call `linear` inside the block: each gets an instance
    `forward` for the block's duration (removed afterwards, so the module is as before;
    nothing is set on the class, so other models are untouched). A subclass with a
    forward of its own is left alone."""
    swapped = []
    try:
        if model is not None:
            for m in model.modules():
                plain = isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward
                if plain and "forward" not in m.__dict__:
                    m.forward = functools.partial(_linear_forward, m)
                    swapped.append(m)
        yield
    finally:
        for m in swapped:
            del m.forward


_ACTIVE: list[_Block] = []  # the blocks open now, innermost last


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


@contextlib.contextmanager
def float32_on_tensor_cores(
    model: nn.Module | None = None, enabled: bool = True, devices=("cuda",)
) -> Iterator[None]:
    """Inside the block, the float32 products (outside autocast, on `devices`) of `model`'s
    nn.Linear layers and of every `linear` and `matmul` call of this module run as split
    TF32 GEMMs: float32-level results on tensor cores. Nothing else is routed, so the
    rest of the forward runs at torch's own speed (the products it does not name, such
    as attention's, stay in float32). `devices=("cpu",)` runs the same arithmetic on
    the CPU (tests: there TF32 does not exist, so the split is exact up to float32's
    own rounding). A block opened inside another for the same devices adds only the
    routing of its model's layers: the outer one's weights, split once, serve both
    (but for inside a CUDA-graph capture, which must read only weights split in it)."""
    if not enabled:
        yield
        return
    with _routed_linears(model):
        if _ACTIVE and _ACTIVE[-1].devices == tuple(devices) and not _capturing():
            yield
            return
        _ACTIVE.append(_Block(tuple(devices)))
        try:
            yield
        finally:
            _ACTIVE.pop()
