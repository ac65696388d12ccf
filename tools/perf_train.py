"""Times GPT-2 124M training steps on one CUDA device, the way `ra train` runs them.

    PYTHONPATH=. python3 tools/perf_train.py [--configs b32,b48,...] [--steps 20] [--budget-s 400]

Each configuration builds the model from the same seed (racli_models GPT, the
`gpt2` preset with the 50,304-token output layer), fused AdamW with `ra train`'s
groups, TF32 on, bf16 autocast, loss on random token ids, gradient clipping at
1.0, `zero_grad(set_to_none=True)`: the step of `racli/training/trainer.py`
without its recording. It warms up (compile) for 3 steps, then times
`--steps` steps with CUDA events around each: median and p10/p90 ms per step,
tokens/s from the median, and MFU = tokens/s x (6 N + 12 L H D T) / 989e12.

Configurations (comma-separated names):
  b16, b24, b32, b48, b64      baseline at that batch, default torch.compile
  b32-mat, b64-mat             compile mode max-autotune-no-cudagraphs
  b32-cdt                      inductor coordinate-descent tuning on
  b32-eager                    no compile
  ra-bNN                       ra_v5 at that batch, default compile
  prof                         torch.profiler over 3 steps of b32: GPU time by kernel class

Every result is appended to $OUT/perf_train.jsonl as soon as it is measured,
so a run cut short keeps what it finished. A configuration that would start
after `--budget-s` seconds is skipped and listed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

import torch

from racli.names import comma_list
from racli_models import GPT, GPTConfig, compiler

PEAK = 989e12  # H100 dense bf16
T = 1024
VOCAB = 50304


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def parse(name: str) -> dict:
    attn = "ra_v5" if name.startswith("ra-") else "baseline"
    core = name[3:] if name.startswith("ra-") else name
    parts = core.split("-")
    batch = int(parts[0][1:])
    opt = parts[1] if len(parts) > 1 else ""
    return {"name": name, "attn": attn, "batch": batch, "opt": opt}


def build(attn: str, batch: int):
    torch.manual_seed(1234)
    cfg = GPTConfig(
        n_layer=12,
        n_head=12,
        n_embd=768,
        block_size=T,
        vocab_size=VOCAB,
        attn=attn,
        bias=False,
        dropout=0.0,
    )
    model = GPT(cfg).cuda()
    opt = model.configure_optimizer(0.1, 6e-4, (0.9, 0.95), fused=True)
    return cfg, model, opt


def flops_per_token(model, cfg) -> float:
    n = model.num_params(non_embedding=True)
    return 6 * n + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * T


def make_step(model, opt, fwd, params):
    def step(x, y):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            _, loss = fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def run_config(c: dict, steps: int) -> dict:
    import torch._inductor.config as icfg

    cfg, model, opt = build(c["attn"], c["batch"])
    params = [p for p in model.parameters() if p.requires_grad]
    if c["opt"] == "eager":
        fwd = model
    elif c["opt"] == "mat":
        fwd = torch.compile(model, mode="max-autotune-no-cudagraphs")
    else:
        icfg.coordinate_descent_tuning = c["opt"] == "cdt"
        fwd = compiler.compile(model)
    step = make_step(model, opt, fwd, params)
    g = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randint(0, VOCAB, (c["batch"], T), device="cuda", generator=g) for _ in range(4)]
    ys = [torch.randint(0, VOCAB, (c["batch"], T), device="cuda", generator=g) for _ in range(4)]
    t0 = time.perf_counter()
    for i in range(3):
        step(xs[i % 4], ys[i % 4])
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    ev = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(steps)
    ]
    for i in range(steps):
        ev[i][0].record()
        step(xs[i % 4], ys[i % 4])
        ev[i][1].record()
    torch.cuda.synchronize()
    ms = [a.elapsed_time(b) for a, b in ev]
    med = statistics.median(ms)
    tps = c["batch"] * T / (med / 1e3)
    out = dict(
        c,
        warm_s=round(warm_s, 1),
        ms_median=round(med, 3),
        ms_p10=round(pct(ms, 0.1), 3),
        ms_p90=round(pct(ms, 0.9), 3),
        tokens_per_s=round(tps),
        mfu=round(tps * flops_per_token(model, cfg) / PEAK, 4),
        max_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1),
    )
    icfg.coordinate_descent_tuning = False
    return out


KERNEL_CLASSES = (  # first match wins
    ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
    ("optimizer", ("adam", "multi_tensor", "foreach", "norm_kernel", "_amp_")),
    ("cross_entropy", ("log_softmax", "nll", "cross_entropy")),
    ("gemm", ("gemm", "xmma", "cutlass", "nvjet", "sm90", "ampere", "cublas", "matmul")),
    ("triton_fused", ("triton",)),
)


def profile(batch: int = 32) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    cfg, model, opt = build("baseline", batch)
    params = [p for p in model.parameters() if p.requires_grad]
    step = make_step(model, opt, compiler.compile(model), params)
    x = torch.randint(0, VOCAB, (batch, T), device="cuda")
    y = torch.randint(0, VOCAB, (batch, T), device="cuda")
    for _ in range(3):
        step(x, y)
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(3):
            step(x, y)
        torch.cuda.synchronize()
    by_class: dict[str, float] = {}
    top: list[tuple[str, float]] = []
    for e in p.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if not us or e.key.startswith("ProfilerStep") or e.key.startswith("aten::"):
            continue
        key = e.key.lower()
        cls = next((c for c, pats in KERNEL_CLASSES if any(s in key for s in pats)), "other")
        by_class[cls] = by_class.get(cls, 0.0) + us / 3 / 1e3
        top.append((e.key[:90], us / 3 / 1e3))
    top.sort(key=lambda kv: -kv[1])
    return {
        "name": "prof",
        "batch": batch,
        "ms_per_step_by_class": {
            k: round(v, 2) for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])
        },
        "top_kernels_ms": [(k, round(v, 2)) for k, v in top[:25]],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="b32,b48,b64,b32-mat,ra-b32,prof")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=400.0)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out_dir = os.environ.get("OUT")
    sink = open(os.path.join(out_dir, "perf_train.jsonl"), "a") if out_dir else None
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    t_start = time.perf_counter()
    skipped = []
    for name in comma_list(args.configs):
        if time.perf_counter() - t_start > args.budget_s:
            skipped.append(name)
            continue
        try:
            row = profile() if name == "prof" else run_config(parse(name), args.steps)
        except torch.OutOfMemoryError as exc:
            row = {"name": name, "error": f"out of memory: {str(exc).splitlines()[0]}"}
        except Exception as exc:  # one broken configuration must not stop the others
            row = {"name": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
        print(json.dumps(row), flush=True)
        if sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch._dynamo.reset()
    if skipped:
        print(f"skipped (budget): {', '.join(skipped)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
