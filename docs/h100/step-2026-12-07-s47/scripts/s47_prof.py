"""The compiled training step of vs_nanogpt's arms (nanogpt included), profiled: every
kernel with its launches and ms a step, then each arm run alone for SUSTAIN steps with its
wall-clock start and end printed (to line up with a clock/power sampler), and the
difference between the first two arms' kernels.
    python3 gpu_work/s47_prof.py NANOGPT_DIR ARM [ARM ...]"""

import os
import sys
import time
import types
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import vs_nanogpt as V  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/ra_out"))
SUSTAIN = int(os.environ.get("SUSTAIN", "100"))
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
DEV = os.environ.get("DEV", "cuda")
shape = dict(V.PRESETS[os.environ.get("PRESET", "gpt2")])
T, VOC, B = shape["block_size"], shape["vocab_size"], 32
g = torch.Generator(device=DEV).manual_seed(0)
batches = [
    (
        torch.randint(0, VOC, (B, T), device=DEV, generator=g),
        torch.randint(0, VOC, (B, T), device=DEV, generator=g),
    )
    for _ in range(4)
]
args = types.SimpleNamespace(warmup=3, no_compile=False, batch=B)
nano = V.load_nanogpt(Path(sys.argv[1]))
tables = {}
for arm in sys.argv[2:]:
    step, info = V.warm_arm(arm, args, shape, DEV, nano, batches)
    ev = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(20)
    ]
    for i, (a, b) in enumerate(ev):
        a.record()
        step(*batches[i % 4])
        b.record()
    torch.cuda.synchronize()
    ms = sorted(a.elapsed_time(b) for a, b in ev)
    n = 3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            step(*batches[i % 4])
        torch.cuda.synchronize()
    rows = {}
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", 0) or 0
        if not us or e.device_type != torch.autograd.DeviceType.CUDA or e.key.startswith("aten::"):
            continue
        rows[e.key] = (us / n / 1e3, e.count / n)
    tot = sum(v[0] for v in rows.values())
    tables[arm] = rows
    # sustained: SUSTAIN steps back to back, CUDA events around the whole run
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.time()
    a.record()
    for i in range(SUSTAIN):
        step(*batches[i % 4])
    b.record()
    torch.cuda.synchronize()
    t1 = time.time()
    sus = a.elapsed_time(b) / SUSTAIN
    lines = [
        f"===== {arm}: step median {ms[10]:.3f} ms (p10 {ms[2]:.3f}, p90 {ms[17]:.3f}), "
        f"kernels {tot:.3f} ms, {sum(v[1] for v in rows.values()):.0f} launches, info {info}",
        f"SUSTAIN {arm} {SUSTAIN} steps {sus:.3f} ms/step wall {t0:.3f} {t1:.3f}",
    ]
    for k, (t, c) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:70]:
        lines.append(f"{t:8.3f} ms {c:5.0f}x  {k[:150]}")
    txt = "\n".join(lines)
    print(txt, flush=True)
    (OUT / f"kernels_{arm.replace('+', '_').replace('=', '-')}.txt").write_text(
        txt
        + "\n\nALL\n"
        + "\n".join(
            f"{t:.4f} {c:.0f} {k}" for k, (t, c) in sorted(rows.items(), key=lambda kv: -kv[1][0])
        )
    )
    V.release_arms({arm: step})
    del step
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    time.sleep(2)
if len(tables) >= 2:
    a, b = list(tables)[:2]
    keys = set(tables[a]) | set(tables[b])
    d = sorted(
        ((tables[b].get(k, (0, 0))[0] - tables[a].get(k, (0, 0))[0], k) for k in keys),
        key=lambda x: -abs(x[0]),
    )
    print(f"===== difference {b} - {a} (ms a step, launches)")
    for dt, k in d[:40]:
        print(
            f"{dt:+8.3f}  {tables[a].get(k, (0, 0))[1]:4.0f} -> {tables[b].get(k, (0, 0))[1]:4.0f}  {k[:150]}"
        )
