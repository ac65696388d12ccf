"""CUDA tests of racli_models.fused (skipped without CUDA): the Triton composition of the
folded RA weight W_f against the plain torch composition and a float64 reference, forward
and backward, with every kernel output poisoned with NaN first; float64 gradcheck; bf16
autocast (W_f born in bf16, never cast again); the projection and its composition as one
node with a side stream; CUDA-graph capture; torch.compile; biases; shapes that are not
powers of two."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import randomize_folded_ra
from torch.utils._python_dispatch import TorchDispatchMode

from racli_models import GPTConfig, build_attention, fused

pytestmark = pytest.mark.gpu

DEV = "cuda"
ATTNS = ["ra_v5", "ra_v5_untied"]
# (H, D, R): GPT-2's head; D and C off powers of two; C = 200 not a multiple of BLOCK_C
SHAPES = [(12, 64, 4), (6, 48, 3), (5, 40, 7)]
SHAPE_IDS = ["h12d64r4", "h6d48r3", "h5d40r7"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FWD_TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).norm() / ref.norm()).item()


def make(attn: str, shape=(6, 48, 3), dtype=torch.float32, bias: bool = False, seed: int = 0):
    """A block with random weights, P, gates (and biases), none of them at a special value."""
    H, D, R = shape
    cfg = GPTConfig.for_block(H, D, 32, attn, ra_rank=R, bias=bias)
    torch.manual_seed(seed)
    m = build_attention(attn, cfg)
    randomize_folded_ra(m)
    return m.to(device=DEV, dtype=dtype)


@pytest.fixture(autouse=True)
def true_float32(monkeypatch):
    """float32 matmuls of the plain composition in full float32, whatever ran before."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def nan_empty(shape, device=None, dtype=None) -> torch.Tensor:
    return torch.full(tuple(shape), float("nan"), device=device, dtype=dtype)


@pytest.fixture
def poison(monkeypatch):
    """Every buffer the fused kernels write starts as NaN, so an unwritten element shows."""
    monkeypatch.setattr(fused, "_alloc", nan_empty)


@pytest.fixture
def late_poison(monkeypatch):
    """As `poison`, each fill held back on the current stream by a spin of about 0.1 ms, so
    that work on another stream not ordered after the allocations runs before the NaN lands
    (and is overwritten by it) instead of only now and then."""

    def late_nan_empty(shape, device=None, dtype=None):
        torch.cuda._sleep(200_000)
        return nan_empty(shape, device, dtype)

    monkeypatch.setattr(fused, "_alloc", late_nan_empty)


def fused_weight(m) -> torch.Tensor:
    assert fused.use_fused(next(m.parameters()))
    return m.folded_weight()[0]


def plain_weight(m) -> torch.Tensor:
    with fused.disabled():
        assert not fused.use_fused(next(m.parameters()))
        return m.folded_weight()[0]


def reference(m, G: torch.Tensor | None = None):
    """W_f in float64 on the CPU (the plain path) and, given G, the grads of <W_f, G>."""
    c = copy.deepcopy(m).cpu().double()
    c.zero_grad(set_to_none=True)
    W = c.folded_weight()[0]
    if G is None:
        return W.detach(), None
    (W * G.detach().double().cpu()).sum().backward()
    return W.detach(), {n: p.grad for n, p in c.named_parameters()}


COMPOSED = {  # the parameters W_f is built from
    "ra_v5": ("W_q", "W_k", "W_v", "P", "w_std", "w_rec"),
    "ra_v5_untied": ("W_qs", "W_qr", "W_ks", "W_kr", "W_v", "w_std", "w_rec"),
}


def grads_of(m, compose, G: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """W_f = compose(m) and the grads of <W_f, G> with respect to the parameters it uses."""
    m.zero_grad(set_to_none=True)
    W = compose(m)
    (W.float() * G).sum().backward()
    names = COMPOSED["ra_v5" if hasattr(m, "P") else "ra_v5_untied"]
    return W.detach(), {n: getattr(m, n).grad.detach().clone() for n in names}


@pytest.fixture(params=[True, False], ids=["dot", "nodot"])
def dot(request, monkeypatch):
    """Both ways of the 16-bit kernels: small products on tl.dot, or column reductions."""
    monkeypatch.setattr(fused.SETTINGS, "use_dot", request.param)
    return request.param


# --- forward -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("attn", ATTNS)
def test_forward_matches_reference(attn, shape, dtype, poison, dot):
    m = make(attn, shape, dtype)
    with torch.no_grad():
        W = fused_weight(m)
        W_plain = plain_weight(m)
    ref, _ = reference(m)
    H, D, R = shape
    C = H * D
    assert W.shape == (3 * C, C) and W.dtype == dtype
    assert torch.isfinite(W).all()  # every element written
    assert rel_err(W, ref) < FWD_TOL[dtype]
    assert rel_err(W, W_plain) < FWD_TOL[dtype] * 4
    # copied rows are exact: the V block and the standard key rows
    assert torch.equal(W[2 * C :], m.W_v)
    W_ks = m.W_k if attn == "ra_v5" else m.W_ks
    assert torch.equal(W[C : 2 * C].view(H, D, C)[:, : D - R], W_ks.view(H, D - R, C))


def test_routing():
    m = make("ra_v5")
    assert fused.use_fused(m.W_q) == fused.HAS_TRITON
    with fused.disabled():
        assert not fused.use_fused(m.W_q)
    assert fused.use_fused(m.W_q) == fused.HAS_TRITON
    assert not fused.use_fused(m.W_q.detach().cpu())


# --- backward ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("attn", ATTNS)
def test_backward_matches_plain_and_reference_fp32(attn, shape, poison):
    m = make(attn, shape, torch.float32)
    H, D, _ = shape
    C = H * D
    G = torch.randn(3 * C, C, device=DEV)
    _, g_fused = grads_of(m, lambda mm: fused_weight(mm), G)
    _, g_plain = grads_of(m, plain_weight, G)
    _, g_ref = reference(m, G)
    for n, g in g_fused.items():
        assert g.dtype == torch.float32 and g.shape == getattr(m, n).shape, n
        assert torch.isfinite(g).all(), n
        assert rel_err(g, g_plain[n]) < 1e-5, n
        assert rel_err(g, g_ref[n]) < 1e-5, n
    assert torch.equal(g_fused["W_v"], G[2 * C :])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("attn", ATTNS)
def test_backward_low_precision(attn, dtype, poison, dot):
    m = make(attn, (12, 64, 4), dtype)
    C = 768
    G = torch.randn(3 * C, C, device=DEV)
    _, g_fused = grads_of(m, lambda mm: fused_weight(mm), G)
    _, g_ref = reference(m, G.to(dtype))
    for n, g in g_fused.items():
        assert g.dtype == dtype and torch.isfinite(g).all(), n
        assert rel_err(g, g_ref[n]) < (2e-2 if dtype == torch.bfloat16 else 3e-3), n


@pytest.mark.parametrize("attn", ATTNS)
def test_gradcheck_float64(attn):
    m = make(attn, (2, 12, 3), torch.float64)
    if attn == "ra_v5":
        fn, names = fused.compose_ra_v5, ("W_q", "W_k", "W_v", "P", "w_std", "w_rec")
    else:
        fn, names = fused.compose_untied, ("W_qs", "W_qr", "W_ks", "W_kr", "W_v", "w_std", "w_rec")
    inputs = tuple(getattr(m, n).detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("attn", ATTNS)
def test_backward_is_deterministic(attn, dot):
    m = make(attn, (12, 64, 4), torch.bfloat16)
    G = torch.randn(3 * 768, 768, device=DEV)
    _, g1 = grads_of(m, lambda mm: fused_weight(mm), G)
    _, g2 = grads_of(m, lambda mm: fused_weight(mm), G)
    for n in g1:
        assert torch.equal(g1[n], g2[n]), n


# --- in the block: bias, autocast, no host sync ----------------------------------------------


def block_step(m, x, w, plain: bool):
    m.zero_grad(set_to_none=True)
    ctx = fused.disabled() if plain else torch.enable_grad()
    with ctx:
        out = m(x)
        (out.float() * w).sum().backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("attn", ATTNS)
def test_block_with_bias_fp32(attn, poison):
    m = make(attn, (5, 40, 7), torch.float32, bias=True)
    x = torch.randn(2, 32, 200, device=DEV)
    w = torch.randn(2, 32, 200, device=DEV)
    out_f, g_f = block_step(m, x, w, plain=False)
    out_p, g_p = block_step(m, x, w, plain=True)
    assert rel_err(out_f, out_p) < 1e-5
    for n in g_f:
        assert rel_err(g_f[n], g_p[n]) < 1e-4, n


def watch_streams(monkeypatch, attn: str) -> list:
    """The `stream` each call of the variant's composition backward gets from FoldedLinear."""
    weight, grads = fused._VARIANTS[attn]
    streams: list = []

    def watched(*args, stream=None):
        streams.append(stream)
        return grads(*args, stream=stream)

    monkeypatch.setitem(fused._VARIANTS, attn, (weight, watched))
    return streams


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "amp"])
@pytest.mark.parametrize("attn", ATTNS)
def test_one_node_with_a_side_stream_matches_two_nodes(attn, dtype, late_poison, monkeypatch):
    """`fused.FoldedLinear` (the projection and its composition as one node, the
    composition's backward on a side stream beside dx's GEMM) gives the block's output and
    every gradient, the input's included, as the projection and the composition as two
    nodes in one stream, and in float32 as the plain torch composition. The buffers' NaN
    fills come late on the current stream: the side stream must wait for them."""
    amp = dtype == "amp"
    monkeypatch.setattr(fused.SETTINGS, "overlap", "always")  # eager calls too
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "amp": torch.float32}[dtype]
    m = make(attn, (12, 64, 4), dt)
    x = torch.randn(4, 64, 768, device=DEV, dtype=dt, requires_grad=True)
    w = torch.randn(4, 64, 768, device=DEV)

    def run(plain=False):
        x.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out, g = block_step(m, x, w, plain=plain)
        return out, g, x.grad.clone()

    run()  # the kernels compiled: the side stream's launches follow the allocations closely
    streams = watch_streams(monkeypatch, attn)
    one = run()
    assert len(streams) == 1 and streams[0] is not None
    assert streams[0] != torch.cuda.current_stream()
    monkeypatch.setattr(fused.SETTINGS, "overlap", "never")
    two = run()
    assert len(streams) == 1  # two nodes: FoldedLinear not used
    refs = [two] + ([run(plain=True)] if dtype == "fp32" else [])
    tol = 1e-5 if dtype == "fp32" else 1e-2
    for out, g, dx in refs:
        assert rel_err(one[0], out) < tol
        assert rel_err(one[2], dx) < tol
        for n in g:
            assert one[1][n].dtype == g[n].dtype
            assert rel_err(one[1][n], g[n]) < tol, n


@pytest.mark.parametrize("attn", ATTNS)
def test_one_node_gives_the_same_gradients_call_after_call(attn, monkeypatch):
    """Buffers the side stream reads and writes are freed only after the current stream
    waited for it: GPT-2-sized steps back to back, with no sync between them, give the same
    gradients (to 1e-2: the attention's backward need not be deterministic; a buffer reused
    too early would put garbage in them)."""
    monkeypatch.setattr(fused.SETTINGS, "overlap", "always")
    m = make(attn, (12, 64, 4), torch.bfloat16)
    x = torch.randn(8, 1024, 768, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(8, 1024, 768, device=DEV)
    kept = []
    for _ in range(20):
        x.grad = None
        _, g = block_step(m, x, w, plain=False)
        g["x"] = x.grad.clone()
        kept.append(g)
    torch.cuda.synchronize()
    for g in kept[1:]:
        for n in kept[0]:
            assert rel_err(g[n], kept[0][n]) < 1e-2, n


class CastLog(TorchDispatchMode):
    """Records the shape of every tensor that aten::_to_copy converts."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.shapes.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("attn", ATTNS)
def test_autocast_bf16_weight_is_born_bf16(attn, dot):
    m = make(attn, (6, 48, 3), torch.float32)
    C = 288
    x = torch.randn(2, 32, C, device=DEV)
    w = torch.randn(2, 32, C, device=DEV)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        W = fused_weight(m)
        W_plain = plain_weight(m)
        assert W.dtype == torch.bfloat16
        assert rel_err(W, W_plain.float()) < 8e-3
        with CastLog() as log_fused:
            m(x)
        with fused.disabled(), CastLog() as log_plain:
            m(x)
        out_f, g_f = block_step(m, x, w, plain=False)
        out_p, g_p = block_step(m, x, w, plain=True)
    assert (3 * C, C) in log_plain.shapes  # the plain W_f (float32) is cast by F.linear...
    assert (3 * C, C) not in log_fused.shapes  # ...the fused one is already bf16
    assert out_f.dtype == torch.bfloat16
    assert rel_err(out_f, out_p) < 2e-2
    for n, g in g_f.items():
        assert g.dtype == torch.float32, n
        assert rel_err(g, g_p[n]) < 3e-2, n


@pytest.mark.parametrize("attn", ATTNS)
def test_no_host_sync(attn):
    m = make(attn, (12, 64, 4), torch.bfloat16)
    x = torch.randn(2, 32, 768, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(2, 32, 768, device=DEV)
    block_step(m, x, w, plain=False)  # first call compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        block_step(m, x, w, plain=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- CUDA graphs and torch.compile ---------------------------------------------------------


@pytest.mark.parametrize("attn", ATTNS)
def test_cuda_graph_replay_recomposes(attn, monkeypatch):
    """Captured fwd+bwd (the composition's backward on a side stream, forked from and joined
    to the capture's stream); new weights and inputs written in place are seen by the replay."""
    m = make(attn, (6, 48, 3), torch.float16)
    C = 288
    # the input's gradient too: with it, the composition's backward goes to the side stream
    x_static = torch.randn(2, 32, C, device=DEV, dtype=torch.float16, requires_grad=True)
    w = torch.randn(2, 32, C, device=DEV)
    streams = watch_streams(monkeypatch, attn)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            block_step(m, x_static, w, plain=False)
    torch.cuda.current_stream().wait_stream(s)
    assert streams == []  # eager calls: two nodes (SETTINGS.overlap "graph")
    m.zero_grad(set_to_none=True)
    x_static.grad = None  # the capture's backward then writes it (no accumulation)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_static = m(x_static)
        (out_static.float() * w).sum().backward()
    assert len(streams) == 1 and streams[0] is not None  # the capture: one node, a side stream

    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p) * p.abs().mean())
        x_static.copy_(torch.randn_like(x_static))
    graph.replay()
    torch.cuda.synchronize()
    out_graph = out_static.clone()
    g_graph = {n: p.grad.clone() for n, p in m.named_parameters()}
    dx_graph = x_static.grad.clone()
    x_e = x_static.detach().clone().requires_grad_(True)
    out_e, g_e = block_step(m, x_e, w, plain=False)
    assert rel_err(out_graph, out_e) < 1e-3
    assert rel_err(dx_graph, x_e.grad) < 1e-3
    for n in g_e:
        assert rel_err(g_graph[n], g_e[n]) < 1e-3, n


@pytest.mark.parametrize("attn", ATTNS)
def test_torch_compile_traces_the_kernel(attn):
    torch._dynamo.reset()
    m = make(attn, (6, 48, 3), torch.bfloat16, bias=True)
    C = 288
    x = torch.randn(2, 32, C, device=DEV, dtype=torch.bfloat16)
    w = torch.randn(2, 32, C, device=DEV)
    out_e, g_e = block_step(m, x, w, plain=False)
    compiled = torch.compile(m, dynamic=False, fullgraph=True)
    m.zero_grad(set_to_none=True)
    out_c = compiled(x)
    (out_c.float() * w).sum().backward()
    assert rel_err(out_c, out_e) < 1e-2
    for n, p in m.named_parameters():
        assert rel_err(p.grad, g_e[n]) < 3e-2, n
    # the composition alone compiles without a graph break and gives the same W_f
    with torch.no_grad():
        W_c = torch.compile(lambda: m.folded_weight()[0], fullgraph=True)()
        assert rel_err(W_c, fused_weight(m)) < 1e-3
