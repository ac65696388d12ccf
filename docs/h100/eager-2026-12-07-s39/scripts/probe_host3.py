"""ra_v5's eager block: host time of the forward and of the backward, each from an idle GPU."""

import statistics
import sys
import threading
import time

import torch

sys.path.insert(0, "tools")
import perf_block as pb


def split_times(label, n=200, extra=None):
    m = pb.build_block(pb.VARIANTS[label][0], "bf16")
    x, w = pb.block_inputs("bf16")
    x.requires_grad_(True)
    m.train(True)
    params = list(m.parameters())
    f, b, _tot = [], [], []
    for i in range(n + 30):
        for p in params:
            p.grad = None
        x.grad = None
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        y = m(x)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        y.backward(w)
        t3 = time.perf_counter()
        torch.cuda.synchronize()
        if i >= 30:
            f.append(t1 - t0)
            b.append(t3 - t2)

    def med(v):
        return statistics.median(v) * 1e6

    print(f"{label:10s} fwd host {med(f):7.1f} us   bwd host {med(b):7.1f} us")


def comp_only(n=300):
    m = pb.build_block("ra_v5", "bf16")
    m.train(True)
    plist = m.composed()
    W = m.folded_weight()[0]
    G = torch.randn_like(W)
    f, b = [], []
    for i in range(n + 30):
        for p in plist:
            p.grad = None
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        W = m.folded_weight()[0]
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        W.backward(G)
        t3 = time.perf_counter()
        torch.cuda.synchronize()
        if i >= 30:
            f.append(t1 - t0)
            b.append(t3 - t2)

    def med(v):
        return statistics.median(v) * 1e6

    print(f"composition alone: fwd host {med(f):7.1f} us   bwd host {med(b):7.1f} us")


for _ in range(2):
    split_times("baseline")
    split_times("ra_v5")
comp_only()
# the Python backward's GIL: a second Python thread idle vs none
print("threads:", threading.active_count(), [t.name for t in threading.enumerate()])
