"""gelu'(h) * (dy @ W) at GPT-2's step shape: the kernel alone against cuBLAS's product +
GELU's backward (eager aten ops), then the MLP half-block fwd+bwd compiled, torch's ops
against the kernel at a few tiles. CUDA events, interleaved rounds, median p10 p90."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gelu_mm_draft.py beside this file
import gelu_mm_draft as gelu_mm  # noqa: E402

from racli_models.config import GPTConfig  # noqa: E402
from racli_models.gpt import MLP  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = True
M, R, N = 32768, 768, 3072
TILES = {
    "t128x128x64s3w4": dict(block_m=128, block_n=128, block_k=64, stages=3, warps=4),
    "t128x128x64s4w8": dict(block_m=128, block_n=128, block_k=64, stages=4, warps=8),
    "t128x256x64s3w8": dict(block_m=128, block_n=256, block_k=64, stages=3, warps=8),
    "t256x128x64s3w8": dict(block_m=256, block_n=128, block_k=64, stages=3, warps=8),
    "t128x128x32s4w4": dict(block_m=128, block_n=128, block_k=32, stages=4, warps=4),
}


def timeit(fns, reps=30, rounds=5):
    res = {k: [] for k in fns}
    for r in range(rounds):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            for _ in range(5):
                fns[k]()
            ev = [
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                for _ in range(reps)
            ]
            for a, b in ev:
                a.record()
                fns[k]()
                b.record()
            torch.cuda.synchronize()
            res[k] += [a.elapsed_time(b) for a, b in ev]
    out = {}
    for k, v in res.items():
        t = torch.tensor(v)
        out[k] = dict(
            median=round(t.median().item(), 4),
            p10=round(t.quantile(0.1).item(), 4),
            p90=round(t.quantile(0.9).item(), 4),
        )
    return out


g = torch.Generator(device="cuda").manual_seed(0)
dy = torch.randn(M, R, device="cuda", generator=g, dtype=torch.bfloat16)
W = (torch.randn(R, N, device="cuda", generator=g) / R**0.5).to(torch.bfloat16)
h = torch.randn(M, N, device="cuda", generator=g, dtype=torch.bfloat16)
want = gelu_mm.dgelu_reference(dy[:4096], W, h[:4096])
fns = {
    "torch: mm + gelu_backward": lambda: torch.ops.aten.gelu_backward(dy @ W, h),
    "torch: mm alone": lambda: dy @ W,
}
for name, tile in TILES.items():
    with gelu_mm.kernel(True, **tile):
        got = gelu_mm.dgelu_mm(dy, W, h)
        e = ((got[:4096].double() - want).norm() / want.norm()).item()
        print(f"[alone] {name}: rel. error vs float64 {e:.2e}", flush=True)


def bound(tile):
    def f():
        old = dict(gelu_mm.TILE)
        gelu_mm.TILE.update(tile)
        try:
            return gelu_mm.dgelu_mm(dy, W, h)
        finally:
            gelu_mm.TILE.clear()
            gelu_mm.TILE.update(old)

    return f


for name, tile in TILES.items():
    fns[name] = bound(tile)
e = (
    (torch.ops.aten.gelu_backward(dy[:4096] @ W, h[:4096]).double() - want).norm() / want.norm()
).item()
print(f"[alone] torch ops: rel. error vs float64 {e:.2e}", flush=True)
alone = timeit(fns)
for k, v in alone.items():
    print("[alone]", k, v, flush=True)

best = min(TILES, key=lambda k: alone[k]["median"])
cfg = GPTConfig(n_embd=768, n_head=12, n_layer=1, block_size=1024, vocab_size=50304)


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
for mode, tile in (
    ("torch ops", None),
    (f"kernel {best}", TILES[best]),
    ("kernel t128x128x64s3w4", TILES["t128x128x64s3w4"]),
):
    if mode in steps:
        continue
    mod = Half().cuda()
    mod.load_state_dict(base.state_dict())
    fn = torch.compile(mod.forward, dynamic=False)
    x = x0.clone().requires_grad_(True)

    def step(mod=mod, fn=fn, x=x, tile=tile):
        for p in mod.parameters():
            p.grad = None
        x.grad = None
        with (
            gelu_mm.kernel(tile is not None, **(tile or {})),
            torch.autocast("cuda", torch.bfloat16),
        ):
            y = fn(x)
        y.backward(gy)

    step()
    torch.cuda.synchronize()
    steps[mode] = step
half = timeit(steps, reps=40)
b = half["torch ops"]["median"]
for k, v in half.items():
    print("[half-block]", k, v, f"ratio {v['median'] / b:.4f}", flush=True)
print(json.dumps({"alone": alone, "half_block": half}))
