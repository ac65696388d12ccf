"""The chunked linear cross-entropy (racli_models.loss) against the plain loss
F.cross_entropy(h @ W.T): value and gradients in float64 to 1e-10, float32 / bfloat16
/ CPU autocast close, the GPT with `fused_loss` on and off, torch.compile, a training
run with the option, and (with CUDA) the GPT-2 vocabulary in bfloat16."""

from __future__ import annotations

import sqlite3

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from racli.cli import app
from racli_models import GPT, GPTConfig, linear_cross_entropy
from racli_models.loss import default_chunk_rows

N, C, V = 45, 12, 37  # rows, width, vocabulary


def inputs(dtype=torch.float64, device="cpu", n=N, c=C, v=V, seed=0):
    """h (n, c), weight (v, c) requiring grad, targets (n,) with every 4th row ignored (-1)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, c, generator=g, dtype=torch.float64)
    w = torch.randn(v, c, generator=g, dtype=torch.float64) / c**0.5
    t = torch.randint(0, v, (n,), generator=g)
    t[::4] = -1
    h, w = (x.to(device=device, dtype=dtype).requires_grad_() for x in (h, w))
    return h, w, t.to(device)


def plain(h, w, t):
    """The model's plain loss: logits, then F.cross_entropy (mean, -1 ignored)."""
    return F.cross_entropy(F.linear(h, w), t, ignore_index=-1)


def loss_and_grads(fn, h, w, t, scale=1.0):
    loss = fn(h, w, t)
    gh, gw = torch.autograd.grad(loss * scale, (h, w))
    return loss.detach(), gh, gw


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# chunks of one row, dividing N (5, 15), not dividing N (7), N itself, and larger than N
@pytest.mark.parametrize("chunk_rows", [1, 5, 7, 15, N, 1000])
def test_float64_loss_and_gradients_equal_the_plain_loss(chunk_rows):
    h, w, t = inputs()
    ref = loss_and_grads(plain, h, w, t, scale=2.5)  # an upstream gradient other than 1
    out = loss_and_grads(
        lambda *a: linear_cross_entropy(*a, chunk_rows=chunk_rows), h, w, t, scale=2.5
    )
    assert out[0].dtype == torch.float64
    for got, want in zip(out, ref):
        assert max_err(got, want) < 1e-10


def test_ignored_rows_get_no_gradient_and_other_ignore_index():
    h, w, t = inputs()
    _, gh, _ = loss_and_grads(lambda *a: linear_cross_entropy(*a, chunk_rows=4), h, w, t)
    assert (gh[t == -1] == 0).all() and (gh[t != -1] != 0).any()
    t2 = torch.where(t == -1, 5, t)  # ignore class 5 instead
    ref = F.cross_entropy(F.linear(h, w), t2, ignore_index=5)
    assert max_err(linear_cross_entropy(h, w, t2, ignore_index=5), ref) < 1e-10


def test_without_gradients_only_the_loss():
    h, w, t = inputs()
    ref = plain(h, w, t)
    with torch.no_grad():
        assert max_err(linear_cross_entropy(h, w, t, chunk_rows=6), ref) < 1e-10
    # only the weight requires grad: h gets none, the weight's gradient is the plain one
    hd = h.detach()
    (gw,) = torch.autograd.grad(linear_cross_entropy(hd, w, t, chunk_rows=6), (w,))
    (want,) = torch.autograd.grad(plain(hd, w, t), (w,))
    assert max_err(gw, want) < 1e-10


def test_float32_and_bfloat16_are_close():
    h, w, t = inputs(torch.float32)
    ref = loss_and_grads(plain, h, w, t)
    out = loss_and_grads(lambda *a: linear_cross_entropy(*a, chunk_rows=7), h, w, t)
    assert out[0].dtype == torch.float32
    assert abs(out[0] - ref[0]).item() < 1e-5
    assert rel_err(out[1], ref[1]) < 1e-5 and rel_err(out[2], ref[2]) < 1e-5
    # bfloat16 inputs (logits rounded to bfloat16, the loss in float32) against the float64
    # loss of the same values
    hb, wb, _ = inputs(torch.bfloat16)
    h64, w64 = (x.detach().double().requires_grad_() for x in (hb, wb))
    ref = loss_and_grads(plain, h64, w64, t)
    out = loss_and_grads(lambda *a: linear_cross_entropy(*a, chunk_rows=7), hb, wb, t)
    assert out[0].dtype == torch.float32 and out[1].dtype == out[2].dtype == torch.bfloat16
    assert abs(out[0] - ref[0]).item() < 1e-2
    assert rel_err(out[1], ref[1]) < 2e-2 and rel_err(out[2], ref[2]) < 2e-2


def test_cpu_bf16_autocast_matches_the_plain_loss_under_autocast():
    h, w, t = inputs(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = loss_and_grads(plain, h, w, t)
        out = loss_and_grads(lambda *a: linear_cross_entropy(*a, chunk_rows=7), h, w, t)
    assert out[0].dtype == ref[0].dtype == torch.float32
    assert out[1].dtype == out[2].dtype == torch.float32  # grads in the parameters' dtype
    assert abs(out[0] - ref[0]).item() < 1e-4  # both round the logits to bfloat16 alike
    assert rel_err(out[1], ref[1]) < 1e-2 and rel_err(out[2], ref[2]) < 1e-2


def test_bad_arguments():
    h, w, t = inputs()
    with pytest.raises(ValueError, match="chunk_rows"):
        linear_cross_entropy(h, w, t, chunk_rows=0)
    with pytest.raises(ValueError, match="expected h"):
        linear_cross_entropy(h, w, t[:-1])
    assert default_chunk_rows(50304) == 1334 and default_chunk_rows(10**9) == 1


def test_saves_no_logits_for_backward():
    """What autograd keeps for the backward pass: N x V logits for the plain loss, none here."""
    h, w, t = inputs(torch.float32, n=256, c=8, v=512)

    def saved_elements(fn) -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel()) or x, id):
            fn(h, w, t)
        return max(sizes)

    assert saved_elements(plain) >= 256 * 512
    assert saved_elements(lambda *a: linear_cross_entropy(*a, chunk_rows=16)) == 512 * 8


# ---------------------------------------------------------------- the GPT with fused_loss


def gpt_pair(dtype=torch.float32, attn="ra_v5"):
    """The same tiny GPT (same seed, same weights) with the plain and the fused loss."""
    kw = dict(vocab_size=61, n_layer=2, n_head=2, n_embd=16, block_size=12, attn=attn)
    models = [GPT(GPTConfig(fused_loss=f, **kw), seed=3).to(dtype) for f in (False, True)]
    idx = torch.randint(0, 61, (3, 13), generator=torch.Generator().manual_seed(1))
    return models, idx[:, :-1], idx[:, 1:]


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters()}


def test_gpt_fused_loss_same_loss_and_parameter_gradients():
    (off, on), x, y = gpt_pair(torch.float64)
    y = y.clone()
    y[0, :4] = -1  # some positions without a target
    logits, loss_off = off(x, y)
    none, loss_on = on(x, y)
    assert logits.shape == (3, 12, 61) and none is None  # no full logits with the fused loss
    assert on(x)[0].shape == (3, 12, 61)  # without targets: logits as before
    loss_off.backward()
    loss_on.backward()
    assert abs(loss_on - loss_off).item() < 1e-10
    g_off, g_on = grads(off), grads(on)
    assert on.lm_head.weight is on.transformer.wte.weight  # tied: one gradient from both uses
    assert g_on.keys() == g_off.keys()
    for name, g in g_off.items():
        assert max_err(g_on[name], g) < 1e-10, name


def test_gpt_fused_loss_under_cpu_bf16_autocast():
    (off, on), x, y = gpt_pair(torch.float32)
    losses = []
    for m in (off, on):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = m(x, y)
        loss.backward()
        losses.append(loss)
    assert losses[0].dtype == losses[1].dtype == torch.float32
    assert abs(losses[1] - losses[0]).item() < 1e-3
    for name, g in grads(off).items():
        assert rel_err(grads(on)[name], g) < 2e-2, name


@pytest.mark.slow
def test_gpt_fused_loss_under_torch_compile():
    """torch.compile (inductor, CPU) of the fused-loss GPT: same loss and gradients as eager."""
    (_, eager), x, y = gpt_pair(torch.float32, attn="baseline")
    compiled_model = GPT(eager.config, seed=3)
    compiled = torch.compile(compiled_model, dynamic=False)
    _, loss_e = eager(x, y)
    _, loss_c = compiled(x, y)
    loss_e.backward()
    loss_c.backward()
    assert abs(loss_c - loss_e).item() < 1e-5
    for name, g in grads(eager).items():
        assert rel_err(grads(compiled_model)[name], g) < 1e-4, name


@pytest.mark.slow
def test_gpt_fused_loss_under_torch_compile_and_bf16_autocast():
    """Dynamo + AOT autograd (no code generation, so quick) under CPU bf16 autocast, as a
    CUDA run compiles and runs the model: same loss and gradients as the plain loss."""
    (off, on), x, y = gpt_pair(torch.float32, attn="baseline")
    compiled = torch.compile(on, backend="aot_eager", dynamic=False)
    losses = []
    for m in (off, compiled):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = m(x, y)
        loss.backward()
        losses.append(loss)
    assert abs(losses[1] - losses[0]).item() < 1e-3
    for name, g in grads(off).items():
        assert rel_err(grads(on)[name], g) < 2e-2, name


# ---------------------------------------------------------------- ra train with the option


@pytest.mark.slow
def test_train_with_fused_loss_records_the_option(tmp_path):
    db = tmp_path / "ra.db"
    args = ["train", "--db", db, "--attn", "ra_v5", "--steps", 3, "--device", "cpu"]
    args += ["--no-compile", "--model", "tiny"]
    small = ["model.n_embd=32", "model.block_size=32", "train.batch_size=4"]
    small += ["train.eval_batches=1", "train.final_eval_batches=1", "train.log_interval=1"]
    sets = [a for item in small for a in ("--set", item)]
    on = CliRunner().invoke(app, [str(a) for a in [*args, *sets, "--set", "model.fused_loss=true"]])
    assert on.exit_code == 0, on.stderr
    off = CliRunner().invoke(app, [str(a) for a in [*args, *sets]])
    assert off.exit_code == 0, off.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT status, json_extract(config, '$.model.fused_loss'), config_hash, val_loss "
            "FROM runs ORDER BY id"
        ).fetchall()
    (status_on, fused_on, hash_on, loss_on), (status_off, fused_off, hash_off, loss_off) = rows
    assert status_on == status_off == "finished"
    assert fused_on == 1 and fused_off is None  # recorded only when on
    assert hash_on != hash_off
    assert abs(loss_on - loss_off) < 1e-3  # same seed, same batches: the same training


def test_recorded_config_holds_the_option_only_when_on_and_survives_resume():
    from racli import training
    from racli.config import load_config, packaged_config_path
    from racli.training.datasets import load_dataset

    cfg = load_config(packaged_config_path())
    data = load_dataset(None, val_fraction=0.1, block_size=32)
    configs = []
    for extra in ([], ["model.fused_loss=true"]):
        spec = training.spec_from_config(
            cfg, attn="ra_v5", steps=2, device="cpu", compile=False,
            overrides=["model.preset=tiny", "model.block_size=32", *extra],
        )  # fmt: skip
        config = training.run_config(spec, data)
        again = training.run_config(training.spec_from_run_config(config), data)
        assert again == config
        configs.append(config["model"])
    assert "fused_loss" not in configs[0] and configs[1]["fused_loss"] is True
    assert {**configs[0], "fused_loss": True} == configs[1]


def test_bad_fused_loss_value_is_one_line_exit_2(tmp_path):
    res = CliRunner().invoke(
        app,
        ["train", "--db", str(tmp_path / "ra.db"), "--attn", "baseline", "--steps", "1",
         "--device", "cpu", "--set", "model.fused_loss=maybe"],
    )  # fmt: skip
    assert res.exit_code == 2 and "model.fused_loss" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "ra.db").exists()


# ---------------------------------------------------------------- CUDA, GPT-2 vocabulary


@pytest.mark.gpu
def test_cuda_bf16_gpt2_vocab_matches_the_plain_loss_with_less_memory():
    """B*T = 8192 rows of width 768 against V = 50304 under bf16 autocast, as `ra train` runs
    GPT-2 on CUDA. Tolerances: the loss within 2e-3 (both round the logits to bfloat16; the
    GEMMs of different shapes may round differently), the gradients within 1% relative
    (norm); and the fused loss's peak memory under a third of the plain one's."""
    dev = torch.device("cuda")
    h, w, t = inputs(torch.float32, device=dev, n=8192, c=768, v=50304)
    results, peaks = [], []
    for fn in (plain, linear_cross_entropy):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            results.append(loss_and_grads(fn, h, w, t))
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    (loss_p, gh_p, gw_p), (loss_f, gh_f, gw_f) = results
    assert loss_f.dtype == loss_p.dtype == torch.float32
    assert abs(loss_f - loss_p).item() < 2e-3
    assert rel_err(gh_f, gh_p) < 1e-2 and rel_err(gw_f, gw_p) < 1e-2
    assert peaks[1] < peaks[0] / 3, peaks


# ---------------------------------------------------------------- CUDA: the one-pass kernel


def test_kernel_settings_hold_inside_their_block_only():
    from racli_models import loss as L

    before = {n: getattr(L, f"CE_{n.upper()}") for n in L.SETTINGS}
    with L.settings(block=1024, warps=4, reverse=False, evict=False, programs_per_sm=2):
        assert (L.CE_BLOCK, L.CE_WARPS, L.CE_REVERSE, L.CE_EVICT, L.CE_PROGRAMS_PER_SM) == (
            1024, 4, False, False, 2,
        )  # fmt: skip
        with pytest.raises(ValueError, match="block=2.0: one of block \\(int\\)"):
            with L.settings(block=2.0):
                pass
    assert {n: getattr(L, f"CE_{n.upper()}") for n in L.SETTINGS} == before


@pytest.mark.gpu
@pytest.mark.parametrize("setting", [(False, False, 0), (True, True, 0), (True, False, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernel_matches_the_float64_loss(dtype, setting, monkeypatch):
    """`lm_head_loss` (GEMM, Triton kernel, backward GEMMs) against the float64 loss of the
    same (rounded) inputs, V off powers of two and off the kernel's block, ignored rows,
    an upstream gradient other than 1; the gradient buffer poisoned first. For the kernel's
    settings (reverse, evict, programs_per_sm): the default and others `launch_ce` takes."""
    from racli_models import loss as L

    for name, value in zip(("CE_REVERSE", "CE_EVICT", "CE_PROGRAMS_PER_SM"), setting):
        monkeypatch.setattr(L, name, value)

    dev = torch.device("cuda")
    h, w, t = inputs(dtype, device=dev, n=300, c=64, v=5003)
    h64, w64 = (x.detach().double().requires_grad_() for x in (h, w))
    ref = loss_and_grads(plain, h64, w64, t, scale=2.5)
    real_empty = torch.empty_like
    try:
        torch.empty_like = lambda x, **kw: real_empty(x, **kw).fill_(float("nan"))
        loss, logits = L.lm_head_loss(h, w, t)
    finally:
        torch.empty_like = real_empty
    gh, gw = torch.autograd.grad(loss * 2.5, (h, w))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert loss.dtype == torch.float32 and not logits.requires_grad
    assert abs(loss.item() - ref[0].item()) < (1e-5 if dtype == torch.float32 else 1e-2)
    assert rel_err(gh, ref[1]) < tol and rel_err(gw, ref[2]) < tol
    assert (gh[t == -1] == 0).all()
    with torch.no_grad():
        assert abs(L.lm_head_loss(h, w, t)[0].item() - ref[0].item()) < tol


@pytest.mark.gpu
def test_cuda_gpt_uses_the_kernel_and_matches_the_plain_path():
    """The GPT on CUDA (kernel) against the same GPT with the kernel off (F.cross_entropy),
    under bf16 autocast: loss and gradients close; fused_loss only drops the logits."""
    from racli_models import loss as L

    kw = dict(vocab_size=301, n_layer=2, n_head=2, n_embd=32, block_size=16, attn="ra_v5")
    idx = torch.randint(0, 301, (4, 17), generator=torch.Generator().manual_seed(1)).cuda()
    x, y = idx[:, :-1], idx[:, 1:].clone()
    y[0, :5] = -1
    results = []
    for kernel, fused in ((False, False), (True, False), (True, True)):
        L.KERNEL = kernel
        try:
            m = GPT(GPTConfig(fused_loss=fused, **kw), seed=3).cuda()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits, loss = m(x, y)
            loss.backward()
        finally:
            L.KERNEL = True
        assert (logits is None) == fused
        results.append((loss.detach(), grads(m)))
    (loss0, g0), *rest = results
    for loss, g in rest:
        assert abs(loss - loss0).item() < 2e-3
        for name, ref in g0.items():
            assert rel_err(g[name], ref) < 2e-2, name


def _graph_against_plain(attn: str, reduce_for=None) -> None:
    """TrainStep replaying one CUDA graph against the same step launched from Python:
    same losses for 6 steps (the lr changed between them), same weights after.
    `reduce_for(params)`: the step's `reduce`, made anew for each."""
    from racli_models.step import TrainStep

    kw = dict(vocab_size=301, n_layer=2, n_head=2, n_embd=32, block_size=16, attn=attn)
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, 301, (8, 17), generator=g).cuda() for _ in range(6)]
    out = []
    for graph in (False, True):
        m = GPT(GPTConfig(**kw), seed=3).cuda()
        opt = m.configure_optimizer(0.1, 1e-3, (0.9, 0.95), fused=True)
        params = [p for p in m.parameters() if p.requires_grad]
        step = TrainStep(
            m, opt, micro=4, clip=1.0, graph=graph,
            autocast=lambda: torch.autocast("cuda", dtype=torch.bfloat16),
            reduce=reduce_for(params) if reduce_for is not None else None,
        )  # fmt: skip
        losses = []
        for i, b in enumerate(batches):
            step.set_lr(1e-3 * (1 - i / 10))
            losses.append(step(b[:, :-1], b[:, 1:]).item())
        assert (step._graph is not None) == graph, step.graph_error
        out.append((losses, [p.detach().clone() for p in m.parameters()]))
    (l0, p0), (l1, p1) = out
    assert max(abs(a - b) for a, b in zip(l0, l1)) < 1e-4
    for a, b in zip(p0, p1):
        assert rel_err(b, a) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("attn", ["baseline", "ra_v5"])
def test_cuda_graph_step_trains_like_the_plain_step(attn):
    _graph_against_plain(attn)


@pytest.mark.gpu
def test_cuda_graph_step_holds_the_nccl_all_reduce_of_grad_mean(tmp_path):
    """`train.grad_reduce: step` on CUDA: the step with GradMean's all-reduce (NCCL, a group
    of one process here, the reduction forced on) captured in its CUDA graph trains like
    the same step launched from Python."""
    import types

    import torch.distributed as dist

    from racli.training.distributed import DistInfo, GradMean

    if dist.is_initialized():
        pytest.skip("a process group exists already")
    dist.init_process_group(
        "nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1,
        device_id=torch.device("cuda", torch.cuda.current_device()),
    )  # fmt: skip

    def reduce_for(params):
        mean = GradMean(params, DistInfo())
        mean.info = types.SimpleNamespace(enabled=True, world_size=1)  # all-reduce anyway
        return mean

    try:
        _graph_against_plain("ra_v5", reduce_for)
    finally:
        dist.destroy_process_group()


class _WritesLikeAGraph:
    """A replay that changes the weights the way a CUDA graph does: in place, through
    memory autograd does not watch (`.data`), so no version counter moves by itself."""

    def __init__(self, params):
        self.params = params

    def replay(self):
        with torch.no_grad():
            for p in self.params:
                p.data.mul_(0.5).add_(0.01)


@pytest.mark.parametrize("attn", ["ra_v5", "ra_v5_untied"])
def test_a_replayed_step_leaves_no_stale_composed_weight(attn):
    """RA's composed weight is cached on the parameters' versions for eager no-grad
    forwards (evaluation, the measures); a replayed step must move them, or evaluations
    and the ablation after it read the weights as they were before."""
    from racli_models.step import TrainStep

    kw = dict(vocab_size=61, n_layer=2, n_head=2, n_embd=32, block_size=16, attn=attn)
    m = GPT(GPTConfig(**kw), seed=3).eval()
    x = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(1))
    opt = m.configure_optimizer(0.1, 1e-3, (0.9, 0.95))
    step = TrainStep(m, opt, graph=False)
    with torch.no_grad():
        m(x)  # caches the composed weight of these parameters
    step.graph_on, step._graph = True, _WritesLikeAGraph(step.params)
    step._x, step._y, step._loss = x.clone(), x.clone(), torch.zeros(())
    step(x, x)
    with torch.no_grad():
        cached, _ = m(x)
        fresh = GPT(GPTConfig(**kw), seed=3).eval()
        fresh.load_state_dict(m.state_dict())
        want, _ = fresh(x)
    assert torch.equal(cached, want)


@pytest.mark.gpu
def test_ablation_after_replayed_steps_equals_setting_the_gate_to_zero():
    """On CUDA, after steps replayed as one CUDA graph: the eager evaluation and the
    ablation read the trained weights (each layer's ablation equals the loss with that
    layer's w_rec set to zero)."""
    import copy

    from racli_models.measures import model_measures
    from racli_models.step import TrainStep

    kw = dict(vocab_size=301, n_layer=3, n_head=2, n_embd=32, block_size=16, attn="ra_v5")
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, 301, (8, 17), generator=g).cuda() for _ in range(8)]
    m = GPT(GPTConfig(**kw), seed=3).cuda()
    opt = m.configure_optimizer(0.1, 3e-3, (0.9, 0.95), fused=True)
    step = TrainStep(m, opt, micro=8, clip=1.0)
    evals = [(b[:2, :-1], b[:2, 1:]) for b in batches[:2]]

    def mean_loss(model):
        with torch.no_grad():
            return sum(float(model(x, y)[1]) for x, y in evals) / len(evals)

    m.eval()
    mean_loss(m)  # an evaluation at step 0 caches the composed weight
    with torch.no_grad():
        model_measures(m, evals)
    m.train()
    for b in batches:
        step(b[:, :-1], b[:, 1:])
    assert step._graph is not None, step.graph_error
    m.eval()
    with torch.no_grad():
        values = model_measures(m, evals)
    loss = mean_loss(m)
    fresh = copy.deepcopy(m)
    from racli_models import attention

    reuse, attention.REUSE = attention.REUSE, False
    try:
        assert mean_loss(fresh) == pytest.approx(loss, rel=1e-6)
        for layer in range(3):
            ablated = copy.deepcopy(m)
            with torch.no_grad():
                ablated.transformer.h[layer].attn.w_rec.zero_()
            want = (mean_loss(ablated) - loss) / loss
            got = float(values[layer]["rec_ablation"][0])
            assert got == pytest.approx(want, rel=1e-3, abs=1e-6)
    finally:
        attention.REUSE = reuse


def test_release_drops_the_captured_step_and_the_gradients():
    """`TrainStep.release()` (called when a run ends) drops the graph, its buffers and the
    gradients the graph allocated; the step still trains afterwards (it would capture
    again on CUDA)."""
    from racli_models.step import TrainStep

    kw = dict(vocab_size=61, n_layer=2, n_head=2, n_embd=32, block_size=16, attn="ra_v5")
    m = GPT(GPTConfig(**kw), seed=3)
    x = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(1))
    opt = m.configure_optimizer(0.1, 1e-3, (0.9, 0.95))
    step = TrainStep(m, opt, graph=False)
    step.graph_on, step._graph = True, _WritesLikeAGraph(step.params)
    step._x, step._y, step._loss = x.clone(), x.clone(), torch.zeros(())
    for p in step.params:
        p.grad = torch.ones_like(p)
    step.release()
    assert (step._graph, step._x, step._y, step._loss) == (None,) * 4
    assert all(p.grad is None for p in step.params)
    step.graph_on = False  # no CUDA here: the step runs uncaptured
    assert torch.isfinite(step(x, x))


def _clipped_run(fold: bool | None, clip: float, device: str = "cpu", graph: bool = False):
    """Five steps of a tiny ra_v5 GPT under fused AdamW: the parameters afterwards, and
    whether the step folded its clipping into the optimizer. `fold=None`: the reference,
    torch's clip_grad_norm_ then the optimizer step, written out here."""
    from racli_models.step import TrainStep

    kw = dict(vocab_size=61, n_layer=2, n_head=2, n_embd=32, block_size=16, attn="ra_v5")
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 61, (4, 17), generator=g).to(device) for _ in range(5)]
    m = GPT(GPTConfig(**kw), seed=3).to(device)
    opt = m.configure_optimizer(0.1, 1e-2, (0.9, 0.95), fused=True)
    folded = None
    for b in batches:
        if fold is None:
            _, loss = m(b[:, :-1], b[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            if folded is None:
                step = TrainStep(m, opt, clip=clip, graph=graph, fold_clip=fold)
                folded = step.fold_clip
            step(b[:, :-1], b[:, 1:])
    assert not hasattr(opt, "grad_scale")  # nothing left for a later step
    return [p.detach().cpu().clone() for p in m.parameters()], folded


def _largest_gap(a, b):
    return max(float((p - q).abs().max()) for p, q in zip(a, b))


@pytest.mark.parametrize("clip", [0.05, 1e6])
def test_clipping_inside_fused_adamw_equals_clip_grad_norm(clip):
    """With fused AdamW the step clips through the optimizer's grad_scale (no pass of its
    own over the gradients): the parameters after five steps are clip_grad_norm_'s, when
    the clipping scales (0.05) and when it does not (1e6); the test can tell clipping
    from none (the 0.05 run differs from the unclipped one)."""
    want, _ = _clipped_run(None, clip)
    got, folded = _clipped_run(True, clip)
    plain, unfolded = _clipped_run(False, clip)
    assert folded and not unfolded
    assert _largest_gap(got, want) < 1e-5
    assert _largest_gap(plain, want) < 1e-5
    if clip < 1:
        unclipped, _ = _clipped_run(None, 1e6)
        assert _largest_gap(unclipped, want) > 1e-3


def test_the_clipped_step_of_the_ddp_path_clips_inside_a_fused_adamw():
    """`clipped_step` (the step of `ra train`'s DDP path, and of TrainStep): a fused AdamW
    ends where clip_grad_norm_ then its step end, with nothing left on the optimizer;
    `fold=False` takes clip_grad_norm_'s own pass to the same end. The gradients' norms
    change from step to step (some under the clip, some over), so that Adam's indifference
    to one constant scale cannot hide the clipping: unclipped steps end elsewhere."""
    from racli_models.step import clipped_step

    g = torch.Generator().manual_seed(4)
    steps = [
        [torch.randn(5, 3, generator=g) * s, torch.randn(7, generator=g) * s]
        for s in (10.0, 0.01, 3.0, 0.05, 30.0)
    ]
    ends = {}
    for how in ("reference", "folded", "unfolded", "unclipped"):
        params = [torch.nn.Parameter(torch.ones_like(x)) for x in steps[0]]
        opt = torch.optim.AdamW(params, lr=0.1, fused=True)
        for grads in steps:
            for p, x in zip(params, grads):
                p.grad = x.clone()
            if how == "reference":
                torch.nn.utils.clip_grad_norm_(params, 0.5)
                opt.step()
            else:
                clipped_step(
                    opt, params, 0.5 if how != "unclipped" else 0.0, fold=how != "unfolded"
                )
            assert not hasattr(opt, "grad_scale")
        ends[how] = torch.cat([p.detach().flatten() for p in params])
    for how in ("folded", "unfolded"):
        assert torch.allclose(ends[how], ends["reference"], rtol=0, atol=1e-6), how
    assert float((ends["unclipped"] - ends["reference"]).abs().max()) > 1e-2


def test_only_a_fused_adam_takes_the_clipping_inside():
    """The fold needs a kernel that divides by grad_scale: fused Adam/AdamW only, and none
    whose grad_scale a GradScaler already set; any other optimizer clips as before."""
    from racli_models.step import folds_clip

    w = [torch.nn.Parameter(torch.ones(3))]
    assert folds_clip(torch.optim.AdamW(w, fused=True))
    assert folds_clip(torch.optim.Adam(w, fused=True))
    assert not folds_clip(torch.optim.AdamW(w))
    assert not folds_clip(torch.optim.AdamW(w, foreach=True))
    assert not folds_clip(torch.optim.SGD(w, lr=0.1))
    scaled = torch.optim.AdamW(w, fused=True)
    scaled.grad_scale = torch.ones(())
    assert not folds_clip(scaled)


@pytest.mark.gpu
def test_clipping_inside_fused_adamw_in_the_replayed_graph():
    """On CUDA, the step replayed as one CUDA graph clips inside fused AdamW as
    clip_grad_norm_ does eagerly."""
    want, _ = _clipped_run(None, 0.05, "cuda")
    got, folded = _clipped_run(True, 0.05, "cuda", graph=True)
    assert folded
    assert _largest_gap(got, want) < 1e-5
