"""Not part of ra (docs/h100/gelu-2026-12-06/scripts/README.md). gelu'(h) * (dy @ W) at GPT-2's step shape (M=32768, R=768, N=3072, bf16): each kind and
tile of gpu_work/gelu_mm.py alone, with and without its epilogue, against cuBLAS's product
and torch's gelu_backward; then the MLP half-block compiled, torch's ops against
racli_models.gelu_mm at the best tile. CUDA events, interleaved rounds, median p10 p90.
Writes $OUT/gelu_alone.json and $OUT/best_tile.json."""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gelu_mm2 as G  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/ra_out"))
torch.backends.cuda.matmul.allow_tf32 = True
M, R, N = 32768, 768, 3072


def tiles():
    grid = [
        ("pers", 128, 256, 64, 3, 8, False, (0, 1), (2, 4)),
        ("pers", 128, 256, 64, 4, 8, False, (1,), (4,)),
        ("pers", 128, 128, 64, 4, 8, False, (1,), (1, 2)),
        ("pers", 128, 128, 64, 3, 4, False, (1,), (1,)),
        ("pers", 256, 128, 64, 3, 8, False, (1,), (2, 4)),
        ("pers", 128, 256, 64, 3, 8, True, (1,), (2,)),
        ("pers", 128, 128, 64, 4, 8, True, (1,), (1,)),
        ("tma", 128, 256, 64, 3, 8, False, (1,), (2,)),
        ("tma", 128, 128, 64, 3, 4, False, (1,), (1,)),
        ("tma", 128, 128, 64, 4, 8, False, (1,), (1,)),
    ]
    for kind, bm, bn, bk, s, w, ws, epis, subs in grid:
        for epi in epis:
            for sub in subs:
                name = f"{kind}{'-ws' if ws else ''} {bm}x{bn}x{bk} s{s} w{w} sub{sub} epi{epi}"
                yield name, dict(kind=kind, bm=bm, bn=bn, bk=bk, stages=s, warps=w, ws=ws,
                                 epi=epi, sub=sub)  # fmt: skip


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
want = G.reference(dy[:4096], W, h[:4096], 2)
want_mm = dy[:4096].double() @ W.double()


P = dy @ W


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


fns = {
    "torch: mm + gelu_backward": lambda: torch.ops.aten.gelu_backward(dy @ W, h),
    "torch: mm alone": lambda: dy @ W,
    "torch: gelu_backward alone": lambda: torch.ops.aten.gelu_backward(P, h),
}
print(f"[alone] torch ops: error {rel(fns['torch: mm + gelu_backward']()[:4096], want):.2e}")
errors = {}
want1 = want_mm * h[:4096].double()
for name, kw in tiles():
    try:
        got = G.dgelu_mm(dy, W, h, **kw)
        torch.cuda.synchronize()
    except Exception as exc:  # a tile Triton cannot build here
        print(f"[alone] {name}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        continue
    e = rel(got[:4096], {0: want_mm, 1: want1}.get(kw["epi"], want))
    errors[name] = e
    print(f"[alone] {name}: error {e:.2e}", flush=True)
    if e > 1e-2:
        continue
    fns[name] = lambda kw=kw: G.dgelu_mm(dy, W, h, **kw)
alone = timeit(fns)
for k, v in alone.items():
    print("[alone]", k, v, flush=True)
fused = {k: v for k, v in alone.items() if k.endswith("epi1")}
best = min(fused, key=lambda k: fused[k]["median"])
kw = dict(tiles())[best]
tile = dict(
    kind=kw["kind"],
    block_m=kw["bm"],
    block_n=kw["bn"],
    block_k=kw["bk"],
    stages=kw["stages"],
    warps=kw["warps"],
    ws=kw["ws"],
    sub=kw["sub"],
)
print(f"[alone] best {best}: {fused[best]}", flush=True)
OUT.mkdir(parents=True, exist_ok=True)
(OUT / "gelu_alone.json").write_text(json.dumps({"alone": alone, "errors": errors}, indent=1))
(OUT / "best_tile.json").write_text(json.dumps({"name": best, "tile": tile, **fused[best]}))

# ---- the MLP half-block, compiled, fwd+bwd under bf16 autocast
from racli_models import gelu_mm  # noqa: E402
from racli_models.config import GPTConfig  # noqa: E402
from racli_models.gpt import MLP  # noqa: E402

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
for mode, on in (("torch ops", False), (f"kernel {best}", True)):
    mod = Half().cuda()
    mod.load_state_dict(base.state_dict())
    fn = torch.compile(mod.forward, dynamic=False)
    x = x0.clone().requires_grad_(True)

    def step(mod=mod, fn=fn, x=x, on=on):
        for p in mod.parameters():
            p.grad = None
        x.grad = None
        with gelu_mm.kernel(on, **tile), torch.autocast("cuda", torch.bfloat16):
            y = fn(x)
        y.backward(gy)

    step()
    torch.cuda.synchronize()
    steps[mode] = step
half = timeit(steps, reps=40)
b = half["torch ops"]["median"]
for k, v in half.items():
    print("[half-block]", k, v, f"ratio {v['median'] / b:.4f}", flush=True)
(OUT / "gelu_half.json").write_text(json.dumps(half, indent=1))
