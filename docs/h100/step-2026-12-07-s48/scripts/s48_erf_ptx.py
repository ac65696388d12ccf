"""The MLP forward's GELU kernel alone (gelu(h) and gelu'(h) from bf16 h of GPT-2's shape,
32768 x 3072), compiled with gelu_mm.shared_erf(on): erf's count in the Triton source and
the PTX's instruction counts; then its time beside a compiled copy of the same bytes
(h read once, two bf16 outputs: h * 2, h * 3) and F.gelu alone (one output). Times: CUDA
events around 20 calls, us a call, median (p10, p90) of 50 after warm-up.
Run once a process: python3 s48_erf_ptx.py on|off"""

import glob
import os
import re
import statistics
import sys
import tempfile

on = sys.argv[1] == "on"
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp()
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch._inductor.utils import run_and_get_code  # noqa: E402

from racli_models import gelu_mm  # noqa: E402


def both(h):
    return F.gelu(h), gelu_mm.gelu_slope(h)


def copy(h):
    return h * 2, h * 3


def gelu(h):
    return F.gelu(h)


def timed(fn, h, calls=20, repeats=50):
    for _ in range(10):
        fn(h)
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            fn(h)
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / calls * 1e3)
    q = statistics.quantiles(ts, n=10)
    return f"{statistics.median(ts):.1f} us (p10 {q[0]:.1f}, p90 {q[-1]:.1f})"


h = torch.randn(32768, 3072, device="cuda", dtype=torch.bfloat16)
with gelu_mm.shared_erf(on):
    g = torch.compile(both, dynamic=False)
    _, codes = run_and_get_code(g, h)
    src = "\n".join(codes)
    print("shared_erf", on, "erf in the Triton source:", len(re.findall(r"erf\(", src)))
    for p in glob.glob(os.environ["TRITON_CACHE_DIR"] + "/**/*.ptx", recursive=True):
        lines = [ln.strip() for ln in open(p).read().splitlines()]
        ins = [ln for ln in lines if re.match(r"@?%?[a-z]", ln) and not ln.startswith(".")]
        ops: dict[str, int] = {}
        for ln in ins:
            word = ln.split()[1] if ln.startswith("@") else ln.split()[0]
            ops[word.split(".")[0]] = ops.get(word.split(".")[0], 0) + 1
        top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
        print(os.path.basename(p), "instructions", len(ins), top)
    print(f"shared_erf {on}: gelu and gelu' {timed(g, h)}")
print(f"copy of the same bytes {timed(torch.compile(copy, dynamic=False), h)}")
print(f"F.gelu alone {timed(torch.compile(gelu, dynamic=False), h)}")
