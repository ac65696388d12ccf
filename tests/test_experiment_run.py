"""`ra experiment` end to end on the CPU with a very small model: calibration recorded,
step budgets in the speed ratio, A B B A order, verdict, report with PNGs; the A/A
experiment; SIGINT then the same command again; child processes over two slots."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import time

import pytest
from helpers import ra_inprocess

from racli.config import load_config, packaged_config_path
from racli.experiment import calibrate, plan
from racli.experiment.orchestrate import run_experiment
from racli.experiment.results import Interrupted, Settings
from racli.experiment.view import PlainView
from racli.store.engine import open_store

pytestmark = pytest.mark.slow  # each test trains a few tiny runs (seconds on an idle CPU)

TINY = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "train.batch_size=4",
    "train.eval_interval=1000",
    "train.eval_batches=2",
    "train.final_eval_batches=2",
    "train.log_interval=2",
    "train.warmup_frac=0.0",
    "experiment.calibration_max_s=0.1",
    "experiment.calibration_block_steps=2",
    "experiment.calibration_warmup_steps=1",
    "experiment.calibration_min_rounds=2",
]
TINY_CLI = [a for item in TINY for a in ("--set", item)]


def q(db, sql, *args):
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


@pytest.fixture
def fixed_speed(monkeypatch):
    """Calibration figures fixed (6 steps/s for the first arm; ratios below), so that
    budgets are known; the calibration run is still recorded by the experiment."""
    ratios = {"baseline": 1.0, "ra_v5": 0.8}

    def measure(specs, labels, dataset, **kw):
        per_round = {lab: [1 / (6.0 * ratios[s.attn])] * 3 for lab, s in zip(labels, specs)}
        per_round[labels[-1]] = [t * f for t, f in zip(per_round[labels[-1]], (1.0, 1.01, 0.99))]
        return calibrate.summarise(
            labels, [s.attn for s in specs], per_round, block_steps=2, precision=0.005, timed_s=1.0
        )

    monkeypatch.setattr(calibrate, "measure", measure)
    return ratios


LOSSES = "SELECT val_loss FROM runs WHERE kind='train' ORDER BY id"


def test_two_variants_two_seeds_end_to_end(tmp_path):
    db = tmp_path / "ra.db"
    report = tmp_path / "exp.md"
    res = ra_inprocess(
        "experiment",
        "--db",
        db,
        "--attn",
        "baseline,ra_v5",
        "--seeds",
        "1-2",
        "--minutes",
        "0.003",
        "--device",
        "cpu",
        *TINY_CLI,
        "--set",
        "experiment.calibration_min_rounds=3",
        "--report",
        report,
    )
    assert res.exit_code == 0, (res.stdout, res.stderr)
    # the calibration: its own run kind, ratios with intervals as metrics and in its config
    ((cal_id, cal_status, cal_config),) = q(
        db, "SELECT id, status, config FROM runs WHERE kind='calibration'"
    )
    import json

    cal = json.loads(cal_config)["calibration"]
    # the cap: calibration_max_s (0.1 s here) or 10% of the planned training time
    # (2 arms x 2 seeds x 0.003 min), whichever is smaller; min_rounds holds even past it
    cap = min(0.1, 0.1 * 2 * 2 * 0.003 * 60)
    assert cal_status == "finished" and cal["rounds"] >= 3 and cal["timed_s"] >= cap
    assert cal["cap_s"] == pytest.approx(cap) and "dropped" in cal and "halves" in cal
    names = {n for (n,) in q(db, "SELECT name FROM metrics WHERE run_id=?", cal_id)}
    assert {
        "steps_per_s:baseline",
        "speed_ratio:ra_v5",
        "speed_ratio_lo:ra_v5",
        "speed_ratio_hi:ra_v5",
    } <= names
    # budgets: S for the first, S x ratio for the other; the order A B B A
    rows = q(
        db,
        "SELECT id, attn, seed, status, iterations, config, config_hash FROM runs "
        "WHERE kind='train' ORDER BY id",
    )
    assert [(a, s) for _, a, s, *_ in rows] == [
        ("baseline", 1),
        ("ra_v5", 1),
        ("ra_v5", 2),
        ("baseline", 2),
    ]
    configs = [json.loads(r[5]) for r in rows]
    s0 = configs[0]["budget"]["steps"]
    ratio = cal["arms"][1]["ratio"]
    assert s0 == max(1, round(0.003 * 60 * cal["arms"][0]["steps_per_s"]))
    for (_, attn, _, status, its, *_), c in zip(rows, configs):
        expected = s0 if attn == "baseline" else max(1, round(s0 * ratio))
        assert status == "finished" and its == c["budget"]["steps"] == expected
        assert c["budget_source"]["calibration_run"] == cal_id
        assert c["budget_source"]["ratio"] == pytest.approx(1.0 if attn == "baseline" else ratio)
    assert len({r[6] for r in rows}) == 1  # the arms pool: one config_hash
    # each run's line: its val_loss, its wall time and the training time it was charged
    for (run_id, attn, seed, *_), loss in zip(rows, [r[0] for r in q(db, LOSSES)]):
        line = f"{attn} seed {seed} (run {run_id}): finished val_loss {loss:.4f} ("
        assert line in res.stderr, res.stderr[-3000:]
    assert res.stderr.count("s in all, ") == 4 and res.stderr.count("s of training)") == 4
    # the verdict, by the compare rules, and the report with its PNGs
    assert "FINAL COMPARISON (Matched Speed)" in res.stdout and "VERDICT" in res.stdout
    assert "ra_v5: 2 run(s)" in res.stdout
    # matched time, said as it is: each arm's steps and the calibrated ratio, paired by design
    assert "equal steps" not in res.stdout and "Budget: matched time" in res.stdout
    assert f"baseline {s0} steps" in res.stdout and "Method: paired by seed" in res.stdout
    if not cal["settled"]:  # a 0.1 s CPU calibration rarely settles: said loudly
        assert "UNSETTLED" in res.stdout
    text = report.read_text()
    for needle in ("## Calibration", "## Runs", "## Verdict", "exp-val_loss.png", "## Gates"):
        assert needle in text
    # the runs' table says where each run started; one device: no table by device
    assert "| run | arm | attention | device | seed |" in text and "| baseline | cpu | 1 |" in text
    assert "## Speed by device" not in text and "Speed by device" not in res.stdout
    assert (tmp_path / "exp-val_loss.png").stat().st_size > 1000
    assert (tmp_path / "exp-train_loss.png").is_file()
    # the same command again: nothing to do, same runs, calibration reused
    again = ra_inprocess(
        "experiment",
        "--db",
        db,
        "--attn",
        "baseline,ra_v5",
        "--seeds",
        "1-2",
        "--minutes",
        "0.003",
        "--device",
        "cpu",
        *TINY_CLI,
        "--json",
    )
    assert again.exit_code == 0, again.stderr
    assert "reusing run" in again.stderr
    assert q(db, "SELECT count(*) FROM runs") == [(5,)]
    data = json.loads(again.stdout)
    assert data["verdicts"][0]["candidate"] == "ra_v5"
    ((speed,),) = [data["device_speeds"]]
    tps = [t for (t,) in q(db, "SELECT tokens_per_s FROM runs WHERE attn='baseline'")]
    assert speed["device"] == "cpu" and speed["runs"] == {"baseline": 2, "ra_v5": 2}
    assert speed["tokens_per_s"]["baseline"] == pytest.approx(sum(tps) / 2)
    assert speed["factor"] == pytest.approx(1.0)


def test_aa_experiment_compares_its_two_arms(tmp_path, fixed_speed):
    import json

    db = tmp_path / "ra.db"
    res = ra_inprocess(
        "experiment",
        "--db",
        db,
        "--attn",
        "baseline,baseline",
        "--seeds",
        "1-2",
        "--minutes",
        "0.02",
        "--device",
        "cpu",
        *TINY_CLI,
        "--json",
    )
    assert res.exit_code == 0, (res.stdout, res.stderr)
    data = json.loads(res.stdout)
    assert data["arms"] == ["baseline#1", "baseline#2"]
    assert data["budgets"]["baseline#1"]["steps"] == data["budgets"]["baseline#2"]["steps"] == 7
    (v,) = data["verdicts"]
    assert (v["candidate"], v["baseline"]) == ("baseline#2", "baseline#1")
    verdict = v["comparison"]["verdict"]
    assert verdict["candidate"]["n"] == verdict["baseline"]["n"] == 2
    # the second arm trains on its own seeds: the arms differ (on the CPU the same seed would
    # give the same loss to the last bit, and PARITY [-0.00%, +0.00%] by construction)
    assert verdict["d"] != 0.0 and verdict["design"] == "independent"
    assert verdict["method"] == "welch" and "A/A" in verdict["method_why"]
    assert verdict["interval"][1] - verdict["interval"][0] > 1e-4
    assert "ra gates" not in verdict["recommendation"]
    assert "INTEGRATE" not in verdict["recommendation"]
    rows = q(db, "SELECT seed, config FROM runs WHERE kind='train' ORDER BY id")
    arms = [(json.loads(c)["experiment"]["arm"], seed) for seed, c in rows]
    assert arms == [
        ("baseline#1", 1),
        ("baseline#2", 1_000_001),
        ("baseline#2", 1_000_002),
        ("baseline#1", 2),
    ]


def test_sigint_then_same_command_resumes_without_duplicates(tmp_path, fixed_speed):
    cfg = load_config(packaged_config_path())
    db = tmp_path / "ra.db"
    settings = Settings(
        arms=plan.parse_arms("baseline,ra_v5"),
        seeds=[1, 2],
        minutes=0.02,
        devices=["cpu"],
        overrides=list(TINY),
        db=str(db),
    )
    calls = []

    def interrupt(info):
        calls.append(info.step)
        if len(calls) == 7 + 2:  # the second run (ra_v5 seed 1, 6 steps) at its step 2
            os.kill(os.getpid(), signal.SIGINT)

    store = open_store(str(db))
    with pytest.raises(Interrupted) as exc:
        run_experiment(settings, cfg, store, view=PlainView(), on_step=interrupt)
    assert "run the same command again" in str(exc.value)
    rows = q(db, "SELECT id, attn, seed, status, iterations FROM runs WHERE kind='train'")
    assert [(a, s, st) for _, a, s, st, _ in rows] == [
        ("baseline", 1, "finished"),
        ("ra_v5", 1, "interrupted"),
    ]
    stopped_id, stopped_at = rows[1][0], rows[1][4]
    assert 0 < stopped_at < 6
    from racli.store.checkpoints import checkpoint_path

    assert checkpoint_path(str(db), stopped_id).is_file()

    outcome = run_experiment(settings, cfg, store, view=PlainView())
    store.close()
    rows = q(
        db, "SELECT id, attn, seed, status, iterations FROM runs WHERE kind='train' ORDER BY id"
    )
    assert [(a, s, st) for _, a, s, st, _ in rows] == [
        ("baseline", 1, "finished"),
        ("ra_v5", 1, "finished"),
        ("ra_v5", 2, "finished"),
        ("baseline", 2, "finished"),
    ]
    assert rows[1][0] == stopped_id and rows[1][4] == 6  # resumed under its own id
    assert q(db, "SELECT count(*) FROM runs WHERE kind='calibration'") == [(1,)]
    assert outcome.verdicts[0].comparison is not None


def test_until_settled_adds_seed_pairs_up_to_the_maximum(tmp_path, fixed_speed):
    cfg = load_config(packaged_config_path())
    db = tmp_path / "ra.db"
    settings = Settings(
        arms=plan.parse_arms("baseline,ra_v5"),
        seeds=[1, 2],
        minutes=0.01,
        devices=["cpu"],
        overrides=list(TINY),
        until_settled=True,
        max_seeds=4,
        db=str(db),
    )
    store = open_store(str(db))
    outcome = run_experiment(settings, cfg, store, view=PlainView())
    store.close()
    assert outcome.design["looks"] == [2, 4]
    first = outcome.looks[0]
    if first["outcomes"]["ra_v5"] == "INCONCLUSIVE":
        assert outcome.seeds == [1, 2, 3, 4] and len(outcome.looks) == 2
    assert outcome.confidence == pytest.approx(outcome.looks[-1]["confidence"])
    assert outcome.looks[0]["confidence"] > 0.99  # the first look is judged strictly


def test_child_processes_rotate_over_two_slots(tmp_path, fixed_speed):
    """The GPU code path (one child `ra train` per device, CUDA_VISIBLE_DEVICES aside)
    on two CPU slots."""
    import json

    cfg = load_config(packaged_config_path())
    db = tmp_path / "ra.db"
    settings = Settings(
        arms=plan.parse_arms("baseline,ra_v5"),
        seeds=[1, 2],
        minutes=0.02,
        devices=["cpu", "cpu"],
        overrides=list(TINY),
        processes=True,
        db=str(db),
    )
    store = open_store(str(db))
    stream = io.StringIO()
    outcome = run_experiment(settings, cfg, store, view=PlainView(stream))
    store.close()
    said = stream.getvalue()
    assert said.count(": started") == 4, said  # one line a run, named or not yet
    assert said.count(": finished") == 4, said
    rows = q(db, "SELECT attn, seed, status, iterations, config FROM runs WHERE kind='train'")
    assert sorted((a, s, st) for a, s, st, *_ in rows) == [
        ("baseline", 1, "finished"),
        ("baseline", 2, "finished"),
        ("ra_v5", 1, "finished"),
        ("ra_v5", 2, "finished"),
    ]
    for attn, _, _, its, config in rows:
        c = json.loads(config)
        assert its == (7 if attn == "baseline" else round(7 * 0.8))
        assert c["budget_source"]["kind"] == "matched_time"
    logs = list((tmp_path / "ra_experiment_logs" / outcome.key).glob("*.log"))
    assert len(logs) == 4
    assert outcome.verdicts[0].comparison is not None


@pytest.mark.gpu
def test_clock_sampler_reads_the_gpu():
    pytest.importorskip("pynvml")
    from racli.training.clocks import ClockSampler

    sampler = ClockSampler("cuda:0")
    sample = sampler.sample()
    assert set(sample) == {"sm_clock_mhz", "power_w", "temp_c"}
    assert sample["sm_clock_mhz"] > 0
    limits = sampler.limits()
    assert set(limits) == {"power_limit_w", "max_sm_clock_mhz"}
    assert limits["power_limit_w"] > 0 and limits["max_sm_clock_mhz"] >= sample["sm_clock_mhz"]
    e0 = sampler.energy_mj()
    time.sleep(0.3)  # the card draws tens of watts idle
    assert e0 is not None and e0 > 0 and sampler.energy_mj() >= e0


@pytest.mark.gpu
def test_gpu_experiment_children_record_clocks(tmp_path):
    """One GPU, the child-process path, a small model without compile: budgets from a real
    CUDA calibration, runs on CUDA_VISIBLE_DEVICES, clocks recorded per log interval."""
    import json

    db = tmp_path / "ra.db"
    res = ra_inprocess(
        "experiment",
        "--db",
        db,
        "--attn",
        "baseline,ra_v5",
        "--seeds",
        "1-2",
        "--minutes",
        "0.05",
        "--devices",
        "0",
        "--no-compile",
        *TINY_CLI,
        "--json",
    )
    assert res.exit_code == 0, (res.stdout, res.stderr)
    data = json.loads(res.stdout)
    assert data["calibration"]["device"].startswith("cuda")
    rows = q(db, "SELECT id, status FROM runs WHERE kind='train'")
    assert [st for _, st in rows] == ["finished"] * 4
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return
    names = {n for (n,) in q(db, "SELECT DISTINCT name FROM metrics WHERE run_id=?", rows[0][0])}
    assert {"sm_clock_mhz", "power_w", "temp_c"} <= names
