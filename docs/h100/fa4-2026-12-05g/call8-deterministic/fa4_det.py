"""FA4's backward, default against deterministic=True: time (5 back-to-back calls between CUDA
events, interleaved, 9 rounds x 10) and whether two calls give bit-identical dq, dk, dv."""

import json

import torch
from flash_attn.cute.interface import _flash_attn_bwd

B, H, T, D = 32, 12, 1024, 64
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v, dy = (
    torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4)
)
y, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True, False)[
    :2
]
lse = lse.reshape(B, H, T).contiguous()
t = lambda x: x.transpose(1, 2)  # noqa: E731
yt = t(t(y).contiguous())


def bwd(det):
    return _flash_attn_bwd(
        t(q), t(k), t(v), t(yt), t(dy).contiguous(), lse, causal=True, deterministic=det
    )[:3]


out = {}
for det in (False, True):
    a, b = bwd(det), bwd(det)
    torch.cuda.synchronize()
    out[f"identical_det_{det}"] = all(torch.equal(x, y_) for x, y_ in zip(a, b))
times = {False: [], True: []}
for _ in range(9):
    for det in (False, True):
        for _ in range(10):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(5):
                bwd(det)
            e.record()
            times[det].append((s, e))
torch.cuda.synchronize()
for det, ev in times.items():
    ms = sorted(s.elapsed_time(e) / 5 for s, e in ev)
    out[f"bwd_ms_det_{det}"] = [
        round(ms[len(ms) // 10], 4),
        round(ms[len(ms) // 2], 4),
        round(ms[9 * len(ms) // 10], 4),
    ]
out["gpu"] = torch.cuda.get_device_name(0)
print(json.dumps(out))
