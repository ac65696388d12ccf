"""`train.sdpa_backend: fa4` (racli_models/flash4.py): cuDNN's forward with FlashAttention-4's
backward. On the CPU: the refusals, the routing, the operators' fake kernels. On a GPU of
compute capability 9.x with flash-attn-4 installed (`gpu`): agreement with a float64
reference, forward and gradients, under torch.compile and in a CUDA graph."""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from helpers import one_line_error, ra_inprocess
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel

from racli.names import FA4, sdpa_backend_context
from racli_models import GPT, GPTConfig, build_attention, flash4

TINY = [
    *("--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.n_embd=32"),
    *("--set", "model.block_size=32", "--set", "train.batch_size=4", "--device", "cpu"),
]


@pytest.fixture(autouse=True)
def _own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RA_DB", raising=False)


# ---------------------------------------------------------------- CPU: refusals


def test_train_refuses_fa4_on_the_cpu_before_recording(tmp_path):
    res = ra_inprocess(
        "train", "--attn", "baseline", "--steps", "2", *TINY,
        "--set", "train.sdpa_backend=fa4", "--db", "new.db",
    )  # fmt: skip
    assert "train.sdpa_backend=fa4 runs on a CUDA GPU of compute capability 9.x" in one_line_error(
        res
    )
    assert not (tmp_path / "new.db").exists()


@pytest.mark.parametrize(
    "sets, words",
    [
        (["model.dropout=0.1"], "fa4 has no attention dropout: set model.dropout=0"),
        (["model.n_embd=36", "model.n_head=3"], "a multiple of 8; got 12"),
        (["model.n_embd=1088", "model.n_head=2"], "in 8..256, a multiple of 8; got 544"),
    ],
)
def test_config_refuses_what_fa4_cannot_run(tmp_path, sets, words):
    extra = [a for s in sets for a in ("--set", s)]
    res = ra_inprocess(
        "train", "--attn", "baseline", "--steps", "2", *TINY, *extra,
        "--set", "train.sdpa_backend=fa4", "--db", "new.db",
    )  # fmt: skip
    err = one_line_error(res)
    assert "train.sdpa_backend" in err and words in err
    assert not (tmp_path / "new.db").exists()


def test_bench_refuses_fa4_without_a_gpu(tmp_path):
    res = ra_inprocess("bench", "--sdpa-backend", "fa4", "--device", "cpu", "--db", "new.db")
    assert "--sdpa-backend fa4 needs a CUDA GPU" in one_line_error(res)
    assert not (tmp_path / "new.db").exists()


def test_problem_names_the_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", None)  # import fails
    why = flash4.problem()
    assert why.startswith('needs the flash-attn-4 package (pip install -e ".[fa4]")')


def test_float32_and_odd_head_sizes_are_refused_by_the_operator():
    with pytest.raises(ValueError, match="float16/bfloat16 CUDA tensors"):
        flash4._check(torch.zeros(1, 2, 4, 8))
    with pytest.raises(ValueError, match="a multiple of 8; got 12"):
        flash4._check(torch.zeros(1, 2, 4, 12, dtype=torch.float16))


# ---------------------------------------------------------------- CPU: routing and fakes


def _sdpa_heads(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """What `flash4.attention_qkv` computes, by SDPA: (B, T, 3C) -> (B, T, C)."""
    B, T, C3 = qkv.shape
    q, k, v = (t.transpose(1, 2) for t in flash4.qkv_heads(qkv, n_head))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C3 // 3)


@pytest.mark.parametrize("attn", ["baseline", "ra_v5", "ra_v5_untied", "ra_beta", "sdpa_gate"])
def test_the_backend_context_routes_causal_attention_through_the_pair(monkeypatch, attn):
    """Under fa4 the one [q | k | v] projection of baseline, ra_v5 and ra_v5_untied goes to
    `attention_qkv` whole (the default); with `qkv_operator(False)` its heads go to
    `attention`, as ra_beta's (whose second call swaps q and k) and sdpa_gate's (gated
    before they are merged) always do. The results are SDPA's."""
    calls = []

    def pair(q, k, v):
        calls.append(("heads", tuple(q.shape)))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def pair_qkv(qkv, n_head):
        calls.append(("qkv", tuple(qkv.shape)))
        return _sdpa_heads(qkv, n_head)

    monkeypatch.setattr(flash4, "attention", pair)
    monkeypatch.setattr(flash4, "attention_qkv", pair_qkv)
    m = build_attention(attn, GPTConfig.for_block(2, 8, 16, attn, ra_rank=2))
    x = torch.randn(3, 16, 16)
    plain = m(x)
    assert calls == [] and not flash4.ACTIVE
    with sdpa_backend_context(FA4):
        assert flash4.ACTIVE and flash4.QKV  # the operator serves by default
        routed = m(x)
        with flash4.qkv_operator(False):
            assert not flash4.QKV
            split = m(x)
        assert flash4.QKV
    assert not flash4.ACTIVE
    heads = ("heads", (3, 2, 16, 8))
    if attn == "ra_beta":
        assert calls == [heads] * 4
    elif attn == "sdpa_gate":
        assert calls == [heads] * 2
    else:
        assert calls == [("qkv", (3, 16, 48)), heads]
    torch.testing.assert_close(routed, plain)
    torch.testing.assert_close(split, plain)


def test_qkv_heads_are_the_projections_thirds_in_place():
    """`qkv_heads` sees q, k, v where `split` cuts them, as views: what FA4's backward
    writes into the views of one gradient lands as [dq | dk | dv]."""
    B, T, H, D = 2, 5, 3, 4
    qkv = torch.randn(B, T, 3 * H * D)
    for got, want in zip(flash4.qkv_heads(qkv, H), qkv.split(H * D, dim=2)):
        assert got.shape == (B, T, H, D)
        assert got._base is qkv or got._base is qkv._base
        torch.testing.assert_close(got, want.reshape(B, T, H, D), rtol=0, atol=0)
    grad = torch.empty_like(qkv)
    parts = [torch.randn(B, T, H, D) for _ in range(3)]
    for view, part in zip(flash4.qkv_heads(grad, H), parts):
        view.copy_(part)
    torch.testing.assert_close(grad, torch.cat([p.reshape(B, T, H * D) for p in parts], 2))


def test_dropout_in_training_is_an_error_under_the_pair():
    m = build_attention("baseline", GPTConfig.for_block(2, 8, 16, "baseline", dropout=0.1))
    m.train()
    with sdpa_backend_context(FA4), pytest.raises(ValueError, match="no attention dropout"):
        m(torch.randn(1, 16, 16))


def test_fake_kernels_give_token_major_outputs():
    """What torch.compile plans with: (B, H, T, D) results laid out (B, T, H, D), the
    layout of q, k, v cut from one projection, and a float32 (B, H, T) log-sum-exp."""
    B, T, H, D = 2, 16, 3, 8
    with FakeTensorMode():
        qkv = torch.empty(B, T, 3 * H * D, dtype=torch.bfloat16)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2))
        y, lse = torch.ops.racli.fa4_attention(q, k, v)
        dq, dk, dv = torch.ops.racli.fa4_attention_backward(q, k, v, y, y, lse)
    token_major = (T * H * D, D, H * D, 1)
    assert y.shape == (B, H, T, D) and y.stride() == token_major and y.dtype == torch.bfloat16
    assert lse.shape == (B, H, T) and lse.dtype == torch.float32 and lse.is_contiguous()
    for g in (dq, dk, dv):
        assert g.shape == (B, H, T, D) and g.stride() == token_major


def test_fake_kernels_of_the_qkv_operators():
    """`attention_qkv`'s: y (B, T, C) and the projection's gradient (B, T, 3C), contiguous,
    and the float32 (B, H, T) log-sum-exp."""
    B, T, H, D = 2, 16, 3, 8
    with FakeTensorMode():
        qkv = torch.empty(B, T, 3 * H * D, dtype=torch.bfloat16)
        y, lse = torch.ops.racli.fa4_attention_qkv(qkv, H)
        grad = torch.ops.racli.fa4_attention_qkv_backward(qkv, y, y, lse, H)
    assert y.shape == (B, T, H * D) and y.is_contiguous() and y.dtype == torch.bfloat16
    assert lse.shape == (B, H, T) and lse.dtype == torch.float32 and lse.is_contiguous()
    assert grad.shape == qkv.shape and grad.is_contiguous() and grad.dtype == torch.bfloat16


def test_the_qkv_forward_gives_the_heads_side_by_side(monkeypatch):
    """The forward operator's own code on the CPU, cuDNN's forward stood in for by SDPA
    (float64; its result laid out (B, H, T, D), not token-major): y comes back (B, T, C)
    with the heads side by side, the log-sum-exp (B, H, T)."""
    B, T, H, D = 2, 6, 3, 4
    calls = []

    def cudnn_kernel(q, k, v):
        calls.append(tuple(q.stride()))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).contiguous()
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)
        lse = scores.masked_fill(~torch.ones(T, T).tril().bool(), -math.inf).logsumexp(-1)
        return y, lse.unsqueeze(-1)  # (B, H, T, 1), as cuDNN's

    monkeypatch.setattr(flash4, "_cudnn_kernel", cudnn_kernel)
    monkeypatch.setattr(flash4, "_check", lambda q: None)
    qkv = torch.randn(B, T, 3 * H * D, dtype=torch.float64)
    y, lse = torch.ops.racli.fa4_attention_qkv(qkv, H)
    assert calls == [(T * 3 * H * D, D, 3 * H * D, 1)]  # the heads of the projection, no copy
    assert y.shape == (B, T, H * D) and y.is_contiguous() and lse.shape == (B, H, T)
    torch.testing.assert_close(y, _sdpa_heads(qkv, H))
    scores = torch.einsum("bthd,bshd->bhts", *flash4.qkv_heads(qkv, H)[:2]) / math.sqrt(D)
    mask = ~torch.ones(T, T).tril().bool()
    torch.testing.assert_close(lse, scores.masked_fill(mask, -math.inf).logsumexp(-1))


def test_the_qkv_backward_hands_fa4_the_thirds_of_one_gradient(monkeypatch):
    """The backward operator's own code on the CPU, FA4's backward stood in for by
    attention's backward written out in float64: it is given q, k, v, y, dy (B, T, H, D)
    and the log-sum-exp,
    writes dq, dk, dv where it is told, and those are the thirds of the projection's
    gradient: the result is the gradient of attention over [q | k | v]."""
    import types

    B, T, H, D = 2, 6, 3, 4
    seen = {}

    def flash_attn_bwd(q, k, v, out, dout, lse, causal, dq, dk, dv):
        assert causal and all(t.shape == (B, T, H, D) for t in (q, k, v, out, dout, dq, dk, dv))
        assert lse.shape == (B, H, T) and dq._base is dk._base is dv._base is not None
        seen["writes"] = dq._base
        # attention's backward written out (an operator's own code runs below autograd)
        q, k, v, out, dout = (t.transpose(1, 2) for t in (q, k, v, out, dout))  # (B, H, T, D)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)
        p = scores.masked_fill(~torch.ones(T, T).tril().bool(), -math.inf).softmax(-1)
        torch.testing.assert_close(p @ v, out)
        dp = dout @ v.transpose(-1, -2)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True)) / math.sqrt(D)
        for g, dest in zip(
            (ds @ k, ds.transpose(-1, -2) @ q, p.transpose(-1, -2) @ dout), (dq, dk, dv)
        ):
            dest.copy_(g.transpose(1, 2))
        return dq, dk, dv, None, None

    fake = types.ModuleType("flash_attn.cute.interface")
    fake._flash_attn_bwd = flash_attn_bwd
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", fake)

    qkv = torch.randn(B, T, 3 * H * D, dtype=torch.float64, requires_grad=True)
    y_ref = _sdpa_heads(qkv, H)
    dy = torch.randn_like(y_ref)
    (want,) = torch.autograd.grad(y_ref, qkv, dy)
    lse = torch.zeros(B, H, T, dtype=torch.float64)
    got = torch.ops.racli.fa4_attention_qkv_backward(qkv.detach(), y_ref.detach(), dy, lse, H)
    assert seen["writes"] is got and got.is_contiguous()
    torch.testing.assert_close(got, want)


def test_the_backward_hides_the_dsls_jit_argument_warning_and_no_other(monkeypatch):
    """FA4's backward compiles with a CuTe DSL UserWarning about FA4's own `aux_data`; the
    operators hide that one message and let every other warning through."""
    import types

    noise = (
        "Argument aux_data (position 21) cannot be converted to a JitArgument for function "
        "'cutlass___call___flash_attncuteflash_bwd_sm90'. Its type is not supported."
    )

    def flash_attn_bwd(q, k, v, out, dout, lse, causal, dq=None, dk=None, dv=None):
        warnings.warn(noise, UserWarning, stacklevel=1)
        warnings.warn("Argument lse (position 6) cannot be converted", UserWarning, stacklevel=1)
        return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None, None)

    fake = types.ModuleType("flash_attn.cute.interface")
    fake._flash_attn_bwd = flash_attn_bwd
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", fake)
    B, T, H, D = 1, 4, 2, 8
    q = torch.randn(B, H, T, D)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.ops.racli.fa4_attention_backward(q, q, q, q, q, torch.zeros(B, H, T))
        y = torch.randn(B, T, H * D)
        torch.ops.racli.fa4_attention_qkv_backward(
            torch.randn(B, T, 3 * H * D), y, y, torch.zeros(B, H, T), H
        )
    assert [str(w.message) for w in seen] == ["Argument lse (position 6) cannot be converted"] * 2


def _traced_ops(attn: str, *contexts) -> list[str]:
    """The operators of a bf16 block's forward and backward (its parameters' gradients),
    traced with fake tensors under `contexts`: the graph torch.compile would plan from."""
    from torch.fx.experimental.proxy_tensor import make_fx

    m = build_attention(attn, GPTConfig.for_block(2, 8, 16, attn, ra_rank=2)).to(torch.bfloat16)
    names = [n for n, _ in m.named_parameters()]
    buffers = dict(m.named_buffers())  # sdpa_gate's gate mean, written by its forward

    def fwd_bwd(x, *tensors):
        params = tensors[: len(names)]
        state = dict(zip([*names, *buffers], tensors))
        out = torch.func.functional_call(m, state, (x,))
        return torch.autograd.grad(out.float().sum(), params)

    x = torch.randn(3, 16, 16, dtype=torch.bfloat16)
    with contextlib.ExitStack() as stack:
        for c in contexts:
            stack.enter_context(c)
        tensors = (*m.parameters(), *buffers.values())
        graph = make_fx(fwd_bwd, tracing_mode="fake")(x, *tensors).graph
    return [str(n.target) for n in graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("attn", ["baseline", "ra_v5", "ra_v5_untied"])
def test_the_qkv_operator_leaves_no_concatenation_of_the_heads_gradients(attn):
    """With `attention_qkv` the projection's gradient comes whole from the backward
    operator; with the three-tensor operator (as with SDPA) autograd concatenates dq, dk
    and dv: one `cat` more, a copy of 3 x B x T x C values."""
    qkv = _traced_ops(attn, sdpa_backend_context(FA4), flash4.qkv_operator())
    split = _traced_ops(attn, sdpa_backend_context(FA4), flash4.qkv_operator(False))
    assert "racli.fa4_attention_qkv_backward.default" in qkv
    assert "racli.fa4_attention_backward.default" in split
    assert split.count("aten.cat.default") == qkv.count("aten.cat.default") + 1


# ---------------------------------------------------------------- GPU (compute capability 9.x)

needs_fa4 = pytest.mark.skipif(
    not torch.cuda.is_available() or flash4.problem() is not None,
    reason="needs flash-attn-4 and a GPU of compute capability 9.x",
)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
B, T, H, D = 2, 256, 4, 64
C = H * D


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _block(attn: str, dtype: torch.dtype):
    cfg = GPTConfig.for_block(H, D, T, attn, ra_rank=4)
    m = build_attention(attn, cfg)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 / math.sqrt(C))
    return m.to("cuda", dtype)


def _fwd_bwd(m, x, w):
    for p in m.parameters():
        p.grad = None
    out = m(x)
    (out.float() * w).sum().backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in m.named_parameters()}


@pytest.mark.gpu
@needs_fa4
@pytest.mark.parametrize("qkv", [True, False], ids=["qkv", "split"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("attn", ["baseline", "ra_v5", "ra_v5_untied", "sdpa_gate", "ra_beta"])
def test_pair_matches_float64_forward_and_gradients(attn, dtype, qkv):
    """Within TOL of float64, or (a gate's gradient: a few sums over every position, whose
    terms cancel) no further than twice torch's own SDPA in the same dtype from it."""
    torch.manual_seed(0)
    m = _block(attn, dtype)
    x = torch.randn(B, T, C, device="cuda", dtype=dtype)
    w = torch.randn(B, T, C, device="cuda")
    with sdpa_backend_context(FA4), flash4.qkv_operator(qkv):
        out, got = _fwd_bwd(m, x, w)
    _, torch_sdpa = _fwd_bwd(m, x, w)
    ref_m = _block(attn, torch.float64)
    ref_m.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    with sdpa_kernel(SDPBackend.MATH):
        ref, want = _fwd_bwd(ref_m, x.double(), w.double())
    assert rel_err(out, ref) < TOL[dtype]
    for name in want:
        bound = max(TOL[dtype], 2 * rel_err(torch_sdpa[name], want[name]))
        assert rel_err(got[name], want[name]) < bound, name


@pytest.mark.gpu
@needs_fa4
def test_operators_pass_opcheck():
    q, k, v = (
        torch.randn(2, 4, 128, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )
    torch.library.opcheck(torch.ops.racli.fa4_attention, (q, k, v))
    qkv = torch.randn(2, 128, 3 * 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    torch.library.opcheck(torch.ops.racli.fa4_attention_qkv, (qkv, 4))


@pytest.mark.gpu
@needs_fa4
def test_compiled_and_graphed_train_step_matches_cudnn():
    """ra's training step (torch.compile, the step in one CUDA graph) under fa4: the same
    losses as under cuDNN's own forward and backward, to bf16 rounding."""
    from racli.training.trainer import step_context
    from racli_models.step import TrainStep

    losses = {}
    for backend in ("cudnn", FA4):
        torch.manual_seed(0)
        cfg = GPTConfig(n_layer=2, n_head=4, n_embd=256, block_size=256, vocab_size=512)
        model = GPT(cfg).cuda()
        opt = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), fused=True)

        context = partial(step_context, True, backend)
        step = TrainStep(model, opt, fwd=torch.compile(model), clip=1.0, autocast=context)
        g = torch.Generator(device="cuda").manual_seed(1)
        x = torch.randint(0, 512, (4, 256), device="cuda", generator=g)
        losses[backend] = [float(step(x, x.roll(-1, 1))) for _ in range(6)]
        assert step.graph_error is None and step._graph is not None
    for a, b in zip(losses["cudnn"], losses[FA4]):
        assert abs(a - b) < 2e-2 * abs(a), losses
