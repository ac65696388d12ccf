"""Fused composition of the folded RA weight W_f: one Triton kernel forward, two backward.

Design notes: docs/models.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of torch; CPU installs use the plain composition
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

HAS_TRITON = triton is not None


@dataclass
class FusedSettings:
    """How the composition kernels run (tools and tests change them; ra itself does not)."""

    enabled: bool = True  # fused kernels on CUDA tensors when Triton imports
    in_compile: bool = True  # also inside torch.compile (traced as user-defined Triton kernels)
    fast_launch: bool = True  # eager repeats launch through the compiled kernel's own launcher
    block_c: int = 64  # columns per program (H100 sweep: docs/performance.md)
    num_warps: int = 4
    use_dot: bool = True  # 16-bit operands: the small products P^T W, P G, W G^T via tl.dot
    # `FoldedLinear` (the composition's backward beside dx's GEMM) for grad-enabled projections:
    # "graph" under CUDA-graph capture only, "always", or "never"
    overlap: str = "graph"


SETTINGS = FusedSettings()
_DOT_DTYPES = (torch.float16, torch.bfloat16)

_alloc = torch.empty  # every buffer the kernels write comes from here (tests poison it)


def use_fused(t: torch.Tensor) -> bool:
    """Whether the fused composition serves weights like `t` here and now."""
    if not (SETTINGS.enabled and HAS_TRITON and t.is_cuda):
        return False
    return SETTINGS.in_compile or not torch.compiler.is_compiling()


@contextlib.contextmanager
def settings(**changes) -> Iterator[None]:
    """`SETTINGS` with `changes` (field=value) inside the block, as they were after it."""
    before = {name: getattr(SETTINGS, name) for name in changes}
    try:
        for name, value in changes.items():
            setattr(SETTINGS, name, value)
        yield
    finally:
        for name, value in before.items():
            setattr(SETTINGS, name, value)


def disabled() -> contextlib.AbstractContextManager:
    """Use the plain torch composition inside the block (reference and timing)."""
    return settings(enabled=False)


def out_dtype(t: torch.Tensor) -> torch.dtype:
    """W_f's dtype: CUDA autocast's dtype when autocast is on (as F.linear would cast), else t's."""
    if torch.is_autocast_enabled("cuda") and t.dtype != torch.float64:
        return torch.get_autocast_dtype("cuda")
    return t.dtype


def _pow2(n: int) -> int:
    """The smallest power of two >= n, at least 16 (a tile width for tl.arange)."""
    return max(16, 1 << max(int(n) - 1, 0).bit_length())


if HAS_TRITON:

    @triton.jit
    def _up(x, FP64: tl.constexpr):
        """The accumulation dtype: float64 for float64 inputs, else float32."""
        if FP64:
            y = x.to(tl.float64)
        else:
            y = x.to(tl.float32)
        return y

    @triton.jit
    def _ra_v5_fwd_kernel(
        wq_ptr,
        wk_ptr,
        wv_ptr,
        p_ptr,
        ws_ptr,
        wr_ptr,
        out_ptr,
        C,
        D: tl.constexpr,
        DS: tl.constexpr,
        R: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_R: tl.constexpr,
        DOT: tl.constexpr,
        FP64: tl.constexpr,
    ):
        h = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        rows = tl.arange(0, BLOCK_D)
        cmask = cols < C
        smask = (rows < DS)[:, None] & cmask[None, :]
        vmask = (rows < D)[:, None] & cmask[None, :]
        tile = rows[:, None] * C + cols[None, :]
        src = h * DS * C + tile  # rows of head h in W_q, W_k
        wq_in = tl.load(wq_ptr + src, mask=smask, other=0.0)
        wk_in = tl.load(wk_ptr + src, mask=smask, other=0.0)
        v = tl.load(wv_ptr + h * D * C + tile, mask=vmask, other=0.0)
        w_std = _up(tl.load(ws_ptr + h), FP64)
        w_rec = _up(tl.load(wr_ptr + h), FP64)
        ty = out_ptr.dtype.element_ty
        dst_q = out_ptr + h * D * C  # head h's first row in the Qf block
        dst_k = out_ptr + (C + h * D) * C  # ... in the Kf block
        dst_v = out_ptr + (2 * C + h * D) * C  # ... in the V block
        tl.store(dst_q + tile, (w_std * _up(wq_in, FP64)).to(ty), mask=smask)
        tl.store(dst_k + tile, wk_in.to(ty), mask=smask)
        tl.store(dst_v + tile, v.to(ty), mask=vmask)
        if DOT:  # P_h^T W on the matrix units, operands in the (16-bit) output dtype
            rr = tl.arange(0, BLOCK_R)
            pt = tl.load(  # P_h^T, zero-padded to BLOCK_R x BLOCK_D
                p_ptr + (h * DS + rows[None, :]) * R + rr[:, None],
                mask=(rr[:, None] < R) & (rows[None, :] < DS),
                other=0.0,
            ).to(ty)
            ptk = tl.dot(pt, wk_in.to(ty))
            ptq = tl.dot(pt, wq_in.to(ty))
            rmask = (rr < R)[:, None] & cmask[None, :]
            rtile = (DS + rr)[:, None] * C + cols[None, :]
            tl.store(dst_q + rtile, (w_rec * ptk).to(ty), mask=rmask)
            tl.store(dst_k + rtile, ptq.to(ty), mask=rmask)
        else:  # exact: one column reduction per reciprocal row
            wq = _up(wq_in, FP64)
            wk = _up(wk_in, FP64)
            for r in tl.static_range(R):
                p_r = _up(tl.load(p_ptr + (h * DS + rows) * R + r, mask=rows < DS, other=0.0), FP64)
                ptk = tl.sum(p_r[:, None] * wk, axis=0)  # row r of P^T W_k,h
                ptq = tl.sum(p_r[:, None] * wq, axis=0)  # row r of P^T W_q,h
                tl.store(dst_q + (DS + r) * C + cols, (w_rec * ptk).to(ty), mask=cmask)
                tl.store(dst_k + (DS + r) * C + cols, ptq.to(ty), mask=cmask)

    @triton.jit
    def _ra_v5_bwd_kernel(
        g_ptr,
        wq_ptr,
        wk_ptr,
        p_ptr,
        ws_ptr,
        wr_ptr,
        dwq_ptr,
        dwk_ptr,
        dwv_ptr,
        part_ptr,
        std_ptr,
        C,
        H,
        D: tl.constexpr,
        DS: tl.constexpr,
        R: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_R: tl.constexpr,
        COPY_V: tl.constexpr,
        DOT: tl.constexpr,
        FP64: tl.constexpr,
    ):
        h = tl.program_id(0)
        t = tl.program_id(1)
        cols = t * BLOCK_C + tl.arange(0, BLOCK_C)
        rows = tl.arange(0, BLOCK_D)
        cmask = cols < C
        rmask = rows < DS
        smask = rmask[:, None] & cmask[None, :]
        tile = rows[:, None] * C + cols[None, :]
        src = h * DS * C + tile
        g_q = g_ptr + h * D * C  # head h's rows of G in the Qf block
        g_k = g_ptr + (C + h * D) * C  # ... in the Kf block
        g_qs = _up(tl.load(g_q + tile, mask=smask, other=0.0), FP64)
        g_ks = _up(tl.load(g_k + tile, mask=smask, other=0.0), FP64)
        wq_in = tl.load(wq_ptr + src, mask=smask, other=0.0)
        wk_in = tl.load(wk_ptr + src, mask=smask, other=0.0)
        w_std = _up(tl.load(ws_ptr + h), FP64)
        w_rec = _up(tl.load(wr_ptr + h), FP64)
        dwq = w_std * g_qs
        dwk = g_ks
        std_part = tl.sum(tl.sum(g_qs * _up(wq_in, FP64), axis=1), axis=0)
        part = part_ptr + (t * H + h) * 2 * DS * R  # partial A_h, then B_h, each (DS, R)
        if DOT:  # the four small products on the matrix units, operands in G's (16-bit) dtype
            gt = g_ptr.dtype.element_ty
            rr = tl.arange(0, BLOCK_R)
            rtile = (DS + rr)[:, None] * C + cols[None, :]
            gmask = (rr < R)[:, None] & cmask[None, :]
            g_qr = tl.load(g_q + rtile, mask=gmask, other=0.0)  # (BLOCK_R, BLOCK_C)
            g_kr = tl.load(g_k + rtile, mask=gmask, other=0.0)
            pmask = rmask[:, None] & (rr < R)[None, :]
            ptile = rows[:, None] * R + rr[None, :]
            p = tl.load(p_ptr + h * DS * R + ptile, mask=pmask, other=0.0).to(gt)
            dwq += tl.dot(p, g_kr)  # P_h G_Kr,h
            dwk += w_rec * tl.dot(p, g_qr)  # w_rec P_h G_Qr,h
            a = tl.dot(wk_in.to(gt), tl.trans(g_qr))  # W_k,h G_Qr,h^T over this tile
            b = tl.dot(wq_in.to(gt), tl.trans(g_kr))  # W_q,h G_Kr,h^T over this tile
            tl.store(part + ptile, a, mask=pmask)
            tl.store(part + DS * R + ptile, b, mask=pmask)
        else:  # exact: outer products and row reductions, one reciprocal row at a time
            wq = _up(wq_in, FP64)
            wk = _up(wk_in, FP64)
            for r in tl.static_range(R):
                p_r = _up(tl.load(p_ptr + (h * DS + rows) * R + r, mask=rmask, other=0.0), FP64)
                g_qr = _up(tl.load(g_q + (DS + r) * C + cols, mask=cmask, other=0.0), FP64)
                g_kr = _up(tl.load(g_k + (DS + r) * C + cols, mask=cmask, other=0.0), FP64)
                dwq += p_r[:, None] * g_kr[None, :]
                dwk += (w_rec * p_r)[:, None] * g_qr[None, :]
                a_r = tl.sum(wk * g_qr[None, :], axis=1)  # column r of W_k,h G_Qr,h^T
                b_r = tl.sum(wq * g_kr[None, :], axis=1)  # column r of W_q,h G_Kr,h^T
                tl.store(part + rows * R + r, a_r, mask=rmask)
                tl.store(part + DS * R + rows * R + r, b_r, mask=rmask)
        tl.store(dwq_ptr + src, dwq.to(dwq_ptr.dtype.element_ty), mask=smask)
        tl.store(dwk_ptr + src, dwk.to(dwk_ptr.dtype.element_ty), mask=smask)
        tl.store(std_ptr + t * H + h, std_part)
        if COPY_V:  # G_V in W_v's dtype (autocast: bf16 G, float32 W_v)
            vmask = (rows < D)[:, None] & cmask[None, :]
            g_v = tl.load(g_ptr + (2 * C + h * D) * C + tile, mask=vmask, other=0.0)
            tl.store(dwv_ptr + h * D * C + tile, g_v.to(dwv_ptr.dtype.element_ty), mask=vmask)

    @triton.jit
    def _ra_v5_reduce_kernel(
        part_ptr,
        std_ptr,
        p_ptr,
        wr_ptr,
        dp_ptr,
        dws_ptr,
        dwr_ptr,
        n_tiles,
        H,
        DS: tl.constexpr,
        R: tl.constexpr,
        BLOCK_DR: tl.constexpr,
        BLOCK_T: tl.constexpr,
        FP64: tl.constexpr,
    ):
        h = tl.program_id(0)
        idx = tl.arange(0, BLOCK_DR)  # flat (d, r) index, d * R + r, as in P_h
        m = idx < DS * R
        a = _up(tl.zeros([BLOCK_DR], dtype=tl.float32), FP64)
        b = _up(tl.zeros([BLOCK_DR], dtype=tl.float32), FP64)
        s = _up(tl.zeros([BLOCK_T], dtype=tl.float32), FP64)
        for t0 in range(0, n_tiles, BLOCK_T):  # BLOCK_T tiles per step: one step at GPT-2 size
            ts = t0 + tl.arange(0, BLOCK_T)
            tm = ts < n_tiles
            m2 = tm[:, None] & m[None, :]
            part = part_ptr + (ts[:, None] * H + h) * 2 * DS * R + idx[None, :]
            a += tl.sum(tl.load(part, mask=m2, other=0.0), axis=0)
            b += tl.sum(tl.load(part + DS * R, mask=m2, other=0.0), axis=0)
            s += tl.load(std_ptr + ts * H + h, mask=tm, other=0.0)
        p = _up(tl.load(p_ptr + h * DS * R + idx, mask=m, other=0.0), FP64)
        w_rec = _up(tl.load(wr_ptr + h), FP64)
        tl.store(dp_ptr + h * DS * R + idx, (w_rec * a + b).to(dp_ptr.dtype.element_ty), mask=m)
        tl.store(dwr_ptr + h, tl.sum(p * a, axis=0).to(dwr_ptr.dtype.element_ty))
        tl.store(dws_ptr + h, tl.sum(s, axis=0).to(dws_ptr.dtype.element_ty))

    @triton.jit
    def _untied_fwd_kernel(
        qs_ptr,
        qr_ptr,
        ks_ptr,
        kr_ptr,
        wv_ptr,
        ws_ptr,
        wr_ptr,
        out_ptr,
        C,
        D: tl.constexpr,
        DS: tl.constexpr,
        R: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_C: tl.constexpr,
        FP64: tl.constexpr,
    ):
        h = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        rows = tl.arange(0, BLOCK_D)
        cmask = cols < C
        is_s = rows < DS
        is_r = (rows >= DS) & (rows < D)
        smask = is_s[:, None] & cmask[None, :]
        rmask = is_r[:, None] & cmask[None, :]
        vmask = (rows < D)[:, None] & cmask[None, :]
        tile = rows[:, None] * C + cols[None, :]
        s_src = h * DS * C + tile  # standard rows of head h
        r_src = (h * R - DS) * C + tile  # reciprocal rows: row DS + r of the tile is row h R + r
        qs = _up(tl.load(qs_ptr + s_src, mask=smask, other=0.0), FP64)
        qr = _up(tl.load(qr_ptr + r_src, mask=rmask, other=0.0), FP64)
        ks = tl.load(ks_ptr + s_src, mask=smask, other=0.0)
        kr = tl.load(kr_ptr + r_src, mask=rmask, other=0.0)
        v = tl.load(wv_ptr + h * D * C + tile, mask=vmask, other=0.0)
        w_std = _up(tl.load(ws_ptr + h), FP64)
        w_rec = _up(tl.load(wr_ptr + h), FP64)
        ty = out_ptr.dtype.element_ty
        q = tl.where(is_s[:, None], w_std * qs, w_rec * qr)
        k = tl.where(is_s[:, None], ks, kr)
        tl.store(out_ptr + h * D * C + tile, q.to(ty), mask=vmask)
        tl.store(out_ptr + (C + h * D) * C + tile, k.to(ty), mask=vmask)
        tl.store(out_ptr + (2 * C + h * D) * C + tile, v.to(ty), mask=vmask)

    @triton.jit
    def _untied_bwd_kernel(
        g_ptr,
        qs_ptr,
        qr_ptr,
        ws_ptr,
        wr_ptr,
        dqs_ptr,
        dqr_ptr,
        dks_ptr,
        dkr_ptr,
        dwv_ptr,
        part_ptr,
        C,
        H,
        D: tl.constexpr,
        DS: tl.constexpr,
        R: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_C: tl.constexpr,
        COPY_V: tl.constexpr,
        FP64: tl.constexpr,
    ):
        h = tl.program_id(0)
        t = tl.program_id(1)
        cols = t * BLOCK_C + tl.arange(0, BLOCK_C)
        rows = tl.arange(0, BLOCK_D)
        cmask = cols < C
        is_s = rows < DS
        is_r = (rows >= DS) & (rows < D)
        smask = is_s[:, None] & cmask[None, :]
        rmask = is_r[:, None] & cmask[None, :]
        vmask = (rows < D)[:, None] & cmask[None, :]
        tile = rows[:, None] * C + cols[None, :]
        s_src = h * DS * C + tile
        r_src = (h * R - DS) * C + tile
        g_q = _up(tl.load(g_ptr + h * D * C + tile, mask=vmask, other=0.0), FP64)
        g_k = tl.load(g_ptr + (C + h * D) * C + tile, mask=vmask, other=0.0)
        qs = _up(tl.load(qs_ptr + s_src, mask=smask, other=0.0), FP64)
        qr = _up(tl.load(qr_ptr + r_src, mask=rmask, other=0.0), FP64)
        w_std = _up(tl.load(ws_ptr + h), FP64)
        w_rec = _up(tl.load(wr_ptr + h), FP64)
        tl.store(dqs_ptr + s_src, (w_std * g_q).to(dqs_ptr.dtype.element_ty), mask=smask)
        tl.store(dqr_ptr + r_src, (w_rec * g_q).to(dqr_ptr.dtype.element_ty), mask=rmask)
        tl.store(dks_ptr + s_src, g_k.to(dks_ptr.dtype.element_ty), mask=smask)
        tl.store(dkr_ptr + r_src, g_k.to(dkr_ptr.dtype.element_ty), mask=rmask)
        # qs, qr are zero outside their rows, so the two products split the tile cleanly
        tl.store(part_ptr + t * 2 * H + h, tl.sum(tl.sum(g_q * qs, axis=1), axis=0))
        tl.store(part_ptr + t * 2 * H + H + h, tl.sum(tl.sum(g_q * qr, axis=1), axis=0))
        if COPY_V:
            g_v = tl.load(g_ptr + (2 * C + h * D) * C + tile, mask=vmask, other=0.0)
            tl.store(dwv_ptr + h * D * C + tile, g_v.to(dwv_ptr.dtype.element_ty), mask=vmask)


_COMPILED: dict = {}  # (kernel, warps, constexprs, argument specialisation) -> compiled kernel


def _spec(a) -> tuple:
    """What Triton specialises a runtime argument on: dtype and 16-byte alignment of a
    tensor, equality to 1 and divisibility by 16 of an integer."""
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    return (type(a), a == 1, a % 16 == 0)


def _launch(fn, grid: tuple, args: tuple, meta: dict, num_warps: int) -> None:
    """`fn[grid](*args, **meta, num_warps=num_warps)`, through the compiled kernel on repeats.

    Triton's launch binds and specialises every argument in Python on every call.
    The first launch of a specialisation goes through it and keeps the compiled
    kernel; later ones call that kernel's launcher directly with the same
    arguments (constexprs included, in signature order, as Triton passes them).
    Under torch.compile the plain launch is kept: dynamo traces it. Measured on
    the H200 machine (docs/performance.md), `folded_weight()`'s host time did
    not change with it (73.5 us before, 75.4 us after): Triton 3.6's own launch
    path is not where that time goes.
    """
    if not SETTINGS.fast_launch or torch.compiler.is_compiling():
        fn[grid](*args, **meta, num_warps=num_warps)
        return
    key = (fn, num_warps, tuple(meta.items()), tuple(map(_spec, args)))
    k = _COMPILED.get(key)
    if k is None:
        k = fn[grid](*args, **meta, num_warps=num_warps)
        if hasattr(k, "packed_metadata"):  # a compiled kernel (not the interpreter's)
            _COMPILED[key] = k
        return
    tail = [meta[name] for name in fn.arg_names[len(args) :]]
    g = tuple(grid) + (1,) * (3 - len(grid))
    stream = torch._C._cuda_getCurrentRawStream(args[0].device.index)
    hooks = triton.knobs.runtime
    k.run(
        g[0], g[1], g[2], stream, k.function, k.packed_metadata, None,
        hooks.launch_enter_hook, hooks.launch_exit_hook, *args, *tail,
    )  # fmt: skip


def _dims(H: int, C: int) -> tuple[int, int, int]:
    D = C // H
    return D, _pow2(D), (C + SETTINGS.block_c - 1) // SETTINGS.block_c


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _grad_v(G: torch.Tensor, W_v: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """dW_v: the V rows of G when the dtypes agree (a contiguous view), else a buffer to fill."""
    C = W_v.shape[0]
    if G.dtype == W_v.dtype:
        return G[2 * C :], False
    return _alloc(W_v.shape, device=G.device, dtype=W_v.dtype), True


def _on(stream) -> contextlib.AbstractContextManager:
    """`torch.cuda.stream(stream)` once `stream` has waited for everything enqueued so far on
    the current stream (the buffers' allocations included), or nothing for None."""
    if stream is None:
        return contextlib.nullcontext()
    stream.wait_stream(torch.cuda.current_stream(stream.device))
    return torch.cuda.stream(stream)


def _meta(D: int, DS: int, R: int, BLOCK_D: int, **more) -> dict:
    """The compile-time constants a variant's forward and backward kernels share."""
    return dict(D=D, DS=DS, R=R, BLOCK_D=BLOCK_D, BLOCK_C=SETTINGS.block_c, **more)


def _ra_v5_meta(D: int, DS: int, R: int, BLOCK_D: int, dtype: torch.dtype) -> dict:
    """`_meta` with ra_v5's reciprocal width and whether the small products use `tl.dot`."""
    return _meta(D, DS, R, BLOCK_D, BLOCK_R=_pow2(R), DOT=SETTINGS.use_dot and dtype in _DOT_DTYPES)


def _ra_v5_weight(W_q, W_k, W_v, P, w_std, w_rec, dtype) -> torch.Tensor:
    """ra_v5's W_f (3C x C) in `dtype` from contiguous parameters, in one launch."""
    H, DS, R = P.shape
    C = W_v.shape[1]
    D, BLOCK_D, n_tiles = _dims(H, C)
    W_f = _alloc((3 * C, C), device=W_q.device, dtype=dtype)
    _launch(
        _ra_v5_fwd_kernel,
        (H, n_tiles),
        (W_q, W_k, W_v, P, w_std, w_rec, W_f, C),
        dict(**_ra_v5_meta(D, DS, R, BLOCK_D, dtype), FP64=W_q.dtype == torch.float64),
        SETTINGS.num_warps,
    )
    return W_f


def _ra_v5_grads(G, W_q, W_k, W_v, P, w_std, w_rec, stream=None):
    """The parameters' gradients for dW_f = G, in two launches on `stream` (None: the current
    one). Every buffer is allocated first, on the current stream, which `stream` then waits
    for (`_on`). Returns (gradients, scratch): the caller keeps `scratch` until the current
    stream has waited for `stream`."""
    G = G.contiguous()
    H, DS, R = P.shape
    C = W_v.shape[1]
    D, BLOCK_D, n_tiles = _dims(H, C)
    dev, acc = G.device, _acc_dtype(W_q)
    dW_q = _alloc(W_q.shape, device=dev, dtype=W_q.dtype)
    dW_k = _alloc(W_k.shape, device=dev, dtype=W_k.dtype)
    dW_v, copy_v = _grad_v(G, W_v)
    part = _alloc((n_tiles, H, 2, DS, R), device=dev, dtype=acc)
    std_part = _alloc((n_tiles, H), device=dev, dtype=acc)
    dP = _alloc(P.shape, device=dev, dtype=P.dtype)
    dw_std = _alloc(w_std.shape, device=dev, dtype=w_std.dtype)
    dw_rec = _alloc(w_rec.shape, device=dev, dtype=w_rec.dtype)
    fp64 = acc == torch.float64
    with _on(stream):
        _launch(
            _ra_v5_bwd_kernel,
            (H, n_tiles),
            (
                G,
                W_q,
                W_k,
                P,
                w_std,
                w_rec,
                dW_q,
                dW_k,
                dW_v,
                part,
                std_part,
                C,
                H,
            ),
            dict(**_ra_v5_meta(D, DS, R, BLOCK_D, G.dtype), COPY_V=copy_v, FP64=fp64),
            SETTINGS.num_warps,
        )
        _launch(
            _ra_v5_reduce_kernel,
            (H,),
            (
                part,
                std_part,
                P,
                w_rec,
                dP,
                dw_std,
                dw_rec,
                n_tiles,
                H,
            ),
            dict(DS=DS, R=R, BLOCK_DR=_pow2(DS * R), BLOCK_T=min(32, _pow2(n_tiles)), FP64=fp64),
            8,
        )
    return (dW_q, dW_k, dW_v, dP, dw_std, dw_rec), (G, part, std_part)


def _untied_weight(W_qs, W_qr, W_ks, W_kr, W_v, w_std, w_rec, dtype) -> torch.Tensor:
    """As `_ra_v5_weight`, for ra_v5_untied."""
    H = w_std.shape[0]
    C = W_v.shape[1]
    D, BLOCK_D, n_tiles = _dims(H, C)
    R = W_qr.shape[0] // H
    W_f = _alloc((3 * C, C), device=W_qs.device, dtype=dtype)
    _launch(
        _untied_fwd_kernel,
        (H, n_tiles),
        (W_qs, W_qr, W_ks, W_kr, W_v, w_std, w_rec, W_f, C),
        _meta(D, D - R, R, BLOCK_D, FP64=W_qs.dtype == torch.float64),
        SETTINGS.num_warps,
    )
    return W_f


def _untied_grads(G, W_qs, W_qr, W_ks, W_kr, W_v, w_std, w_rec, stream=None):
    """As `_ra_v5_grads`, for ra_v5_untied: one launch and the gates' sum, on `stream`."""
    G = G.contiguous()
    H = w_std.shape[0]
    C = W_v.shape[1]
    D, BLOCK_D, n_tiles = _dims(H, C)
    R = W_qr.shape[0] // H
    dev, acc = G.device, _acc_dtype(W_qs)
    dW_qs, dW_qr, dW_ks, dW_kr = (
        _alloc(t.shape, device=dev, dtype=t.dtype) for t in (W_qs, W_qr, W_ks, W_kr)
    )
    dW_v, copy_v = _grad_v(G, W_v)
    part = _alloc((n_tiles, 2, H), device=dev, dtype=acc)
    gates = _alloc((2, H), device=dev, dtype=acc)
    dw_std = _alloc(w_std.shape, device=dev, dtype=w_std.dtype)
    dw_rec = _alloc(w_rec.shape, device=dev, dtype=w_rec.dtype)
    with _on(stream):
        _launch(
            _untied_bwd_kernel,
            (H, n_tiles),
            (
                G,
                W_qs,
                W_qr,
                w_std,
                w_rec,
                dW_qs,
                dW_qr,
                dW_ks,
                dW_kr,
                dW_v,
                part,
                C,
                H,
            ),
            _meta(D, D - R, R, BLOCK_D, COPY_V=copy_v, FP64=acc == torch.float64),
            SETTINGS.num_warps,
        )
        torch.sum(part, 0, out=gates)  # (2, H): dw_std, dw_rec
        dw_std.copy_(gates[0])
        dw_rec.copy_(gates[1])
    return (dW_qs, dW_qr, dW_ks, dW_kr, dW_v, dw_std, dw_rec), (G, part, gates)


class ComposeRAv5(torch.autograd.Function):
    """W_f of ra_v5 from (W_q, W_k, W_v, P, w_std, w_rec); formulas in the module docstring."""

    @staticmethod
    def forward(ctx, W_q, W_k, W_v, P, w_std, w_rec, dtype):
        params = tuple(t.contiguous() for t in (W_q, W_k, W_v, P, w_std, w_rec))
        ctx.save_for_backward(*params)
        return _ra_v5_weight(*params, dtype)

    @staticmethod
    def backward(ctx, G):
        return *_ra_v5_grads(G, *ctx.saved_tensors)[0], None


class ComposeUntied(torch.autograd.Function):
    """W_f of ra_v5_untied from (W_qs, W_qr, W_ks, W_kr, W_v, w_std, w_rec)."""

    @staticmethod
    def forward(ctx, W_qs, W_qr, W_ks, W_kr, W_v, w_std, w_rec, dtype):
        params = tuple(t.contiguous() for t in (W_qs, W_qr, W_ks, W_kr, W_v, w_std, w_rec))
        ctx.save_for_backward(*params)
        return _untied_weight(*params, dtype)

    @staticmethod
    def backward(ctx, G):
        return *_untied_grads(G, *ctx.saved_tensors)[0], None


_VARIANTS = {
    "ra_v5": (_ra_v5_weight, _ra_v5_grads),
    "ra_v5_untied": (_untied_weight, _untied_grads),
}
_SIDE: dict[int, torch.cuda.Stream] = {}  # device index -> the composition's backward stream


def _side_stream(t: torch.Tensor):
    """The stream the composition's backward runs on beside dx's GEMM (None on the CPU)."""
    if not t.is_cuda:
        return None
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    side = _SIDE.get(index)
    if side is None:
        side = _SIDE[index] = torch.cuda.Stream(device=index)
    return side


class FoldedLinear(torch.autograd.Function):
    """y = x W_f^T with W_f composed by the fused kernel: the projection and its composition
    as one node, so that the backward can order them. The backward computes dW_f = dy^T x
    first; the composition's backward (the parameters' gradients from dW_f) then runs on a
    side stream while dx = dy W_f runs on the current one, and the current stream waits for
    the side one before the node returns. On the CPU both run one after the other."""

    @staticmethod
    def forward(ctx, x, variant, dtype, *params):
        weight, ctx.grads = _VARIANTS[variant]
        params = tuple(t.contiguous() for t in params)
        xc = x.to(dtype)  # what autocast would hand F.linear
        W_f = weight(*params, dtype)
        ctx.save_for_backward(xc, W_f, *params)
        return F.linear(xc, W_f)

    @staticmethod
    def backward(ctx, dy):
        xc, W_f, *params = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        G = dy2.t().mm(xc.reshape(-1, xc.shape[-1]))  # dW_f
        need_x = ctx.needs_input_grad[0]
        side = _side_stream(G) if need_x else None
        grads, scratch = ctx.grads(G, *params, stream=side)  # side waits for G and the buffers
        dx = dy2.mm(W_f).view(xc.shape) if need_x else None
        if side is not None:
            torch.cuda.current_stream(G.device).wait_stream(side)
        del scratch  # freed on the current stream only once the side stream's work is ordered
        return dx, None, None, *grads


def overlapped(t: torch.Tensor) -> bool:
    """Whether a grad-enabled projection with weights like `t` goes through `FoldedLinear`.

    By default (`SETTINGS.overlap == "graph"`) only while a CUDA graph is captured: a replay
    pays nothing for the side stream's fork and join, which launched from Python each call
    cost more host time than they hide (docs/performance.md, tenth round). torch.compile
    traces the two nodes whatever the setting."""
    if SETTINGS.overlap == "never" or not torch.is_grad_enabled() or not use_fused(t):
        return False
    if torch.compiler.is_compiling():
        return False
    return SETTINGS.overlap == "always" or torch.cuda.is_current_stream_capturing()


def compose_ra_v5(W_q, W_k, W_v, P, w_std, w_rec) -> torch.Tensor:
    """ra_v5's W_f (3C x C) in `out_dtype(W_q)`, in one kernel; differentiable."""
    return ComposeRAv5.apply(W_q, W_k, W_v, P, w_std, w_rec, out_dtype(W_q))


def compose_untied(W_qs, W_qr, W_ks, W_kr, W_v, w_std, w_rec) -> torch.Tensor:
    """ra_v5_untied's W_f (3C x C) in `out_dtype(W_qs)`, in one kernel; differentiable."""
    return ComposeUntied.apply(W_qs, W_qr, W_ks, W_kr, W_v, w_std, w_rec, out_dtype(W_qs))


def folded_linear(x: torch.Tensor, variant: str, *params: torch.Tensor) -> torch.Tensor:
    """x W_f^T for `variant` ("ra_v5" or "ra_v5_untied", parameters in `compose_*`'s order),
    W_f in `out_dtype(params[0])`; differentiable (`FoldedLinear`)."""
    return FoldedLinear.apply(x, variant, out_dtype(params[0]), *params)
