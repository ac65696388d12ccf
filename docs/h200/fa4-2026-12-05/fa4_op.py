"""De-risk FA4 for the training step: a custom op (torch.compile fullgraph), CUDA-graph
capture of fwd+bwd the way ra's harness does it, and a hybrid (cuDNN forward, FA4
backward from cuDNN's log-sum-exp). One JSON object per finding."""

import json
import os
import time
import traceback

import torch
import torch.nn.functional as F
from flash_attn.cute import interface as fa
from torch.nn.attention import SDPBackend, sdpa_kernel


def emit(**kw):
    print(json.dumps(kw), flush=True)


# ---- custom ops: (B, H, T, D) views in and out, FA4's (B, T, H, D) underneath
@torch.library.custom_op("ra_probe::fa4_fwd", mutates_args=())
def fa4_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse, *_ = fa._flash_attn_fwd(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, return_lse=True
    )
    return out.transpose(1, 2), lse


@fa4_fwd.register_fake
def _(q, k, v):
    B, H, T, D = q.shape
    return torch.empty_like(q.transpose(1, 2)).transpose(1, 2), q.new_empty(
        (B, H, T), dtype=torch.float32
    )


@torch.library.custom_op("ra_probe::cudnn_fwd", mutates_args=())
def cudnn_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True, False)
    out, lse = r[0], r[1]
    lse = lse.reshape(q.shape[0], q.shape[1], q.shape[2]).contiguous()
    return out.clone() if out._base is not None else out, lse


@cudnn_fwd.register_fake
def _(q, k, v):
    B, H, T, D = q.shape
    return torch.empty_like(q.transpose(1, 2)).transpose(1, 2), q.new_empty(
        (B, H, T), dtype=torch.float32
    )


@torch.library.custom_op("ra_probe::fa4_bwd", mutates_args=())
def fa4_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    dout: torch.Tensor,
    lse: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    def t(x):
        return x.transpose(1, 2)

    dq, dk, dv = fa._flash_attn_bwd(
        t(q), t(k), t(v), t(out), t(dout.contiguous()), lse, causal=True
    )[:3]
    return t(dq), t(dk), t(dv)


@fa4_bwd.register_fake
def _(q, k, v, out, dout, lse):
    def e(x):
        return torch.empty_like(x.transpose(1, 2)).transpose(1, 2)

    return e(q), e(k), e(v)


def _setup(ctx, inputs, output):
    q, k, v = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    return fa4_bwd(q, k, v, out, dout, lse)


fa4_fwd.register_autograd(_backward, setup_context=_setup)
cudnn_fwd.register_autograd(_backward, setup_context=_setup)


def attn_fa4(q, k, v):
    return fa4_fwd(q, k, v)[0]


def attn_hybrid(q, k, v):
    return cudnn_fwd(q, k, v)[0]


def attn_cudnn(q, k, v):
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


dev = torch.device("cuda")
B, H, T, D, C = int(os.environ.get("B", 32)), 12, 1024, 64, 768
emit(what="env", torch=torch.__version__, gpu=torch.cuda.get_device_name(0))


class Block(torch.nn.Module):  # GPT-2's attention block, the qkv GEMM's (B, T, 3C) layout
    def __init__(self, attn):
        super().__init__()
        self.c_attn = torch.nn.Linear(C, 3 * C, bias=False)
        self.c_proj = torch.nn.Linear(C, C, bias=False)
        self.attn = attn

    def forward(self, x):
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        y = self.attn(q, k, v)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


torch.manual_seed(0)
x0 = torch.randn(B, T, C, device=dev)
dout = torch.randn(B, T, C, device=dev)
base = Block(attn_cudnn).to(dev)


def run(block, x, compiled=False):
    for p in block.parameters():
        p.grad = None
    x.grad = None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = block(x)
    y.backward(dout)
    return y.detach().float(), x.grad.float(), block.c_attn.weight.grad.float()


# float32 reference: math SDPA in float32
ref_block = Block(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)).to(dev)
ref_block.load_state_dict(base.state_dict())
x = x0.clone().requires_grad_(True)
for p in ref_block.parameters():
    p.grad = None
with sdpa_kernel(SDPBackend.MATH):
    y = ref_block(x)
y.backward(dout)
ref = (y.detach(), x.grad.clone(), ref_block.c_attn.weight.grad.clone())

arms = {"cudnn": attn_cudnn, "fa4": attn_fa4, "hybrid": attn_hybrid}
blocks = {}
for name, attn in arms.items():
    b = Block(attn).to(dev)
    b.load_state_dict(base.state_dict())
    blocks[name] = b
    for mode in ("eager", "compile"):
        try:
            t0 = time.perf_counter()
            m = torch.compile(b, fullgraph=True) if mode == "compile" else b
            x = x0.clone().requires_grad_(True)
            got = run(m, x)
            torch.cuda.synchronize()
            errs = [((g - r).abs().max() / r.abs().max()).item() for g, r in zip(got, ref)]
            emit(
                what="accuracy",
                arm=name,
                mode=mode,
                rel_err_y_dx_dW=errs,
                s=round(time.perf_counter() - t0, 1),
            )
        except Exception:
            emit(what="accuracy", arm=name, mode=mode, error=traceback.format_exc()[-2500:])


def capture(m):
    x = x0.clone().requires_grad_(True)
    params = list(m.parameters()) if hasattr(m, "parameters") else []
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            for p in params:
                p.grad = None
            x.grad = None
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = m(x)
            y.backward(dout)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    for p in params:
        p.grad = None
    x.grad = None
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = m(x)
        y.backward(dout)
    return g, x, y


graphs = {}
for name, b in blocks.items():
    for mode in ("eager", "compile"):
        try:
            m = torch.compile(b, fullgraph=True) if mode == "compile" else b
            g, x, y = capture(m)
            g.replay()
            torch.cuda.synchronize()
            got = (y.detach().float(), x.grad.float(), b.c_attn.weight.grad.float())
            errs = [((gg - r).abs().max() / r.abs().max()).item() for gg, r in zip(got, ref)]
            emit(what="graph", arm=name, mode=mode, ok=True, rel_err_y_dx_dW=errs)
            graphs[(name, mode)] = g
        except Exception:
            emit(what="graph", arm=name, mode=mode, error=traceback.format_exc()[-2500:])

times = {k: [] for k in graphs}
for _ in range(int(os.environ.get("ROUNDS", 9))):
    for key, g in graphs.items():
        for _ in range(10):
            a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            e.record()
            times[key].append((a, e))
torch.cuda.synchronize()
med = {}
for key, ev in times.items():
    ms = sorted(a.elapsed_time(e) for a, e in ev)

    def q(p, ms=ms):
        return ms[min(len(ms) - 1, int(p * len(ms)))]

    med[key] = q(0.5)
    emit(
        what="time_block_fwd_bwd_graph",
        arm=key[0],
        mode=key[1],
        median_ms=round(q(0.5), 4),
        p10=round(q(0.1), 4),
        p90=round(q(0.9), 4),
        n=len(ms),
    )
for key in med:
    base_key = ("cudnn", key[1])
    if base_key in med:
        emit(
            what="ratio_to_cudnn", arm=key[0], mode=key[1], ratio=round(med[key] / med[base_key], 4)
        )
