"""FA4 (flash-attn-4, CuTe DSL) against torch's SDPA backends at GPT-2's attention shape.

Correctness against a float32 reference, then fwd and fwd+bwd times in CUDA graphs
(interleaved rounds, CUDA events, median / p10 / p90), then torch.compile with the FA4
impl activated behind SDPA. Prints one JSON object per finding.
"""

import json
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def emit(**kw):
    print(json.dumps(kw), flush=True)


dev = torch.device("cuda")
emit(
    what="env",
    torch=torch.__version__,
    cuda=torch.version.cuda,
    cudnn=torch.backends.cudnn.version(),
    gpu=torch.cuda.get_device_name(0),
    has_registry=hasattr(torch.nn.attention, "list_flash_attention_impls"),
    impls=(
        torch.nn.attention.list_flash_attention_impls()
        if hasattr(torch.nn.attention, "list_flash_attention_impls")
        else None
    ),
)

t0 = time.perf_counter()
try:
    from flash_attn.cute import flash_attn_func

    emit(what="import", ok=True, s=round(time.perf_counter() - t0, 2))
except Exception:
    emit(what="import", ok=False, error=traceback.format_exc()[-3000:])
    sys.exit(1)

B = int(os.environ.get("B", 32))
H, T, D = 12, 1024, 64
dt = torch.bfloat16
g = torch.Generator(device=dev).manual_seed(0)
q, k, v, do = (torch.randn(B, H, T, D, device=dev, dtype=dt, generator=g) for _ in range(4))
for t in (q, k, v):
    t.requires_grad_(True)


def sdpa(backend):
    def f(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return f


def fa4(q, k, v):  # FA4 takes (B, T, H, D)
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
    if isinstance(out, tuple):
        out = out[0]
    return out.transpose(1, 2)


arms = {
    "sdpa_auto": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
    "sdpa_flash2": sdpa(SDPBackend.FLASH_ATTENTION),
    "fa4": fa4,
}

# correctness: float32 math reference
qr, kr, vr = (t.detach().float().requires_grad_(True) for t in (q, k, v))
with sdpa_kernel(SDPBackend.MATH):
    ref = F.scaled_dot_product_attention(qr, kr, vr, is_causal=True)
ref.backward(do.float())
refs = (ref.detach(), qr.grad, kr.grad, vr.grad)
ok_arms = {}
for name, f in arms.items():
    try:
        t0 = time.perf_counter()
        for t in (q, k, v):
            t.grad = None
        out = f(q, k, v)
        out.backward(do)
        torch.cuda.synchronize()
        errs = [
            ((a.float() - r).abs().max() / r.abs().max()).item()
            for a, r in zip((out, q.grad, k.grad, v.grad), refs)
        ]
        emit(
            what="accuracy",
            arm=name,
            rel_err_out_dq_dk_dv=errs,
            first_s=round(time.perf_counter() - t0, 1),
        )
        ok_arms[name] = f
    except Exception:
        emit(what="accuracy", arm=name, error=traceback.format_exc()[-3000:])


def capture(f, phase, n):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # leaves made on the capturing stream
        q, k, v = (t.detach().clone().requires_grad_(True) for t in (Q, K, V))

    def step():
        if phase == "fwd":
            with torch.no_grad():
                return f(q, k, v)
        out = f(q, k, v)
        torch.autograd.grad(out, (q, k, v), do)
        return out

    if os.environ.get("EAGER"):
        torch.cuda.current_stream().wait_stream(s)
        for _ in range(3):
            step()

        class Loop:
            def replay(self):
                for _ in range(n):
                    step()

        return Loop()
    with torch.cuda.stream(s):
        for _ in range(3):
            for t in (q, k, v):
                t.grad = None
            step()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    for t in (q, k, v):
        t.grad = None
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        for _ in range(n):
            step()
    return gr


Q, K, V = q, k, v
N_PER_GRAPH, ROUNDS, REPS = 5, int(os.environ.get("ROUNDS", 7)), 10
results = {}
for phase in os.environ.get("PHASES", "fwd,fwd_bwd").split(","):
    graphs = {}
    for name, f in ok_arms.items():
        try:
            graphs[name] = capture(f, phase, N_PER_GRAPH)
            graphs[name].replay()
            torch.cuda.synchronize()
        except Exception:
            emit(what="capture", arm=name, phase=phase, error=traceback.format_exc()[-2000:])
    times = {n: [] for n in graphs}
    for _ in range(ROUNDS):
        for name, gr in graphs.items():
            for _ in range(REPS):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                gr.replay()
                b.record()
                times[name].append((a, b))
    torch.cuda.synchronize()
    for name, ev in times.items():
        ms = sorted(a.elapsed_time(b) / N_PER_GRAPH for a, b in ev)

        def pick(p, ms=ms):
            return ms[min(len(ms) - 1, int(p * len(ms)))]

        results[(phase, name)] = pick(0.5)
        flops = 2 * 2 * B * H * T * T * D / 2 * (1 if phase == "fwd" else 3.5)
        emit(
            what="time",
            phase=phase,
            arm=name,
            median_ms=round(pick(0.5), 4),
            p10=round(pick(0.1), 4),
            p90=round(pick(0.9), 4),
            n=len(ms),
            tflops=round(flops / pick(0.5) / 1e9, 1),
        )
    for name in times:
        if name != "sdpa_auto" and ("sdpa_auto" in times):
            emit(
                what="ratio_to_auto",
                phase=phase,
                arm=name,
                ratio=round(results[(phase, name)] / results[(phase, "sdpa_auto")], 4),
            )

# which kernels SDPA auto runs (names)
try:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = arms["sdpa_auto"](q, k, v)
        out.backward(do)
        torch.cuda.synchronize()
    names = sorted({e.key[:90] for e in prof.key_averages() if e.device_type.name == "CUDA"})
    emit(what="auto_kernels", names=names[:12])
except Exception:
    emit(what="auto_kernels", error=traceback.format_exc()[-1500:])

# the registry route: SDPA's flash backend served by FA4, eager and under torch.compile
if hasattr(torch.nn.attention, "activate_flash_attention_impl"):
    try:
        torch.nn.attention.activate_flash_attention_impl("FA4")
        emit(what="activate", ok=True, current=torch.nn.attention.current_flash_attention_impl())
        f = sdpa(SDPBackend.FLASH_ATTENTION)
        for t in (q, k, v):
            t.grad = None
        out = f(q, k, v)
        out.backward(do)
        torch.cuda.synchronize()
        errs = [
            ((a.float() - r).abs().max() / r.abs().max()).item()
            for a, r in zip((out, q.grad, k.grad, v.grad), refs)
        ]
        emit(what="accuracy", arm="sdpa_flash_fa4", rel_err_out_dq_dk_dv=errs)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            out = f(q, k, v)
            out.backward(do)
            torch.cuda.synchronize()
        names = sorted({e.key[:90] for e in prof.key_averages() if e.device_type.name == "CUDA"})
        emit(what="fa4_kernels", names=names[:12])

        @torch.compile(fullgraph=True)
        def cf(q, k, v):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True) * 1.0

        t0 = time.perf_counter()
        for t in (q, k, v):
            t.grad = None
        out = cf(q, k, v)
        out.backward(do)
        torch.cuda.synchronize()
        errs = [
            ((a.float() - r).abs().max() / r.abs().max()).item()
            for a, r in zip((out, q.grad, k.grad, v.grad), refs)
        ]
        emit(what="compile", ok=True, s=round(time.perf_counter() - t0, 1), rel_err=errs)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            out = cf(q, k, v)
            out.backward(do)
            torch.cuda.synchronize()
        names = sorted({e.key[:90] for e in prof.key_averages() if e.device_type.name == "CUDA"})
        emit(what="compile_kernels", names=names[:12])
        gr = capture(cf, "fwd_bwd", 1)
        gr.replay()
        torch.cuda.synchronize()
        emit(what="compile_capture", ok=True)
    except Exception:
        emit(what="registry", error=traceback.format_exc()[-3000:])
