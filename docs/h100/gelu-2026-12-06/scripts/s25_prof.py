"""Not part of ra (docs/h100/gelu-2026-12-06/scripts/README.md). The MLP half-block (ln_2, c_fc, GELU, c_proj, residual) compiled, fwd+bwd under bf16
autocast at GPT-2's step shape: torch's ops against racli_models.gelu_mm (at its TILE).
Interleaved timing, then torch.profiler's kernel table for each."""

import os
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from racli_models import gelu_mm
from racli_models.config import GPTConfig
from racli_models.gpt import MLP

OUT = Path(os.environ.get("OUT", "/tmp/ra_out"))
torch.backends.cuda.matmul.allow_tf32 = True
M = 32768
cfg = GPTConfig(n_embd=768, n_head=12, n_layer=1, block_size=1024, vocab_size=50304, bias=False)


class Half(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_2 = torch.nn.LayerNorm(768, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x):
        return x + self.mlp(self.ln_2(x))


torch.manual_seed(0)
base = Half().cuda()
x0 = torch.randn(M, 768, device="cuda")
gy = torch.randn(M, 768, device="cuda")
steps = {}
for mode, on in (("torch ops", False), ("kernel", True)):
    mod = Half().cuda()
    mod.load_state_dict(base.state_dict())
    fn = torch.compile(mod.forward, dynamic=False)
    x = x0.clone().requires_grad_(True)

    def step(mod=mod, fn=fn, x=x, on=on):
        for p in mod.parameters():
            p.grad = None
        x.grad = None
        with gelu_mm.kernel(on), torch.autocast("cuda", torch.bfloat16):
            y = fn(x)
        y.backward(gy)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    steps[mode] = step

res = {k: [] for k in steps}
for r in range(7):
    for k in list(steps) if r % 2 == 0 else list(steps)[::-1]:
        ev = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(30)
        ]
        for a, b in ev:
            a.record()
            steps[k]()
            b.record()
        torch.cuda.synchronize()
        res[k] += [a.elapsed_time(b) for a, b in ev]
for k, v in res.items():
    t = torch.tensor(v)
    print(
        f"[half] {k}: median {t.median().item():.4f} p10 {t.quantile(0.1).item():.4f} p90 {t.quantile(0.9).item():.4f}"
    )
for k, step in steps.items():
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(
        sort_by="cuda_time_total", row_limit=20, max_name_column_width=90
    )
    print(f"===== profile {k} (5 steps)\n{table}")
    (OUT / f"prof_{k.replace(' ', '_')}.txt").write_text(table)
