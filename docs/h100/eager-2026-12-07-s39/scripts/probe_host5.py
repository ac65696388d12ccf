"""A timeline of one eager block backward (host side), baseline and ra_v5."""

import statistics
import sys
import time

import torch

sys.path.insert(0, "tools")
import perf_block as pb

from racli_models import fused

T = {}


def mark(name):
    def hook(g):
        T.setdefault(name, time.perf_counter())

    return hook


orig_bwd = fused.ComposeRAv5.backward


def timed_bwd(ctx, G):
    T["compose_bwd_start"] = time.perf_counter()
    out = orig_bwd(ctx, G)
    T["compose_bwd_end"] = time.perf_counter()
    return out


fused.ComposeRAv5.backward = staticmethod(timed_bwd)

for label in ("baseline", "ra_v5", "baseline", "ra_v5"):
    m = pb.build_block(pb.VARIANTS[label][0], "bf16")
    x, w = pb.block_inputs("bf16")
    x.requires_grad_(True)
    m.train(True)
    if label == "baseline":
        m.c_attn.register_forward_hook(lambda mod, i, o: (o.register_hook(mark("dqkv")), None)[1])
    else:
        orig = m.folded_proj

        def fp(x, orig=orig):
            out = orig(x)
            out.register_hook(mark("dqkv"))
            return out

        m.folded_proj = fp
        origw = m.folded_weight

        def fw(origw=origw):
            W, b = origw()
            W.register_hook(mark("dW_f"))
            return W, b

        m.folded_weight = fw
    m.c_proj.register_forward_hook(lambda mod, i, o: (i[0].register_hook(mark("dy_attn")), None)[1])
    x.register_hook(mark("dx"))
    rows = []
    for i in range(230):
        for p in m.parameters():
            p.grad = None
        x.grad = None
        y = m(x)
        torch.cuda.synchronize()
        T.clear()
        t0 = time.perf_counter()
        y.backward(w)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        if i >= 30:
            rows.append({k: (v - t0) * 1e6 for k, v in T.items()} | {"end": (t1 - t0) * 1e6})
    keys = sorted(rows[0], key=lambda k: statistics.median(r[k] for r in rows))
    print(
        label,
        "  ".join(f"{k} {statistics.median(r[k] for r in rows):.0f}" for k in keys),
        "(us from backward())",
    )
