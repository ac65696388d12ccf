"""Host time of the composition's launches: tensors vs their addresses (fused._launch's fast
path), and the eager block's wall time per forward+backward with each."""

import statistics
import sys
import time

import torch
import triton

sys.path.insert(0, "tools")
import perf_block as pb

from racli_models import fused

new_launch = fused._launch


def old_launch(fn, grid, args, meta, num_warps):
    key = (fn, num_warps, tuple(meta.items()), tuple(map(fused._spec, args)))
    k = fused._COMPILED.get(key)
    if k is None:
        return new_launch(fn, grid, args, meta, num_warps)
    tail = [meta[name] for name in fn.arg_names[len(args) :]]
    g = tuple(grid) + (1,) * (3 - len(grid))
    stream = torch._C._cuda_getCurrentRawStream(args[0].device.index)
    hooks = triton.knobs.runtime
    k.run(
        g[0],
        g[1],
        g[2],
        stream,
        k.function,
        k.packed_metadata,
        None,
        hooks.launch_enter_hook,
        hooks.launch_exit_hook,
        *args,
        *tail,
    )


def host_us(fn, n=3000):
    for _ in range(100):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    us = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return us


def wall(label, n=400):
    r = pb.block_runner(label, "bf16", "eager", "fwd_bwd")
    with r.ctx():
        for _ in range(30):
            r.prep()
            r.step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            r.prep()
            r.step()
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


m = pb.build_block("ra_v5", "bf16")
params = [p.detach().contiguous() for p in m.composed()]
G = torch.randn(2304, 768, device="cuda", dtype=torch.bfloat16)
res = {}
for _rnd in range(3):
    for name, fnl in (("tensors", old_launch), ("addresses", new_launch)):
        fused._launch = fnl
        res.setdefault((name, "fwd"), []).append(
            host_us(lambda: fused._ra_v5_weight(*params, torch.bfloat16))
        )
        res.setdefault((name, "grads"), []).append(host_us(lambda: fused._ra_v5_grads(G, *params)))
        res.setdefault((name, "block wall ms"), []).append(wall("ra_v5"))
    fused._launch = new_launch
    res.setdefault(("baseline", "block wall ms"), []).append(wall("baseline"))
# the two give the same W_f and gradients
fused._launch = old_launch
a = fused._ra_v5_weight(*params, torch.bfloat16)
ga = fused._ra_v5_grads(G, *params)[0]
fused._launch = new_launch
b = fused._ra_v5_weight(*params, torch.bfloat16)
gb = fused._ra_v5_grads(G, *params)[0]
torch.cuda.synchronize()
print("same W_f:", torch.equal(a, b), "same grads:", all(torch.equal(x, y) for x, y in zip(ga, gb)))
for k, v in res.items():
    print(
        f"{k[0]:10s} {k[1]:14s} "
        + "  ".join(f"{x:8.3f}" for x in v)
        + f"   median {statistics.median(v):8.3f}"
    )
