"""Where ra_v5's eager forward+backward waits: issue time vs wall, allocator traffic, runtime calls."""

import sys
import time

import torch

sys.path.insert(0, "tools")
import perf_block as pb
from torch.profiler import ProfilerActivity, profile

from racli_models import fused


def measure(label, ctx_extra=None, n=300):
    r = pb.block_runner(label, "bf16", "eager", "fwd_bwd")
    import contextlib

    extra = ctx_extra or contextlib.nullcontext()
    with r.ctx(), extra:
        for _ in range(30):
            r.prep()
            r.step()
        torch.cuda.synchronize()
        s0 = torch.cuda.memory_stats()
        t0 = time.perf_counter()
        for _ in range(n):
            r.prep()
            r.step()
        t_issue = time.perf_counter() - t0
        torch.cuda.synchronize()
        t_wall = time.perf_counter() - t0
        s1 = torch.cuda.memory_stats()
        d = {
            k: s1.get(k, 0) - s0.get(k, 0)
            for k in (
                "num_device_alloc",
                "num_device_free",
                "num_alloc_retries",
                "num_sync_all_streams",
            )
        }
        # one iteration at a time, synchronised: host time of one call, GPU idle at its start
        one = []
        for _ in range(100):
            torch.cuda.synchronize()
            a = time.perf_counter()
            r.prep()
            r.step()
            b = time.perf_counter()
            torch.cuda.synchronize()
            c = time.perf_counter()
            one.append((b - a, c - a))
        one.sort()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                r.prep()
                r.step()
            torch.cuda.synchronize()
    print(
        f"{label:28s} issue {t_issue / n * 1e3:.4f} ms/it  wall {t_wall / n * 1e3:.4f} ms/it  "
        f"synced one call: host {one[50][0] * 1e3:.4f} ms, to GPU done {one[50][1] * 1e3:.4f} ms  {d}"
    )
    rows = [e for e in prof.key_averages() if e.key.startswith(("cuda", "cu"))]
    for e in sorted(rows, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"    {e.key:40s} calls {e.count:5d}  self {e.self_cpu_time_total / 20:8.1f} us/it")


measure("baseline")
measure("ra_v5")
with fused.settings(overlap="always"):
    measure("ra_v5 FoldedLinear")
measure("baseline")
measure("ra_v5")
