"""`ra train` under torchrun: two CPU processes on the gloo backend, DistributedDataParallel."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
import torch.distributed as dist
from helpers import REPO

from racli_models import gpt

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)

BLOCK = 32
BATCH = 4
STEPS = 6
TINY = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    f"model.block_size={BLOCK}",
    f"train.batch_size={BATCH}",
    "train.eval_interval=3",
    "train.eval_batches=3",
    "train.final_eval_batches=3",
    "train.log_interval=2",
]


def torchrun(tmp_path, *args, nproc=2, timeout=240):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--standalone",
        "-m",
        "racli",
        "train",
        *[str(a) for a in args],
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
@pytest.mark.parametrize("reduce", ["ddp", "step"])
def test_two_process_ddp_on_gloo_records_one_run_with_global_figures(tmp_path, reduce):
    db = tmp_path / "ra.db"
    sets = [a for item in [*TINY, f"train.grad_reduce={reduce}"] for a in ("--set", item)]
    res = torchrun(
        tmp_path,
        "--db",
        db,
        "--attn",
        "ra_v5",
        "--steps",
        STEPS,
        "--device",
        "cpu",
        "--no-compile",
        "--seed",
        1,
        *sets,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("Training summary") == 1  # rank 0 alone reports
    with sqlite3.connect(db) as conn:
        runs = conn.execute(
            "SELECT id, status, iterations, tokens, tokens_per_s, val_loss, config FROM runs"
        ).fetchall()
        assert len(runs) == 1
        run_id, status, iters, tokens, tps, val, config = runs[0]
        n_loss = conn.execute(
            "SELECT COUNT(*) FROM metrics WHERE run_id=? AND name='train_loss'", (run_id,)
        ).fetchone()[0]
        n_gates = conn.execute(
            "SELECT COUNT(DISTINCT step) FROM gate_values WHERE run_id=?", (run_id,)
        ).fetchone()[0]
    config = json.loads(config)
    assert status == "finished" and iters == STEPS
    assert config["world_size"] == 2 and config["global_batch_size"] == 2 * BATCH
    assert config.get("grad_reduce", "ddp") == reduce  # the default is not recorded
    assert tokens == STEPS * 2 * BATCH * BLOCK  # global tokens
    assert tps > 0 and val is not None
    assert n_loss == STEPS // 2 and n_gates == 3  # steps 0, 3 and 6
    assert (tmp_path / "ra_checkpoints" / "ra.db" / f"run_{run_id}.pt").is_file()


@pytest.mark.slow
def test_two_process_ddp_minutes_budget_stops_every_rank_together(tmp_path):
    """A wall-clock budget under DDP: rank 0's clock decides for all at a log point (no rank
    left waiting in a collective); an odd number of evaluation batches is shared unevenly."""
    db = tmp_path / "ra.db"
    sets = [
        a
        for item in [*TINY, "train.eval_batches=3", "train.eval_interval=7"]
        for a in ("--set", item)
    ]
    res = torchrun(
        tmp_path,
        "--db",
        db,
        "--attn",
        "sdpa_gate",
        "--minutes",
        0.02,
        "--device",
        "cpu",
        "--no-compile",
        *sets,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with sqlite3.connect(db) as conn:
        status, iters, secs, tokens = conn.execute(
            "SELECT status, iterations, train_seconds, tokens FROM runs"
        ).fetchone()
    assert status == "finished" and iters % 2 == 0  # stopped at a log point (every 2 steps)
    assert secs >= 1.2 and tokens == iters * 2 * BATCH * BLOCK


WORKER = """
import sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from racli_models import GPT, GPTConfig, gpt

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(1)
gpt.LN_FORM = sys.argv[1]
cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64, attn="ra_v5")
torch.manual_seed(0)
model, single = GPT(cfg), GPT(cfg)
single.load_state_dict(model.state_dict())
batches = [torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(r)) for r in range(world)]
saved = []
with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
    ddp = DistributedDataParallel(model)  # held: its hooks reduce the gradients in backward()
    _, loss = torch.compile(ddp)(batches[rank][:, :-1], batches[rank][:, 1:])
loss.backward()
for idx in batches:  # one process over both ranks' batches: the mean of their gradients
    (single(idx[:, :-1], idx[:, 1:])[1] / world).backward()
err = max((a.grad - b.grad).abs().max().item() for a, b in zip(model.parameters(), single.parameters()))
x = model.transformer.wte(batches[rank][:, :-1]) + model.transformer.wpe(torch.arange(16))
rstd = torch.rsqrt(x.var(-1, correction=0, keepdim=True) + 1e-5).reshape(-1)
held = any(
    s.numel() == rstd.numel() and s.dtype == rstd.dtype and torch.allclose(s.reshape(-1), rstd, atol=1e-5)
    for s in saved
)
if rank == 0:
    print(f"RESULT {err} {held}")
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("form", gpt.LN_FORMS)
def test_compiled_ddp_recomputes_layer_norms_with_one_process_gradients(tmp_path, form):
    """DistributedDataParallel compiled (two gloo processes): the layer norms run under their
    selective checkpoint (gpt.LN_RECOMPUTE, the first one's rstd among the saved tensors),
    and the gradients are one process's over both batches."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--standalone", str(script), form]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT"))
    err, held = line.split()[1:]
    assert float(err) < 1e-6 and held == "True", line
