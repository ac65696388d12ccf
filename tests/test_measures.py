"""Reciprocity measures (racli_models.measures) in float64 against explicit
references, their invariances, and their recording during training
(racli.training.reciprocity): no change to the model or to training."""

from __future__ import annotations

import copy
import math
import sqlite3

import pytest
import torch
import torch.nn.functional as F
from helpers import in_triton_interpreter

from racli.training.reciprocity import (
    MeasureSettings,
    forward_dtype,
    measure,
    measured_batches,
    record_measures,
)
from racli_models import GPT, GPTConfig, measures
from racli_models.attention import build_attention
from racli_models.measures import (
    has_reciprocal,
    head_measures,
    layer_parts,
    layer_step,
    model_measures,
    query_rows,
    removing_reciprocal,
    score_terms,
)
from racli_models.split32 import float32_on_tensor_cores, stacked, tf32_split


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def attn_module(name="ra_v5", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GPTConfig(n_layer=1, n_head=3, n_embd=48, block_size=16, attn=name, ra_rank=4, **kw)
    return build_attention(name, cfg).double().eval()


def inputs(seed=1, B=2, T=12, C=48):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, C, generator=g, dtype=torch.float64)


def reference(attn, x):
    """rec_share and rec_effect by explicit loops over heads, sequences and queries."""
    H, D, Ds = attn.n_head, attn.head_dim, attn.d_std
    B, T, _ = x.shape
    W_f, _ = attn.folded_weight()
    qkv = x @ W_f.T
    qf, kf = qkv[..., : attn.n_embd], qkv[..., attn.n_embd : 2 * attn.n_embd]
    shares, effects = [], []
    for h in range(H):
        q = qf[..., h * D : (h + 1) * D]
        k = kf[..., h * D : (h + 1) * D]
        v_std = v_rec = kl = 0.0
        for b in range(B):
            for i in range(T):
                s = torch.stack([q[b, i, :Ds] @ k[b, j, :Ds] for j in range(i + 1)]) / math.sqrt(D)
                r = torch.stack([q[b, i, Ds:] @ k[b, j, Ds:] for j in range(i + 1)]) / math.sqrt(D)
                v_std += float(((s - s.mean()) ** 2).sum())
                v_rec += float(((r - r.mean()) ** 2).sum())
                p, p0 = torch.softmax(s + r, 0), torch.softmax(s, 0)
                kl += float((p * (p.log() - p0.log())).sum())
        shares.append(v_rec / (v_std + v_rec) if v_std + v_rec > 0 else 0.0)
        effects.append(kl / (B * T))
    return torch.tensor(shares), torch.tensor(effects)


@pytest.mark.parametrize("name", ["ra_v5", "ra_v5_untied"])
def test_matches_explicit_reference(name):
    attn, x = attn_module(name), inputs()
    with torch.no_grad():
        attn.w_rec.copy_(torch.tensor([0.1, 0.7, -1.3]))
        m = head_measures(attn, x)
        share, effect = reference(attn, x)
    assert m["rec_share"].dtype == torch.float64
    torch.testing.assert_close(m["rec_share"], share, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m["rec_effect"], effect, rtol=1e-10, atol=1e-12)
    assert (m["rec_share"] > 0).all() and (m["rec_effect"] > 0).all()


@pytest.mark.parametrize("name", ["ra_v5", "ra_v5_untied"])
def test_w_rec_zero_reads_zero_and_w_std_zero_reads_one(name):
    attn, x = attn_module(name), inputs()
    with torch.no_grad():
        attn.w_rec.zero_()
        m = head_measures(attn, x)
        assert (m["rec_share"] == 0).all() and (m["rec_effect"] == 0).all()
        attn.w_rec.fill_(0.3)
        attn.w_std.zero_()
        m = head_measures(attn, x)
    torch.testing.assert_close(m["rec_share"], torch.ones(3), rtol=0, atol=1e-12)
    assert (m["rec_effect"] > 0).all()


def test_float32_is_accurate_for_a_small_reciprocal_term():
    """A trained model's reciprocal term is tiny (KL ~ 1e-9): float32 must still read it
    (log p - log q in float32 gave noise there, even negative values)."""
    attn, x = attn_module("ra_v5"), inputs(T=16)
    with torch.no_grad():
        attn.w_rec.fill_(0.001)
        want = head_measures(attn, x)
        got = head_measures(copy.deepcopy(attn).float(), x.float())
    for name in ("rec_share", "rec_effect"):
        torch.testing.assert_close(got[name], want[name], rtol=1e-2, atol=0)
    assert (want["rec_effect"] > 0).all() and (want["rec_effect"] < 1e-8).all()


def test_scale_moved_between_P_and_w_rec_changes_nothing():
    attn, x = attn_module("ra_v5"), inputs()
    with torch.no_grad():
        before = head_measures(attn, x)
        std0, rec0 = score_terms(attn, x)
        c = 3.0
        attn.P.mul_(c)
        attn.w_rec.div_(c * c)
        after = head_measures(attn, x)
        std1, rec1 = score_terms(attn, x)
    torch.testing.assert_close(rec1, rec0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(std1, std0, rtol=0, atol=0)
    for name in ("rec_share", "rec_effect"):
        torch.testing.assert_close(after[name], before[name], rtol=1e-9, atol=1e-14)
    # while the raw gate ratio the old classification used moved by c^2
    assert float(attn.w_rec[0].detach() / attn.w_std[0].detach()) == pytest.approx(0.1 / 9)


def constructed_head(w_std: float, w_rec: float):
    """One head, D = 4 (D_std = 3, R = 1): q = k = x[:3], P = e_0. With
    x_0 = e_1, x_1 = e_0, query 1 sees logits S = (0, w_std/2), R = (0, w_rec/2)
    and query 0 a single key, so rec_share = w_rec^2 / (w_std^2 + w_rec^2)."""
    cfg = GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=4, attn="ra_v5", ra_rank=1)
    attn = build_attention("ra_v5", cfg).double().eval()
    pick = torch.zeros(3, 4)
    pick[:, :3] = torch.eye(3)
    with torch.no_grad():
        attn.W_q.copy_(pick)
        attn.W_k.copy_(pick)
        attn.P.copy_(torch.tensor([[[1.0], [0.0], [0.0]]]))
        attn.w_std.fill_(w_std)
        attn.w_rec.fill_(w_rec)
    x = torch.zeros(1, 2, 4)
    x[0, 0, 1] = 1.0
    x[0, 1, 0] = 1.0
    return attn, x


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.9])
def test_constructed_head_reads_its_known_fraction(fraction):
    w_rec = math.sqrt(fraction / (1 - fraction))  # with w_std = 1
    attn, x = constructed_head(1.0, w_rec)
    with torch.no_grad():
        m = head_measures(attn, x)
    assert float(m["rec_share"][0]) == pytest.approx(fraction, abs=1e-12)
    # KL over query 1's two keys, averaged over the two queries
    p = torch.softmax(torch.tensor([0.0, (1 + w_rec) / 2]), 0)
    p0 = torch.softmax(torch.tensor([0.0, 0.5]), 0)
    kl = float((p * (p / p0).log()).sum()) / 2
    assert float(m["rec_effect"][0]) == pytest.approx(kl, abs=1e-12)


def test_ra_beta_norm_ratio():
    attn, x = attn_module("ra_beta"), inputs()
    with torch.no_grad():
        assert (head_measures(attn, x)["rec_norm_ratio"] == 0).all()  # beta starts at 0
        attn.beta.copy_(torch.tensor([0.5, -1.0, 0.0]))
        m = head_measures(attn, x)
        q, k, v = attn.c_attn(x).split(48, dim=2)
        q, k, v = attn._heads(q), attn._heads(k), attn._heads(v)
        y_std = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y_rec = F.rms_norm(F.scaled_dot_product_attention(k, q, v, is_causal=True), (16,), eps=1e-6)
        gated = torch.tanh(attn.beta).view(3, 1, 1) * y_rec
    for h in range(3):
        want = float(gated[:, h].norm() / y_std[:, h].norm())
        assert float(m["rec_norm_ratio"][h]) == pytest.approx(want, rel=1e-10, abs=1e-15)


def test_sdpa_gate_mean_and_spread():
    attn, x = attn_module("sdpa_gate"), inputs()
    with torch.no_grad():
        torch.nn.init.normal_(attn.g_proj.weight, std=0.3)
        m = head_measures(attn, x)
        attn(x)  # the module's own per-head mean of the gate
        g = torch.sigmoid(attn.g_proj(x)).view(2, 12, 3, 16)
    torch.testing.assert_close(
        m["gate_mean"], attn.gate_values()["gate"].double(), rtol=1e-6, atol=1e-7
    )
    for h in range(3):
        assert float(m["gate_std"][h]) == pytest.approx(
            float(g[:, :, h].std(unbiased=False)), rel=1e-10
        )


def test_baseline_has_no_measures():
    attn = attn_module("baseline")
    assert head_measures(attn, inputs()) == {}


# ---------------------------------------------------------------- whole model, ablation


def tiny_gpt(attn="ra_v5", seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=16, attn=attn)
    return GPT(cfg).double().eval()


def token_batches(n=2, B=3, T=16, seed=2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        idx = torch.randint(0, 64, (B, T + 1), generator=g)
        out.append((idx[:, :-1], idx[:, 1:]))
    return out


def mean_loss(model, batches):
    with torch.no_grad():
        return sum(float(model(x, y)[1]) for x, y in batches) / len(batches)


@pytest.mark.parametrize("alone", [False, True])
@pytest.mark.parametrize("attn", ["ra_v5", "ra_v5_untied", "ra_beta"])
def test_ablation_equals_setting_the_gate_to_zero(attn, alone, monkeypatch):
    monkeypatch.setattr(measures, "ABLATION_ALONE", alone)
    model, batches = tiny_gpt(attn), token_batches()
    gate = "beta" if attn == "ra_beta" else "w_rec"
    with torch.no_grad():
        for block in model.transformer.h:  # away from init, so every layer matters
            getattr(block.attn, gate).fill_(0.8)
        values = model_measures(model, batches)
    loss = mean_loss(model, batches)
    for layer in range(2):
        ablated = copy.deepcopy(model)
        with torch.no_grad():
            getattr(ablated.transformer.h[layer].attn, gate).zero_()
        want = (mean_loss(ablated, batches) - loss) / loss
        got = float(values[layer]["rec_ablation"][0])
        assert got == pytest.approx(want, rel=1e-8, abs=1e-13)
        assert got != 0.0


@pytest.mark.parametrize("name", ["ra_v5", "ra_v5_untied", "ra_beta", "baseline"])
def test_removing_reciprocal_from_the_last_sequences_only(name):
    attn, x = attn_module(name), inputs(B=3)
    gate = "beta" if name == "ra_beta" else "w_rec"
    with torch.no_grad():
        if name != "baseline":
            getattr(attn, gate).fill_(0.6)
        got = removing_reciprocal(attn, x, 1)
        none_removed = removing_reciprocal(attn, x, 0)
        own = attn(x)
        if name != "baseline":
            getattr(attn, gate).zero_()
        gone = attn(x[2:])
    torch.testing.assert_close(got[:2], own[:2], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[2:], gone, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(none_removed, own, rtol=1e-12, atol=1e-14)
    assert has_reciprocal(attn) == (name != "baseline")
    assert torch.equal(got[2:], own[2:]) == (name == "baseline")


def ablation_case(attn: str, seed: int):
    """A 3-layer float64 GPT whose every reciprocal term matters (gate 0.8), and three
    batches: one plain, one with some targets ignored (-1), one without any."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=64, n_layer=3, n_head=2, n_embd=32, block_size=16, attn=attn)
    model = GPT(cfg).double().eval()
    if attn in ("ra_v5", "ra_v5_untied", "ra_beta"):
        with torch.no_grad():
            for block in model.transformer.h:
                getattr(block.attn, "beta" if attn == "ra_beta" else "w_rec").fill_(0.8)
    batches = [(x, y.clone()) for x, y in token_batches(n=3)]  # y is a view of x's tensor
    batches[1][1][0, :5] = -1
    batches[2][1].fill_(-1)
    return model, batches


def measures_by_flag(model, batches, flag: str, monkeypatch) -> dict:
    """{False: ..., True: ...}: the measures with the ablation, `measures.<flag>` off and on."""
    got = {}
    for value in (False, True):
        monkeypatch.setattr(measures, flag, value)
        with torch.no_grad():
            got[value] = model_measures(model, batches, queries=8)
    return got


@pytest.mark.parametrize("attn", ["ra_v5", "ra_beta"])
def test_ablated_passes_interleaved_or_after_the_forward_agree(attn, monkeypatch):
    """`measures.INTERLEAVED` changes only when the ablated passes are issued: the same
    values, bit for bit, with some targets ignored (-1) and a batch without any."""
    monkeypatch.setattr(measures, "ABLATION_ALONE", False)  # the shared forward's order
    got = measures_by_flag(*ablation_case(attn, seed=1), "INTERLEAVED", monkeypatch)
    for layer in range(3):
        assert got[True][layer]["rec_ablation"][0] != 0.0
        for name, value in got[False][layer].items():
            assert torch.equal(got[True][layer][name], value), (layer, name)


@pytest.mark.parametrize("attn", ["ra_v5", "ra_beta", "sdpa_gate"])
def test_the_ablation_alone_gives_the_shared_forwards_values(attn, monkeypatch):
    """`measures.ABLATION_ALONE` (the ablation from a pass of its own, the model's stream
    batched with the ablated ones) gives the shared forward's values: the measures the
    same, rec_ablation within float64 rounding; with some targets ignored and a batch
    without any."""
    got = measures_by_flag(*ablation_case(attn, seed=2), "ABLATION_ALONE", monkeypatch)
    assert got[True].keys() == got[False].keys()
    for layer, named in got[False].items():
        assert named.keys() == got[True][layer].keys()
        for name, value in named.items():
            if name == "rec_ablation":
                assert float(value[0]) != 0.0
                torch.testing.assert_close(got[True][layer][name], value, rtol=1e-9, atol=1e-15)
            else:
                assert torch.equal(got[True][layer][name], value), (layer, name)


def test_the_ablation_alone_keeps_the_measures_forward_dtype(monkeypatch):
    """With `ABLATION_ALONE` the measures keep the evaluation's forward dtype (here bf16
    autocast on the CPU) and equal those of a call without the ablation, while the
    ablation is computed in float32 as always; without it, that call is refused."""
    torch.set_default_dtype(torch.float32)
    model = strong_reciprocal_gpt(T=64).float()
    batches = token_batches(n=1, B=2, T=64, seed=4)
    kw = dict(queries=16, forward_dtype=torch.bfloat16)
    with torch.no_grad():
        monkeypatch.setattr(measures, "ABLATION_ALONE", False)
        with pytest.raises(ValueError, match="ablation"):
            model_measures(model, batches, **kw)
        monkeypatch.setattr(measures, "ABLATION_ALONE", True)
        alone = model_measures(model, batches, **kw)
        plain = model_measures(model, batches, ablation=False, **kw)
        float32 = model_measures(model, batches, queries=16)
    for layer in range(2):
        for name in ("rec_share", "rec_effect"):
            assert torch.equal(alone[layer][name], plain[layer][name])
        got, want = (float(m[layer]["rec_ablation"][0]) for m in (alone, float32))
        assert got == pytest.approx(want, rel=1e-5) and want != 0.0
    cpu = torch.device("cpu")
    assert forward_dtype(cpu, "auto", True) is None  # bf16 only on CUDA, with or without


def test_ablation_is_zero_without_reciprocal_term():
    model, batches = tiny_gpt("ra_v5"), token_batches()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.w_rec.zero_()
        values = model_measures(model, batches)
    for layer in range(2):
        assert float(values[layer]["rec_ablation"][0]) == 0.0
        assert (values[layer]["rec_share"] == 0).all()
    assert "rec_ablation" not in model_measures(model, batches, ablation=False)[0]


# ---------------------------------------------------------------- the cheaper estimate


def test_query_rows_are_spread_evenly():
    rows = query_rows(1024, 256)
    assert len(rows) == 256 and rows[0] == 2 and rows[-1] == 1022
    assert (rows.diff() == 4).all() and float(rows.double().mean()) == 512.0
    assert torch.equal(query_rows(12, 0), torch.arange(12))
    assert torch.equal(query_rows(12, 12), torch.arange(12))
    assert torch.equal(query_rows(12, 99), torch.arange(12))
    rows = query_rows(10, 3)  # strata of 10/3: middles 1.67, 5, 8.33
    assert rows.tolist() == [1, 5, 8]


@pytest.mark.parametrize("name", ["baseline", "ra_v5", "ra_v5_untied", "ra_beta", "sdpa_gate"])
def test_layer_step_is_the_modules_forward_and_its_measures(name):
    """The shared-work step gives the module's own output and the same sums as layer_parts."""
    attn, x = attn_module(name), inputs()
    rows = query_rows(12, 5)
    with torch.no_grad():
        if name == "ra_beta":
            attn.beta.fill_(0.4)
        y, parts = layer_step(attn, x, rows)
        want_y, want = attn(x), layer_parts(attn, x, rows)
    torch.testing.assert_close(y, want_y, rtol=1e-12, atol=1e-14)
    assert set(parts) == set(want)
    for key, value in want.items():
        torch.testing.assert_close(parts[key], value, rtol=1e-12, atol=1e-15)


def strong_reciprocal_gpt(seed=0, T=256):
    """A tiny ra_v5 GPT whose reciprocal term matters: w_rec = 1 and query/key weights
    10x nanoGPT's init, so its logits are O(1) (rec_share ~ 0.2, rec_effect ~ 0.15 nats)."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=T, attn="ra_v5")
    model = GPT(cfg).double().eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.w_rec.fill_(1.0)
            block.attn.W_q.mul_(10.0)
            block.attn.W_k.mul_(10.0)
    return model


def per_head(values, name):
    return torch.cat([values[layer][name] for layer in sorted(values)])


def test_cheaper_estimate_agrees_with_the_full_computation():
    """Stated tolerances (relative, largest over the 4 heads; this model reads rec_share
    about 0.23 and rec_effect about 0.17 nats):
    * a quarter of the query rows (64 of 256, as 256 of GPT-2's 1024) on the same 4
      sequences: within 15% (on this random-token data, model seeds 0-3 give 3-15%);
    * the blocks under bf16 autocast, statistics in float32: within 1% of float32;
    * one sequence, a quarter of the rows, bf16 (the defaults) against all 4 sequences,
      every row, float64: within 25% (seeds 0-3: 6-21%)."""
    model = strong_reciprocal_gpt()
    batches = token_batches(n=1, B=4, T=256, seed=10)
    one = measured_batches(batches, MeasureSettings())  # the defaults: one sequence
    assert len(one) == 1 and one[0][0].shape == (1, 256)
    f32 = copy.deepcopy(model).float()
    with torch.no_grad():
        full = model_measures(model, batches, ablation=False)
        rows = model_measures(model, batches, ablation=False, queries=64)
        plain = model_measures(f32, batches, ablation=False)
        low = model_measures(f32, batches, ablation=False, forward_dtype=torch.bfloat16)
        cheap = model_measures(f32, one, ablation=False, queries=64, forward_dtype=torch.bfloat16)
    for name in ("rec_share", "rec_effect"):
        want = per_head(full, name)
        assert (want > 0.1).all()  # non-negligible
        torch.testing.assert_close(per_head(rows, name), want, rtol=0.15, atol=0)
        torch.testing.assert_close(per_head(low, name), per_head(plain, name), rtol=1e-2, atol=0)
        torch.testing.assert_close(per_head(cheap, name), want, rtol=0.25, atol=0)
        assert per_head(low, name).dtype == torch.float64  # sums pooled in float64
    assert not torch.equal(per_head(low, "rec_share"), per_head(plain, "rec_share"))


def test_cheaper_estimate_reads_exactly_zero_without_reciprocal_term():
    model = strong_reciprocal_gpt()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.w_rec.zero_()
    f32 = copy.deepcopy(model).float()
    one = token_batches(n=1, B=1, T=256, seed=10)
    with torch.no_grad():
        for m, dtype in ((model, None), (f32, None), (f32, torch.bfloat16)):
            values = model_measures(m, one, ablation=False, queries=64, forward_dtype=dtype)
            for layer in range(2):
                assert (values[layer]["rec_share"] == 0).all()
                assert (values[layer]["rec_effect"] == 0).all()


def test_the_shared_ablation_needs_a_float32_forward(monkeypatch):
    """Without `ABLATION_ALONE` the measures and the ablation share one forward: float32."""
    monkeypatch.setattr(measures, "ABLATION_ALONE", False)
    with pytest.raises(ValueError, match="ablation"):
        model_measures(tiny_gpt(), token_batches(n=1), forward_dtype=torch.bfloat16)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert forward_dtype(cpu, "auto", False) is None  # bf16 only on CUDA
    assert forward_dtype(cuda, "float32", False) is None
    assert forward_dtype(cuda, "auto", True) is None


class FakeRecorder:
    def __init__(self):
        self.gate_rows, self.metric_rows = [], []

    def gates(self, step, values):
        self.gate_rows.append((step, values))

    def metric(self, step, name, value, elapsed_s=None):
        self.metric_rows.append((step, name, value))


def test_record_measures_leaves_the_model_as_it_was():
    model = tiny_gpt("sdpa_gate").train()
    batches = token_batches(n=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = [b.clone() for b in model.buffers()]
    rec = FakeRecorder()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        dt = record_measures(model, batches, rec, 0, {"measure_batches": 2, "measure_rows": 2})
        assert torch.backends.cuda.matmul.allow_tf32  # put back after the ablation
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert dt > 0 and model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    for b, saved in zip(model.buffers(), buffers, strict=True):
        assert torch.equal(b, saved)
    [(step, values)] = rec.gate_rows
    assert step == 0 and set(values) == {0, 1}
    assert set(values[0]) == {"gate_mean", "gate_std"} and len(values[0]["gate_mean"]) == 2
    assert rec.metric_rows[0][:2] == (0, "measure_s")


def test_settings_batches_rows_and_ablation_schedule():
    batches = token_batches(n=3, B=4)
    from racli.config import load_config, packaged_config_path

    assert MeasureSettings() == MeasureSettings.from_mapping(None)
    gates = load_config(packaged_config_path()).gates  # ra.yaml's defaults
    assert MeasureSettings() == MeasureSettings.from_mapping(gates.model_dump())
    assert (MeasureSettings().batches, MeasureSettings().rows) == (1, 1)  # one sequence
    assert MeasureSettings().queries == 256 and MeasureSettings().precision == "auto"
    custom = MeasureSettings.from_mapping({"measure_queries": 0, "measure_precision": "float32"})
    assert custom.queries == 0 and custom.precision == "float32"
    for bad in ({"measure_queries": -1}, {"measure_precision": "bf16"}, {"ablation": "x"}):
        with pytest.raises(ValueError):
            MeasureSettings.from_mapping(bad)
    s = MeasureSettings.from_mapping({"measure_batches": 2, "measure_rows": 3, "ablation": "ends"})
    picked = measured_batches(batches, s)  # batches 0 and 2, rows 0, 2 (1.5 rounds) and 3
    assert len(picked) == 2 and picked[0][0].shape == (3, 16)
    assert torch.equal(picked[1][1], batches[2][1][[0, 2, 3]])
    assert torch.equal(picked[0][0], batches[0][0][[0, 2, 3]])
    assert len(measured_batches(batches, MeasureSettings(rows=0))[0][0]) == 4
    assert len(measured_batches(batches, MeasureSettings(batches=5, rows=9))) == 3
    one = measured_batches(batches, MeasureSettings(batches=1, rows=1))
    assert len(one) == 1 and torch.equal(one[0][0], batches[0][0][[0]])
    assert s.ablate_at(0, False) and s.ablate_at(500, True) and not s.ablate_at(100, False)
    assert MeasureSettings(ablation="every").ablate_at(100, False)
    assert not MeasureSettings(ablation="never").ablate_at(0, True)
    rec = FakeRecorder()
    assert record_measures(tiny_gpt(), batches, rec, 5, {"measure_batches": 0}) == 0.0
    assert record_measures(tiny_gpt("baseline"), batches, rec, 5, None) == 0.0
    assert rec.gate_rows == [] and rec.metric_rows == []
    record_measures(tiny_gpt(), batches, rec, 100, s)  # not an end: no ablation
    assert "rec_ablation" not in rec.gate_rows[0][1][0]
    record_measures(tiny_gpt(), batches, rec, 100, s, final=True)
    assert rec.gate_rows[1][1][1]["rec_ablation"] != [0.0]


# ---------------------------------------------------------------- float32 on tensor cores


def as_tf32(t: torch.Tensor) -> torch.Tensor:
    """What a TF32 tensor core reads of float32 t, at its worst: the 13 low mantissa bits
    cut off (truncation; the hardware may round instead, which errs half as much)."""
    return (t.view(torch.int32) & -(1 << 13)).view(torch.float32)


def test_tf32_split_is_exact_and_its_high_part_is_tf32():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(1000, generator=g, dtype=torch.float32) * torch.logspace(
        -20, 20, 1000, dtype=torch.float32
    )
    hi, lo = tf32_split(t)
    assert torch.equal(as_tf32(hi), hi)  # TF32 reads hi exactly
    assert torch.equal(hi + lo, t)  # the split loses nothing
    assert (lo.abs() <= t.abs() * 2.0**-11).all()
    assert torch.equal(tf32_split(-t)[0], -hi)  # rounds by magnitude, symmetric in sign


def test_split_product_on_tf32_reads_is_float32_accurate():
    """The stacked product, with every operand read as a TF32 core reads it, stays within
    2^-20 of |a| |b| (float64 reference), where a plain TF32 product errs by ~1e-4."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(64, 256, generator=g, dtype=torch.float32)
    b = torch.randn(256, 48, generator=g, dtype=torch.float32)
    exact = a.double() @ b.double()
    scale = a.double().abs() @ b.double().abs()
    split = as_tf32(stacked(a, -1, lo_first=False)).double() @ as_tf32(stacked(b, 0, True)).double()
    plain = as_tf32(a).double() @ as_tf32(b).double()
    assert float(((split - exact).abs() / scale).max()) < 2.0**-20
    assert float(((plain - exact).abs() / scale).max()) > 2.0**-13


SPLIT_CASES = [((5, 7), -1), ((5, 7), 1), ((2, 3, 4, 6), -2), ((2, 3, 4, 6), -1),
               ((3, 1), 0), ((1,), 0), ((4, 5), 0), ((2, 1030, 3), 1)]  # fmt: skip


def check_split_kernel(device: str) -> None:
    """The one-launch split writes the same bits as the torch ops, for every dimension,
    both orders and non-contiguous inputs (values from 1e-30 to 1e30, signed)."""
    from racli_models import split32

    g = torch.Generator().manual_seed(0)
    for shape, dim in SPLIT_CASES:
        n = math.prod(shape)
        t = torch.randn(shape, generator=g, dtype=torch.float32)
        t = (t * torch.logspace(-30, 30, n, dtype=torch.float32).reshape(shape)).to(device)
        for source in (t, t.transpose(0, -1).contiguous().transpose(0, -1)):
            for lo_first in (False, True):
                got = split32._stacked_by_kernel(source, dim, lo_first)
                hi, lo = tf32_split(source.contiguous())
                want = torch.cat([hi, lo, hi] if not lo_first else [hi, hi, lo], dim=dim)
                assert got.shape == want.shape and got.is_contiguous()
                assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.gpu
def test_the_split_kernel_writes_the_torch_ops_bits_on_cuda():
    check_split_kernel("cuda")
    from racli_models import split32

    t = torch.randn(64, 96, device="cuda", dtype=torch.float32)
    split32.KERNEL = False
    try:
        ops = stacked(t, -1, False)
    finally:
        split32.KERNEL = True
    assert torch.equal(stacked(t, -1, False), ops)  # stacked() takes the kernel on CUDA


def test_the_split_kernel_in_tritons_interpreter():
    """The same check on the CPU through Triton's interpreter, where Triton is installed
    (CUDA builds of torch ship it; the CPU build does not, and then this skips, but under
    CI, whose .ci/run installs it)."""
    in_triton_interpreter("test_measures", "check_split_kernel('cpu')")


FOLDED_CASES = [  # B, H, n, T, D, d_std, scale of the reciprocal dims
    (2, 3, 5, 37, 16, 12, 1.0), (1, 2, 7, 64, 8, 6, 1e-3), (2, 2, 4, 100, 8, 4, 3.0),
    (1, 1, 3, 16, 4, 2, 0.0), (1, 2, 6, 1030, 8, 6, 0.3),
]  # fmt: skip


def check_folded_kernel(device: str) -> None:
    """The one-kernel row sums give folded_stats' sums as close to float64 as the torch
    float32 statistics do: v_std and v_rec within 1e-6, the KL within 1e-5 (1e-3 where R
    is 1e-3 of S and the KL 1e-7 of it), zero reciprocal dims giving exactly zero."""
    from racli_models import folded_kernel
    from racli_models.measures import QueryRows, folded_stats

    g = torch.Generator().manual_seed(0)
    for B, H, n, T, D, ds, scale in FOLDED_CASES:
        qf = torch.randn(B, H, n, D, generator=g, dtype=torch.float32)
        qf[..., ds:] *= scale
        kf = torch.randn(B, H, T, D, generator=g, dtype=torch.float32)
        rows = torch.sort(torch.randperm(T, generator=g)[:n]).values
        want = folded_stats(qf.double(), kf.double(), ds, QueryRows(rows, T))
        pick = QueryRows(rows, T).pick(D, ds, torch.float32)
        qs = (qf.unsqueeze(2) * pick).reshape(B, H, 2 * n, D)
        terms = (qs @ kf.transpose(-1, -2)).view(B, H, 2, n, T)
        sums = folded_kernel.row_sums(terms.to(device), rows.to(device)).double().cpu()
        a, u = sums[..., 2], sums[..., 3]
        got = {
            "v_std": sums[..., 0].sum((0, 2)),
            "v_rec": sums[..., 1].sum((0, 2)),
            "kl": (a / (1 + u) - torch.log1p(u)).sum((0, 2)),
        }
        for name, bound in (
            ("v_std", 1e-6),
            ("v_rec", 1e-6),
            ("kl", 1e-3 if scale < 0.01 else 1e-5),
        ):
            if scale == 0.0 and name != "v_std":
                assert torch.equal(got[name], torch.zeros_like(got[name]))
                continue
            rel = ((got[name] - want[name]).abs() / want[name].abs()).max()
            assert float(rel) < bound, (B, H, n, T, scale, name, float(rel))


@pytest.mark.gpu
def test_the_folded_stats_kernel_matches_float64_on_cuda():
    check_folded_kernel("cuda")


@pytest.mark.gpu
def test_the_folded_stats_kernel_gives_the_models_measures_on_cuda():
    """With `measures.STATS_KERNEL` on (the default), the measures of a CUDA model (eager,
    then replayed from the CUDA graph) agree with the torch statistics' within float32
    rounding."""
    torch.set_default_dtype(torch.float32)
    model = strong_reciprocal_gpt(T=256).float().cuda()
    batches = [(x.cuda(), y.cuda()) for x, y in token_batches(n=1, B=2, T=256, seed=10)]
    before = measures.STATS_KERNEL
    with torch.no_grad():
        try:
            measures.STATS_KERNEL = False
            want = model_measures(model, batches, ablation=False, queries=64)
            measures.STATS_KERNEL = True
            got = [model_measures(model, batches, ablation=False, queries=64) for _ in range(3)]
        finally:
            measures.STATS_KERNEL = before
    for values in got:
        for layer in range(2):
            for name in ("rec_share", "rec_effect"):
                torch.testing.assert_close(
                    values[layer][name], want[layer][name], rtol=1e-4, atol=0
                )


def test_the_folded_stats_kernel_in_tritons_interpreter():
    """check_folded_kernel on the CPU through Triton's interpreter, where Triton is
    installed (skipped with the CPU build of torch, which does not ship it)."""
    in_triton_interpreter("test_measures", "check_folded_kernel('cpu')")


def test_the_split_mode_computes_the_same_measures():
    """The split GEMMs, run on the CPU (no TF32 there: only the plumbing differs), give the
    float32 measures and ablation within float32's rounding (the ablation: within 1e-7,
    its resolution 1e-5)."""
    torch.set_default_dtype(torch.float32)
    model = strong_reciprocal_gpt(T=64).float()
    batches = token_batches(n=1, B=2, T=64, seed=4)
    with torch.no_grad():
        plain = model_measures(model, batches, queries=16)
        with float32_on_tensor_cores(devices=("cpu",)):
            split = model_measures(model, batches, queries=16)
    for layer in range(2):
        for name in ("rec_share", "rec_effect"):
            torch.testing.assert_close(split[layer][name], plain[layer][name], rtol=1e-5, atol=0)
        got, want = (float(m[layer]["rec_ablation"][0]) for m in (split, plain))
        assert abs(got - want) < 1e-7 and want != 0.0


# ---------------------------------------------------------------- training is unchanged


def _train_losses(tmp_path, name, measure_batches):
    from racli.config import load_config, packaged_config_path
    from racli.store.engine import open_store
    from racli.training import load_data, spec_from_config, train

    torch.set_default_dtype(torch.float32)
    cfg = load_config(packaged_config_path())
    sets = [
        "model.n_layer=2",
        "model.n_head=2",
        "model.n_embd=32",
        "model.block_size=32",
        "train.batch_size=4",
        "train.eval_interval=4",
        "train.eval_batches=2",
        "train.final_eval_batches=2",
        "train.log_interval=2",
    ]
    measures = {"measure_batches": measure_batches, "ablation": "every"}
    cfg = cfg.model_copy(update={"gates": cfg.gates.model_copy(update=measures)})
    spec = spec_from_config(
        cfg, attn="ra_v5", steps=8, seed=3, device="cpu", compile=False, overrides=sets
    )
    store = open_store(str(tmp_path / f"{name}.db"))
    result = train(spec, store, dataset=load_data(spec))
    store.close()
    with sqlite3.connect(tmp_path / f"{name}.db") as conn:
        losses = conn.execute(
            "SELECT step, name, value FROM metrics WHERE name IN "
            "('train_loss', 'val_loss') ORDER BY step, name"
        ).fetchall()
        gates = conn.execute("SELECT DISTINCT step, name FROM gate_values").fetchall()
        cost = conn.execute("SELECT step, value FROM metrics WHERE name = 'measure_s'").fetchall()
    return result, losses, set(gates), cost


@pytest.mark.slow
def test_training_losses_identical_with_and_without_measures(tmp_path):
    r1, with_m, gates_m, cost = _train_losses(tmp_path, "with", 2)
    r0, without, gates_0, cost0 = _train_losses(tmp_path, "without", 0)
    assert with_m == without and len(with_m) >= 6
    assert r1.val_loss == r0.val_loss and r1.train_loss == r0.train_loss
    assert {(s, n) for s, n in gates_m if n == "rec_share"} == {
        (0, "rec_share"),
        (4, "rec_share"),
        (8, "rec_share"),
    }
    assert (8, "rec_ablation") in gates_m and (4, "rec_ablation") in gates_m
    assert not any(n.startswith("rec_") for _, n in gates_0) and cost0 == []
    assert [s for s, _ in cost] == [0, 4, 8]


@pytest.mark.gpu
@pytest.mark.parametrize("alone", [False, True])
def test_cuda_measures_match_cpu_and_leave_the_model_alone(alone, monkeypatch):
    """On CUDA the composed weight comes from the fused kernel: the measures agree with a
    float64 CPU computation, and record_measures changes nothing under bf16 training flags.
    Step 0 (an end, with the ablation): with one float32 forward for both (`ABLATION_ALONE`
    off) every measure within 2e-3 of float64; with the ablation's own pass (the default)
    rec_ablation so, rec_share and rec_effect those of the bf16 forward of any evaluation
    (a step between gives them bit for bit)."""
    monkeypatch.setattr(measures, "ABLATION_ALONE", alone)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=64, block_size=32, attn="ra_v5")
    model = GPT(cfg)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.w_rec.fill_(0.8)
    batches = token_batches(n=2, B=3, T=32)
    want = model_measures(copy.deepcopy(model).double(), batches)
    gpu = model.cuda().train()
    state = {k: v.clone() for k, v in gpu.state_dict().items()}
    rec = FakeRecorder()
    cuda_batches = [(x.cuda(), y.cuda()) for x, y in batches]
    settings = {"measure_batches": 2, "measure_rows": 0}
    with torch.autocast("cuda", dtype=torch.bfloat16):  # the trainer's context
        record_measures(gpu, cuda_batches, rec, 0, settings)
        record_measures(gpu, cuda_batches, rec, 100, settings)  # a step between
    got, between = rec.gate_rows[0][1], rec.gate_rows[1][1]
    for layer in range(2):
        for name in ("rec_share", "rec_effect", "rec_ablation"):
            if alone and name != "rec_ablation":
                assert got[layer][name] == between[layer][name]
            else:
                assert got[layer][name] == pytest.approx(
                    want[layer][name].tolist(), rel=2e-3, abs=1e-6
                )
    assert gpu.training and all(torch.equal(v, state[k]) for k, v in gpu.state_dict().items())


@pytest.mark.gpu
def test_cuda_bf16_forward_measures_match_float64():
    """Every evaluation's measures on CUDA (defaults: bf16 forward, float32 statistics
    without TF32) agree with float64 on the CPU over the same rows and sequence."""
    torch.set_default_dtype(torch.float32)
    model = strong_reciprocal_gpt(T=256).float()
    batches = token_batches(n=1, B=4, T=256, seed=10)
    s = MeasureSettings(queries=64)
    want = model_measures(
        copy.deepcopy(model).double(), measured_batches(batches, s), ablation=False, queries=64
    )
    gpu = model.cuda()
    rec = FakeRecorder()
    cuda_batches = [(x.cuda(), y.cuda()) for x, y in batches]
    record_measures(gpu, cuda_batches, rec, 100, s)  # not an end: no ablation, bf16 forward
    got = rec.gate_rows[0][1]
    for layer in range(2):
        assert "rec_ablation" not in got[layer]
        for name in ("rec_share", "rec_effect"):
            assert got[layer][name] == pytest.approx(want[layer][name].tolist(), rel=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("alone", [False, True])
def test_cuda_ablation_on_tensor_cores_resolves_1e5(alone, monkeypatch):
    """The ablation reads loss changes of 1e-5 (relative): on CUDA, with its float32
    products split over TF32 tensor cores (the default), every layer's rec_ablation
    stays within 1e-6 of float64, and so do plain float32's; plain TF32 errs more.
    Both with the shared forward and with the ablation's own pass (`ABLATION_ALONE`)."""
    monkeypatch.setattr(measures, "ABLATION_ALONE", alone)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=512, n_layer=4, n_head=4, n_embd=256, block_size=256, attn="ra_v5")
    model = GPT(cfg).cuda().eval()  # w_rec at its init, 0.1: a small effect, as trained
    batches = [(x.cuda(), y.cuda()) for x, y in token_batches(n=2, B=2, T=256, seed=7)]
    with torch.no_grad():
        want = model_measures(copy.deepcopy(model).double(), batches)
    errors = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, split, allow in (("split", True, False), ("float32", False, False),
                                   ("tf32", False, True)):  # fmt: skip
            measures.TENSOR_CORES = split
            torch.backends.cuda.matmul.allow_tf32 = allow
            with torch.no_grad():
                got = model_measures(model, batches)
            errors[name] = max(
                abs(float(got[i]["rec_ablation"][0]) - float(want[i]["rec_ablation"][0]))
                for i in range(4)
            )
    finally:
        measures.TENSOR_CORES = True
        torch.backends.cuda.matmul.allow_tf32 = tf32
    print("largest |rec_ablation - float64| per precision:", errors)
    assert errors["split"] < 1e-6 and errors["float32"] < 1e-6
    assert errors["tf32"] > errors["split"]


@pytest.mark.gpu
def test_cuda_ablation_alone_at_an_end_measures_as_every_evaluation(monkeypatch):
    """With `ABLATION_ALONE`, `record_measures` at an end (step 0) records the measures of
    the bf16 forward every evaluation uses (replayed from its CUDA graph: the same values
    as at a step between) and rec_ablation within 1e-6 of float64."""
    monkeypatch.setattr(measures, "ABLATION_ALONE", True)
    torch.set_default_dtype(torch.float32)
    model = strong_reciprocal_gpt(T=256).float()
    batches = token_batches(n=1, B=2, T=256, seed=10)
    s = MeasureSettings(queries=64)
    with torch.no_grad():
        want = model_measures(
            copy.deepcopy(model).double(), measured_batches(batches, s), queries=64
        )
    gpu = model.cuda()
    cuda_batches = [(x.cuda(), y.cuda()) for x, y in batches]
    rec = FakeRecorder()
    record_measures(gpu, cuda_batches, rec, 100, s)  # a step between: no ablation
    record_measures(gpu, cuda_batches, rec, 0, s)  # an end: with the ablation
    between, end = rec.gate_rows[0][1], rec.gate_rows[1][1]
    for layer in range(2):
        for name in ("rec_share", "rec_effect"):
            assert end[layer][name] == between[layer][name]
        got, ref = end[layer]["rec_ablation"][0], float(want[layer]["rec_ablation"][0])
        assert abs(got - ref) < 1e-6 and ref != 0.0


@pytest.mark.gpu
def test_cuda_graphs_of_alternating_settings_replay_what_eager_computes():
    """Two settings measured in turn (each captured into its own CUDA graph at its first
    call, with the allocator's cache emptied between calls) keep giving what an eager
    run gives: a graph reads nothing that a later call frees."""
    torch.set_default_dtype(torch.float32)
    model = strong_reciprocal_gpt(T=256).float().cuda()
    batches = [(x.cuda(), y.cuda()) for x, y in token_batches(n=1, B=2, T=256, seed=3)]
    settings = [dict(queries=64, precision="auto"), dict(queries=0, precision="float32")]
    measures.GRAPH = False
    try:
        want = [measure(model, batches, ablation=False, **s) for s in settings]
    finally:
        measures.GRAPH = True
    for _ in range(3):
        for s, expected in zip(settings, want):
            got = measure(model, batches, ablation=False, **s)
            torch.cuda.empty_cache()
            for layer in (0, 1):
                for name in ("rec_share", "rec_effect"):
                    assert got[layer][name] == pytest.approx(expected[layer][name], rel=1e-5)
    assert measures.GRAPH_ERROR is None


def test_a_nested_split_block_shares_the_outer_blocks_weights():
    """The ablation's forward and its ablated passes split each weight once: a block
    opened inside another (same devices) adds no block of its own; one for other
    devices leaves the outer one routing its devices."""
    from racli_models import split32

    w = torch.randn(8, 4, dtype=torch.float32)  # (this file's default dtype is float64)
    x = torch.randn(3, 4, dtype=torch.float32)
    with split32.float32_on_tensor_cores(devices=("cpu",)):
        outer = split32._ACTIVE[-1]
        split32.linear(x, w)
        with split32.float32_on_tensor_cores(devices=("cpu",)):
            assert split32._ACTIVE == [outer]
            y = split32.linear(x, w)
        with split32.float32_on_tensor_cores(devices=("cuda",)):
            assert len(split32._ACTIVE) == 2
            split32.linear(x, w)
        assert len(outer.weights) == 1  # split once, used three times
    assert split32._ACTIVE == []
    assert torch.allclose(y, x @ w.T, atol=1e-6)


@pytest.mark.slow
def test_the_measures_leave_a_compiled_forward_without_recompiling(monkeypatch):
    """The split block gives the model's linear layers an instance forward for its duration
    only: the compiled forward of the model, run before and after the measures with the
    ablation, is not compiled again (a guard that failed would recompile it at every
    evaluation)."""
    import torch._dynamo

    from racli_models import split32

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=32, block_size=16, attn="ra_v5")
    raw = GPT(cfg).float().eval()
    fwd = torch.compile(raw)
    x = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        before = fwd(x, x)[1]
        with split32.float32_on_tensor_cores(devices=("cpu",)):
            model_measures(raw, [(x, x)], queries=8)
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
        after = fwd(x, x)[1]
    assert torch.equal(before, after)


@pytest.mark.parametrize("alone", [False, True])
@pytest.mark.parametrize("attn", ["ra_v5", "ra_v5_untied", "ra_beta", "sdpa_gate", "baseline"])
def test_the_split_block_routes_every_product_of_the_measures(attn, alone, monkeypatch):
    """Inside `model_measures` with the ablation (on the CPU, the split routed there), every
    float32 F.linear and matmul that reaches torch has its inner dimension tripled (the
    stacked [hi | lo | hi] operand): no product of any variant runs unsplit. Afterwards
    the model's linear layers are as before."""
    from torch.overrides import TorchFunctionMode

    from racli_models import split32

    monkeypatch.setattr(measures, "ABLATION_ALONE", alone)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=16, attn=attn)
    model = GPT(cfg).float().eval()
    batches = token_batches(n=1, B=2, T=16)
    seen = []

    class Products(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in (torch.nn.functional.linear, torch.matmul, torch.Tensor.matmul,
                        torch.Tensor.__matmul__):  # fmt: skip
                seen.append(args[0].shape[-1])
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), split32.float32_on_tensor_cores(devices=("cpu",)), Products():
        model_measures(model, batches, queries=8)
    plain = {16, 32, 128}  # head_dim, n_embd, 4 n_embd
    assert seen and not plain & set(seen), sorted(set(seen))
    assert all("forward" not in m.__dict__ for m in model.modules())
