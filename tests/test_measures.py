"""Reciprocity measures (racli_models.measures) in float64 against explicit
references, their invariances, and their recording during training
(racli.training.reciprocity): no change to the model or to training."""

from __future__ import annotations

import copy
import dataclasses
import math
import sqlite3

import pytest
import torch
import torch.nn.functional as F

from racli.training.reciprocity import MeasureSettings, measured_batches, record_measures
from racli_models import GPT, GPTConfig
from racli_models.attention import build_attention
from racli_models.measures import head_measures, model_measures, score_terms


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


@pytest.mark.parametrize("attn", ["ra_v5", "ra_v5_untied", "ra_beta"])
def test_ablation_equals_setting_the_gate_to_zero(attn):
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
    cfg = dataclasses.replace(
        cfg, gates=dataclasses.replace(cfg.gates, measure_batches=measure_batches, ablation="every")
    )
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
def test_cuda_measures_match_cpu_and_leave_the_model_alone():
    """On CUDA the composed weight comes from the fused kernel: the measures agree with a
    float64 CPU computation, and record_measures changes nothing under bf16 training flags."""
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
    with torch.autocast("cuda", dtype=torch.bfloat16):  # the trainer's context
        record_measures(gpu, cuda_batches, rec, 0, {"measure_batches": 2, "measure_rows": 0})
    got = rec.gate_rows[0][1]
    for layer in range(2):
        for name in ("rec_share", "rec_effect", "rec_ablation"):
            assert got[layer][name] == pytest.approx(want[layer][name].tolist(), rel=2e-3, abs=1e-6)
    assert gpu.training and all(torch.equal(v, state[k]) for k, v in gpu.state_dict().items())
