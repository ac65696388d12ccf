"""The MLP forward's GELU kernel alone (gelu(h) and gelu'(h) from bf16 h of GPT-2's shape,
32768 x 3072), compiled with gelu_mm.shared_erf(on); prints erf's count in the Triton
source, the PTX's instruction counts, and the kernel's time (CUDA events, median, p10,
p90 of 200 after 20 warm-up). Run once a process: python3 s48_erf_ptx.py on|off"""
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


def f(h):
    return F.gelu(h), gelu_mm.gelu_slope(h)


h = torch.randn(32768, 3072, device="cuda", dtype=torch.bfloat16)
g = torch.compile(f, dynamic=False)
with gelu_mm.shared_erf(on):
    _, codes = run_and_get_code(g, h)
    src = "\n".join(codes)
    print("shared_erf", on, "erf in the Triton source:", len(re.findall(r"erf\(", src)))
    ptx = glob.glob(os.environ["TRITON_CACHE_DIR"] + "/**/*.ptx", recursive=True)
    for p in ptx:
        text = open(p).read()
        ins = [ln for ln in text.splitlines() if re.match(r"\s+[a-z]", ln) and not ln.strip().startswith(".")]
        ops = {}
        for ln in ins:
            op = ln.split()[0].split(".")[0]
            if ln.strip().startswith("@"):
                op = ln.split()[1].split(".")[0]
            ops[op] = ops.get(op, 0) + 1
        top = sorted(ops.items(), key=lambda kv: -kv[1])[:10]
        print(os.path.basename(p), "instructions", len(ins), top)
    for _ in range(20):
        g(h)
    torch.cuda.synchronize()
    ts = []
    for _ in range(200):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g(h)
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    q = statistics.quantiles(ts, n=10)
    print(f"shared_erf {on}: kernel {statistics.median(ts)*1e3:.1f} us (p10 {q[0]*1e3:.1f}, p90 {q[-1]*1e3:.1f})")
