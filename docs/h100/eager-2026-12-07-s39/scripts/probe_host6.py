"""Inside ra_v5's composition backward: allocations, launches, the rest; in the engine's
thread (the block's backward) and called directly on the main thread."""

import statistics
import sys
import threading
import time

import torch

sys.path.insert(0, "tools")
import perf_block as pb

from racli_models import fused

ACC = {"alloc": 0.0, "launch": 0.0, "n_alloc": 0, "n_launch": 0}
real_alloc, real_launch = fused._alloc, fused._launch


def alloc(*a, **k):
    t = time.perf_counter()
    r = real_alloc(*a, **k)
    ACC["alloc"] += time.perf_counter() - t
    ACC["n_alloc"] += 1
    return r


def launch(*a, **k):
    t = time.perf_counter()
    r = real_launch(*a, **k)
    ACC["launch"] += time.perf_counter() - t
    ACC["n_launch"] += 1
    return r


fused._alloc, fused._launch = alloc, launch
real_grads = fused._ra_v5_grads
BODY = []


def grads(*a, **k):
    for key in ACC:
        ACC[key] = 0
    t = time.perf_counter()
    r = real_grads(*a, **k)
    body = time.perf_counter() - t
    BODY.append(
        (
            body,
            ACC["alloc"],
            ACC["launch"],
            ACC["n_alloc"],
            ACC["n_launch"],
            threading.current_thread().name,
        )
    )
    return r


fused._ra_v5_grads = grads


def report(what):
    rows = BODY[30:]

    def med(i):
        return statistics.median(r[i] for r in rows) * 1e6

    print(
        f"{what:28s} body {med(0):6.1f} us  allocs {med(1):6.1f} us ({rows[0][3]})  launches {med(2):6.1f} us ({rows[0][4]})  rest {med(0) - med(1) - med(2):6.1f} us  thread {rows[0][5]}"
    )
    BODY.clear()


m = pb.build_block("ra_v5", "bf16")
x, w = pb.block_inputs("bf16")
x.requires_grad_(True)
m.train(True)
for _rep in range(2):
    for _i in range(230):
        for p in m.parameters():
            p.grad = None
        y = m(x)
        torch.cuda.synchronize()
        y.backward(w)
        torch.cuda.synchronize()
    report("in the block's backward")
    params = [p.detach() for p in m.composed()]
    G = torch.randn(2304, 768, device="cuda", dtype=torch.bfloat16)
    for _i in range(230):
        torch.cuda.synchronize()
        fused._ra_v5_grads(G, *params)
        torch.cuda.synchronize()
    report("direct, main thread, synced")
    for _i in range(230):
        fused._ra_v5_grads(G, *params)
    torch.cuda.synchronize()
    report("direct, main thread, loop")

    def worker(G=G, params=params):
        for _i in range(230):
            torch.cuda.synchronize()
            fused._ra_v5_grads(G, *params)
            torch.cuda.synchronize()

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    report("direct, another thread")
