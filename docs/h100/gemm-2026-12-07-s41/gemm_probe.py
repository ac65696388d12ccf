"""Probe: ra_v5's folded projection with W_f composed inside the GEMM, against cuBLAS.

[Qf | Kf | V] = x W_f^T, where per head h (D_std = 60, R = 4):
    Qf_h = [w_std q_h | w_rec k_h P_h],  Kf_h = [k_h | q_h P_h],  q_h = x W_q,h^T, k_h = x W_k,h^T
The kernel `qkv` computes q_h and k_h as two 64-column accumulators of one program
(rows 60h .. 60h+63 of W_q and of W_k; the last 4 columns of each are overwritten)
and applies P_h and the gates in the epilogue with two small tensor-core products,
so no W_f is written. V's columns are a plain product with W_v.

Arms, timed in interleaved rounds, each a CUDA graph of `PER` calls, CUDA events:
  cublas_wf     F.linear(x, W_f), W_f composed beforehand (the floor: the baseline's GEMM)
  compose+gemm  ra's path now: fused.compose_ra_v5 then F.linear
  triton_wf     this file's plain Triton GEMM against the composed W_f (Triton vs cuBLAS)
  fused         the composing GEMM (no W_f)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from racli_models import fused as ra_fused

H, DS, R, C = 12, 60, 4, 768
D = DS + R


@triton.jit
def _tile_rows(ptr_row, valid, offs_k, k0, K):
    return tl.load(ptr_row[:, None] + (k0 + offs_k)[None, :], mask=valid[:, None], other=0.0)


@triton.jit
def plain_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    M,
    N,
    K,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    GROUP: tl.constexpr,
):
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(N, BN)
    m_blocks = tl.cdiv(M, BM)
    per_group = GROUP * n_blocks
    g = pid // per_group
    first_m = g * GROUP
    rows_in = tl.minimum(m_blocks - first_m, GROUP)
    pid_m = first_m + (pid % per_group) % rows_in
    pid_n = (pid % per_group) // rows_in
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    a_ptr = x_ptr + offs_m[:, None].to(tl.int64) * K + offs_k[None, :]
    b_ptr = w_ptr + offs_n[:, None].to(tl.int64) * K + offs_k[None, :]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = tl.load(a_ptr + k0, mask=offs_m[:, None] < M, other=0.0)
        b = tl.load(b_ptr + k0, mask=offs_n[:, None] < N, other=0.0)
        acc = tl.dot(a, b.T, acc)
    y = y_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def qkv_kernel(
    x_ptr,
    wq_ptr,
    wk_ptr,
    wv_ptr,
    p_ptr,
    ws_ptr,
    wr_ptr,
    y_ptr,
    M,
    K,
    NH: tl.constexpr,
    DS: tl.constexpr,
    R: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    GROUP: tl.constexpr,
):
    """One program: BM rows of x against one head's Q and K rows (two 64-column halves),
    or against 128 rows of W_v. Output laid out as x W_f^T."""
    D: tl.constexpr = DS + R
    C = NH * D
    N = 3 * C
    n_blocks: tl.constexpr = NH + (NH * D) // 128  # heads, then 128-row blocks of W_v
    pid = tl.program_id(0)
    m_blocks = tl.cdiv(M, BM)
    per_group = GROUP * n_blocks
    g = pid // per_group
    first_m = g * GROUP
    rows_in = tl.minimum(m_blocks - first_m, GROUP)
    pid_m = first_m + (pid % per_group) % rows_in
    pid_n = (pid % per_group) // rows_in
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    in_m = offs_m[:, None] < M
    a_ptr = x_ptr + offs_m[:, None].to(tl.int64) * K + offs_k[None, :]
    r64 = tl.arange(0, D)
    out_row = y_ptr + offs_m[:, None].to(tl.int64) * N
    if pid_n < NH:
        h = pid_n
        live = r64 < DS
        q_ptr = wq_ptr + (h * DS + r64)[:, None].to(tl.int64) * K + offs_k[None, :]
        k_ptr = wk_ptr + (h * DS + r64)[:, None].to(tl.int64) * K + offs_k[None, :]
        acc_q = tl.zeros((BM, D), dtype=tl.float32)
        acc_k = tl.zeros((BM, D), dtype=tl.float32)
        for k0 in range(0, K, BK):
            a = tl.load(a_ptr + k0, mask=in_m, other=0.0)
            bq = tl.load(q_ptr + k0, mask=live[:, None], other=0.0)
            bk = tl.load(k_ptr + k0, mask=live[:, None], other=0.0)
            acc_q = tl.dot(a, bq.T, acc_q)
            acc_k = tl.dot(a, bk.T, acc_k)
        # P_h (DS x R) as a (D x 16) operand, and the (16 x D) placement into columns DS..D-1
        j = tl.arange(0, D)
        c16 = tl.arange(0, 16)
        p = tl.load(
            p_ptr + h * DS * R + j[:, None] * R + c16[None, :],
            mask=(j[:, None] < DS) & (c16[None, :] < R),
            other=0.0,
        ).to(tl.float32)
        place = tl.where(r64[None, :] == DS + c16[:, None], 1.0, 0.0)
        w_std = tl.load(ws_ptr + h).to(tl.float32)
        w_rec = tl.load(wr_ptr + h).to(tl.float32)
        kp = tl.dot(tl.dot(acc_k, p, input_precision="tf32"), place, input_precision="tf32")
        qp = tl.dot(tl.dot(acc_q, p, input_precision="tf32"), place, input_precision="tf32")
        qf = tl.where(live[None, :], acc_q * w_std, kp * w_rec)
        kf = tl.where(live[None, :], acc_k, qp)
        cols = h * D + r64
        tl.store(out_row + cols[None, :], qf.to(y_ptr.dtype.element_ty), mask=in_m)
        tl.store(out_row + C + cols[None, :], kf.to(y_ptr.dtype.element_ty), mask=in_m)
    else:
        vb = pid_n - NH
        r128 = tl.arange(0, 128)
        v_ptr = wv_ptr + (vb * 128 + r128)[:, None].to(tl.int64) * K + offs_k[None, :]
        acc_v = tl.zeros((BM, 128), dtype=tl.float32)
        for k1 in range(0, K, BK):
            a_v = tl.load(a_ptr + k1, mask=in_m, other=0.0)
            b_v = tl.load(v_ptr + k1)
            acc_v = tl.dot(a_v, b_v.T, acc_v)
        cols_v = 2 * C + vb * 128 + r128
        tl.store(out_row + cols_v[None, :], acc_v.to(y_ptr.dtype.element_ty), mask=in_m)


@triton.jit
def _ids(pid, M, n_blocks, BM: tl.constexpr, GROUP: tl.constexpr):
    m_blocks = tl.cdiv(M, BM)
    per_group = GROUP * n_blocks
    first_m = (pid // per_group) * GROUP
    rows_in = tl.minimum(m_blocks - first_m, GROUP)
    return first_m + (pid % per_group) % rows_in, (pid % per_group) // rows_in


@triton.jit
def plain_tma_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    M,
    N,
    K,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    GROUP: tl.constexpr,
):
    pid_m, pid_n = _ids(tl.program_id(0), M, tl.cdiv(N, BN), BM, GROUP)
    x_d = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
    w_d = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BN, BK])
    y_d = tl.make_tensor_descriptor(y_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN])
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = x_d.load([pid_m * BM, k0])
        b = w_d.load([pid_n * BN, k0])
        acc = tl.dot(a, b.T, acc)
    y_d.store([pid_m * BM, pid_n * BN], acc.to(y_ptr.dtype.element_ty))


@triton.jit
def qkv_tma_kernel(
    x_ptr,
    wq_ptr,
    wk_ptr,
    wv_ptr,
    p_ptr,
    ws_ptr,
    wr_ptr,
    y_ptr,
    M,
    K,
    NH: tl.constexpr,
    DS: tl.constexpr,
    R: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    GROUP: tl.constexpr,
):
    """`qkv_kernel` with every tile through a tensor descriptor (TMA). A head's 64-row
    W_q and W_k tiles start at row 60h: their last 4 rows (the next head's, or zeros past
    the end) land in the columns the epilogue overwrites."""
    D: tl.constexpr = DS + R
    C: tl.constexpr = NH * D
    pid_m, pid_n = _ids(tl.program_id(0), M, NH + C // 128, BM, GROUP)
    x_d = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
    y_d = tl.make_tensor_descriptor(
        y_ptr, shape=[M, 3 * C], strides=[3 * C, 1], block_shape=[BM, D]
    )
    r64 = tl.arange(0, D)
    if pid_n < NH:
        h = pid_n
        wq_d = tl.make_tensor_descriptor(
            wq_ptr, shape=[NH * DS, K], strides=[K, 1], block_shape=[D, BK]
        )
        wk_d = tl.make_tensor_descriptor(
            wk_ptr, shape=[NH * DS, K], strides=[K, 1], block_shape=[D, BK]
        )
        acc_q = tl.zeros((BM, D), dtype=tl.float32)
        acc_k = tl.zeros((BM, D), dtype=tl.float32)
        for k0 in range(0, K, BK):
            a = x_d.load([pid_m * BM, k0])
            acc_q = tl.dot(a, wq_d.load([h * DS, k0]).T, acc_q)
            acc_k = tl.dot(a, wk_d.load([h * DS, k0]).T, acc_k)
        j = tl.arange(0, D)
        c16 = tl.arange(0, 16)
        p = tl.load(
            p_ptr + h * DS * R + j[:, None] * R + c16[None, :],
            mask=(j[:, None] < DS) & (c16[None, :] < R),
            other=0.0,
        ).to(tl.float32)
        place = tl.where(r64[None, :] == DS + c16[:, None], 1.0, 0.0)
        w_std = tl.load(ws_ptr + h).to(tl.float32)
        w_rec = tl.load(wr_ptr + h).to(tl.float32)
        kp = tl.dot(tl.dot(acc_k, p, input_precision="tf32"), place, input_precision="tf32")
        qp = tl.dot(tl.dot(acc_q, p, input_precision="tf32"), place, input_precision="tf32")
        live = r64[None, :] < DS
        y_d.store(
            [pid_m * BM, h * D],
            tl.where(live, acc_q * w_std, kp * w_rec).to(y_ptr.dtype.element_ty),
        )
        y_d.store([pid_m * BM, C + h * D], tl.where(live, acc_k, qp).to(y_ptr.dtype.element_ty))
    else:
        vb = pid_n - NH
        wv_d = tl.make_tensor_descriptor(
            wv_ptr, shape=[C, K], strides=[K, 1], block_shape=[2 * D, BK]
        )
        acc_v = tl.zeros((BM, 2 * D), dtype=tl.float32)
        for k1 in range(0, K, BK):
            acc_v = tl.dot(x_d.load([pid_m * BM, k1]), wv_d.load([vb * 2 * D, k1]).T, acc_v)
        out_v = acc_v.to(y_ptr.dtype.element_ty).reshape(BM, 2, D).permute(0, 2, 1).split()
        y_d.store([pid_m * BM, 2 * C + vb * 2 * D], out_v[0])
        y_d.store([pid_m * BM, 2 * C + vb * 2 * D + D], out_v[1])


def _alloc(size, alignment, stream):
    return torch.empty(size, device="cuda", dtype=torch.int8)


def plain_tma(x, w, cfg):
    M, K = x.shape
    N = w.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(M, cfg["BM"]) * triton.cdiv(N, cfg["BN"]),)
    plain_tma_kernel[grid](
        x,
        w,
        y,
        M,
        N,
        K,
        BM=cfg["BM"],
        BN=cfg["BN"],
        BK=cfg["BK"],
        GROUP=cfg["GROUP"],
        num_warps=cfg["warps"],
        num_stages=cfg["stages"],
    )
    return y


def qkv_tma(x, W_q, W_k, W_v, P, w_std, w_rec, cfg):
    M, K = x.shape
    y = torch.empty(M, 3 * C, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(M, cfg["BM"]) * (H + C // 128),)
    qkv_tma_kernel[grid](
        x,
        W_q,
        W_k,
        W_v,
        P,
        w_std,
        w_rec,
        y,
        M,
        K,
        NH=H,
        DS=DS,
        R=R,
        BM=cfg["BM"],
        BK=cfg["BK"],
        GROUP=cfg["GROUP"],
        num_warps=cfg["warps"],
        num_stages=cfg["stages"],
    )
    return y


def plain(x, w, cfg):
    M, K = x.shape
    N = w.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(M, cfg["BM"]) * triton.cdiv(N, cfg["BN"]),)
    plain_kernel[grid](
        x,
        w,
        y,
        M,
        N,
        K,
        BM=cfg["BM"],
        BN=cfg["BN"],
        BK=cfg["BK"],
        GROUP=cfg["GROUP"],
        num_warps=cfg["warps"],
        num_stages=cfg["stages"],
    )
    return y


def qkv(x, W_q, W_k, W_v, P, w_std, w_rec, cfg):
    M, K = x.shape
    y = torch.empty(M, 3 * C, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(M, cfg["BM"]) * (H + C // 128),)
    qkv_kernel[grid](
        x,
        W_q,
        W_k,
        W_v,
        P,
        w_std,
        w_rec,
        y,
        M,
        K,
        NH=H,
        DS=DS,
        R=R,
        BM=cfg["BM"],
        BK=cfg["BK"],
        GROUP=cfg["GROUP"],
        num_warps=cfg["warps"],
        num_stages=cfg["stages"],
    )
    return y


def reference(x, W_q, W_k, W_v, P, w_std, w_rec):
    """x W_f^T in float64 from the definition."""
    x, W_q, W_k, W_v, P = (t.double() for t in (x, W_q, W_k, W_v, P))
    q = (x @ W_q.T).view(-1, H, DS)
    k = (x @ W_k.T).view(-1, H, DS)
    kp = torch.einsum("mhd,hdr->mhr", k, P)
    qp = torch.einsum("mhd,hdr->mhr", q, P)
    qf = torch.cat([w_std.double()[:, None] * q, w_rec.double()[:, None] * kp], dim=2)
    kf = torch.cat([k, qp], dim=2)
    return torch.cat([qf.flatten(1), kf.flatten(1), x @ W_v.T], dim=1)


def params(dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    W_q = torch.randn(H * DS, C, generator=g) * 0.02
    W_k = torch.randn(H * DS, C, generator=g) * 0.02
    W_v = torch.randn(C, C, generator=g) * 0.02
    P = torch.linalg.qr(torch.randn(H, DS, R, generator=g))[0]
    w_std = 1 + 0.1 * torch.randn(H, generator=g)
    w_rec = 0.1 + 0.05 * torch.randn(H, generator=g)
    return [t.to(device=device, dtype=dtype).contiguous() for t in (W_q, W_k, W_v, P, w_std, w_rec)]


def check(M, dtype, device, cfg, kernel=None):
    ps = params(dtype, device)
    x = torch.randn(M, C, device=device, dtype=dtype)
    ref = reference(x, *ps)
    y = (kernel or qkv)(x, *ps, cfg).double()
    wf = ra_fused.compose_ra_v5(*ps).detach() if device == "cuda" else None
    err = ((y - ref).abs().max() / ref.abs().max()).item()
    out = {"fused_rel_err": err}
    if wf is not None:
        ycb = F.linear(x, wf).double()
        out["cublas_rel_err"] = ((ycb - ref).abs().max() / ref.abs().max()).item()
        yp = plain(x, wf, PLAIN_CFGS[0]).double()
        out["plain_rel_err"] = ((yp - ref).abs().max() / ref.abs().max()).item()
        yp = plain_tma(x, wf, PLAIN_CFGS[0]).double()
        out["plain_tma_rel_err"] = ((yp - ref).abs().max() / ref.abs().max()).item()
    return out


PLAIN_CFGS = [
    dict(BM=128, BN=128, BK=64, GROUP=8, warps=8, stages=3),
    dict(BM=128, BN=128, BK=64, GROUP=8, warps=4, stages=4),
    dict(BM=128, BN=256, BK=64, GROUP=8, warps=8, stages=3),
    dict(BM=256, BN=128, BK=64, GROUP=8, warps=8, stages=3),
    dict(BM=128, BN=128, BK=128, GROUP=8, warps=8, stages=2),
    dict(BM=64, BN=128, BK=64, GROUP=8, warps=4, stages=4),
]
QKV_CFGS = [
    dict(BM=128, BK=64, GROUP=8, warps=8, stages=3),
    dict(BM=128, BK=64, GROUP=8, warps=4, stages=4),
    dict(BM=128, BK=64, GROUP=8, warps=8, stages=4),
    dict(BM=256, BK=64, GROUP=8, warps=8, stages=3),
    dict(BM=128, BK=128, GROUP=8, warps=8, stages=2),
    dict(BM=64, BK=64, GROUP=8, warps=4, stages=4),
]


def graph(fn, per):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(per):
            fn()
    return g


def time_graph(g, per, n):
    out = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) * 1000 / per)
    return out


def summary(xs):
    xs = sorted(xs)
    q = lambda f: xs[min(len(xs) - 1, int(f * len(xs)))]  # noqa: E731
    return {"median": statistics.median(xs), "p10": q(0.1), "p90": q(0.9), "n": len(xs)}


def run_dtype(dname: str, args, results: dict) -> None:
    """Check, sweep and time the arms for one dtype (the body of main's loop)."""
    dtype = getattr(torch, dname)
    results[dname] = res = {"check": {}}
    for i, cfg in enumerate(QKV_CFGS):
        for kname, kern in (("qkv", qkv), ("qkv_tma", qkv_tma)):
            try:
                res["check"][f"{kname}{i}"] = check(args.M, dtype, "cuda", cfg, kern)
            except Exception as e:  # a config that does not compile (registers, shared memory)
                res["check"][f"{kname}{i}"] = repr(e)[-300:]
    print(dname, json.dumps(res["check"]), flush=True)
    if args.check_only:
        return
    ps = params(dtype, "cuda")
    x = torch.randn(args.M, C, device="cuda", dtype=dtype)
    wf = ra_fused.compose_ra_v5(*ps).detach().contiguous()
    # sweep: each config of each Triton kernel once (60 repeats), keep the best
    sweep = {}
    best = {}
    for name, cfgs, make in (
        ("triton_wf", PLAIN_CFGS, lambda c: lambda: plain(x, wf, c)),
        ("triton_wf_tma", PLAIN_CFGS, lambda c: lambda: plain_tma(x, wf, c)),
        ("fused", QKV_CFGS, lambda c: lambda: qkv(x, *ps, c)),
        ("fused_tma", QKV_CFGS, lambda c: lambda: qkv_tma(x, *ps, c)),
    ):
        for i, cfg in enumerate(cfgs):
            try:
                g = graph(make(cfg), args.per)
                med = summary(time_graph(g, args.per, 60))["median"]
            except Exception as e:
                sweep[f"{name}{i}"] = repr(e)[-300:]
                continue
            sweep[f"{name}{i}"] = med
            if name not in best or med < best[name][1]:
                best[name] = (cfg, med)
    res["sweep"] = sweep
    res["best_cfg"] = {k: v[0] for k, v in best.items()}
    print(dname, "sweep", json.dumps(sweep), flush=True)
    arms = {
        "cublas_wf": lambda: F.linear(x, wf),
        "compose+gemm": lambda: F.linear(x, ra_fused.compose_ra_v5(*ps)),
        "triton_wf": lambda: plain(x, wf, best["triton_wf"][0]),
    }
    for name, fn in (
        ("triton_wf_tma", lambda c: lambda: plain_tma(x, wf, c)),
        ("fused", lambda c: lambda: qkv(x, *ps, c)),
        ("fused_tma", lambda c: lambda: qkv_tma(x, *ps, c)),
    ):
        if name in best:
            arms[name] = fn(best[name][0])
    with torch.no_grad():
        graphs = {k: graph(f, args.per) for k, f in arms.items()}
    samples = {k: [] for k in arms}
    for _ in range(args.rounds):
        for k, g in graphs.items():
            samples[k] += time_graph(g, args.per, args.repeats // args.rounds)
    res["us"] = {k: summary(v) for k, v in samples.items()}
    base = res["us"]["cublas_wf"]["median"]
    res["ratio_vs_cublas_wf"] = {k: v["median"] / base for k, v in res["us"].items()}
    print(dname, json.dumps(res["us"]), json.dumps(res["ratio_vs_cublas_wf"]), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--M", type=int, default=8192)
    ap.add_argument("--per", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--dtypes", default="bfloat16,float16")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8))
        print(json.dumps(check(64, torch.float32, "cpu", QKV_CFGS[-1])))
        print(json.dumps(check(64, torch.float32, "cpu", QKV_CFGS[-1], qkv_tma)))
        return 0
    triton.set_allocator(_alloc)
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "M": args.M,
        "per_graph": args.per,
    }
    for dname in args.dtypes.split(","):
        run_dtype(dname, args, results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
