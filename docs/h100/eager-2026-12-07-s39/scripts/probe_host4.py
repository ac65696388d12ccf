"""Python-level profile of ra_v5's and the baseline's eager block forward (grad on)."""

import cProfile
import io
import pstats
import sys

import torch

sys.path.insert(0, "tools")
import perf_block as pb
from torch.profiler import ProfilerActivity, profile

for label in ("baseline", "ra_v5"):
    m = pb.build_block(pb.VARIANTS[label][0], "bf16")
    x, w = pb.block_inputs("bf16")
    x.requires_grad_(True)
    m.train(True)
    for _ in range(30):
        m(x).backward(w)
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(200):
        y = m(x)
    pr.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
    print("=====", label, "cProfile of 200 forwards (tottime)")
    print(s.getvalue()[:5000])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(50):
            y = m(x)
        torch.cuda.synchronize()
    print(
        prof.key_averages().table(sort_by="cpu_time_total", row_limit=22, max_name_column_width=50)
    )
