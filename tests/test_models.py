"""CPU tests of racli_models: every variant against an explicit float64 reference,
causality, live gates, the ra_v5 reductions and tying, parameter counts, dtypes,
torch.compile, the optimizer's parameter groups. Tiny shapes throughout."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from racli_models import ATTENTION, GPT, GPTConfig, UnknownAttentionError, build_attention
from racli_models import gpt as gpt_module
from racli_models.reference import causal_attention, reference_forward

VARIANTS = sorted(ATTENTION)
GATED = ["ra_beta", "ra_v5", "ra_v5_untied"]
H, D, T, B, R = 3, 16, 12, 2, 4  # C = 48, D_std = 12
C = H * D


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def set_gates(m) -> None:
    """Non-trivial per-head gate values, so the reciprocal paths matter."""
    with torch.no_grad():
        if hasattr(m, "w_rec"):
            m.w_std.copy_(torch.tensor([1.0, 0.8, 1.3])[: m.n_head])
            m.w_rec.copy_(torch.tensor([0.7, -0.5, 1.1])[: m.n_head])
        if hasattr(m, "beta"):
            m.beta.copy_(torch.tensor([0.5, -0.8, 1.2])[: m.n_head])


def make_block(attn: str, bias: bool = False, **kw):
    cfg = GPTConfig.for_block(H, D, T, attn, ra_rank=R, bias=bias, **kw)
    m = build_attention(attn, cfg)
    set_gates(m)
    with torch.no_grad():  # O(1) scores (the 0.02 init gives near-uniform attention)
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 / math.sqrt(C))
    if bias:  # random biases, so the bias paths are checked too
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.endswith("bias") or name.split(".")[-1].startswith("b_"):
                    p.normal_(0.0, 0.1)
    return m


def tiny_gpt(attn: str, **kw) -> GPT:
    cfg = GPTConfig(
        vocab_size=64, n_layer=2, n_head=H, n_embd=C, block_size=T, attn=attn, ra_rank=R, **kw
    )
    return GPT(cfg)


# --- every variant against the float64 reference -------------------------------------------


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("attn", VARIANTS)
def test_matches_float64_reference(attn, bias):
    m = make_block(attn, bias=bias)
    x = torch.randn(B, T, C)
    with torch.no_grad():
        out = m(x)
        ref = reference_forward(m, x)
    assert out.shape == (B, T, C) and out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("attn", ["ra_v5", "ra_beta"])
def test_reciprocal_path_matters(attn):
    """The reference check above would be weak if the reciprocal term were negligible."""
    m = make_block(attn)
    x = torch.randn(B, T, C)
    with torch.no_grad():
        out = m(x)
        if attn == "ra_v5":
            m.w_rec.zero_()
        else:
            m.beta.zero_()
        assert rel_err(m(x), out) > 1e-2


# --- causality -----------------------------------------------------------------------------


@pytest.mark.parametrize("attn", VARIANTS)
def test_attention_is_causal(attn):
    m = make_block(attn)
    x = torch.randn(B, T, C)
    t = T // 2
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn(B, T - t - 1, C)
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[:, : t + 1], y2[:, : t + 1], rtol=0, atol=1e-6)
    assert (y[:, t + 1 :] - y2[:, t + 1 :]).abs().max() > 1e-4


@pytest.mark.parametrize("attn", VARIANTS)
def test_gpt_is_causal(attn):
    torch.manual_seed(0)
    model = tiny_gpt(attn).eval()
    for blk in model.transformer.h:
        set_gates(blk.attn)
    idx = torch.randint(0, 64, (B, T))
    t = 4
    idx2 = idx.clone()
    idx2[:, t + 1 :] = (idx[:, t + 1 :] + 1 + torch.randint(0, 62, (B, T - t - 1))) % 64
    with torch.no_grad():
        logits, _ = model(idx)
        logits2, _ = model(idx2)
    assert logits.shape == (B, T, 64)
    torch.testing.assert_close(logits[:, : t + 1], logits2[:, : t + 1], rtol=0, atol=1e-6)
    assert (logits[:, t + 1 :] - logits2[:, t + 1 :]).abs().max() > 1e-4


# --- gradients -----------------------------------------------------------------------------


def next_token_loss(model: GPT) -> torch.Tensor:
    idx = torch.randint(0, model.config.vocab_size, (B, T + 1))
    _, loss = model(idx[:, :-1], idx[:, 1:])
    return loss


@pytest.mark.parametrize("attn", VARIANTS)
def test_every_parameter_gets_a_gradient_at_init(attn):
    """From a next-token loss at the default init (w_rec = 0.1, beta = 0): no dead parameter."""
    model = tiny_gpt(attn)
    loss = next_token_loss(model)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("attn", VARIANTS)
def test_the_flat_residual_stream_changes_no_value(attn, monkeypatch):
    """gpt.FLAT (the residual stream as (B*T, C) rows between the blocks) only reshapes:
    the same logits, loss and gradients, bit for bit, as the stream kept (B, T, C)."""
    idx = torch.randint(0, 64, (B, T + 1))
    results = {}
    for flat in (True, False):
        monkeypatch.setattr(gpt_module, "FLAT", flat)
        model = tiny_gpt(attn)
        logits, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        results[flat] = (logits, loss, grads)
    (l1, loss1, g1), (l2, loss2, g2) = results[True], results[False]
    assert l1.shape == (B, T, 64)
    assert torch.equal(l1, l2) and torch.equal(loss1, loss2)
    assert all(torch.equal(g1[n], g2[n]) for n in g1)


def _compiled_step(model, idx, recompute: bool, monkeypatch):
    """Logits, loss, gradients and the tensors saved for the backward of one compiled
    forward+backward with `gpt.LN_RECOMPUTE` = `recompute`."""
    monkeypatch.setattr(gpt_module, "LN_RECOMPUTE", recompute)
    torch._dynamo.reset()
    model.zero_grad(set_to_none=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        logits, loss = torch.compile(model, dynamic=False, fullgraph=True)(idx[:, :-1], idx[:, 1:])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch._dynamo.reset()
    return logits.detach(), loss.detach(), grads, saved


def _holds(saved: list[torch.Tensor], t: torch.Tensor) -> bool:
    return any(
        s.numel() == t.numel()
        and s.dtype == t.dtype
        and torch.allclose(s.reshape(-1), t.reshape(-1), rtol=1e-5, atol=1e-5)
        for s in saved
    )


@pytest.mark.parametrize("form", gpt_module.LN_FORMS)
@pytest.mark.parametrize("attn,bias", [("baseline", False), ("ra_v5", True)])
def test_compiled_training_recomputes_layer_norms_from_their_input(attn, bias, form, monkeypatch):
    """gpt.LN_RECOMPUTE: compiled training saves each layer norm's input (and its row
    statistics), not its normalised output, and recomputes the output in the backward:
    the same logits, loss and gradients as the layer norms saved whole (float32), in
    either of the forms the layer norm is written out in (gpt.LN_FORM)."""
    monkeypatch.setattr(gpt_module, "LN_FORM", form)
    torch.manual_seed(0)
    model = tiny_gpt(attn, bias=bias)
    with torch.no_grad():  # a layer norm's output is then not its normalised input
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1)
    idx = torch.randint(0, 64, (B, T + 1))
    seen = {}
    ln_2 = model.transformer.h[1].ln_2
    hook = ln_2.register_forward_hook(lambda m, a, out: seen.update(x=a[0].detach()))
    model(idx[:, :-1])
    hook.remove()
    x = seen["x"]  # the second block's ln_2 input (the residual stream), and its normalised form
    rstd = torch.rsqrt(x.var(-1, correction=0, keepdim=True) + ln_2.eps)
    x_hat = (x - x.mean(-1, keepdim=True)) * rstd
    l0, loss0, g0, saved0 = _compiled_step(model, idx, False, monkeypatch)
    l1, loss1, g1, saved1 = _compiled_step(model, idx, True, monkeypatch)
    assert _holds(saved0, x_hat) and not _holds(saved0, x)  # the plain compiled model
    assert _holds(saved1, x) and not _holds(saved1, x_hat)
    assert not _holds(saved1, x - x.mean(-1, keepdim=True))
    assert _holds(saved1, rstd) and _holds(saved1, x.mean(-1, keepdim=True))  # not recomputed
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=1e-6)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("form", gpt_module.LN_FORMS)
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)])
def test_the_written_out_layer_norm_is_torchs(form, affine, bias, monkeypatch):
    monkeypatch.setattr(gpt_module, "LN_FORM", form)
    ln = torch.nn.LayerNorm(C, elementwise_affine=affine, bias=bias)
    if affine:
        with torch.no_grad():
            ln.weight.uniform_(0.5, 1.5)
            if bias:
                ln.bias.normal_(0.0, 0.1)
    x = torch.randn(B, T, C) * 3 + 1
    torch.testing.assert_close(gpt_module._layer_norm(x, ln), ln(x), rtol=1e-5, atol=1e-5)


def test_layer_norms_are_recomputed_only_in_compiled_float32_training(monkeypatch):
    """Eager, no-grad and half-precision forwards call the layer norm as it is."""
    monkeypatch.setattr(gpt_module, "LN_RECOMPUTE", True)
    calls = []
    monkeypatch.setattr(gpt_module, "checkpoint", lambda *a, **k: calls.append(1))
    ln = torch.nn.LayerNorm(C)
    x = torch.randn(B, C, requires_grad=True)
    torch.testing.assert_close(gpt_module.norm(ln, x), ln(x))
    with torch.no_grad():
        torch.compile(gpt_module.norm, fullgraph=True)(ln, x)
    torch.compile(gpt_module.norm, fullgraph=True)(ln.bfloat16(), x.detach().bfloat16())
    assert calls == []


@pytest.mark.parametrize("attn", GATED + ["sdpa_gate"])
def test_gate_parameters_get_nonzero_gradients(attn):
    model = tiny_gpt(attn)
    next_token_loss(model).backward()
    if attn == "sdpa_gate":
        gates = [blk.attn.g_proj.weight for blk in model.transformer.h]
        assert model.gate_parameters() == []
    else:
        gates = model.gate_parameters()
        names = ATTENTION[attn].gate_names
        assert len(gates) == len(names) * model.config.n_layer
    for p in gates:
        assert p.grad is not None and torch.isfinite(p.grad).all()
        # every head's gate moves, not just one of them
        assert (p.grad.reshape(H, -1).abs().amax(dim=1) > 0).all()


# --- ra_v5: reductions and tying -----------------------------------------------------------


def _std_qkv(m, x):
    """Standard q, k (D_std per head) and v of ra_v5, straight from W_q, W_k, W_v."""

    def heads(t):
        return t.view(B, T, H, -1).transpose(1, 2)

    return heads(x @ m.W_q.T), heads(x @ m.W_k.T), heads(x @ m.W_v.T)


def test_ra_v5_without_reciprocal_is_standard_attention_over_d_std():
    m = make_block("ra_v5").double()
    with torch.no_grad():
        m.w_std.fill_(1.0)
        m.w_rec.zero_()
        x = torch.randn(B, T, C, dtype=torch.float64)
        q, k, v = _std_qkv(m, x)
        y = causal_attention(q, k, v, scale=1 / math.sqrt(D))  # full D, not D_std
        ref = m.c_proj(y.transpose(1, 2).reshape(B, T, C))
        assert rel_err(m(x), ref) < 1e-10


def test_ra_v5_without_standard_scores_are_transposed():
    """With w_std = 0, w_rec = 1: Qf Kf^T / sqrt(D) = (K P)(Q P)^T / sqrt(D)."""
    m = make_block("ra_v5").double()
    with torch.no_grad():
        m.w_std.zero_()
        m.w_rec.fill_(1.0)
        x = torch.randn(B, T, C, dtype=torch.float64)
        qf, kf, _ = m.folded_qkv(x)
        scores = qf @ kf.transpose(-1, -2) / math.sqrt(D)
        q, k, _ = _std_qkv(m, x)
        expected = (k @ m.P) @ (q @ m.P).transpose(-1, -2) / math.sqrt(D)
        assert rel_err(scores, expected) < 1e-10


def test_ra_v5_is_tied_through_p():
    m = make_block("ra_v5")
    Ds = D - R
    x = torch.randn(B, T, C)
    # P gets a gradient from the Qf side alone and from the Kf side alone
    for side in (0, 1):
        m.zero_grad(set_to_none=True)
        rec = m.folded_qkv(x)[side][..., Ds:]
        (rec * torch.randn_like(rec)).sum().backward()
        assert m.P.grad is not None and m.P.grad.abs().max() > 0
    # W_k feeds the Qf reciprocal block (and W_q the Kf one); the standard blocks stay put
    with torch.no_grad():
        qf, kf, _ = m.folded_qkv(x)
        m.W_k.add_(0.05 * torch.randn_like(m.W_k))
        qf2, _, _ = m.folded_qkv(x)
        assert (qf2[..., Ds:] - qf[..., Ds:]).abs().max() > 1e-4
        torch.testing.assert_close(qf2[..., :Ds], qf[..., :Ds], rtol=0, atol=0)
        m.W_q.add_(0.05 * torch.randn_like(m.W_q))
        _, kf2, _ = m.folded_qkv(x)
        assert (kf2[..., Ds:] - kf[..., Ds:]).abs().max() > 1e-4


def test_ra_v5_untied_is_not_tied():
    """Contrast: in the ablation the key weights do not reach the Qf reciprocal block."""
    m = make_block("ra_v5_untied")
    x = torch.randn(B, T, C)
    with torch.no_grad():
        qf, _, _ = m.folded_qkv(x)
        m.W_ks.add_(0.05 * torch.randn_like(m.W_ks))
        qf2, _, _ = m.folded_qkv(x)
    torch.testing.assert_close(qf2, qf, rtol=0, atol=0)


def test_ra_v5_p_init_has_orthonormal_columns():
    m = make_block("ra_v5")
    gram = m.P.transpose(1, 2) @ m.P  # (H, R, R)
    torch.testing.assert_close(gram, torch.eye(R).expand(H, R, R), rtol=0, atol=1e-5)


@pytest.mark.parametrize("attn", ["ra_v5", "ra_v5_untied"])
def test_folded_weight_shape_and_one_gemm(attn):
    m = make_block(attn, bias=True)
    W_f, b_f = m.folded_weight()
    assert W_f.shape == (3 * C, C) and b_f.shape == (3 * C,)
    x = torch.randn(B, T, C)
    qf, kf, v = m.folded_qkv(x)
    torch.testing.assert_close(
        torch.cat([qf, kf, v], dim=-1).transpose(1, 2).reshape(B, T, -1),
        F.linear(x, W_f, b_f).view(B, T, 3, H, D).transpose(2, 3).reshape(B, T, -1),
    )


# --- parameter counts at the gpt2 preset ---------------------------------------------------

GPT2 = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50304}


@pytest.mark.slow
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_parameter_counts_at_gpt2_preset(bias):
    counts = {}
    with torch.device("meta"):
        for attn in VARIANTS:
            counts[attn] = GPT(GPTConfig(attn=attn, bias=bias, **GPT2)).num_params()
    base = counts["baseline"]
    assert 120e6 < base < 130e6
    for attn in ("ra_v5", "ra_v5_untied", "ra_beta"):
        assert abs(counts[attn] - base) / base < 0.01, attn
    assert abs(counts["ra_v5_untied"] - counts["ra_v5"]) / counts["ra_v5"] < 0.01
    # sdpa_gate adds its gate projection g_proj (C x C weight + C bias) in every layer:
    # 12 * (768 * 768 + 768) = 7,087,104 parameters.
    C2, L = GPT2["n_embd"], GPT2["n_layer"]
    assert counts["sdpa_gate"] - base == L * (C2 * C2 + C2) == 7_087_104


def test_num_params_non_embedding():
    model = tiny_gpt("baseline")
    assert model.num_params(non_embedding=True) == model.num_params() - T * C
    # the LM head is tied to the token embedding: counted once
    assert model.lm_head.weight is model.transformer.wte.weight


# --- registry and configuration ------------------------------------------------------------


def test_registry_names():
    assert set(ATTENTION) == {"baseline", "ra_v5", "ra_v5_untied", "ra_beta", "sdpa_gate"}


def test_unknown_attention_lists_valid_names():
    with pytest.raises(UnknownAttentionError) as err:
        build_attention("foo", GPTConfig())
    msg = str(err.value)
    assert msg == (
        "unknown attention 'foo' (valid: baseline, ra_beta, ra_v5, ra_v5_untied, sdpa_gate)"
    )
    assert isinstance(err.value, ValueError) and "\n" not in msg
    with pytest.raises(UnknownAttentionError):
        GPTConfig(attn="foo")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"n_embd": 130, "n_head": 4}, "divisible"),
        ({"ra_rank": 0}, "ra_rank"),
        ({"ra_rank": 32, "attn": "ra_v5"}, "ra_rank"),  # head_dim is 32
        ({"ra_rank": 32, "attn": "ra_v5_untied"}, "ra_rank"),
        ({"ra_rank": True}, "ra_rank"),
        ({"n_layer": 0}, "n_layer"),
        ({"vocab_size": -1}, "vocab_size"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kw)


def test_the_rank_binds_only_the_variants_that_split_their_heads():
    for attn in ("baseline", "ra_beta", "sdpa_gate"):  # head_dim 4, ra_rank 4
        cfg = GPTConfig.for_block(2, 4, 8, attn, ra_rank=4)
        model = build_attention(attn, cfg)
        assert model(torch.randn(1, 8, 8)).shape == (1, 8, 8)


def test_for_block():
    cfg = GPTConfig.for_block(12, 64, 1024, "ra_v5", ra_rank=8)
    assert (cfg.n_head, cfg.n_embd, cfg.head_dim, cfg.block_size) == (12, 768, 64, 1024)
    assert cfg.attn == "ra_v5" and cfg.ra_rank == 8


def test_sequence_longer_than_block_size_is_rejected():
    model = tiny_gpt("baseline")
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, T + 1, dtype=torch.long))


# --- gate values ---------------------------------------------------------------------------


@pytest.mark.parametrize("attn", VARIANTS)
def test_gate_values(attn):
    m = make_block(attn)
    x = torch.randn(B, T, C)
    with torch.no_grad():
        m(x)
    values = m.gate_values()
    expected = {
        "baseline": set(),
        "ra_v5": {"w_std", "w_rec"},
        "ra_v5_untied": {"w_std", "w_rec"},
        "ra_beta": {"beta"},
        "sdpa_gate": {"gate"},
    }[attn]
    assert set(values) == expected
    for v in values.values():
        assert v.shape == (H,) and v.dtype == torch.float32 and not v.requires_grad
    if attn == "sdpa_gate":
        g = torch.sigmoid(m.g_proj(x)).view(B, T, H, D).mean(dim=(0, 1, 3))
        torch.testing.assert_close(values["gate"], g)
    if attn == "ra_v5":
        torch.testing.assert_close(values["w_rec"], torch.tensor([0.7, -0.5, 1.1]))
        snapshot = values["w_rec"]
        with torch.no_grad():
            m.w_rec.add_(1.0)
        assert snapshot[0].item() == pytest.approx(0.7)  # a copy, not a view


def test_gpt_gate_values_by_layer():
    assert tiny_gpt("baseline").gate_values() == {}
    values = tiny_gpt("ra_v5").gate_values()
    assert sorted(values) == [0, 1]
    torch.testing.assert_close(values[1]["w_rec"], torch.full((H,), 0.1))
    torch.testing.assert_close(values[0]["w_std"], torch.full((H,), 1.0))


# --- dtypes --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("attn", VARIANTS)
def test_low_precision_forward_backward(attn, dtype):
    m = make_block(attn)
    x = torch.randn(B, T, C)
    with torch.no_grad():
        ref = reference_forward(m, x)
    m = m.to(dtype)
    xl = x.to(dtype).requires_grad_(True)
    out = m(xl)
    assert out.dtype == dtype
    out.float().pow(2).mean().backward()
    assert rel_err(out, ref) < (3e-2 if dtype == torch.bfloat16 else 5e-3)
    assert torch.isfinite(xl.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.dtype == dtype, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("attn", VARIANTS)
def test_gpt_under_cpu_autocast(attn):
    """float32 parameters, bfloat16 autocast (how a trainer runs it): same loss, live gates."""
    model = tiny_gpt(attn)
    idx = torch.randint(0, 64, (B, T + 1))
    _, loss32 = model(idx[:, :-1], idx[:, 1:])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    assert abs(loss.item() - loss32.item()) / loss32.item() < 2e-2
    for p in model.gate_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0


@pytest.mark.parametrize("attn", VARIANTS)
def test_dropout_train_and_eval(attn):
    m = make_block(attn, dropout=0.2)
    x = torch.randn(B, T, C)
    m.train()
    y = m(x)
    y.sum().backward()
    assert torch.isfinite(y).all()
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
        assert rel_err(m(x), reference_forward(m, x)) < 1e-5


# --- torch.compile -------------------------------------------------------------------------


@pytest.mark.slow
def test_ra_v5_torch_compile_matches_eager():
    """One compile test (slow on two cores): ra_v5, forward + backward, dynamic=False."""
    torch._dynamo.reset()
    m = make_block("ra_v5", bias=True)
    x = torch.randn(B, T, C)
    out = m(x)
    out.pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)

    start = time.perf_counter()
    compiled = torch.compile(m, dynamic=False)
    out_c = compiled(x)
    out_c.pow(2).mean().backward()
    elapsed = time.perf_counter() - start
    torch.testing.assert_close(out_c, out, rtol=1e-4, atol=1e-5)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)
    assert elapsed < 90, f"compile took {elapsed:.0f} s"


# --- optimizer -----------------------------------------------------------------------------


def test_configure_optimizer_groups():
    model = tiny_gpt("ra_v5", bias=True)
    opt = model.configure_optimizer(weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95), gate_lr_mult=10.0)
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"decay", "no_decay", "gates"}
    gates = groups["gates"]
    assert {id(p) for p in gates["params"]} == {id(p) for p in model.gate_parameters()}
    assert len(gates["params"]) == 2 * model.config.n_layer
    assert gates["lr_mult"] == 10.0 and gates["lr"] == pytest.approx(1e-2)
    assert gates["weight_decay"] == 0.0
    assert groups["decay"]["lr_mult"] == groups["no_decay"]["lr_mult"] == 1.0
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in groups["decay"]["params"])
    assert all(p.dim() < 2 for p in groups["no_decay"]["params"])
    assert any(p is model.transformer.h[0].attn.P for p in groups["decay"]["params"])
    # every parameter exactly once (the tied embedding too)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert opt.defaults["fused"] is False  # fused=None: fused on CUDA only
    # a scheduler step as the trainer does it, then one optimizer step
    for g in opt.param_groups:
        g["lr"] = 5e-4 * g["lr_mult"]
    next_token_loss(model).backward()
    before = model.transformer.h[0].attn.w_rec.detach().clone()
    opt.step()
    assert not torch.equal(before, model.transformer.h[0].attn.w_rec.detach())


def test_configure_optimizer_without_gates():
    model = tiny_gpt("baseline")
    opt = model.configure_optimizer(0.1, 1e-3, (0.9, 0.95), gate_lr_mult=10.0)
    assert [g["name"] for g in opt.param_groups] == ["decay", "no_decay"]


# ---------------------------------------------------------------- init pairing


def _gpt_after_noise(attn: str, seed: int, noise: int) -> GPT:
    torch.manual_seed(1000 + noise)  # a different global generator state each time
    torch.randn(noise + 1)
    return GPT(GPTConfig(attn=attn, bias=True), seed=seed)


@pytest.mark.parametrize("attn", sorted(ATTENTION))
def test_init_depends_on_the_seed_not_the_global_rng(attn):
    a = _gpt_after_noise(attn, seed=5, noise=0)
    b = _gpt_after_noise(attn, seed=5, noise=7)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    c = _gpt_after_noise(attn, seed=6, noise=0)
    assert not torch.equal(a.transformer.wpe.weight, c.transformer.wpe.weight)
    torch.manual_seed(5)  # seed=None takes the seed given to torch.manual_seed
    d = GPT(GPTConfig(attn=attn, bias=True))
    assert torch.equal(d.lm_head.weight, a.lm_head.weight)


@pytest.mark.parametrize("attn", ["ra_v5", "ra_v5_untied", "ra_beta", "sdpa_gate"])
def test_init_two_variants_share_their_common_weights(attn):
    cfg = GPTConfig(attn="baseline", bias=True)
    base = dict(_gpt_after_noise("baseline", seed=3, noise=1).named_parameters())
    other = dict(_gpt_after_noise(attn, seed=3, noise=2).named_parameters())
    shared = [n for n in base if n in other]
    # embeddings, MLPs, norms, output projections: everything outside the attention's input
    assert len(shared) >= len(base) - cfg.n_layer * 2
    for name in shared:
        assert torch.equal(base[name], other[name]), name
    C, H, D = cfg.n_embd, cfg.n_head, cfg.head_dim
    ds = D - cfg.ra_rank
    for i in range(cfg.n_layer):
        qkv = base[f"transformer.h.{i}.attn.c_attn.weight"]
        q, k, v = qkv[:C].view(H, D, C), qkv[C : 2 * C].view(H, D, C), qkv[2 * C :]
        a = f"transformer.h.{i}.attn."
        if attn == "ra_v5":
            assert torch.equal(other[a + "W_q"], q[:, :ds].reshape(-1, C))
            assert torch.equal(other[a + "W_k"], k[:, :ds].reshape(-1, C))
            assert torch.equal(other[a + "W_v"], v)
        elif attn == "ra_v5_untied":
            assert torch.equal(other[a + "W_qs"], q[:, :ds].reshape(-1, C))
            assert torch.equal(other[a + "W_kr"], k[:, ds:].reshape(-1, C))
            assert torch.equal(other[a + "W_v"], v)
        else:
            assert torch.equal(other[a + "c_attn.weight"], qkv)


def test_init_untied_at_unit_gates_equals_the_baseline():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 16))
    base = GPT(GPTConfig(attn="baseline"), seed=4)
    untied = GPT(GPTConfig(attn="ra_v5_untied", w_rec_init=1.0), seed=4)
    torch.testing.assert_close(untied(x)[0], base(x)[0], rtol=1e-5, atol=1e-5)


def test_init_keeps_the_documented_scales():
    m = GPT(GPTConfig(attn="ra_v5", n_layer=4, n_embd=256, n_head=4), seed=0)
    std = dict((n, p.std().item()) for n, p in m.named_parameters() if p.dim() >= 2)
    assert std["transformer.wte.weight"] == pytest.approx(0.02, rel=0.05)
    assert std["transformer.h.0.mlp.c_proj.weight"] == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    p = m.transformer.h[0].attn.P
    eye = torch.eye(p.shape[-1]).expand(p.shape[0], -1, -1)
    torch.testing.assert_close(p.transpose(1, 2) @ p, eye, atol=1e-5, rtol=0)


def test_init_pairing_batches_are_equal():
    import numpy as np

    from racli.training.batches import BatchSampler

    tokens = np.arange(5000, dtype=np.int64) % 251
    a = BatchSampler(tokens, 4, 32, seed=7)
    torch.manual_seed(123)  # the model's init draws nothing from these generators
    GPT(GPTConfig(attn="ra_v5"), seed=7)
    b = BatchSampler(tokens, 4, 32, seed=7)
    for _ in range(5):
        xa, ya = a.next()
        xb, yb = b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
