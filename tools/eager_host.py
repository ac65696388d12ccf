"""Where the host time of ra_v5's eager forward+backward goes, against the baseline's.

    PYTHONPATH=. python3 tools/eager_host.py [--repeats 300] [--rounds 5] [--switch-interval S]
    taskset -c 3 python3 tools/eager_host.py    # every thread on one CPU

The eager block (B=8, T=1024, H=12, D=64, bf16, as in tools/perf_block.py) is
host-bound: its kernels take about 0.4 ms, the calls take more. This tool times
back-to-back calls (one sync at the end of each round, interleaved rounds in one
process) of:

- `baseline`, `ra_v5`: the blocks as they are;
- `baseline+noop`: the baseline with a Python autograd Function that passes
  c_attn's weight through unchanged, so its backward is one Python node that
  does nothing: the price of a Python node in the backward on this host;
- `*:st`: the same with `torch.autograd.set_multithreading_enabled(False)`: the
  backward runs on the calling thread instead of the engine's device thread;
- `ra_v5+plain`: ra_v5 with its composition in plain torch operations
  (`fused.disabled()`): no Python node, about fifteen small kernels launched from
  C++ instead of two Triton launches from Python;

the same control at its smallest (`micro`: an 8 x 8 CUDA weight, one multiply and
its backward, with and without the pass-through node), which gives the node's own
price apart from the block's noise; and then a timeline of one call from perf_counter stamps: the forward and the
backward of the baseline; for ra_v5 the C++ nodes before the composition's
Python backward (stamped on the thread that runs it), that backward (its
allocations and launches apart), and what follows it until `.backward()` returns. Everything goes to stdout and, when OUT is set,
to $OUT/eager_host.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time

import torch

from racli_models import GPTConfig, build_attention, fused

B, T, H, D = 8, 1024, 12, 64
C = H * D


class PassThrough(torch.autograd.Function):
    """y = w, with the backward in Python: the cost of one Python node."""

    @staticmethod
    def forward(ctx, w):
        return w.view_as(w)

    @staticmethod
    def backward(ctx, g):
        return g


def build(attn: str, noop: bool) -> torch.nn.Module:
    cfg = GPTConfig.for_block(heads=H, head_dim=D, seq=T, attn=attn)
    torch.manual_seed(1234)
    m = build_attention(attn, cfg).to(device="cuda", dtype=torch.bfloat16).train()
    if noop:
        lin = m.c_attn

        def forward(x, lin=lin):
            return torch.nn.functional.linear(x, PassThrough.apply(lin.weight), lin.bias)

        lin.forward = forward
    return m


def caller(m: torch.nn.Module, single_thread: bool, plain: bool = False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, C, generator=g).to("cuda", torch.bfloat16).requires_grad_(True)
    w = torch.randn(B, T, C, generator=g).to("cuda", torch.bfloat16)
    params = list(m.parameters())

    composition = fused.disabled if plain else contextlib.nullcontext

    def call():
        for p in params:
            p.grad = None
        x.grad = None
        with composition(), torch.autograd.set_multithreading_enabled(not single_thread):
            m(x).backward(w)

    return call


def micro(noop: bool, single_thread: bool):
    w = torch.randn(8, 8, device="cuda", requires_grad=True)

    def call():
        w.grad = None
        v = PassThrough.apply(w) if noop else w
        if single_thread:
            with torch.autograd.set_multithreading_enabled(False):
                (v * 2.0).sum().backward()
        else:
            (v * 2.0).sum().backward()

    return call


def wall_ms(call, n: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


STAMPS: dict[str, list[float]] = {}
_now = time.perf_counter


def _stamp(name: str, t: float) -> None:
    STAMPS.setdefault(name, []).append(t)


def timeline(m: torch.nn.Module, n: int, single_thread: bool) -> dict[str, float]:
    """Median us of each stretch of one ra_v5 eager forward+backward call."""
    orig_bwd = fused.ComposeRAv5.backward
    orig_launch, orig_alloc = fused._launch, fused._alloc
    acc = {"launch": 0.0, "alloc": 0.0}

    def launch(*a, **k):
        t = _now()
        orig_launch(*a, **k)
        acc["launch"] += _now() - t

    def alloc(*a, **k):
        t = _now()
        out = orig_alloc(*a, **k)
        acc["alloc"] += _now() - t
        return out

    def backward(ctx, G):
        acc["launch"] = acc["alloc"] = 0.0
        t = _now()
        out = orig_bwd(ctx, G)
        t2 = _now()
        _stamp("py_in", t)
        _stamp("py_out", t2)
        _stamp("py_launch", acc["launch"])
        _stamp("py_alloc", acc["alloc"])
        return out

    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, C, generator=g).to("cuda", torch.bfloat16).requires_grad_(True)
    w = torch.randn(B, T, C, generator=g).to("cuda", torch.bfloat16)
    params = list(m.parameters())
    fused.ComposeRAv5.backward = staticmethod(backward)
    fused._launch, fused._alloc = launch, alloc
    STAMPS.clear()
    try:
        for _ in range(n):
            for p in params:
                p.grad = None
            x.grad = None
            t0 = _now()
            y = m(x)
            t1 = _now()
            if single_thread:
                with torch.autograd.set_multithreading_enabled(False):
                    y.backward(w)
            else:
                y.backward(w)
            t4 = _now()
            _stamp("t0", t0)
            _stamp("t1", t1)
            _stamp("t4", t4)
        torch.cuda.synchronize()
    finally:
        fused.ComposeRAv5.backward = staticmethod(orig_bwd)
        fused._launch, fused._alloc = orig_launch, orig_alloc
    s = STAMPS
    k = len(s["t0"])
    parts = {"forward": [s["t1"][i] - s["t0"][i] for i in range(k)]}
    if "py_in" in s:  # a composition node ran: split the backward around it
        parts |= {
            "before_python_node": [s["py_in"][i] - s["t1"][i] for i in range(k)],
            "python_node": [s["py_out"][i] - s["py_in"][i] for i in range(k)],
            "  of it launches": s["py_launch"][:k],
            "  of it allocations": s["py_alloc"][:k],
            "after_python_node": [s["t4"][i] - s["py_out"][i] for i in range(k)],
        }
    else:
        parts["backward"] = [s["t4"][i] - s["t1"][i] for i in range(k)]
    parts["whole_call"] = [s["t4"][i] - s["t0"][i] for i in range(k)]
    return {name: statistics.median(v) * 1e6 for name, v in parts.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval(S) first: how soon a thread waiting for the interpreter "
        "lock gets it (Python's default 0.005 s); with `taskset -c N` (every thread on one "
        "CPU) one of the two probes of where the device thread's extra time goes",
    )
    args = ap.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    if not torch.cuda.is_available():
        print("eager_host: needs a CUDA device", file=sys.stderr)
        return 2
    print("threads:", [t.name for t in threading.enumerate()], flush=True)
    configs = {}
    for attn, noop in (("baseline", False), ("ra_v5", False), ("baseline", True)):
        label = attn + ("+noop" if noop else "")
        m = build(attn, noop)
        configs[label] = caller(m, False)
        configs[label + ":st"] = caller(m, True)
    m = build("ra_v5", False)
    configs["ra_v5+plain"] = caller(m, False, plain=True)
    configs["ra_v5+plain:st"] = caller(m, True, plain=True)
    for noop in (False, True):
        label = "micro" + ("+noop" if noop else "")
        configs[label] = micro(noop, False)
        configs[label + ":st"] = micro(noop, True)
    samples: dict[str, list[float]] = {k: [] for k in configs}
    for call in configs.values():
        for _ in range(30):
            call()
    torch.cuda.synchronize()
    for _ in range(args.rounds):
        for label, call in configs.items():
            samples[label].append(wall_ms(call, args.repeats // args.rounds))
    rows = []
    for label, xs in samples.items():
        med = statistics.median(xs)
        ref = ("micro" if label.startswith("micro") else "baseline") + (
            ":st" if label.endswith(":st") else ""
        )
        ratio = med / statistics.median(samples[ref])
        rows.append({"config": label, "ms_per_call": med, "rounds": xs, "ratio": ratio})
        print(
            f"[wall] {label:18s} {med:.4f} ms per call (rounds {min(xs):.4f}-{max(xs):.4f})"
            f" ratio {ratio:.3f}",
            flush=True,
        )
    lines = {}
    for attn in ("baseline", "ra_v5"):
        m = build(attn, False)
        for st in (False, True):
            timeline(m, 30, st)  # warm the wrappers
            parts = timeline(m, args.repeats, st)
            lines[f"{attn}:{'st' if st else 'mt'}"] = parts
            for name, us in parts.items():
                tag = "st" if st else "mt"
                print(f"[timeline] {attn:8s} {tag} {name:22s} {us:8.1f} us", flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "eager_host.json"), "w") as f:
            json.dump({"wall": rows, "timeline_us": lines}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
