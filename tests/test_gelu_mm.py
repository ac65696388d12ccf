"""GELU's backward inside dy W's GEMM (racli_models.gelu_mm): each way of feeding the GEMM
against float64, on the CPU through Triton's interpreter and on CUDA compiled; the MLP's
autograd node against nn.GELU + nn.Linear; GPT-2's gradients with the kernel against the
plain path, both measured from float32."""

from __future__ import annotations

import pytest
import torch
from helpers import in_triton_interpreter

# (M, R, N): rows, depth, columns; the second and third leave tiles partly outside
SHAPES = [(64, 48, 96), (40, 40, 72), (33, 24, 40)]


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm()).item()


def _operands(M, R, N, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(M, R, generator=g)
    w = torch.randn(R, N, generator=g) / R**0.5
    h = torch.randn(M, N, generator=g) * 2
    return (t.to(device=device, dtype=dtype) for t in (dy, w, h))


def check_kernels() -> None:
    """Under TRITON_INTERPRET=1, float16 (the interpreter gets bfloat16's tl.dot wrong):
    every kind and epilogue slicing at small tiles against float64, then the node."""
    from racli_models import gelu_mm

    for M, R, N in SHAPES:
        dy, w, h = _operands(M, R, N, torch.float16)
        g = gelu_mm.gelu_slope(h)
        want = (dy.double() @ w.double()) * g.double()
        for kind in gelu_mm.KINDS:
            for sub in (1, 2, 4):
                tile = dict(kind=kind, block_m=16, block_n=32, block_k=16, group_m=2, sub=sub)
                with gelu_mm.kernel(True, **tile):
                    got = gelu_mm.mm_times(dy, w, g)
                assert got.dtype == torch.float16 and got.shape == (M, N)
                err = _rel(got, want)
                assert err < 2e-3, f"{kind} sub={sub} {(M, R, N)}: off by {err:.2e}"
    check_node()


def check_node() -> None:
    """`gelu_proj` (its backward through the kernel) against F.linear(F.gelu(h), W) in
    float64: the output and both gradients."""
    import torch.nn.functional as F

    from racli_models import gelu_mm

    M, R, N = 40, 24, 72  # h (M, N), c_proj's weight (R, N): y (M, R)
    dy, weight, h = _operands(M, R, N, torch.float16, seed=1)  # weight (R, N): nn.Linear(N, R)
    h64, w64 = (h.double().requires_grad_(), weight.double().requires_grad_())
    y64 = F.linear(F.gelu(h64), w64)
    y64.backward(dy.double())
    hk, wk = h.clone().requires_grad_(), weight.clone().requires_grad_()
    with gelu_mm.kernel(True, block_m=16, block_n=32, block_k=16, sub=1):
        y = gelu_mm.gelu_proj(hk, wk)
        y.backward(dy)
    assert _rel(y, y64) < 2e-3
    assert _rel(hk.grad, h64.grad) < 2e-3, _rel(hk.grad, h64.grad)
    assert _rel(wk.grad, w64.grad) < 2e-3


def test_the_kernels_in_tritons_interpreter():
    in_triton_interpreter("test_gelu_mm", "check_kernels()")


def test_settings_are_checked_and_restored():
    from racli_models import gelu_mm

    before = dict(gelu_mm.TILE), gelu_mm.KERNEL
    for bad in (
        {"kind": "cutlass"},
        {"block_m": 0},
        {"ws": 1},
        {"tiles": 3},
        {"kind": 1},
        {"sub": 3},
        {"erf": "yes"},
    ):
        with pytest.raises(ValueError, match="gelu_mm setting"):
            gelu_mm.kernel(True, **bad).__enter__()  # checked on entry, before any change
    with gelu_mm.kernel(True, kind="tma", block_n=64, ws=True, sub=4):
        assert gelu_mm.KERNEL and gelu_mm.TILE["kind"] == "tma" and gelu_mm.TILE["ws"]
        assert (gelu_mm.TILE["block_n"], gelu_mm.TILE["sub"]) == (64, 4)
    assert (dict(gelu_mm.TILE), gelu_mm.KERNEL) == before
    with pytest.raises(ValueError, match="mm_times: a"):
        gelu_mm.mm_times(torch.ones(4, 3), torch.ones(3, 5), torch.ones(4, 6))


def test_gelus_slope_against_float64():
    """gelu_slope (what the forward saves) against float64, and against autograd's gelu'."""
    from racli_models import gelu_mm

    h = torch.linspace(-12, 12, 100_001, dtype=torch.float64)
    want = gelu_mm.gelu_slope_reference(h)
    assert (gelu_mm.gelu_slope(h.float()).double() - want).abs().max() < 1e-6
    shared = gelu_mm.gelu_slope(h.float())
    with gelu_mm.shared_erf(False):  # the former constant rounds to the same float32
        assert torch.equal(gelu_mm.gelu_slope(h.float()), shared)
    hg = h.clone().requires_grad_()
    torch.nn.functional.gelu(hg).sum().backward()
    assert (hg.grad - want).abs().max() < 1e-12


def test_the_mlp_keeps_torchs_ops_off_cuda_and_with_a_bias():
    """On the CPU the MLP never takes the kernel, whatever KERNEL says: the same values."""
    from racli_models import GPTConfig, gelu_mm
    from racli_models.gpt import MLP

    cfg = GPTConfig(n_embd=32, n_head=2, n_layer=1, block_size=8, vocab_size=64, bias=False)
    torch.manual_seed(0)
    mlp = MLP(cfg)
    x = torch.randn(3, 8, 32)
    want = mlp(x)
    with gelu_mm.kernel(True):
        assert not gelu_mm.use_kernel(mlp.c_fc(x), mlp.c_proj)
        assert torch.equal(mlp(x), want)
    assert not gelu_mm.use_kernel(x, torch.nn.Linear(4, 4, bias=True))


def test_the_node_traced_by_torch_compile_on_the_cpu(monkeypatch):
    """The path CUDA training takes, traced by torch.compile on the CPU: the MLP's node
    with its custom op (here computing (a @ b) * g with torch's ops), one call a layer in
    the backward, and every gradient of a small GPT-2 as the plain eager model's."""
    from racli_models import GPT, GPTConfig, gelu_mm

    calls = []

    def by_torch(a, b, g):
        calls.append(tuple(a.shape))
        return (a @ b) * g

    monkeypatch.setattr(gelu_mm, "mm_times", by_torch)
    monkeypatch.setattr(
        gelu_mm, "use_kernel", lambda h, proj: torch.compiler.is_compiling() and h.requires_grad
    )
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64, bias=False)
    idx = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(0))
    grads = []
    for compiled in (False, True):
        model = GPT(cfg, seed=0)
        fwd = torch.compile(model, dynamic=False) if compiled else model
        _, loss = fwd(idx, idx)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert calls == [(48, 32), (48, 32)]  # c_proj's input gradient, once a layer
    for name, want in grads[0].items():
        assert _rel(grads[1][name], want) < 1e-5, name


@pytest.mark.parametrize("shared", [True, False])
def test_the_compiled_forward_computes_erf_once_for_gelu_and_its_slope(shared, monkeypatch):
    """gelu(h) and gelu'(h) share erf(h / sqrt(2)) in the forward's one kernel: with a
    constant other than the compiler's GELU's own (1 / sqrt(2) written as 0.7071067811865475,
    `shared_erf(False)`) the CPU's kernel computes erf twice an element (Triton merges
    the two calls on a GPU, since both constants are the same float32)."""
    import re

    from torch._inductor.utils import run_and_get_code

    from racli_models import GPT, GPTConfig, gelu_mm

    monkeypatch.setattr(gelu_mm, "mm_times", lambda a, b, g: (a @ b) * g)
    monkeypatch.setattr(
        gelu_mm, "use_kernel", lambda h, proj: torch.compiler.is_compiling() and h.requires_grad
    )
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64, bias=False)
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    fwd = torch.compile(GPT(cfg, seed=0), dynamic=False)

    def step():
        with gelu_mm.shared_erf(shared):
            fwd(idx, idx)[1].backward()

    _, codes = run_and_get_code(step)
    quote = "'" * 3  # a kernel's C++ source sits between triple quotes
    pattern = r"(cpp_fused_\w+) = async_compile\.cpp_pybinding\(.*?" + quote + "(.*?)" + quote
    kernels = re.findall(pattern, "\n".join(codes), re.S)
    gelu = [(name, body.count("erf")) for name, body in kernels if "gelu" in name]
    assert gelu and all(n == (1 if shared else 2) for _, n in gelu), gelu
    assert gelu_mm.SHARED_ERF  # restored
    assert gelu_mm.SQRT1_2 == 0.7071067811865476  # torch._refs' M_SQRT1_2


# ---------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["tma", "pers"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_kernel_on_cuda_against_float64(kind, dtype):
    """gelu'(h) * (dy W) from the saved slope, at small tiles, ragged shapes and GPT-2's:
    within 1.5x the error of torch's GEMM and gelu_backward in the same dtype (both
    against float64)."""
    from racli_models import gelu_mm

    for M, R, N in [*SHAPES, (4096, 768, 3072)]:
        dy, w, h = _operands(M, R, N, dtype, "cuda")
        want = (dy.double() @ w.double()) * gelu_mm.gelu_slope_reference(h)
        tile = dict(kind=kind)
        if M < 100:
            tile.update(block_m=64, block_n=64, block_k=32)
        with gelu_mm.kernel(True, **tile):
            got = gelu_mm.mm_times(dy, w, gelu_mm.gelu_slope(h))
        torch.cuda.synchronize()
        err = _rel(got, want)
        ref = _rel(torch.ops.aten.gelu_backward(dy @ w, h), want)
        assert err <= 1.5 * ref + 1e-4, f"{kind} {(M, R, N)} {dtype}: {err:.2e} vs {ref:.2e}"


def _gpt_grads(kernel: bool, dtype_autocast, compile_: bool, grad: bool = True):
    """Every parameter's gradient of a small ra_v5 GPT-2 (float64 copies); float32 where
    `dtype_autocast` is None; no backward (and no gradients) where `grad` is False."""
    from racli_models import GPT, GPTConfig, gelu_mm

    cfg = GPTConfig(
        n_layer=2, n_head=4, n_embd=128, block_size=64, vocab_size=256, bias=False, attn="ra_v5"
    )
    model = GPT(cfg, seed=0).cuda()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 256, (4, 64), generator=g).cuda()
    fwd = torch.compile(model, dynamic=False) if compile_ else model
    ctx = (
        torch.autocast("cuda", dtype_autocast)
        if dtype_autocast
        else torch.autocast("cuda", enabled=False)
    )
    with gelu_mm.kernel(kernel), ctx, torch.set_grad_enabled(grad):
        _, loss = fwd(idx, idx)
    if grad:
        loss.backward()
    return {n: p.grad.double().clone() for n, p in model.named_parameters() if p.grad is not None}


def _count_kernel_calls(monkeypatch) -> list:
    """Count calls of the kernel's launcher (the custom op looks it up at each call)."""
    from racli_models import gelu_mm

    calls, launch = [], gelu_mm.mm_times

    def counted(*args):
        calls.append(args[0].shape)
        return launch(*args)

    monkeypatch.setattr(gelu_mm, "mm_times", counted)
    return calls


@pytest.mark.gpu
@pytest.mark.parametrize("attn_dtype", [torch.bfloat16, torch.float16])
def test_gpt_gradients_with_the_kernel_are_as_close_to_float32_as_the_plain_path(
    attn_dtype, monkeypatch
):
    """Compiled under autocast, every parameter's gradient with the kernel (which ran:
    once a layer) is within 2x (plus a floor) of the plain compiled path's distance from
    the float32 gradients."""
    calls = _count_kernel_calls(monkeypatch)
    ref = _gpt_grads(False, None, compile_=False)
    plain = _gpt_grads(False, attn_dtype, compile_=True)
    assert calls == []
    fused = _gpt_grads(True, attn_dtype, compile_=True)
    assert len(calls) == 2  # one a layer, in the backward
    for name, want in ref.items():
        e_plain, e_fused = _rel(plain[name], want), _rel(fused[name], want)
        assert e_fused <= 2 * e_plain + 2e-3, f"{name}: {e_fused:.2e} vs {e_plain:.2e}"


@pytest.mark.gpu
def test_the_kernel_serves_compiled_training_only(monkeypatch):
    """Eager training and compiled evaluation (no_grad) keep torch's ops: no kernel call."""
    calls = _count_kernel_calls(monkeypatch)
    grads = _gpt_grads(True, torch.bfloat16, compile_=False)
    assert grads and all(g.isfinite().all() for g in grads.values())
    _gpt_grads(True, torch.bfloat16, compile_=True, grad=False)
    assert calls == []


@pytest.mark.gpu
def test_the_kernel_only_where_a_backward_follows(monkeypatch):
    """While torch.compile traces: training (grad on, a parameter or h needing it) takes
    the kernel; no_grad and fp32 without autocast keep torch's ops. Eagerly, never."""
    from racli_models import gelu_mm

    proj = torch.nn.Linear(64, 16, bias=False).cuda()
    h = torch.randn(8, 64, device="cuda", dtype=torch.bfloat16)
    with gelu_mm.kernel(True):
        assert not gelu_mm.use_kernel(h, proj)  # eager
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert gelu_mm.use_kernel(h, proj)
        with torch.no_grad():
            assert not gelu_mm.use_kernel(h, proj)
        assert not gelu_mm.use_kernel(h.float(), proj)
        with torch.autocast("cuda", torch.bfloat16):
            assert gelu_mm.use_kernel(h.float(), proj)
        assert not gelu_mm.use_kernel(h[:, :60], torch.nn.Linear(60, 16, bias=False).cuda())
        assert not gelu_mm.use_kernel(h, torch.nn.Linear(64, 12, bias=False).cuda())
    with gelu_mm.kernel(False):
        assert not gelu_mm.use_kernel(h, proj)
