"""Where the GPT-2 training step's time goes on one CUDA device, and the loss variants.

    PYTHONPATH=. python3 tools/perf_step.py [--parts profile,loss,ce,eager] [--steps 20]

Parts (each prints its table; every row also goes to $OUT/perf_step.jsonl):
- profile: GPT-2 124M (vocabulary 50,304), batch 32, bf16 autocast,
  torch.compile, fused AdamW, clipping at 1.0 (`ra train`'s step), in two
  versions: `before` (the logits and F.cross_entropy, the step launched from
  Python each time) and `after` (the one-pass loss kernel, the step replayed as
  one CUDA graph: racli_models.loss and .step). Each: 3 warm-up steps, CUDA
  events around `--steps` steps (median, p10, p90), then torch.profiler over 3
  steps: GPU time per step by kernel class, the largest kernels, and the step
  time no kernel covers (the median step minus the kernels' sum). With
  `--attn ra_v5,...`: `after` again for each of those attention variants.
- loss: the LM head and its loss alone, forward and backward, at the step's
  shape (32,768 rows x 768 -> 50,304; float32 weights under bf16 autocast, as
  in training): the compiled plain loss (F.linear + F.cross_entropy under
  torch.compile), the kernel (`lm_head_loss`), the chunked
  `linear_cross_entropy`, and liger-kernel's fused linear cross-entropy when it
  is installed; loss and gradients checked against the plain loss.
- ce: the loss kernel alone on bf16 logits of the step's shape, over block
  widths, warps and the ways its second pass over a row can find the row in
  L2 (`loss.launch_ce`: reversed, cache hints, a few programs an SM), each
  checked against the default setting, interleaved rounds; and the copy of the
  logits, its floor.
- eager: host time of one eager forward+backward of the attention block
  (B=8, T=1024, bf16), baseline and ra_v5: torch.profiler's CPU self time by
  operator, per call.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from racli_models import GPT, GPTConfig, build_attention, compiler  # noqa: E402
from racli_models import loss as L  # noqa: E402
from racli_models.step import TrainStep  # noqa: E402

T, V, B = 1024, 50304, 32
SINK = None

KERNEL_CLASSES = (  # first match wins
    ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
    (
        "optimizer+clip",
        ("adam", "multi_tensor", "foreach", "norm_kernel", "_amp_", "reduce_kernel"),
    ),
    ("cross_entropy", ("log_softmax", "nll", "cross_entropy", "_ce_kernel")),
    ("gemm", ("gemm", "xmma", "cutlass", "nvjet", "sm90", "ampere", "cublas", "matmul")),
    ("composition", ("_ra_v5_", "_untied_")),
    ("triton_fused", ("triton",)),
)


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)
    if SINK:
        SINK.write(json.dumps(row) + "\n")
        SINK.flush()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def events(fn, n: int) -> list[float]:
    ev = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(n)
    ]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return [a.elapsed_time(b) for a, b in ev]


def by_class(prof, n_steps: int) -> tuple[dict, list, float]:
    classes: dict[str, float] = {}
    top = []
    total = 0.0
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if not us or e.key.startswith("ProfilerStep") or e.key.startswith("aten::"):
            continue
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ms = us / n_steps / 1e3
        key = e.key.lower()
        cls = next((c for c, pats in KERNEL_CLASSES if any(s in key for s in pats)), "other")
        classes[cls] = classes.get(cls, 0.0) + ms
        top.append((e.key[:100], round(ms, 3), e.count // n_steps))
        total += ms
    top.sort(key=lambda kv: -kv[1])
    classes = {k: round(v, 3) for k, v in sorted(classes.items(), key=lambda kv: -kv[1])}
    return classes, top[:25], total


def profile_part(steps: int, attns: list[str]) -> None:
    versions = [("before", False, False, "baseline"), ("after", True, True, "baseline")]
    versions += [(f"after {a}", True, True, a) for a in attns]
    for name, kernel, graph, attn in versions:
        profile_one(name, kernel, graph, steps, attn)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch._dynamo.reset()
    L.KERNEL = True


def profile_one(name: str, kernel: bool, graph: bool, steps: int, attn: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    L.KERNEL = kernel
    torch.manual_seed(1234)
    cfg = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=T, vocab_size=V, attn=attn)
    model = GPT(cfg).cuda()
    opt = model.configure_optimizer(0.1, 6e-4, (0.9, 0.95), fused=True)
    step = TrainStep(
        model,
        opt,
        fwd=compiler.compile(model),
        clip=1.0,
        autocast=lambda: torch.autocast("cuda", dtype=torch.bfloat16),
        graph=graph,
    )
    g = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randint(0, V, (B, T), device="cuda", generator=g) for _ in range(2)]
    ys = [torch.randint(0, V, (B, T), device="cuda", generator=g) for _ in range(2)]
    t0 = time.perf_counter()
    for i in range(3):
        step(xs[i % 2], ys[i % 2])
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    it = iter(range(10**9))
    ms = events(lambda: step(xs[next(it) % 2], ys[0]), steps)
    med = statistics.median(ms)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(3):
            step(xs[i % 2], ys[i % 2])
        torch.cuda.synchronize()
    classes, top, total = by_class(prof, 3)
    emit(
        {
            "part": "profile",
            "step": name,
            "attn": attn,
            "graph": step._graph is not None,
            "graph_error": step.graph_error,
            "warmup_s": round(warm, 1),
            "ms_median": round(med, 3),
            "ms_p10": round(pct(ms, 0.1), 3),
            "ms_p90": round(pct(ms, 0.9), 3),
            "tokens_per_s": round(B * T / (med / 1e3)),
            "kernels_ms": round(total, 3),
            "no_kernel_ms": round(med - total, 3),
            "by_class_ms": classes,
            "top": top,
            "max_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        }
    )


def loss_part(reps: int) -> None:
    N, C = B * T, 768
    g = torch.Generator(device="cuda").manual_seed(0)
    h = (torch.randn(N, C, device="cuda", generator=g)).requires_grad_()
    w = (torch.randn(V, C, device="cuda", generator=g) * 0.02).requires_grad_()
    t = torch.randint(0, V, (N,), device="cuda", generator=g)
    amp = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731

    def plain(h, w, t):
        return F.cross_entropy(F.linear(h, w), t, ignore_index=-1)

    compiled = torch.compile(plain)

    def kernel(h, w, t):
        return L.lm_head_loss(h, w, t)[0]

    def chunked(h, w, t):
        return L.linear_cross_entropy(h, w, t)

    variants = {"plain_compiled": compiled, "kernel": kernel, "chunked": chunked}
    try:
        from liger_kernel.ops.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyFunction as Liger,
        )

        def liger(h, w, t, accum=None):
            dt = torch.get_autocast_dtype("cuda")
            return Liger.apply(
                h.to(dt), w.to(dt), t, None, None, -1, 0.0, 0.0, "mean", None, False, accum
            )[0]

        variants["liger_flce"] = liger
        variants["liger_flce_fp32acc"] = lambda h, w, t: liger(h, w, t, torch.float32)
    except Exception as e:  # not installed, or not importable here
        emit({"part": "loss", "variant": "liger_flce", "error": f"{type(e).__name__}: {e}"[:300]})

    def run(fn):
        h.grad = w.grad = None
        with amp():
            loss = fn(h, w, t)
        loss.backward()
        return loss

    ref = None
    for name, fn in variants.items():
        try:
            loss = run(fn)
            got = (loss.detach().float(), h.grad.clone(), w.grad.clone())
            if ref is None:
                ref = got
            err = {
                "loss_abs_diff": abs(got[0] - ref[0]).item(),
                "dh_rel": ((got[1] - ref[1]).norm() / ref[1].norm()).item(),
                "dw_rel": ((got[2] - ref[2]).norm() / ref[2].norm()).item(),
            }
            for _ in range(3):
                run(fn)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ms = events(lambda fn=fn: run(fn), reps)
            peak = (torch.cuda.max_memory_allocated() - base) / 2**30
            emit(
                {
                    "part": "loss",
                    "variant": name,
                    "ms_median": round(statistics.median(ms), 3),
                    "ms_p10": round(pct(ms, 0.1), 3),
                    "ms_p90": round(pct(ms, 0.9), 3),
                    "peak_extra_gib": round(peak, 2),
                    **{k: float(f"{v:.3g}") for k, v in err.items()},
                }
            )
        except Exception as e:
            emit({"part": "loss", "variant": name, "error": f"{type(e).__name__}: {e}"[:300]})


# (block, warps, reverse, evict, programs_per_sm) of the loss kernel's sweep, beside its
# default (loss.CE_*): the block and warps of the H200 sweep, then the ways its second pass
# over a row can find the row in L2 (H100 sweep, 2026-12-06: performance.md)
CE_SETTINGS = (
    (4096, 8, False, False, 0),  # the default before 2026-12-06
    (4096, 16, False, False, 0),
    (8192, 16, False, False, 0),
    (16384, 32, False, False, 0),
    (4096, 8, True, False, 0),
    (4096, 8, False, True, 0),
    (4096, 8, True, True, 0),
    *((4096, 8, rev, False, k) for rev in (False, True) for k in (1, 2, 4, 8)),
    (4096, 8, True, True, 2),
    (8192, 16, True, False, 2),
    (8192, 16, True, False, 4),
    (2048, 4, True, False, 4),
    (2048, 4, True, False, 8),
    (2048, 4, True, True, 0),
    (4096, 4, True, True, 0),
    (4096, 16, True, True, 0),
    (8192, 8, True, True, 0),
    (8192, 16, False, True, 0),
    (8192, 16, True, True, 0),
    (8192, 32, True, True, 0),
    (16384, 16, True, True, 0),
    (16384, 32, True, True, 0),
)


def ce_part(reps: int, rounds: int = 5) -> None:
    """The loss kernel alone on bf16 logits at the step's shape (no GEMMs): its default and
    each setting of CE_SETTINGS (checked against the default), timed in interleaved rounds
    with the copy of the logits (one read, one write), the kernel's floor; `vs_default` is
    a row's median time over the default's."""
    N = B * T
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(N, V, device="cuda", dtype=torch.bfloat16, generator=g) * 3
    t = torch.randint(0, V, (N,), device="cuda", generator=g)
    t[::97] = -1
    inv_n = 1.0 / (t != -1).sum().float()
    rows, grad = torch.empty(N, device="cuda"), torch.empty_like(logits)
    L.launch_ce(logits, t, rows, grad, inv_n)
    want_rows, want_grad = rows.clone(), grad.float()
    default = {n: getattr(L, f"CE_{n.upper()}") for n in L.SETTINGS}
    runs = {f"default {default}": lambda: L.launch_ce(logits, t, rows, grad, inv_n)}
    for block, warps, rev, evict, per_sm in CE_SETTINGS:
        name = f"{block}x{warps} reverse={int(rev)} evict={int(evict)} per_sm={per_sm}"

        def k(block=block, warps=warps, rev=rev, evict=evict, per_sm=per_sm):
            L.launch_ce(
                logits, t, rows, grad, inv_n, block=block, warps=warps, reverse=rev,
                evict=evict, programs_per_sm=per_sm,
            )  # fmt: skip

        rows.fill_(float("nan"))
        grad.fill_(float("nan"))
        k()
        row_err = (rows - want_rows).abs().max().item()
        grad_err = ((grad.float() - want_grad).abs().max() / want_grad.abs().max()).item()
        if not (row_err < 1e-4 and grad_err < 1e-2):
            emit({"part": "ce_kernel", "setting": name, "error": f"off: {row_err} {grad_err}"})
            continue
        runs[name] = k
    src = torch.empty_like(logits)
    runs["copy of the logits"] = lambda: src.copy_(logits)
    ms = {name: [] for name in runs}
    for _ in range(rounds):
        for name, k in runs.items():
            ms[name] += events(k, max(1, reps // rounds))
    base = statistics.median(ms[next(iter(ms))])
    for name, xs in sorted(ms.items(), key=lambda kv: statistics.median(kv[1])):
        med = statistics.median(xs)
        emit(
            {
                "part": "ce_kernel",
                "setting": name,
                "ms_median": round(med, 3),
                "ms_p10": round(pct(xs, 0.1), 3),
                "ms_p90": round(pct(xs, 0.9), 3),
                "vs_default": round(med / base, 3),
                "GB_per_s_read_once_write_once": round(2 * logits.numel() * 2 / med / 1e6),
            }
        )


def eager_part(reps: int) -> None:
    for attn in ("baseline", "ra_v5"):
        eager_one(attn, reps)


def eager_one(attn: str, reps: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    cfg = GPTConfig.for_block(heads=12, head_dim=64, seq=T, attn=attn)
    torch.manual_seed(0)
    m = build_attention(attn, cfg).to(device="cuda", dtype=torch.bfloat16)
    x = torch.randn(8, T, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(8, T, 768, device="cuda", dtype=torch.bfloat16)
    params = list(m.parameters())

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        m(x).backward(w)

    for _ in range(20):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / reps * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            step()
        torch.cuda.synchronize()
    ops = sorted(
        ((e.key[:60], e.self_cpu_time_total / 20, e.count // 20) for e in prof.key_averages()),
        key=lambda r: -r[1],
    )[:18]
    emit(
        {
            "part": "eager",
            "attn": attn,
            "wall_ms_per_fwd_bwd": round(wall, 4),
            "cpu_self_us_per_call": [(k, round(us, 1), n) for k, us, n in ops],
        }
    )


def main() -> int:
    global SINK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="profile,loss,ce,eager")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--attn", default="", help="profile: more variants' `after` step, e.g. ra_v5")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out = os.environ.get("OUT")
    SINK = open(os.path.join(out, "perf_step.jsonl"), "a") if out else None
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    attns = [a for a in args.attn.split(",") if a]
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        try:
            {"profile": lambda: profile_part(args.steps, attns), "loss": lambda: loss_part(args.reps),
             "ce": lambda: ce_part(max(args.reps, 50)), "eager": lambda: eager_part(200)}[part]()  # fmt: skip
        except Exception as e:
            emit({"part": part, "error": f"{type(e).__name__}: {e}"[:500]})
        print(f"[time] {part}: {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
