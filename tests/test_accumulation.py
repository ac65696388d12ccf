"""Global batch with gradient accumulation (`train.batch_tokens`): the layout, the
accumulated gradients, the trainer, the recorded config and its hash, the CLI's bad input,
and (slow) two gloo processes against one."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading

import pytest
import torch
from helpers import REPO, record_run
from typer.testing import CliRunner

from racli import training
from racli.cli import app
from racli.config import load_config, packaged_config_path
from racli.errors import BadInput
from racli.store.engine import open_store
from racli.store.recorder import config_hash
from racli.training.datasets import load_dataset
from racli.training.global_batch import batch_layout, largest_divisor_at_most
from racli.training.spec import train_section

BLOCK = 32
TINY = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    f"model.block_size={BLOCK}",
    "train.batch_size=4",
    "train.eval_interval=100",
    "train.eval_batches=2",
    "train.final_eval_batches=2",
    "train.log_interval=1",
]


@pytest.fixture(scope="module")
def cfg():
    """The packaged defaults without reciprocity measures (they do not change training)."""
    base = load_config(packaged_config_path())
    return base.model_copy(update={"gates": base.gates.model_copy(update={"measure_batches": 0})})


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(None, val_fraction=0.1, block_size=BLOCK)


@pytest.fixture
def store(tmp_path):
    s = open_store(str(tmp_path / "ra.db"))
    yield s
    s.close()


def make_spec(cfg, *extra, attn="ra_v5", steps=3, seed=0):
    return training.spec_from_config(
        cfg,
        attn=attn,
        steps=steps,
        seed=seed,
        device="cpu",
        compile=False,
        overrides=TINY + list(extra),
    )


# ---------------------------------------------------------------------------- the layout (pure)


def test_without_batch_tokens_the_global_batch_is_batch_size_per_process():
    layout = batch_layout(batch_size=8, batch_tokens=None, block_size=64, world_size=4)
    assert (layout.global_seqs, layout.per_rank, layout.micro, layout.accum) == (32, 8, 8, 1)
    assert layout.tokens_per_step == 32 * 64


@pytest.mark.parametrize(
    "batch_size, world, expected",
    [
        (32, 1, (512, 32, 16)),  # 512 sequences of 1024: 16 micro-batches of 32
        (32, 2, (256, 32, 8)),
        (32, 4, (128, 32, 4)),
        (48, 1, (512, 32, 16)),  # 48 does not divide 512: the largest divisor below is 32
        (1000, 8, (64, 64, 1)),  # fits at once: no accumulation
    ],
)
def test_batch_tokens_fixes_the_global_batch_whatever_the_world_size(batch_size, world, expected):
    layout = batch_layout(
        batch_size=batch_size, batch_tokens=524288, block_size=1024, world_size=world
    )
    assert layout.global_seqs == 512 and layout.tokens_per_step == 524288
    assert (layout.per_rank, layout.micro, layout.accum) == expected
    assert layout.micro * layout.accum * world == layout.global_seqs


def test_largest_divisor():
    assert [largest_divisor_at_most(12, c) for c in (1, 2, 5, 11, 12, 40)] == [1, 2, 4, 6, 12, 12]
    assert largest_divisor_at_most(37, 32) == 1  # a prime count: micro-batches of one


def test_batch_tokens_that_do_not_divide_are_bad_input():
    with pytest.raises(BadInput, match=r"batch_tokens 1000 is not a multiple .*block_size 64"):
        batch_layout(batch_size=4, batch_tokens=1000, block_size=64)
    with pytest.raises(BadInput, match=r"6 sequences of 64 tokens.*over 4 processes"):
        batch_layout(batch_size=4, batch_tokens=384, block_size=64, world_size=4)


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("attn", ["baseline", "ra_v5", "sdpa_gate"])
def test_one_micro_batch_of_four_and_four_of_one_give_the_same_gradients(attn):
    from racli.training.trainer import accumulate_gradients
    from racli_models import GPT, GPTConfig

    conf = GPTConfig(
        attn=attn, vocab_size=50, n_layer=2, n_head=2, n_embd=16, block_size=8, dropout=0.0
    )
    torch.manual_seed(0)
    model = GPT(conf).double()
    data = torch.randint(0, 50, (4, 9))
    x, y = data[:, :-1], data[:, 1:]

    def grads(micro):
        model.zero_grad(set_to_none=True)
        loss = accumulate_gradients(model, x, y, micro)
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_1x4, g_1x4 = grads(4)
    loss_4x1, g_4x1 = grads(1)
    loss_2x2, g_2x2 = grads(2)
    assert set(g_1x4) == set(g_4x1) == set(g_2x2) and g_1x4
    assert torch.allclose(loss_1x4, loss_4x1, rtol=1e-12, atol=0)
    assert torch.allclose(loss_1x4, loss_2x2, rtol=1e-12, atol=0)
    for name in g_1x4:
        assert torch.allclose(g_1x4[name], g_4x1[name], rtol=1e-10, atol=1e-13), name
        assert torch.allclose(g_1x4[name], g_2x2[name], rtol=1e-10, atol=1e-13), name


# ---------------------------------------------------------------------------- the recorded config


def test_default_config_records_and_hashes_as_before(cfg, dataset):
    """Without batch_tokens nothing new is recorded (the pinned config of test_train.py holds
    the whole text); the world size stays part of the hash, as it always was."""
    spec = make_spec(cfg)
    assert spec.train.batch_tokens is None
    assert "batch_tokens" not in train_section(spec.train)
    one, two = (training.run_config(spec, dataset, w) for w in (1, 2))
    for config in (one, two):
        assert "micro_batch_size" not in config and "grad_accum_steps" not in config
    assert two["global_batch_size"] == 8 and two["tokens_per_step"] == 8 * BLOCK
    assert config_hash(one) != config_hash(two)
    # a record from before batch_tokens existed resumes into the same spec and config
    again = training.run_config(training.spec_from_run_config(two), dataset, 2)
    assert json.dumps(again) == json.dumps(two)


def test_batch_tokens_runs_on_1_2_and_4_processes_share_one_hash(cfg, dataset):
    spec = make_spec(cfg, f"train.batch_tokens={16 * BLOCK}")
    configs = {w: training.run_config(spec, dataset, w) for w in (1, 2, 4)}
    assert {w: (c["micro_batch_size"], c["grad_accum_steps"]) for w, c in configs.items()} == {
        1: (4, 4),
        2: (4, 2),
        4: (4, 1),
    }
    for w, c in configs.items():
        assert c["world_size"] == w and c["train"]["batch_tokens"] == 16 * BLOCK
        assert c["global_batch_size"] == 16 and c["tokens_per_step"] == 16 * BLOCK
    assert len({config_hash(c) for c in configs.values()}) == 1
    # anything else still separates: another global batch, or another model
    other = training.run_config(make_spec(cfg, f"train.batch_tokens={8 * BLOCK}"), dataset, 1)
    assert config_hash(other) != config_hash(configs[1])
    # the recorded setting comes back on resume
    assert training.spec_from_run_config(configs[2]).train.batch_tokens == 16 * BLOCK
    with pytest.raises(BadInput, match="16 sequences of 32 tokens, which do not divide over 3"):
        training.run_config(spec, dataset, 3)


def test_grad_reduce_is_recorded_for_several_processes_and_left_out_of_the_hash(cfg, dataset):
    """`train.grad_reduce` is how several processes average the same gradients: `step` is
    recorded beside the train section with more than one process, out of config_hash, and
    back on resume; one process and DDP (the default) record nothing of it (their runs
    keep their config and hash)."""
    ddp = make_spec(cfg, f"train.batch_tokens={16 * BLOCK}")
    step = make_spec(cfg, f"train.batch_tokens={16 * BLOCK}", "train.grad_reduce=step")
    one, two_ddp, two_step = (
        training.run_config(ddp, dataset, 1),
        training.run_config(ddp, dataset, 2),
        training.run_config(step, dataset, 2),
    )
    assert "grad_reduce" not in one and "grad_reduce" not in one["train"]
    assert "grad_reduce" not in two_ddp and two_step["grad_reduce"] == "step"
    assert "grad_reduce" not in two_step["train"]
    assert training.run_config(step, dataset, 1) == one
    assert len({config_hash(c) for c in (one, two_ddp, two_step)}) == 1
    assert training.spec_from_run_config(two_step).train.grad_reduce == "step"
    assert training.spec_from_run_config(one).train.grad_reduce == "ddp"
    again = training.run_config(training.spec_from_run_config(two_step), dataset, 2)
    assert json.dumps(again) == json.dumps(two_step)


@pytest.mark.parametrize("value", ["fast", "DDP", "1"])
def test_cli_bad_grad_reduce_is_one_line(tmp_path, value):
    from helpers import ra_inprocess

    res = ra_inprocess(
        "train", "--db", tmp_path / "ra.db", "--attn", "baseline", "--steps", "1",
        "--device", "cpu", "--set", f"train.grad_reduce={value}",
    )  # fmt: skip
    assert res.exit_code == 2 and "grad_reduce" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "ra.db").exists()


def test_compare_puts_one_and_two_gpu_runs_in_one_group(cfg, dataset, store):
    from racli.compare.grouping import group_runs, load_comparison, load_train_runs

    spec = make_spec(cfg, f"train.batch_tokens={8 * BLOCK}")
    ids = []
    for seed, world in ((1, 1), (2, 2), (3, 1), (4, 2)):
        for attn in ("baseline", "ra_v5"):
            config = training.run_config(spec, dataset, world)
            ids.append(record_run(store, attn=attn, seed=seed, config=config))
    rows = load_train_runs(store, attns=("ra_v5", "baseline"))
    groups = group_runs(rows, candidate="ra_v5", baseline="baseline")
    assert len(groups) == 1 and sorted(r.id for r in groups[0].runs) == sorted(ids)
    comparison = load_comparison(store)
    assert comparison.group.size == 8 and not comparison.others
    # without batch_tokens, the world size still splits the history
    plain = make_spec(cfg)
    for seed, world in ((5, 1), (6, 2)):
        record_run(store, seed=seed, config=training.run_config(plain, dataset, world))
    rows = load_train_runs(store, attns=("ra_v5", "baseline"))
    assert len(group_runs(rows, candidate="ra_v5", baseline="baseline")) == 3


# ---------------------------------------------------------------------------- the trainer


def _train_capturing(cfg, dataset, store, *extra, steps=2, stop_at=None, **kw):
    """Train; return the result, the batches and the parameters after every step."""
    batches, params = [], []
    stop = threading.Event()

    def on_step(info):
        batches.append(info.x.clone())
        params.append({k: v.detach().clone() for k, v in info.model.state_dict().items()})
        if stop_at is not None and info.step == stop_at:
            stop.set()

    result = training.train(
        make_spec(cfg, *extra, steps=steps, **kw),
        store,
        dataset=dataset,
        stop=stop,
        on_step=on_step,
    )
    return result, batches, params


@pytest.mark.slow
def test_trainer_accumulates_and_matches_one_big_micro_batch(cfg, dataset, store):
    """batch_tokens = 4 sequences: batch_size 4 (no accumulation) and batch_size 1 (4
    micro-batches) train on the same batches to the same weights (float64)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        tokens = f"train.batch_tokens={4 * BLOCK}"
        whole, whole_x, whole_p = _train_capturing(cfg, dataset, store, tokens)
        split, split_x, split_p = _train_capturing(
            cfg, dataset, store, tokens, "train.batch_size=1"
        )
    finally:
        torch.set_default_dtype(default)
    assert next(iter(whole_p[0].values())).dtype == torch.float64
    assert whole.status == split.status == "finished"
    assert all(torch.equal(a, b) for a, b in zip(whole_x, split_x, strict=True))
    assert whole_x[0].shape == (4, BLOCK)
    for step in range(2):
        for name, value in whole_p[step].items():
            assert torch.allclose(value, split_p[step][name], rtol=1e-9, atol=1e-12), (step, name)
    assert whole.train_loss == pytest.approx(split.train_loss, rel=1e-10)
    with sqlite3.connect(store.db) as conn:
        split_of = {
            run_id: (json.loads(text)["micro_batch_size"], json.loads(text)["grad_accum_steps"])
            for run_id, text in conn.execute("SELECT id, config FROM runs")
        }
    assert split_of == {whole.run_id: (4, 1), split.run_id: (1, 4)}
    # tokens per optimizer step are the global batch's
    assert whole.tokens == split.tokens == 2 * 4 * BLOCK


@pytest.mark.slow
def test_trainer_with_accumulation_records_and_resumes_exactly(cfg, dataset, store):
    """A run of 4 steps of 3 micro-batches, stopped after step 2 and resumed, ends where the
    straight run ends; tokens count optimizer steps x the global batch."""
    tokens = (f"train.batch_tokens={6 * BLOCK}", "train.batch_size=2")
    straight, straight_x, _ = _train_capturing(cfg, dataset, store, *tokens, steps=4, seed=5)
    first, _, _ = _train_capturing(cfg, dataset, store, *tokens, steps=4, seed=5, stop_at=2)
    assert first.status == "interrupted" and first.iterations == 2
    assert first.tokens == 2 * 6 * BLOCK
    resumed_x = []
    second = training.resume(store, first.run_id, on_step=lambda i: resumed_x.append(i.x.clone()))
    assert second.status == "finished" and second.iterations == 4
    assert second.tokens == straight.tokens == 4 * 6 * BLOCK
    assert all(torch.equal(a, b) for a, b in zip(straight_x[2:], resumed_x, strict=True))
    assert second.val_loss == pytest.approx(straight.val_loss, abs=1e-5)
    (config,) = (
        sqlite3.connect(store.db)
        .execute("SELECT config FROM runs WHERE id=?", (first.run_id,))
        .fetchone()
    )
    config = json.loads(config)
    assert (config["micro_batch_size"], config["grad_accum_steps"]) == (2, 3)
    assert config["tokens_per_step"] == 6 * BLOCK


# ---------------------------------------------------------------------------- the command


@pytest.mark.parametrize(
    "value, message",
    [
        ("100", "train.batch_tokens 100 is not a multiple of the sequence length"),
        ("0", "train.batch_tokens: must be >= 1"),
        ("many", "train.batch_tokens: must be an integer"),
    ],
)
def test_cli_bad_batch_tokens_exit_2_with_one_line(tmp_path, value, message):
    db = tmp_path / "ra.db"
    sets = [a for item in [*TINY, f"train.batch_tokens={value}"] for a in ("--set", item)]
    res = CliRunner().invoke(
        app, ["train", "--db", str(db), "--attn", "ra_v5", "--steps", "2", "--device", "cpu", *sets]
    )
    assert res.exit_code == 2, res.output
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not db.exists()


# ---------------------------------------------------------------------------- two processes


def _ra_train(tmp_path, nproc, db, *sets):
    args = [
        "train", "--db", str(db), "--attn", "ra_v5", "--steps", "4", "--device", "cpu",
        "--no-compile", "--seed", "1", *[a for item in sets for a in ("--set", item)],
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--standalone", "-m", "racli", *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with sqlite3.connect(db) as conn:
        (run_id, chash, config, tokens) = conn.execute(
            "SELECT id, config_hash, config, tokens FROM runs"
        ).fetchone()
        losses = [
            v
            for (v,) in conn.execute(
                "SELECT value FROM metrics WHERE run_id=? AND name='train_loss' ORDER BY step",
                (run_id,),
            )
        ]
    return chash, json.loads(config), tokens, losses


@pytest.mark.slow
@pytest.mark.parametrize("reduce", ["ddp", "step"])
def test_two_gloo_processes_follow_one_process_step_by_step(tmp_path, reduce):
    """8 sequences per step with micro-batches of 2: 1 process accumulates 4, each of 2
    processes accumulates 2 and all-reduces once: under DDP's no_sync (`ddp`), or in the
    one-process step with its own all-reduce at the end (`step`). Same losses, one hash."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    sets = [*TINY, "train.batch_size=2", f"train.batch_tokens={8 * BLOCK}"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = _ra_train(tmp_path / "one", 1, tmp_path / "one" / "ra.db", *sets)
    two = _ra_train(
        tmp_path / "two", 2, tmp_path / "two" / "ra.db", *sets, f"train.grad_reduce={reduce}"
    )
    assert (one[1]["world_size"], one[1]["grad_accum_steps"]) == (1, 4)
    assert (two[1]["world_size"], two[1]["grad_accum_steps"]) == (2, 2)
    assert "grad_reduce" not in one[1]
    assert two[1].get("grad_reduce", "ddp") == reduce
    assert "grad_reduce" not in two[1]["train"]
    assert one[0] == two[0]  # one config_hash
    assert one[2] == two[2] == 4 * 8 * BLOCK
    assert len(one[3]) == len(two[3]) == 4
    assert one[3] == pytest.approx(two[3], rel=1e-5)


@pytest.mark.slow  # the gloo set-up takes seconds
def test_grad_sync_holds_the_all_reduce_until_the_last_micro_batch(tmp_path):
    import contextlib

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from racli.training.distributed import grad_sync

    assert isinstance(grad_sync(torch.nn.Linear(2, 2), last=False), contextlib.nullcontext)
    if not dist.is_available() or not dist.is_gloo_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed with gloo and no process group yet")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(torch.nn.Linear(2, 2))
        with grad_sync(model, last=False):
            assert not model.require_backward_grad_sync
        with grad_sync(model, last=True):
            assert model.require_backward_grad_sync
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_experiment_calibration_times_whole_accumulated_steps(cfg, dataset, monkeypatch):
    """`ra experiment` budgets steps from calibrated steps/s: with batch_tokens a timed step
    is the whole global batch (one process) in its micro-batches, as the runs train it."""
    from racli.experiment import calibrate
    from racli.training import trainer

    seen = []
    real = trainer.accumulate_gradients

    def spy(model, x, y, micro, autocast):
        seen.append((tuple(x.shape), micro))
        return real(model, x, y, micro, autocast)

    monkeypatch.setattr(trainer, "accumulate_gradients", spy)
    spec = make_spec(cfg, f"train.batch_tokens={6 * BLOCK}", "train.batch_size=4")
    calibrate.measure(
        [spec], ["a"], dataset, precision=0.5, max_s=0.0, min_rounds=2, block_steps=1,
        warmup_steps=1,
    )  # fmt: skip
    assert seen and set(seen) == {((6, BLOCK), 3)}


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs"
)
def test_two_gpus_step_and_ddp_follow_one_gpu(tmp_path):
    """Two GPUs (NCCL, compiled, bf16) at one global batch in tokens: DDP and the step with
    its own all-reduce (`train.grad_reduce: step`, one CUDA graph a step) follow one GPU's
    losses, and no rank says its step was not captured as a CUDA graph."""

    def run(name, nproc, *sets):
        args = [
            "train", "--db", str(tmp_path / name / "ra.db"), "--attn", "ra_v5", "--steps", "6",
            "--device", "cuda", "--seed", "1",
            *[a for item in [*TINY, "train.batch_size=4", f"train.batch_tokens={16 * BLOCK}",
                             "train.log_interval=1", *sets] for a in ("--set", item)],
        ]  # fmt: skip
        (tmp_path / name).mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--standalone", "-m", "racli", *args]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO), "NCCL_NVLS_ENABLE": "0"}
        res = subprocess.run(
            cmd, cwd=tmp_path / name, env=env, capture_output=True, text=True, timeout=600
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "not captured as a CUDA graph" not in res.stdout + res.stderr
        with sqlite3.connect(tmp_path / name / "ra.db") as conn:
            return [v for (v,) in conn.execute(
                "SELECT value FROM metrics WHERE name='train_loss' ORDER BY step")]  # fmt: skip

    one = run("one", 1)
    ddp = run("ddp", 2)
    step = run("step", 2, "train.grad_reduce=step")
    assert len(one) == len(ddp) == len(step) == 6
    assert ddp == pytest.approx(one, rel=2e-3) and step == pytest.approx(one, rel=2e-3)


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_compiled_accumulation_matches_one_micro_batch(cfg, dataset, store):
    """On CUDA (bf16 autocast, torch.compile): 8 sequences per step as 1 x 8 and 4 x 2 reach
    the same training loss (bf16 tolerance)."""
    results = []
    for batch_size in (8, 2):
        spec = training.spec_from_config(
            cfg,
            attn="ra_v5",
            steps=6,
            seed=1,
            device="cuda",
            compile=True,
            overrides=[*TINY, f"train.batch_size={batch_size}", f"train.batch_tokens={8 * BLOCK}"],
        )
        results.append(training.train(spec, store, dataset=dataset))
    whole, split = results
    assert whole.status == split.status == "finished"
    assert whole.tokens == split.tokens == 6 * 8 * BLOCK
    assert whole.train_loss == pytest.approx(split.train_loss, rel=2e-2)


def _grad_mean_rank(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from racli.training.distributed import DistInfo, GradMean, broadcast_parameters

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        info = DistInfo(rank=rank, local_rank=rank, world_size=2)
        torch.manual_seed(rank)  # each rank its own weights, until the broadcast
        model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1, bias=False))
        broadcast_parameters(model, info)
        params = list(model.parameters())
        mean = GradMean(params, info)
        mean.start()
        x = torch.full((4, 3), float(rank + 1))
        model(x).sum().backward()  # into the flat buffer's views
        model(x).sum().backward()  # accumulated in place
        assert all(p.grad is v for p, v in zip(params, mean.views))
        mine = [p.grad.clone() for p in params]
        mean()
        torch.save(
            {
                "params": [p.detach() for p in params],
                "mine": mine,
                "mean": [p.grad for p in params],
            },
            f"{out}.{rank}",
        )
        assert mean.agree(True) and not mean.agree(rank == 0)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two gloo processes
def test_grad_mean_averages_the_ranks_gradients_from_rank_0s_weights(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = str(tmp_path / "grads")
    init = f"file://{tmp_path / 'pg'}"
    mp.start_processes(_grad_mean_rank, args=(init, out), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(f"{out}.{r}") for r in (0, 1))
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)  # rank 0's weights on both
    # the ranks' own gradients differ (but for a bias that does not see the input) ...
    assert sum(not torch.equal(g0, g1) for g0, g1 in zip(r0["mine"], r1["mine"])) == 2
    for g0, g1, m0, m1 in zip(r0["mine"], r1["mine"], r0["mean"], r1["mean"]):
        torch.testing.assert_close(m0, (g0 + g1) / 2)  # ... their mean, on both
        assert torch.equal(m0, m1)
    # start() zeroes the buffers and re-attaches the views a set_to_none dropped
    from racli.training.distributed import DistInfo, GradMean

    p = torch.nn.Parameter(torch.ones(3))
    mean = GradMean([p], DistInfo())
    mean.start()
    p.grad.add_(1.0)
    p.grad = None
    mean.start()
    assert p.grad is mean.views[0] and torch.equal(p.grad, torch.zeros(3))
    mean()  # one process: nothing to average
    assert mean.agree(True) and not mean.agree(False)


def test_a_step_that_was_not_captured_says_so(cfg, dataset, store, monkeypatch):
    """A training step whose CUDA-graph capture failed runs uncaptured (correct, slower):
    the run says so once, after its first step."""
    from racli_models import step as step_mod

    real = step_mod.TrainStep.__call__

    def failing(self, x, y):
        out = real(self, x, y)
        self.graph_error = "RuntimeError: capture refused"
        return out

    monkeypatch.setattr(step_mod.TrainStep, "__call__", failing)
    notes = []

    class Notes:
        def __getattr__(self, name):
            return notes.append if name == "note" else (lambda *a, **k: None)

    training.train(make_spec(cfg, steps=3), store, dataset=dataset, reporter=Notes())
    said = [n for n in notes if "not captured as a CUDA graph" in n]
    assert said == [
        "the training step was not captured as a CUDA graph (RuntimeError: capture refused): "
        "it runs uncaptured, slower"
    ]
