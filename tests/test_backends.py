"""The same work on both store backends (SQLite and a throwaway PostgreSQL server):
a tiny CPU training run recorded and read back, `ra compare` giving the same
verdict, and two concurrent `ra train --resume` of one run giving one owner."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from helpers import ENV_INFO, python_env, ra_inprocess
from sqlalchemy import text

from racli.config import load_config, packaged_config_path
from racli.store.engine import open_store
from racli.store.recorder import RunRecorder

TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "train.batch_size=4",
    "train.lr=0.003",
    "train.eval_interval=4",
    "train.eval_batches=2",
    "train.final_eval_batches=2",
    "train.log_interval=2",
]


@pytest.fixture
def store(store_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # checkpoints of a non-file store go under the working directory
    s = open_store(store_url)
    yield s
    s.close()


def _rows(store, sql, **kw) -> list[tuple]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), kw)]


def _spec(steps: int, seed: int = 0):
    from racli.training import spec_from_config

    return spec_from_config(
        load_config(packaged_config_path()),
        attn="ra_v5",
        steps=steps,
        seed=seed,
        device="cpu",
        compile=False,
        overrides=TINY,
    )


@pytest.mark.slow
def test_a_training_run_is_recorded(store):
    from racli.training import load_data, train

    spec = _spec(8)
    r = train(spec, store, dataset=load_data(spec))
    assert r.status == "finished" and r.iterations == 8
    ((status, iters, tokens, val, env_id),) = _rows(
        store,
        "SELECT status, iterations, tokens, val_loss, env_id FROM runs WHERE id=:i",
        i=r.run_id,
    )
    assert (status, iters, tokens) == ("finished", 8, 8 * 4 * 32)
    assert val == pytest.approx(r.val_loss) and env_id is not None
    names = dict(
        _rows(store, "SELECT name, count(*) FROM metrics WHERE run_id=:i GROUP BY name", i=r.run_id)
    )
    assert names["train_loss"] == 4 and names["val_loss"] == 2 and names["compile_s"] == 1
    assert _rows(
        store, "SELECT count(DISTINCT step) FROM gate_values WHERE run_id=:i", i=r.run_id
    ) == [(3,)]  # init, step 4, the end
    res = ra_inprocess("runs", "--db", store.db, "--json")
    assert res.exit_code == 0
    assert [(d["id"], d["status"]) for d in json.loads(res.stdout)] == [(r.run_id, "finished")]


def _planted(store, effect: float) -> None:
    rng = np.random.default_rng(0)
    cfg = {"model": {"preset": "tiny"}, "train": {"lr": 6e-4, "steps": 300}, "data": "builtin"}
    for seed in range(5):
        for attn, scale in (("baseline", 1.0), ("ra_v5", 1.0 + effect)):
            rec = RunRecorder.start(
                store,
                kind="train",
                attn=attn,
                seed=seed,
                config={**cfg, "attn": attn, "seed": seed},
                env_info=ENV_INFO,
                git_commit="abc",
                heartbeat=False,
            )
            val = 3.0 * scale * (1 + 0.003 * rng.standard_normal())
            rec.metric(300, "val_loss", val, 30.0)
            rec.finish(
                iterations=300,
                tokens=300 * 4096,
                epochs=0.4,
                train_seconds=2.5,
                val_loss=val,
                tokens_per_s=500_000.0,
            )


@pytest.mark.slow
@pytest.mark.parametrize("effect, verdict", [(-0.03, "WIN"), (0.03, "LOSE")])
def test_compare_gives_the_planted_verdict(store, effect, verdict):
    _planted(store, effect)
    res = ra_inprocess("compare", "--db", store.db, "--json")
    assert res.exit_code == 0, res.stderr
    v = json.loads(res.stdout)["verdict"]
    assert v["outcome"] == verdict and v["candidate"]["n"] == v["baseline"]["n"] == 5


def test_compare_agrees_across_backends(tmp_path, pg_url):
    out = []
    for db in (str(tmp_path / "ra.db"), pg_url):
        store = open_store(db)
        _planted(store, -0.02)
        store.close()
        res = ra_inprocess("compare", "--db", db, "--json")
        assert res.exit_code == 0, res.stderr
        data = json.loads(res.stdout)
        data.pop("db", None)
        out.append(json.dumps(data, sort_keys=True, default=str).replace(db, "DB"))
    assert out[0] == out[1]


@pytest.mark.slow
def test_two_concurrent_cli_resumes_give_one_owner(store):
    """Two `ra train --resume ID` at once: one trains the run to its end, the other
    exits 2 with one line; no metric row is written twice."""
    from racli.training import load_data, train

    spec = _spec(12, seed=2)
    stop = threading.Event()
    first = train(
        spec,
        store,
        dataset=load_data(spec),
        stop=stop,
        on_step=lambda i: stop.set() if i.step == 4 else None,
    )
    assert first.status == "interrupted"
    cmd = [sys.executable, "-m", "racli", "train", "--db", store.db, "--resume", str(first.run_id)]
    procs = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env()
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    err = next(e for p, (_, e) in zip(procs, outs) if p.returncode == 2).strip()
    assert err.startswith("ra: error: ") and "\n" not in err, err
    assert any(
        w in err for w in ("being resumed by another process", "still running", "is finished")
    ), err
    assert _rows(store, "SELECT status, iterations FROM runs WHERE id=:i", i=first.run_id) == [
        ("finished", 12)
    ]
    dup = _rows(
        store,
        "SELECT step, name, count(*) FROM metrics WHERE run_id=:i "
        "GROUP BY step, name HAVING count(*) > 1",
        i=first.run_id,
    )
    assert dup == []
    assert _rows(
        store, "SELECT count(*) FROM metrics WHERE run_id=:i AND name='compile_s'", i=first.run_id
    ) == [(2,)]  # the first session and the one resumed session
    assert _rows(
        store, "SELECT count(*) FROM metrics WHERE run_id=:i AND name='setup_s'", i=first.run_id
    ) == [(2,)]
