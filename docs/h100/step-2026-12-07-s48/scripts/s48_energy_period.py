"""How often the card's energy counter changes: read it in a tight loop for 3 s idle and
3 s under a matmul load; print the intervals between changes (median, p10, p90)."""

import statistics
import threading
import time

import pynvml
import torch

pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)


def watch(seconds):
    t_end = time.perf_counter() + seconds
    last = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    changes = []
    while time.perf_counter() < t_end:
        e = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        if e != last:
            changes.append((time.perf_counter(), e - last))
            last = e
    gaps = [b[0] - a[0] for a, b in zip(changes, changes[1:])]
    return changes, gaps


def report(name, changes, gaps):
    if len(gaps) < 3:
        print(name, "changes", len(changes))
        return
    q = statistics.quantiles(gaps, n=10)
    print(
        f"{name}: {len(changes)} changes; interval median {statistics.median(gaps) * 1e3:.2f} ms, "
        f"p10 {q[0] * 1e3:.2f}, p90 {q[-1] * 1e3:.2f}; mJ a change median {statistics.median([c[1] for c in changes]):.0f}"
    )


report("idle", *watch(3.0))
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
stop = threading.Event()


def load():
    while not stop.is_set():
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


t = threading.Thread(target=load)
t.start()
time.sleep(1.0)
report("matmul load", *watch(3.0))
stop.set()
t.join()
