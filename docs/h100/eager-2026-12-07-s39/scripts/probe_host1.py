"""Host time of the pieces of ra_v5's eager composition (bf16, the block's shapes)."""

import sys
import time

import torch

sys.path.insert(0, "tools")
import perf_block as pb

from racli_models import fused

N = 2000


def host_us(fn, n=N, sync_every=None):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    us = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return us


m = pb.build_block("ra_v5", "bf16")
params = [p.detach().contiguous() for p in m.composed()]
dt = torch.bfloat16
print("params", [tuple(p.shape) for p in params], params[0].dtype)


class Ident(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        return a

    @staticmethod
    def backward(ctx, g):
        return g


a = torch.zeros(4, device="cuda")
rows = {}
rows["torch.empty 2304x768"] = host_us(lambda: torch.empty((2304, 768), device="cuda", dtype=dt))
rows["Function.apply identity"] = host_us(lambda: Ident.apply(a))
rows["6x contiguous"] = host_us(lambda: tuple(t.contiguous() for t in params))
rows["_ra_v5_weight (alloc+launch)"] = host_us(lambda: fused._ra_v5_weight(*params, dt))
print("compiled kernels cached:", len(fused._COMPILED))
with fused.settings(fast_launch=False):
    rows["_ra_v5_weight, Triton's launch"] = host_us(lambda: fused._ra_v5_weight(*params, dt))
with torch.no_grad():
    rows["compose_ra_v5 no grad"] = host_us(lambda: fused.compose_ra_v5(*m.composed()))
    rows["m.folded_weight() no grad"] = host_us(lambda: m.folded_weight())
rows["m.folded_weight() grad"] = host_us(lambda: m.folded_weight())
W_f = m.folded_weight()[0]
G = torch.randn_like(W_f)
rows["_ra_v5_grads direct"] = host_us(lambda: fused._ra_v5_grads(G, *params))
plist = m.composed()
rows["compose fwd+autograd.grad"] = host_us(
    lambda: torch.autograd.grad(m.folded_weight()[0], plist, G), n=500
)
rows["compose fwd+backward()"] = host_us(lambda: m.folded_weight()[0].backward(G), n=500)
ident_in = torch.zeros(4, device="cuda", requires_grad=True)
rows["identity Function fwd+backward()"] = host_us(
    lambda: Ident.apply(ident_in).backward(torch.ones(4, device="cuda")), n=500
)
lin = torch.nn.Linear(768, 2304, bias=False, device="cuda", dtype=dt)
xx = torch.randn(8, 32, 768, device="cuda", dtype=dt, requires_grad=True)
gy = torch.randn(8, 32, 2304, device="cuda", dtype=dt)
rows["small linear fwd+backward() (1 param)"] = host_us(lambda: lin(xx).backward(gy), n=500)
for k, v in rows.items():
    print(f"{k:45s} {v:8.1f} us")

# the eager block, fwd+bwd, under the CPU profiler
for label in ("baseline", "ra_v5"):
    r = pb.block_runner(label, "bf16", "eager", "fwd_bwd")
    with r.ctx():
        for _ in range(20):
            r.prep()
            r.step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            r.prep()
            r.step()
        torch.cuda.synchronize()
        print(label, "wall ms per fwd_bwd", (time.perf_counter() - t0) / 200 * 1e3)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                r.prep()
                r.step()
            torch.cuda.synchronize()
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60
        )
    )
