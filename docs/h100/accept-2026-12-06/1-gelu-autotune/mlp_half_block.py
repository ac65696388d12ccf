"""x + mlp(ln_2(x)) forward+backward at GPT-2's step shape (B*T=32768, C=768), fp32
weights under bf16 autocast: inductor default against max_autotune_gemm (Triton GEMM
templates, GELU fused into their epilogue/prologue when the fused pair benchmarks faster).
Interleaved rounds, CUDA events, median p10 p90. Prints chosen kernels per mode."""

import glob
import json
import os
import sys
import time

import torch

from racli_models.config import GPTConfig
from racli_models.gpt import MLP

torch.backends.cuda.matmul.allow_tf32 = True
M, C = 32768, 768
cfg = GPTConfig(n_embd=C, n_head=12, n_layer=1, block_size=1024, vocab_size=50304)
MODES = {
    "default": {},
    "gemm_autotune": {"max_autotune_gemm": True},
    "gemm_autotune_noprologue": {"max_autotune_gemm": True, "prologue_fusion": False},
    "tma": {"max_autotune_gemm": True, "triton.enable_persistent_tma_matmul": True},
    "tma_store": {
        "max_autotune_gemm": True,
        "triton.enable_persistent_tma_matmul": True,
        "triton.enable_template_tma_store": True,
    },
}
only = sys.argv[1].split(",") if len(sys.argv) > 1 else list(MODES)


class Half(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_2 = torch.nn.LayerNorm(C, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x):
        return x + self.mlp(self.ln_2(x))


torch.manual_seed(0)
base = Half().cuda()
x0 = torch.randn(M, C, device="cuda")
g = torch.randn(M, C, device="cuda")
cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "/tmp/ic")
steps, results, outs = {}, {}, {}


def make(mode):
    mod = Half().cuda()
    mod.load_state_dict(base.state_dict())
    fn = torch.compile(mod.forward, options=MODES[mode] or None, dynamic=False)
    x = x0.clone().requires_grad_(True)

    def step():
        for p in mod.parameters():
            p.grad = None
        x.grad = None
        with torch.autocast("cuda", torch.bfloat16):
            y = fn(x)
        y.backward(g)
        return y

    before = set(glob.glob(f"{cache}/**/*.py", recursive=True))
    t = time.time()
    y = step()
    torch.cuda.synchronize()
    new = [
        f
        for f in set(glob.glob(f"{cache}/**/*.py", recursive=True)) - before
        if "def call(" in open(f).read()
    ]
    kinds = {"files": len(new)}
    out = os.environ.get("OUT", "/tmp")
    with open(f"{out}/s24/launches-{mode}.txt", "w") as fh:
        for f in sorted(new):
            s = open(f).read()
            for key in (
                "extern_kernels.mm",
                "triton_tem_fused",
                "triton_poi_fused",
                "triton_per_fused",
                "triton_red_fused",
            ):
                kinds[key] = kinds.get(key, 0) + s.count(key)
            fh.write(f"# {os.path.basename(f)}\n")
            fh.writelines(
                line.strip()[:220] + "\n"
                for line in s.splitlines()
                if ".run(" in line or "extern_kernels." in line
            )
    print(f"[{mode}] first call {time.time() - t:.1f} s, code: {kinds}", flush=True)
    outs[mode] = (y.detach().float(), x.grad.float(), [p.grad.float() for p in mod.parameters()])
    return step


for mode in only:
    steps[mode] = make(mode)
ref = outs[only[0]]
for mode in only[1:]:
    o = outs[mode]
    err = [
        ((a - b).norm() / b.norm()).item()
        for a, b in zip([o[0], o[1], *o[2]], [ref[0], ref[1], *ref[2]])
    ]
    print(
        f"[{mode}] rel. difference to {only[0]} (y, dx, dparams): {[f'{e:.2e}' for e in err]}",
        flush=True,
    )

for mode in only:
    results[mode] = []
for _ in range(5):
    for mode in only:
        st = steps[mode]
        for _ in range(10):
            st()
        ev = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(40)
        ]
        for a, b in ev:
            a.record()
            st()
            b.record()
        torch.cuda.synchronize()
        results[mode] += [a.elapsed_time(b) for a, b in ev]
summary = {}
for mode in only:
    t = torch.tensor(results[mode])
    summary[mode] = {
        "median_ms": round(t.median().item(), 4),
        "p10": round(t.quantile(0.1).item(), 4),
        "p90": round(t.quantile(0.9).item(), 4),
    }
b = summary[only[0]]["median_ms"]
for mode in only:
    summary[mode]["ratio_to_" + only[0]] = round(summary[mode]["median_ms"] / b, 4)
    print(mode, summary[mode], flush=True)
print(json.dumps(summary))
