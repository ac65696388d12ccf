"""CUDA tests of racli_models (skipped without CUDA): every variant with the flash SDPA
backend in float16 / bfloat16 against the float64 reference, under torch.compile and
under CUDA-graph capture (forward and forward + backward), and without host syncs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from racli_models import ATTENTION, GPT, GPTConfig, build_attention
from racli_models.reference import reference_forward

pytestmark = pytest.mark.gpu

VARIANTS = sorted(ATTENTION)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
B, T, H, D, R = 2, 256, 4, 64, 4
C = H * D
DEV = "cuda"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def make_block(attn: str, dtype: torch.dtype, bias: bool = False):
    """A block with O(1) attention scores, non-trivial gates and random biases."""
    cfg = GPTConfig.for_block(H, D, T, attn, ra_rank=R, bias=bias)
    m = build_attention(attn, cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 / math.sqrt(C))
            elif bias and (name.endswith("bias") or name.split(".")[-1].startswith("b_")):
                p.normal_(0.0, 0.1)
        if hasattr(m, "w_rec"):
            m.w_std.copy_(torch.tensor([1.0, 0.8, 1.3, 0.6]))
            m.w_rec.copy_(torch.tensor([0.7, -0.5, 1.1, 0.3]))
        if hasattr(m, "beta"):
            m.beta.copy_(torch.tensor([0.5, -0.8, 1.2, 0.2]))
    return m.to(device=DEV, dtype=dtype)


def grads(m) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in m.named_parameters()}


def loss_of(out: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (out.float() * w).sum()


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("attn", VARIANTS)
def test_flash_matches_float64_reference(attn, dtype, bias):
    m = make_block(attn, dtype, bias)
    x = torch.randn(B, T, C, device=DEV, dtype=dtype)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = m(x)
        loss_of(out, torch.randn_like(out, dtype=torch.float32)).backward()
    with torch.no_grad():
        ref = reference_forward(m, x)
    assert out.dtype == dtype and out.shape == (B, T, C)
    assert rel_err(out, ref) < TOL[dtype]
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


@pytest.mark.parametrize("attn", VARIANTS)
def test_no_host_sync_in_forward_backward(attn):
    m = make_block(attn, torch.bfloat16)
    x = torch.randn(B, T, C, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(B, T, C, device=DEV)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_of(m(x), w).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("attn", VARIANTS)
def test_torch_compile_matches_eager(attn):
    torch._dynamo.reset()
    m = make_block(attn, torch.bfloat16, bias=True)
    x = torch.randn(B, T, C, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(B, T, C, device=DEV)
    out = m(x)
    loss_of(out, w).backward()
    eager = grads(m)
    m.zero_grad(set_to_none=True)
    compiled = torch.compile(m, dynamic=False, fullgraph=True)
    out_c = compiled(x)
    loss_of(out_c, w).backward()
    assert rel_err(out_c, out) < 1e-2
    for n, p in m.named_parameters():
        assert rel_err(p.grad, eager[n]) < 3e-2, n


def _capture(m, x_static, w, backward: bool):
    """Warm up on a side stream, then capture one forward (no grad) or forward + backward."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            m.zero_grad(set_to_none=True)
            with torch.set_grad_enabled(backward):
                out = m(x_static)
            if backward:
                loss_of(out, w).backward()
    torch.cuda.current_stream().wait_stream(s)
    m.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.set_grad_enabled(backward):
        out = m(x_static)
        if backward:
            loss_of(out, w).backward()
    return graph, out


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("attn", VARIANTS)
def test_cuda_graph_replay_matches_eager(attn, backward):
    m = make_block(attn, torch.bfloat16)
    w = torch.randn(B, T, C, device=DEV)
    x_static = torch.randn(B, T, C, device=DEV, dtype=torch.bfloat16)
    graph, out_static = _capture(m, x_static, w, backward)

    x = torch.randn(B, T, C, device=DEV, dtype=torch.bfloat16)  # new data into the graph
    x_static.copy_(x)
    graph.replay()
    torch.cuda.synchronize()
    out_graph = out_static.clone()
    grads_graph = grads(m) if backward else None
    gates_graph = m.gate_values()

    m.zero_grad(set_to_none=True)
    out = m(x)
    if backward:
        loss_of(out, w).backward()
    assert rel_err(out_graph, out) < 1e-3
    if backward:
        for n, p in m.named_parameters():
            assert rel_err(grads_graph[n], p.grad) < 1e-3, n
    for name, value in m.gate_values().items():  # sdpa_gate's running mean is replayed too
        torch.testing.assert_close(gates_graph[name], value, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("attn", VARIANTS)
def test_gpt_step_with_fused_adamw(attn):
    cfg = GPTConfig(vocab_size=512, n_layer=2, n_head=H, n_embd=C, block_size=T, attn=attn)
    model = GPT(cfg).to(DEV)
    opt = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), gate_lr_mult=10.0)
    assert opt.defaults["fused"] is True
    idx = torch.randint(0, 512, (B, T + 1), device=DEV)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    for p in model.parameters():
        assert torch.isfinite(p).all()
