"""Times baseline vs ra_v5 attention blocks on one CUDA device, and ra_v5's weight composition alone.

    PYTHONPATH=. python3 tools/perf_block.py [--repeats 300] [--budget-s 240] [--quick]

What it measures (CUDA events around every repeat, warm-up first, median and
p10/p90 over the repeats; the configurations of one table row are timed in
interleaved rounds in the same process, so slow drifts hit them alike):

- ceilings: a 1 GiB device-to-device copy (bytes read + written) and an
  8192^3 bf16 matmul (random data);
- the composition alone (`folded_weight()`), plain torch vs the fused Triton
  kernels, fwd (no_grad) and fwd_bwd (`W_f.backward(G)`), eager and CUDA graph,
  fp16 / bf16 / amp (fp32 weights under bf16 autocast), plus a sweep of the
  fused kernels' tile width and warp count;
- the block B=8 T=1024 H=12 D=64 (racli_models `build_attention`, the same seed
  for every variant): `baseline`, `ra_v5` (fused composition; with grad under
  CUDA-graph capture, the projection and its composition as one node whose
  backward runs the composition's backward on a side stream beside dx's GEMM),
  `ra_v5_serial` (the same as two nodes, one stream: `fused.SETTINGS.overlap =
  "never"`), `ra_v5_plain` (ra_v5 with the plain composition), in fp16 and bf16, modes eager, compile
  (`torch.compile(dynamic=False)`), cuda_graph (capture of eager: warm-up on a
  side stream, capture, replay) and compile_graph (capture of the compiled
  module), phases fwd (eval, no_grad) and fwd_bwd (loss sum(out * G): forward,
  backward incl. the input gradient; grads set to None outside the timed
  region, or allocated once in the graph's pool); SDPA backends forced with
  `train.sdpa_backend`'s contexts (flash, cudnn, efficient, and fa4 where it runs) in
  cuda_graph mode; amp (fp32
  weights, bf16 autocast) as in training; ra_v5_untied fused vs plain.

The work is done in priority order; a group that would overrun `--budget-s`
is skipped and listed. A compact table comes last; every row also goes to
$OUT/perf.json when OUT is set.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch

from racli.names import sdpa_backend_context
from racli_models import GPTConfig, attention, build_attention, composed_once, flash4, fused

B, T, H, D = 8, 1024, 12, 64
C = H * D
SEED = 1234
DEV = "cuda"
# forced SDPA backends of the "block backend" groups; fa4 where flash-attn-4 and the GPU serve it
BACKENDS = ("flash", "cudnn", "efficient") + (("fa4",) if flash4.problem() is None else ())
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "amp": torch.float32}
VARIANTS = {  # label -> (registry name, plain composition)
    "baseline": ("baseline", False),
    "ra_v5": ("ra_v5", False),
    "ra_v5_plain": ("ra_v5", True),
    "untied": ("ra_v5_untied", False),
    "untied_plain": ("ra_v5_untied", True),
    "ra_v5_once": ("ra_v5", False),  # inside composed_once(): W_f built once (no-grad only)
    "ra_v5_serial": ("ra_v5", False),  # fused, the projection and composition as two nodes
}

ROWS: list[dict] = []
GRAPH_EAGER_LABELS = ("baseline", "ra_v5", "ra_v5_serial", "ra_v5_plain")


# --- timing --------------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def timed(step, n: int, prep=None) -> list[float]:
    """Per-repeat CUDA-event times (ms) of `n` calls of `step`; `prep` runs untimed before each."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        if prep is not None:
            prep()
        starts[i].record()
        step()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


class Runner:
    """One configuration: `step()` does one timed iteration, `prep()` the untimed set-up."""

    def __init__(self, label, step, prep=None, ctx=None, setup_s=0.0, note=""):
        self.label, self.step, self.prep = label, step, prep
        self.ctx = ctx or contextlib.nullcontext
        self.setup_s, self.note = setup_s, note
        self.per = 1  # compositions per timed step
        self.samples: list[float] = []


def run_group(runners: list[Runner], repeats: int, warmup: int, rounds: int = 4) -> None:
    """Warm every runner up, then time them in `rounds` interleaved rounds."""
    for r in runners:
        with r.ctx():
            timed(r.step, warmup, r.prep)
    per = max(1, repeats // rounds)
    for _ in range(rounds):
        for r in runners:
            with r.ctx():
                r.samples += timed(r.step, per, r.prep)


def stats(samples: list[float]) -> dict:
    return {
        "median_ms": statistics.median(samples),
        "p10_ms": pct(samples, 0.1),
        "p90_ms": pct(samples, 0.9),
        "n": len(samples),
    }


def record(kind: str, runners: list[Runner], **key) -> None:
    base = None
    for r in runners:
        if not r.samples:
            continue
        row = {
            "kind": kind,
            **key,
            "variant": r.label,
            **stats([t / r.per for t in r.samples]),
            "per_step": r.per,
            "setup_s": round(r.setup_s, 2),
            "note": r.note,
        }
        if r.label in ("baseline", "plain"):
            base = row["median_ms"]
        if base:
            row["ratio"] = row["median_ms"] / base
        ROWS.append(row)
        keys = " ".join(f"{k}={v}" for k, v in key.items())
        ratio = f" ratio={row['ratio']:.3f}" if "ratio" in row else ""
        print(
            f"[{kind}] {keys} {r.label}: median {row['median_ms']:.4f} ms "
            f"[p10 {row['p10_ms']:.4f} p90 {row['p90_ms']:.4f}]{ratio}",
            flush=True,
        )


# --- building ------------------------------------------------------------------------------


def contexts(plain: bool, amp: bool, backend: str | None, once: bool = False, two: bool = False):
    """A factory of the context stack a configuration runs (and is captured) under."""

    @contextlib.contextmanager
    def ctx():
        with contextlib.ExitStack() as stack:
            if two:  # the composition's backward after dx's GEMM, one stream, also in graphs
                stack.enter_context(fused.settings(overlap="never"))
            if once:
                stack.enter_context(composed_once())
            if backend is not None:
                stack.enter_context(sdpa_backend_context(backend))
            if plain:
                stack.enter_context(fused.disabled())
            if amp:  # no cast cache: a cached cast made outside a capture breaks it
                stack.enter_context(
                    torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
                )
            yield

    return ctx


def build_block(attn: str, dtype_name: str) -> torch.nn.Module:
    cfg = GPTConfig.for_block(heads=H, head_dim=D, seq=T, attn=attn)
    torch.manual_seed(SEED)
    return build_attention(attn, cfg).to(device=DEV, dtype=DTYPES[dtype_name])


def block_inputs(dtype_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(B, T, C, generator=g)
    w = torch.randn(B, T, C, generator=g)
    dt = DTYPES[dtype_name]
    out_dt = torch.bfloat16 if dtype_name == "amp" else dt
    return x.to(DEV, dt), w.to(DEV, out_dt)


def graph_of(step, prep=None):
    """Warm up on a side stream, capture one `step`, return the replay."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            if prep is not None:
                prep()
            step()
    torch.cuda.current_stream().wait_stream(s)
    if prep is not None:
        prep()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def block_runner(label, dtype_name, mode, phase, backend=None, compiled_cache=None) -> Runner:
    attn, plain = VARIANTS[label]
    amp = dtype_name == "amp"
    m = build_block(attn, dtype_name)
    ctx = contexts(plain, amp, backend, once=label.endswith("_once"), two=label.endswith("_serial"))
    x, w = block_inputs(dtype_name)
    bwd = phase == "fwd_bwd"
    m.train(bwd)
    if bwd:
        x.requires_grad_(True)
    t0 = time.perf_counter()
    fn = m
    if mode in ("compile", "compile_graph"):
        key = (label, dtype_name, phase, backend)
        if compiled_cache is not None and key in compiled_cache:
            fn, m, x, w = compiled_cache[key]
        else:
            fn = torch.compile(m, dynamic=False)
            if compiled_cache is not None:
                compiled_cache[key] = (fn, m, x, w)

    params = list(m.parameters())

    def prep():
        for p in params:
            p.grad = None
        x.grad = None

    if bwd:

        def step():
            fn(x).backward(w)
    else:

        def step():
            with torch.no_grad():
                fn(x)

    with ctx():
        prep()
        step()  # first call: compiles (compile modes), loads kernels
        torch.cuda.synchronize()
        if mode in ("cuda_graph", "compile_graph"):
            replay = graph_of(step, prep if bwd else None)
            torch.cuda.synchronize()
            # a W_f stored by composed_once() was captured by address: keep it alive
            kept = list(attention._STORE.values())

            def run(replay=replay, kept=kept):
                replay()

            return Runner(label, run, None, ctx, time.perf_counter() - t0)
    return Runner(label, step, prep if bwd else None, ctx, time.perf_counter() - t0)


def compose_runner(label, dtype_name, mode, phase, per_graph: int = 1) -> Runner:
    """The composition alone: `folded_weight()` (fwd) or it plus its backward for G.

    With `per_graph` > 1 the CUDA graph holds that many back-to-back compositions
    and the recorded time is per composition (launch overheads amortised)."""
    attn, plain = VARIANTS[label]
    ctx = contexts(plain, dtype_name == "amp", None)
    m = build_block(attn, dtype_name)
    params = list(m.parameters())
    with ctx():
        W_dtype = m.folded_weight()[0].dtype
    G = torch.randn(3 * C, C, device=DEV, dtype=W_dtype)
    n = per_graph if mode == "cuda_graph" else 1

    def prep():
        for p in params:
            p.grad = None

    if phase == "fwd_bwd":  # autograd.grad: no accumulation into .grad between repeats

        def step():
            for _ in range(n):
                torch.autograd.grad(m.folded_weight()[0], params, G, allow_unused=True)
    else:

        def step():
            with torch.no_grad():
                for _ in range(n):
                    m.folded_weight()

    t0 = time.perf_counter()
    with ctx():
        prep()
        step()
        torch.cuda.synchronize()
        if mode == "cuda_graph":
            replay = graph_of(step, prep if phase == "fwd_bwd" else None)
            r = Runner(label, replay, None, ctx, time.perf_counter() - t0)
            r.per = n
            return r
    return Runner(label, step, prep if phase == "fwd_bwd" else None, ctx)


# --- the measurements ----------------------------------------------------------------------


def ceilings(repeats: int) -> None:
    n = 1 << 29  # 1 GiB of bf16
    a = torch.randn(n, device=DEV, dtype=torch.bfloat16)
    b = torch.empty_like(a)
    copy = Runner("copy_1GiB", lambda: b.copy_(a))
    run_group([copy], repeats=max(20, repeats // 10), warmup=5, rounds=1)
    ms = statistics.median(copy.samples)
    gbs = 2 * a.numel() * a.element_size() / (ms * 1e-3) / 1e9
    N = 8192
    x = torch.randn(N, N, device=DEV, dtype=torch.bfloat16)
    y = torch.randn(N, N, device=DEV, dtype=torch.bfloat16)
    mm = Runner("matmul_8192_bf16", lambda: torch.mm(x, y))
    run_group([mm], repeats=max(20, repeats // 10), warmup=5, rounds=1)
    mm_ms = statistics.median(mm.samples)
    tflops = 2 * N**3 / (mm_ms * 1e-3) / 1e12
    ROWS.append({"kind": "ceiling", "variant": "copy", "median_ms": ms, "GB_per_s": gbs})
    ROWS.append(
        {"kind": "ceiling", "variant": "matmul_bf16", "median_ms": mm_ms, "TFLOP_per_s": tflops}
    )
    print(f"[ceiling] device copy 1 GiB: {ms:.3f} ms = {gbs:.0f} GB/s (read + write)")
    print(f"[ceiling] bf16 matmul 8192^3: {mm_ms:.3f} ms = {tflops:.0f} TFLOP/s", flush=True)


def counts() -> None:
    """FLOPs of the block and bytes of the composition (printed for the notes)."""
    proj = 2 * B * T * C * 3 * C + 2 * B * T * C * C
    attn = 2 * B * H * T * T * D  # causal: half of QK^T + PV
    Ds, R = D - 4, 4
    comp_flops = 2 * 2 * H * R * Ds * C
    src = (2 * H * Ds * C + C * C) * 2 + H * Ds * R * 2
    dst = 3 * C * C * 2
    print(
        f"[counts] block fwd {(proj + attn) / 1e9:.1f} GFLOP (projections {proj / 1e9:.1f}, "
        f"causal attention {attn / 1e9:.1f}); fwd_bwd ~3x = {3 * (proj + attn) / 1e9:.1f} GFLOP"
    )
    print(
        f"[counts] composition fwd: {comp_flops / 1e6:.1f} MFLOP, reads {src / 1e6:.2f} MB, "
        f"writes {dst / 1e6:.2f} MB (fp16); bwd reads dW_f {dst / 1e6:.2f} MB + weights "
        f"{src / 1e6:.2f} MB, writes {(src - C * C * 2) / 1e6:.2f} MB (dW_v: a view of dW_f)"
    )


def composition(repeats: int, warmup: int, dtypes) -> None:
    for dtype_name in dtypes:
        for mode in ("cuda_graph_x20", "cuda_graph", "eager"):
            for phase in ("fwd", "fwd_bwd"):
                per = 20 if mode == "cuda_graph_x20" else 1
                m = mode.removesuffix("_x20")
                runners = [
                    compose_runner(lbl, dtype_name, m, phase, per_graph=per)
                    for lbl in ("ra_v5_plain", "ra_v5")
                ]
                runners[0].label, runners[1].label = "plain", "fused"
                run_group(runners, repeats, warmup)
                record("compose", runners, attn="ra_v5", dtype=dtype_name, mode=mode, phase=phase)


def composition_untied(repeats: int, warmup: int) -> None:
    for phase in ("fwd", "fwd_bwd"):
        runners = [
            compose_runner(lbl, "bf16", "cuda_graph", phase, per_graph=20)
            for lbl in ("untied_plain", "untied")
        ]
        runners[0].label, runners[1].label = "plain", "fused"
        run_group(runners, repeats, warmup)
        record(
            "compose",
            runners,
            attn="ra_v5_untied",
            dtype="bf16",
            mode="cuda_graph_x20",
            phase=phase,
        )


def profile() -> None:
    """For Nsight Compute: a few eager launches of each fused configuration and of the plain
    composition, fwd and bwd, fp16 (no timing here; ncu times the kernels)."""
    for cfg in CONFIGS:
        set_config(cfg)
        m = build_block("ra_v5", "fp16")
        G = torch.randn(3 * C, C, device=DEV, dtype=torch.float16)
        for _ in range(2):
            torch.autograd.grad(m.folded_weight()[0], list(m.parameters()), G, allow_unused=True)
    m = build_block("ra_v5", "fp16")
    with fused.disabled():
        torch.autograd.grad(m.folded_weight()[0], list(m.parameters()), G, allow_unused=True)
    src = torch.randn(3 * C, C, device=DEV, dtype=torch.float16)
    torch.empty_like(src).copy_(src)
    m = build_block("ra_v5_untied", "fp16")
    torch.autograd.grad(m.folded_weight()[0], list(m.parameters()), G, allow_unused=True)
    torch.cuda.synchronize()
    kernel_info()


CONFIGS = [
    (dot, bc, nw)
    for dot in (True, False)
    for bc, nw in ((16, 2), (32, 2), (32, 4), (64, 2), (64, 4), (64, 8), (128, 4), (128, 8))
]


def set_config(cfg) -> None:
    s = fused.SETTINGS
    s.use_dot, s.block_c, s.num_warps = cfg


def config_name(cfg) -> str:
    return f"{'dot' if cfg[0] else 'red'},BC={cfg[1]},w={cfg[2]}"


def tile_sweep(repeats: int, warmup: int, select: bool) -> None:
    """The fused kernels over (tl.dot or reductions, BLOCK_C, warps): fp16, 20 per graph.

    With `select`, the configuration with the least fwd + fwd_bwd time is kept
    for the rest of the run."""
    default = (fused.SETTINGS.use_dot, fused.SETTINGS.block_c, fused.SETTINGS.num_warps)
    totals: dict = {}
    for phase in ("fwd", "fwd_bwd"):
        runners = []
        for cfg in CONFIGS:
            set_config(cfg)
            try:
                r = compose_runner("ra_v5", "fp16", "cuda_graph", phase, per_graph=20)
            except Exception as e:
                print(f"[tile_sweep] {config_name(cfg)} {phase} FAILED: {type(e).__name__}: {e}")
                continue
            r.label = config_name(cfg)
            r.cfg = cfg
            runners.append(r)
        set_config(default)
        run_group(runners, repeats, warmup)
        record("tile_sweep", runners, dtype="fp16", mode="cuda_graph_x20", phase=phase)
        for r in runners:
            totals[r.cfg] = totals.get(r.cfg, 0.0) + statistics.median(r.samples) / r.per
    if select and totals:
        best = min(totals, key=totals.get)
        set_config(best)
        print(
            f"[tile_sweep] selected {config_name(best)}: fwd + fwd_bwd "
            f"{1e3 * totals[best]:.2f} us (default {config_name(default)}: "
            f"{1e3 * totals.get(default, float('nan')):.2f} us)",
            flush=True,
        )
    kernel_info()


def kernel_info() -> None:
    """Registers, spills and shared memory of every compiled fused kernel (Triton's cache)."""
    for name in (
        "_ra_v5_fwd_kernel",
        "_ra_v5_bwd_kernel",
        "_ra_v5_reduce_kernel",
        "_untied_fwd_kernel",
        "_untied_bwd_kernel",
    ):
        fn = getattr(fused, name, None)
        try:
            for entry in getattr(fn, "device_caches", {}).values():
                for key, k in entry[0].items():
                    md = k.metadata
                    print(
                        f"[kernel] {name} warps={md.num_warps} regs={k.n_regs} "
                        f"spills={k.n_spills} shared={md.shared} key={str(key)[:160]}"
                    )
        except Exception as e:  # the cache layout differs between Triton versions
            print(f"[kernel] {name}: no info ({type(e).__name__}: {e})")


def copy_floor(repeats: int, warmup: int) -> None:
    """A torch device copy of W_f's size (3C x C fp16: 3.5 MB read + 3.5 MB written)."""
    src = torch.randn(3 * C, C, device=DEV, dtype=torch.float16)
    dst = torch.empty_like(src)

    def step():
        for _ in range(20):
            dst.copy_(src)

    r = Runner("copy_3.5MB", graph_of(step))
    r.per = 20
    run_group([r], repeats, warmup, rounds=1)
    record("floor", [r], dtype="fp16", mode="cuda_graph_x20", phase="copy")


def eager_throughput(repeats: int, warmup: int) -> None:
    """Eager mode as a host sees it: wall time per call over back-to-back calls (one sync at
    the end), next to the GPU time of the same step captured in a CUDA graph; and the host
    time of one `folded_weight()` call (no sync: the kernel is shorter than its launch)."""
    for phase in ("fwd", "fwd_bwd"):
        for label in ("baseline", "ra_v5", "ra_v5_once"):
            if label.endswith("_once") and phase == "fwd_bwd":
                continue
            r = block_runner(label, "bf16", "eager", phase)
            with r.ctx():
                for _ in range(warmup):
                    if r.prep:
                        r.prep()
                    r.step()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(repeats):
                    if r.prep:
                        r.prep()
                    r.step()
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) / repeats * 1e3
            ROWS.append(
                {
                    "kind": "eager_wall",
                    "dtype": "bf16",
                    "phase": phase,
                    "variant": label,
                    "wall_ms_per_call": ms,
                }
            )
            print(f"[eager_wall] bf16 {phase} {label}: {ms:.4f} ms per call", flush=True)
    m = build_block("ra_v5", "bf16")
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            for _ in range(warmup):
                m.folded_weight()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(repeats):
                m.folded_weight()
            us = (time.perf_counter() - t0) / repeats * 1e6
            torch.cuda.synchronize()
        ROWS.append({"kind": "compose_host", "grad": grad, "host_us_per_call": us})
        print(f"[compose_host] grad={grad}: {us:.1f} us host time per folded_weight()", flush=True)


def block_group(
    dtype_name, mode, labels, repeats, warmup, backend=None, cache=None, phases=("fwd", "fwd_bwd")
) -> None:
    for phase in phases:
        runners = []
        for lbl in labels:
            try:
                runners.append(block_runner(lbl, dtype_name, mode, phase, backend, cache))
            except Exception as e:  # a backend that cannot serve, a compile failure: say so
                msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                print(f"[block] {dtype_name} {mode} {phase} {lbl} FAILED: {msg}", flush=True)
                ROWS.append(
                    {
                        "kind": "block",
                        "dtype": dtype_name,
                        "mode": mode,
                        "phase": phase,
                        "backend": backend or "auto",
                        "variant": lbl,
                        "failed": msg,
                    }
                )
        run_group(runners, repeats, warmup)
        record(
            "block", runners, dtype=dtype_name, backend=backend or "auto", mode=mode, phase=phase
        )
        del runners
        gc.collect()
        torch.cuda.empty_cache()


# --- report --------------------------------------------------------------------------------


def table() -> str:
    out = []
    blocks = [r for r in ROWS if r["kind"] == "block" and "median_ms" in r]
    keys = []
    for r in blocks:
        k = (r["dtype"], r["backend"], r["mode"], r["phase"])
        if k not in keys:
            keys.append(k)
    out.append(f"block B={B} T={T} H={H} D={D}: median ms (ratio to baseline in the same group)")
    out.append(
        f"{'dtype':5} {'sdpa':9} {'mode':13} {'phase':7} {'baseline':>9} {'ra_v5':>9} "
        f"{'ratio':>6} {'plain':>9} {'ratio':>6}"
    )
    for k in keys:
        by = {
            r["variant"]: r
            for r in blocks
            if (r["dtype"], r["backend"], r["mode"], r["phase"]) == k
        }
        base = by.get("baseline", {}).get("median_ms")

        def cell(lbl, by=by, base=base):
            r = by.get(lbl)
            if r is None:
                return f"{'-':>9} {'-':>6}"
            ratio = f"{r['median_ms'] / base:6.3f}" if base else f"{'-':>6}"
            return f"{r['median_ms']:9.4f} {ratio}"

        bcell = f"{base:9.4f}" if base else f"{'-':>9}"
        out.append(
            f"{k[0]:5} {k[1]:9} {k[2]:13} {k[3]:7} {bcell} {cell('ra_v5')} {cell('ra_v5_plain')}"
        )
    out.append("")
    out.append("best vs best (min median over modes and SDPA backends):")
    for dtype_name in DTYPES:
        for phase in ("fwd", "fwd_bwd"):
            best = {}
            for lbl in ("baseline", "ra_v5", "ra_v5_plain"):
                rs = [
                    r
                    for r in blocks
                    if r["dtype"] == dtype_name and r["phase"] == phase and r["variant"] == lbl
                ]
                if rs:
                    best[lbl] = min(rs, key=lambda r: r["median_ms"])
            if "baseline" not in best or "ra_v5" not in best:
                continue
            b, f = best["baseline"], best["ra_v5"]
            line = (
                f"  {dtype_name:5} {phase:7} baseline {b['median_ms']:.4f} ({b['mode']}, "
                f"{b['backend']})  ra_v5 {f['median_ms']:.4f} ({f['mode']}, {f['backend']})"
                f"  ratio {f['median_ms'] / b['median_ms']:.3f}"
            )
            if "ra_v5_plain" in best:
                p = best["ra_v5_plain"]
                line += f"  [plain {p['median_ms'] / b['median_ms']:.3f}]"
            out.append(line)
    comp = [r for r in ROWS if r["kind"] in ("compose", "floor")]
    if comp:
        out.append("")
        out.append("composition alone: median us per composition")
        keys = []
        for r in comp:
            k = (r["kind"], r.get("attn", "-"), r["dtype"], r["mode"], r["phase"])
            if k not in keys:
                keys.append(k)
        for k in keys:
            rs = [
                r
                for r in comp
                if (r["kind"], r.get("attn", "-"), r["dtype"], r["mode"], r["phase"]) == k
            ]
            cells = "  ".join(f"{r['variant']} {1e3 * r['median_ms']:.2f}" for r in rs)
            out.append(f"  {k[1]:12} {k[2]:5} {k[3]:14} {k[4]:7} {cells}")
    sweep = [r for r in ROWS if r["kind"] == "tile_sweep"]
    if sweep:
        out.append("")
        out.append("fused kernel configurations (fp16, 20 per CUDA graph): median us")
        out.append(f"  {'config':18} {'fwd':>7} {'fwd_bwd':>8}")
        names = []
        for r in sweep:
            if r["variant"] not in names:
                names.append(r["variant"])
        for name in names:
            f = [r for r in sweep if r["variant"] == name and r["phase"] == "fwd"]
            b = [r for r in sweep if r["variant"] == name and r["phase"] == "fwd_bwd"]
            fs = f"{1e3 * f[0]['median_ms']:7.2f}" if f else f"{'-':>7}"
            bs = f"{1e3 * b[0]['median_ms']:8.2f}" if b else f"{'-':>8}"
            out.append(f"  {name:18} {fs} {bs}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--budget-s", type=float, default=240.0)
    ap.add_argument("--quick", action="store_true", help="fp16 only, no backends or untied")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile modes")
    ap.add_argument(
        "--select",
        action="store_true",
        help="keep the fastest kernel configuration of the sweep for the blocks",
    )
    ap.add_argument("--profile", action="store_true", help="launch the kernels for ncu, no timing")
    ap.add_argument(
        "--once",
        action="store_true",
        help="first: no-grad forwards inside composed_once(), and eager wall times",
    )
    ap.add_argument(
        "--skip",
        default="",
        help="comma-separated groups to leave out, by the names the run prints "
        "(e.g. 'tile sweep,composition,untied composition')",
    )
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("perf_block: needs CUDA", file=sys.stderr)
        return 2
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 128)
    if args.profile:
        profile()
        return 0
    t_start = time.perf_counter()
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "absent"
    props = torch.cuda.get_device_properties(0)
    env = {
        "gpu": props.name,
        "sms": props.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": tv,
        "python": platform.python_version(),
        "fused_default": config_name(
            (fused.SETTINGS.use_dot, fused.SETTINGS.block_c, fused.SETTINGS.num_warps)
        ),
    }
    print(f"[env] {env}", flush=True)
    R, W = args.repeats, args.warmup
    dtypes = ["fp16"] if args.quick else ["fp16", "bf16"]
    cache: dict = {}
    plan = [
        ("ceilings", 15, lambda: ceilings(R)),
        ("counts", 0, counts),
        ("copy floor", 2, lambda: copy_floor(R, W)),
        ("tile sweep", 30, lambda: tile_sweep(R, W, select=args.select)),
        ("composition", 20, lambda: composition(R, W, dtypes + ["amp"])),
    ]
    for dt in dtypes:
        plan.append(
            (
                f"block {dt} graph+eager",
                20,
                lambda dt=dt: [
                    block_group(dt, mode, GRAPH_EAGER_LABELS, R, W)
                    for mode in ("cuda_graph", "eager")
                ],
            )
        )
    for dt in [] if args.no_compile else dtypes:
        plan.append(
            (
                f"block {dt} compile",
                90,
                lambda dt=dt: [
                    block_group(dt, mode, ("baseline", "ra_v5", "ra_v5_plain"), R, W, cache=cache)
                    for mode in ("compile", "compile_graph")
                ],
            )
        )
    if args.once:
        plan.insert(
            0,
            (
                "composed once",
                20,
                lambda: [
                    block_group(
                        dt, mode, ("baseline", "ra_v5", "ra_v5_once"), R, W, phases=("fwd",)
                    )
                    for dt in dtypes
                    for mode in ("cuda_graph", "eager")
                ],
            ),
        )
        plan.insert(1, ("eager wall", 15, lambda: eager_throughput(R, W)))
    if not args.quick:
        for be in BACKENDS:
            plan.append(
                (
                    f"block backend {be}",
                    15,
                    lambda be=be: [
                        block_group(dt, "cuda_graph", ("baseline", "ra_v5"), R, W, backend=be)
                        for dt in dtypes
                    ],
                )
            )
        plan.append(
            (
                "block amp",
                15,
                lambda: [
                    block_group("amp", mode, GRAPH_EAGER_LABELS, R, W)
                    for mode in ("cuda_graph", "eager")
                ],
            )
        )
        plan.append(("untied composition", 5, lambda: composition_untied(R, W)))
    skipped = []
    leave_out = {g.strip() for g in args.skip.split(",") if g.strip()}
    for name, estimate_s, work in plan:
        if name in leave_out:
            skipped.append(name)
            print(f"[skip] {name}: --skip", flush=True)
            continue
        left = args.budget_s - (time.perf_counter() - t_start)
        if left < estimate_s:
            skipped.append(name)
            print(f"[skip] {name}: {left:.0f} s left, needs ~{estimate_s} s", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            work()
        except Exception as e:  # keep the rest of the measurements
            print(f"[error] {name}: {type(e).__name__}: {e}", flush=True)
            ROWS.append({"kind": "error", "group": name, "error": f"{type(e).__name__}: {e}"})
        print(f"[time] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        out = os.environ.get("OUT")
        if out:
            with open(os.path.join(out, "perf.json"), "w") as fh:
                json.dump({"env": env, "rows": ROWS, "skipped": skipped}, fh, indent=1)
    env["fused_config_blocks"] = config_name(
        (fused.SETTINGS.use_dot, fused.SETTINGS.block_c, fused.SETTINGS.num_warps)
    )
    text = table()
    print(f"fused kernels in the block runs: {env['fused_config_blocks']}")
    print()
    print(text)
    if skipped:
        print(f"skipped (budget): {', '.join(skipped)}")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "perf_table.txt"), "w") as fh:
            fh.write(f"{env}\n{text}\n")
        with open(os.path.join(out, "perf.json"), "w") as fh:
            json.dump({"env": env, "rows": ROWS, "skipped": skipped}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
