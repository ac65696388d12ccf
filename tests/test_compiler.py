"""ra's compile pass (racli_models.compiler): weight gradients written in float32 by their
GEMM. On the CPU the rewrite runs on the GPT's own ATen graphs (through AOTAutograd, with
a CPU stand-in for `aten.mm.dtype`, which has a CUDA kernel only) and its gradients are
checked; on CUDA the compiled model's gradients with and without it."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._inductor.decomposition import select_decomp_table

from racli_models import compiler
from racli_models.config import GPTConfig
from racli_models.gpt import GPT

CFG = dict(vocab_size=128, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False)
LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@pytest.fixture
def mm_dtype_on_cpu():
    """`aten.mm.dtype` on the CPU for the test: the float32 product of the inputs."""
    lib = torch.library.Library("aten", "IMPL")
    lib.impl("mm.dtype", lambda a, b, dtype: torch.mm(a.to(dtype), b.to(dtype)), "CPU")
    yield
    lib._destroy()


def _grads(model_fn, device="cpu", attn="baseline"):
    # model_fn compiles: a fresh dynamo, so that GPT.forward's compiles by earlier tests in
    # this process (up to dynamo's recompile limit, 8 by default and raised by conftest.py,
    # past which it runs the forward uncompiled) cannot leave this one eager
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CFG, attn=attn), seed=0).to(device)
    fwd = model_fn(model)
    gen = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, 128, (2, 32), generator=gen).to(device) for _ in range(2))
    with torch.autocast(device, dtype=torch.bfloat16):
        _, loss = fwd(x, y)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _rewriting(counts: list[int], on: bool = True):
    """An AOTAutograd backend with inductor's decompositions whose graphs go through the
    rewrite (CPU tensors allowed) where `on`."""

    def run(gm, _inputs):
        counts.append(compiler.f32_gemm_outputs(gm.graph, devices=("cpu",)) if on else 0)
        gm.graph.lint()
        gm.recompile()
        return gm

    return aot_autograd(fw_compiler=run, bw_compiler=run, decompositions=select_decomp_table())


def _bf16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float() == t


def test_weight_gradients_come_from_the_gemm_in_float32(mm_dtype_on_cpu):
    plain = _grads(lambda m: torch.compile(m, backend=_rewriting([], on=False)))
    counts: list[int] = []
    rewritten = _grads(lambda m: torch.compile(m, backend=_rewriting(counts)))
    assert counts == [0, 4 * CFG["n_layer"]]  # the forward has none; every linear weight
    for name, want in plain.items():
        got = rewritten[name]
        if name.endswith(tuple(f"{lin}.weight" for lin in LINEARS)):
            # autograd's result is the same float32 sum rounded to bf16
            torch.testing.assert_close(got, want, rtol=2**-8, atol=1e-7)
            assert not _bf16_exact(got).all(), f"{name}: float32 gradient expected"
            assert _bf16_exact(want).all(), f"{name}: the plain path rounds to bf16"
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same graph


def test_the_gradients_compile_even_after_dynamo_s_recompile_limit(mm_dtype_on_cpu):
    # GPT.forward compiled for as many configurations as dynamo keeps (other tests in one
    # process do this); past that limit dynamo would run the next compile's forward eager
    x = torch.randint(0, 128, (2, 32))
    with torch._dynamo.config.patch(recompile_limit=2):  # the suite runs with a higher one
        for n_layer in (1, 3, 4):
            model = GPT(GPTConfig(**{**CFG, "n_layer": n_layer}), seed=0)
            torch.compile(model, backend="eager", dynamic=False)(x, x)
        counts: list[int] = []
        _grads(lambda m: torch.compile(m, backend=_rewriting(counts)))
    assert counts == [0, 4 * CFG["n_layer"]]


def _graph(fn, *shapes, dtype=torch.bfloat16, device="cuda"):
    """fn's ATen graph over fake tensors (CUDA ones need no GPU)."""
    from torch._subclasses import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    with FakeTensorMode():
        args = [torch.empty(s, dtype=dtype, device=device) for s in shapes]
        return make_fx(fn, decomposition_table=select_decomp_table())(*args)


def _targets(gm) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_outputs_rewritten_and_what_is_left(mm_dtype_on_cpu):
    aten = torch.ops.aten

    def fn(a, b):
        grad = (a.t() @ b).float()  # an output cast of an mm: rewritten
        flipped = (a.t() @ b).t().float()  # transposed on the way: rewritten, strides kept
        shared = a.t() @ b  # the mm has another user: left
        return grad, flipped, shared.float(), shared * 2, (a.t() @ b).float() + 1

    gm = _graph(fn, (64, 16), (64, 8))
    want = [n.meta["val"] for n in gm.graph.output_node().args[0]]
    assert compiler.f32_gemm_outputs(gm.graph) == 2
    gm.graph.lint()
    outs = gm.graph.output_node().args[0]
    assert outs[0].target is aten.mm.dtype
    assert outs[1].target is aten.permute.default and outs[1].args[0].target is aten.mm.dtype
    for node, val in zip(outs, want, strict=True):
        assert node.meta["val"].shape == val.shape and node.meta["val"].stride() == val.stride()
        assert node.meta["val"].dtype == val.dtype
    assert _targets(gm).count(aten.mm.dtype) == 2
    assert _targets(gm).count(aten.mm.default) == 2  # shared, and the one added to
    gm.recompile()  # the same values on CPU tensors, the rewritten ones unrounded
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(s, generator=gen).bfloat16() for s in ((64, 16), (64, 8)))
    exact = a.float().t() @ b.float()
    fulls = (exact, exact.t(), None, None, None)
    for got, want, full in zip(gm(a, b), fn(a, b), fulls, strict=True):
        torch.testing.assert_close(got, want, rtol=2**-8, atol=1e-6)
        if full is not None:
            torch.testing.assert_close(got, full, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("dtype", "device"), [(torch.float32, "cuda"), (torch.bfloat16, "cpu")])
def test_left_where_it_does_not_apply(dtype, device):
    gm = _graph(lambda a, b: (a.t() @ b).float(), (64, 16), (64, 8), dtype=dtype, device=device)
    assert compiler.f32_gemm_outputs(gm.graph) == 0


def test_pass_reaches_forward_and_backward_and_keys_the_caches():
    assert compiler._pass(True).uuid() != compiler._pass(False).uuid()
    with compiler.f32_grads(False):
        assert compiler._pass().uuid() == compiler._pass(False).uuid()

    def step(**on):
        torch.manual_seed(0)
        lin = torch.nn.Linear(16, 8)
        fwd = compiler.compile(lin, dynamic=False, **on)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fwd(torch.randn(4, 16))
        y.float().sum().backward()  # the backward compiles here, outside any setting

    with torch._inductor.config.patch(force_disable_caches=True):
        del compiler.REWRITTEN[:]
        step(f32_grads=True)
        assert compiler.REWRITTEN == [0, 0]  # forward and backward; nothing on the CPU
        with compiler.f32_grads(False):
            step()
        step(f32_grads=False)
        assert compiler.REWRITTEN == [0, 0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attn", ["baseline", "ra_v5"])
def test_cuda_gradients_with_and_without_the_pass(attn):
    with torch._inductor.config.patch(force_disable_caches=True):
        del compiler.REWRITTEN[:]
        on = _grads(partial(compiler.compile, f32_grads=True), "cuda", attn)
        rewritten = sum(compiler.REWRITTEN)
        off = _grads(partial(compiler.compile, f32_grads=False), "cuda", attn)
    assert rewritten >= 3 * CFG["n_layer"]  # the MLP's two and the output projection
    changed = 0
    for name, want in off.items():
        # the two differ by a bf16 rounding of each GEMM's sum, which is large against an
        # element where sums cancel (the tied embedding adds the head's GEMM to the
        # lookup's gradient): bf16's usual tolerance element by element, and one rounding
        # of the whole tensor in norm
        torch.testing.assert_close(
            on[name], want, rtol=1.6e-2, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
        )
        assert (on[name] - want).norm() <= 2**-8 * want.norm(), name
        changed += not _bf16_exact(on[name]).all() and _bf16_exact(want).all()
    assert changed >= 3 * CFG["n_layer"]
