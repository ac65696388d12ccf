"""`ra train` on CUDA: compile, bf16 autocast, TF32, fused AdamW (skipped without CUDA)."""

from __future__ import annotations

import math
import sqlite3

import pytest
import torch

from racli import training
from racli.config import load_config, packaged_config_path
from racli.store.engine import open_store
from racli.training.datasets import load_dataset

pytestmark = pytest.mark.gpu

SMALL = [
    "model.n_layer=4",
    "model.n_head=4",
    "model.n_embd=256",
    "model.block_size=256",
    "train.batch_size=32",
    "train.lr=0.002",
    "train.eval_interval=50",
    "train.eval_batches=4",
    "train.final_eval_batches=16",
    "train.log_interval=10",
]


@pytest.fixture
def store(tmp_path):
    s = open_store(str(tmp_path / "ra.db"))
    yield s
    s.close()


def _spec(attn, *, compile, steps=None, minutes=None, seed=0):
    cfg = load_config(packaged_config_path())
    return training.spec_from_config(
        cfg,
        attn=attn,
        steps=steps,
        minutes=minutes,
        seed=seed,
        device="cuda",
        compile=compile,
        overrides=SMALL,
    )


@pytest.mark.parametrize("attn", ["baseline", "ra_v5"])
def test_cuda_compile_bf16_run(store, attn):
    spec = _spec(attn, compile=True, steps=150)
    data = load_dataset(None, 0.1, 256)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    seen = []
    r = training.train(
        spec,
        store,
        dataset=data,
        on_step=lambda i: seen.append(
            (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        ),
    )
    assert r.status == "finished" and r.iterations == 150
    assert math.isfinite(r.val_loss) and r.val_loss < 3.0  # well below ln(256) = 5.55
    assert r.compile_s > 0 and r.tokens_per_s > 0
    assert set(seen) == {(True, True)}  # TF32 while training ...
    # ... and the caller's settings afterwards (float32 tests that run later compare
    # against plain float32 matmuls)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with sqlite3.connect(store.db) as conn:
        (autocast, compiled, device) = conn.execute(
            "SELECT json_extract(config, '$.autocast'), json_extract(config, '$.compile'), "
            "json_extract(config, '$.device') FROM runs WHERE id=?",
            (r.run_id,),
        ).fetchone()
    assert (autocast, compiled, device) == ("bfloat16", 1, "cuda")


# GPT-2 124M with its 50,304-token output layer: ~67 ms of GPU work per step, so the
# host's jitter is hidden. Smaller models vary more between runs on the H100 (a 4-layer
# 256-wide model 5.6% between two 15 s runs, a 6-layer 768-wide one at batch 16 up to
# 17% between four 15 s runs; docs/results.md).
BUSY = [
    "model.n_layer=12",
    "model.n_head=12",
    "model.n_embd=768",
    "model.block_size=1024",
    "model.vocab_size=50304",
    "train.batch_size=32",
    "train.eval_interval=100000",
    "train.eval_batches=2",
    "train.final_eval_batches=2",
    "train.log_interval=10",
]


def test_cuda_minutes_budget_and_throughput_agree_between_seeds(store):
    """Two seeds of one config: tokens/s within 2% (the matched-speed premise).

    Under sustained load the H100 sits at its power cap and its clock drifts as
    it warms (1725 -> 1605 MHz over two minutes, docs/results.md), so the runs
    go in the order 1, 2, 2, 1: a drift that is linear in time then hits both
    seeds alike, and what is left is the difference `ra train` itself makes.
    """
    cfg = load_config(packaged_config_path())
    data = load_dataset(None, 0.1, 1024)
    rates: dict[int, list[float]] = {1: [], 2: []}
    for seed in (1, 2, 2, 1):
        spec = training.spec_from_config(
            cfg,
            attn="baseline",
            minutes=0.5,
            seed=seed,
            device="cuda",
            compile=True,
            overrides=BUSY,
        )
        r = training.train(spec, store, dataset=data)
        assert r.status == "finished" and 30.0 <= r.train_seconds < 32.0
        rates[seed].append(r.tokens_per_s)
    one, two = (sum(v) / len(v) for v in (rates[1], rates[2]))
    assert abs(one - two) / max(one, two) < 0.02, rates


def test_cuda_resume_continues_the_run(store):
    data = load_dataset(None, 0.1, 256)
    import threading

    stop = threading.Event()
    first = training.train(
        _spec("ra_v5", compile=False, steps=40),
        store,
        dataset=data,
        stop=stop,
        on_step=lambda i: stop.set() if i.step == 20 else None,
    )
    assert first.status == "interrupted" and first.iterations == 20
    second = training.resume(store, first.run_id)
    assert second.status == "finished" and second.iterations == 40
    assert second.run_id == first.run_id and math.isfinite(second.val_loss)


def test_a_released_step_gives_its_graph_memory_back():
    """TrainStep.release(): the captured graph's memory pool (the step's activations and
    gradients) goes back while the model and optimizer stay; the next call captures again."""
    from racli_models import GPT, GPTConfig
    from racli_models.step import TrainStep

    kw = dict(vocab_size=256, n_layer=4, n_head=4, n_embd=256, block_size=256, attn="ra_v5")
    m = GPT(GPTConfig(**kw), seed=0).cuda()
    opt = m.configure_optimizer(0.1, 1e-3, (0.9, 0.95), fused=True)
    step = TrainStep(m, opt, autocast=lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    b = torch.randint(0, 256, (64, 257), device="cuda")
    x, y = b[:, :-1], b[:, 1:]
    for _ in range(2):  # warm-up and capture, then a replay
        step(x, y)
    assert step._graph is not None, step.graph_error
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    held = torch.cuda.memory_reserved()
    step.release()
    torch.cuda.empty_cache()
    freed = held - torch.cuda.memory_reserved()
    assert freed > 256 * 2**20, f"{freed / 2**20:.0f} MiB freed"
    loss = step(x, y)
    assert step._graph is not None and torch.isfinite(loss)


def test_a_finished_run_leaves_no_graph_memory_behind(store):
    """train() gives back what its captured graphs held: runs one after another in one
    process (a library caller, these tests) do not pile up a memory pool each."""
    cfg = load_config(packaged_config_path())
    spec = training.spec_from_config(
        cfg, attn="ra_v5", steps=5, seed=0, device="cuda", compile=False,
        overrides=[*SMALL, "train.batch_size=64"],
    )  # fmt: skip
    data = load_dataset(None, 0.1, 256)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    r = training.train(spec, store, dataset=data)
    assert r.status == "finished"
    left = torch.cuda.memory_reserved() - before
    # what may stay: the weights and Adam's state if the run's objects wait for the
    # garbage collector (~40 MB), cuBLAS workspaces of new streams; the step's pool at
    # batch 64 is over 500 MB
    assert left < 192 * 2**20, f"{left / 2**20:.0f} MiB left reserved"


def test_cuda_runs_one_after_another_in_one_process_each_compile(store):
    """Compiled CUDA runs trained one after another in one process each compile their own
    graphs: earlier runs' graphs do not count against dynamo's recompile limit, past which a
    run recorded as compiled would run eager."""
    from torch._dynamo.utils import counters

    data = load_dataset(None, 0.1, 256)
    graphs = []
    with torch._dynamo.config.patch(recompile_limit=2):  # the suite runs with a higher one
        for seed in (0, 1, 2):
            spec = _spec("ra_v5", compile=True, steps=3, seed=seed)
            before = counters["stats"]["unique_graphs"]
            r = training.train(spec, store, dataset=data)
            assert r.status == "finished" and r.compile_s > 0
            graphs.append(counters["stats"]["unique_graphs"] - before)
    assert graphs[0] >= 1 and graphs[1:] == [graphs[0]] * 2, graphs
