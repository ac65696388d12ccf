"""`ra compare` end to end: synthetic histories recorded through the store API,
read back by racli.compare.grouping and the CLI (human and --json output), plots, bench
timings (--metric ms), bad input, no torch import, and speed over 10,000 runs."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error
from helpers import ra_inprocess as ra

from racli.bench.history import group_timings
from racli.compare.grouping import (
    RunRow,
    describe_differences,
    group_runs,
    is_wall_clock,
    judge,
    load_comparison,
    load_train_runs,
    metric_curves,
    select_group,
)
from racli.errors import BadInput
from racli.store.engine import open_store
from racli.store.filters import parse_since
from racli.store.recorder import RunRecorder

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def env(gpu="NVIDIA H100 80GB HBM3", torch="2.11.0", hostname="node1") -> dict:
    return {
        "hostname": hostname,
        "os": "Linux-6.8",
        "python": "3.11.9",
        "torch": torch,
        "cuda": "13.0",
        "cudnn": "91000",
        "gpu_name": gpu,
        "gpu_count": 1,
        "gpu_memory_gb": 79.2,
        "driver": "580.65",
        "cpu": "Xeon",
        "cpu_count": 16,
    }


ENV_A = env()
ENV_A2 = env(hostname="node2")  # another machine of the same class
ENV_B = env(torch="2.10.0")  # another class: other torch version
CFG_X = {"model": {"preset": "tiny"}, "train": {"lr": 6e-4, "steps": 300}, "data": "builtin"}
CFG_Y = {"model": {"preset": "small"}, "train": {"lr": 6e-4, "steps": 300}, "data": "builtin"}
CFG_STEPS = {**CFG_X, "budget": {"steps": 300}}
CFG_MINUTES = {**CFG_X, "budget": {"minutes": 2.0}}
TPS = 500_000.0


def add_run(
    store,
    attn,
    seed,
    val_loss,
    tps=TPS,
    *,
    environment=ENV_A,
    cfg=CFG_X,
    tag=None,
    status="finished",
    curve=True,
    epochs=0.4,
):
    rec = RunRecorder.start(
        store,
        kind="train",
        config={**cfg, "attn": attn, "seed": seed, "tag": tag},
        attn=attn,
        seed=seed,
        tag=tag,
        env_info=environment,
        git_commit="0123abc",
        heartbeat=False,
    )
    if curve:
        for step in (100, 200, 300):
            rec.metric(step, "val_loss", val_loss + 0.2 * (300 - step) / 100, step / 10)
            rec.metric(step, "tokens_per_s", tps, step / 10)
    if status == "finished":
        rec.finish(
            iterations=300,
            tokens=300 * 4096,
            epochs=epochs,
            train_seconds=300 * 4096 / tps,
            val_loss=val_loss,
            tokens_per_s=tps,
        )
    elif status == "running":
        rec.flush()
    else:
        rec.end(status, error="boom")
    return rec.run_id


def add_history(store, *, n=5, effect=0.0, noise=0.005, seed=0, speed=1.0, **kw):
    """``n`` seeds a side; candidate = baseline * (1 + effect), both with ``noise``."""
    rng = np.random.default_rng(seed)
    ids = {"ra_v5": [], "baseline": []}
    for s in range(n):
        ids["baseline"].append(
            add_run(store, "baseline", s, 3.0 * (1 + noise * rng.standard_normal()), TPS, **kw)
        )
        ids["ra_v5"].append(
            add_run(
                store,
                "ra_v5",
                s,
                3.0 * (1 + effect) * (1 + noise * rng.standard_normal()),
                TPS * speed,
                **kw,
            )
        )
    return ids


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """An empty, migrated database, copied for each test (migrations run once)."""
    path = tmp_path_factory.mktemp("template") / "empty.db"
    open_store(str(path)).close()
    return path


@pytest.fixture
def db(template, tmp_path) -> Path:
    path = tmp_path / "ra.db"
    shutil.copy(template, path)
    return path


@pytest.fixture
def store(db):
    s = open_store(str(db))
    yield s
    s.close()


def compare_json(db, *args) -> dict:
    res = ra("compare", "--db", db, "--json", *args)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


# ---------------------------------------------------------------- verdicts


def test_aa_history_is_not_a_win_or_lose(db, store):
    add_history(store, n=5, effect=0.0, noise=0.01, seed=7)
    res = ra("compare", "--db", db)
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert "FINAL COMPARISON (Matched Speed)" in out and "VERDICT" in out
    assert "WINS" not in out and "LOSES" not in out
    data = compare_json(db)
    v = data["verdict"]
    assert v["outcome"] in ("PARITY", "INCONCLUSIVE")
    assert v["method"] == "welch" and v["candidate"]["n"] == 5 and v["baseline"]["n"] == 5
    # the same seeds, but nothing recorded says they share an initialisation: independent
    assert v["design"] == "independent" and "shared initialisation" in v["method_why"]
    if v["outcome"] == "INCONCLUSIVE":
        assert v["seeds_needed"] > 1 and "Seeds needed: about" in out
        assert "Run more seeds" in out
    else:
        assert "Try longer training" in out


def test_planted_improvement_wins_and_json_agrees(db, store):
    ids = add_history(store, n=5, effect=-0.03, noise=0.005, seed=1)
    res = ra("compare", "--db", db)
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    data = compare_json(db)
    v = data["verdict"]
    assert v["outcome"] == "WIN" and v["method"] == "welch" and not v["limited_evidence"]
    assert v["headline"] in out and "RA v5 WINS: validation loss better by" in out
    assert "by at least 1%" in out and v["clears_threshold"]
    assert "Recommendation: INTEGRATE RA v5" in out
    assert v["recommendation"] == "INTEGRATE RA v5 into the training pipeline"
    assert "Speed gap: RA v5 runs at 1.000x" in out and "0.00% loss gap" in out
    # the same numbers in both outputs
    for side in ("candidate", "baseline"):
        assert f"{v[side]['mean']:.4f} ± {v[side]['std']:.4f}" in out
        assert f"[{v[side]['ci_low']:.4f}, {v[side]['ci_high']:.4f}]" in out
        assert f"{v[side]['median_tokens_per_s']:,.0f}" in out
    lo, hi = v["interval"]  # the improvement's: positive = candidate better, text and JSON
    assert f"95% interval [{lo * 100:+.2f}%, {hi * 100:+.2f}%]" in out
    assert f"better by {lo * 100:.2f}% to {hi * 100:.2f}%" in out
    assert 0.01 < lo < v["improvement"] < hi and v["d"] < 0
    # the runs used, with their ids; the data they ran on
    assert data["group"]["run_ids"] == ids
    assert data["group"]["runs"] == {"ra_v5": 5, "baseline": 5}
    assert data["other_groups"] == [] and data["plot"] is None
    assert data["data"] == {"name": "builtin"} and "Data: builtin" in out
    assert not data["different_devices"] and "different devices" not in out
    assert "Iterations completed" in out and "Validation loss" in out


def test_planted_degradation_loses(db, store):
    add_history(store, n=5, effect=+0.03, noise=0.005, seed=2)
    v = compare_json(db)["verdict"]
    assert v["outcome"] == "LOSE" and v["interval"][1] < 0
    out = ra("compare", "--db", db).stdout
    assert "RA v5 LOSES: validation loss worse by" in out and "Tune initialisation" in out


def test_speed_gap_on_recorded_curves_is_invalid(db, store):
    # each baseline curve falls 0.2 per 100 steps: a 0.8x speed explains ~3.7% of loss
    add_history(store, n=3, effect=-0.03, noise=0.005, seed=3, speed=0.8)
    res = ra("compare", "--db", db)
    out = res.stdout
    assert "INVALID: speed gap" in out and "runs at 0.800x Baseline's tokens/s" in out
    v = compare_json(db)["verdict"]
    assert v["outcome"] == "INVALID" and v["invalid_causes"] == ["speed"]
    gap = v["speed_gap"]
    assert gap["ratio"] == pytest.approx(0.8) and gap["too_large"]
    # signed: the slower candidate sees fewer tokens of a falling loss (favours the baseline)
    expected = -0.2 / math.log(1.5) * math.log(1 / 0.8) / 3.0
    assert gap["explained"] == pytest.approx(expected, rel=0.05)
    assert f"{-gap['explained'] * 100:.2f}% loss gap in favour of Baseline" in out
    assert "Compare at equal steps" in v["recommendation"] and v["recommendation"] in out


def test_step_budget_compares_at_equal_steps(db, store):
    add_history(store, n=3, effect=-0.03, noise=0.005, seed=3, speed=0.8, cfg=CFG_STEPS)
    data = compare_json(db)
    assert data["budget"] == {"steps": 300} and data["verdict"]["speed_gap"] is None
    assert data["verdict"]["outcome"] == "WIN"
    out = ra("compare", "--db", db).stdout
    assert "Budget: 300 steps a side (compared at equal steps)" in out


def test_relabelled_same_seed_pair_is_inconclusive(db, store):
    # one config, one seed, 1.3% apart by noise alone; one run relabelled ra_v5
    add_run(store, "baseline", 0, 3.00, cfg=CFG_MINUTES)
    add_run(store, "ra_v5", 0, 2.96, cfg=CFG_MINUTES)
    res = ra("compare", "--db", db)
    assert res.exit_code == 0, res.stderr
    assert "INCONCLUSIVE" in res.stdout and "WINS" not in res.stdout
    v = compare_json(db)["verdict"]
    assert v["outcome"] == "INCONCLUSIVE" and v["limited_evidence"] and v["method"] == "none"
    assert v["interval"] is None and v["seeds_needed"] > 1
    assert "Seeds needed: about" in res.stdout
    # the mirror relabel too
    mirror = compare_json(db, "--candidate", "baseline", "--baseline", "ra_v5")["verdict"]
    assert mirror["outcome"] == "INCONCLUSIVE"


def test_single_run_with_history_noise_gets_a_prediction_interval(db, store):
    rng = np.random.default_rng(9)
    for s in range(4):
        add_run(store, "baseline", s, 3.0 * (1 + 0.003 * rng.standard_normal()))
    add_run(store, "ra_v5", 0, 2.85)
    v = compare_json(db)["verdict"]
    assert v["method"] == "prediction" and v["outcome"] == "WIN"
    assert "history noise" in v["method_why"] and v["spread_source"] == "history"


def test_past_one_epoch_is_invalid_unless_allowed(db, store):
    add_history(store, n=3, effect=-0.03, noise=0.005, seed=4, epochs=10.0, cfg=CFG_STEPS)
    res = ra("compare", "--db", db)
    assert res.exit_code == 0, res.stderr
    assert "INVALID: past one epoch" in res.stdout and "memorisation" in res.stdout
    data = compare_json(db)
    assert data["verdict"]["outcome"] == "INVALID"
    assert data["verdict"]["invalid_causes"] == ["epochs"]
    res = ra("compare", "--db", db, "--allow-epochs")
    assert "RA v5 WINS" in res.stdout and "allowed by --allow-epochs" in res.stdout
    v = compare_json(db, "--allow-epochs")["verdict"]
    assert v["outcome"] == "WIN" and "--allow-epochs" in v["labels"][0]
    assert "--allow-epochs" in v["headline"]


def test_different_devices_are_shown(db, store):
    gpu0 = {**env(), "gpu_index": 0, "gpu_uuid": "GPU-aaaaaaaa-0000"}
    gpu1 = {**env(), "gpu_index": 1, "gpu_uuid": "GPU-bbbbbbbb-1111"}
    rng = np.random.default_rng(5)
    for s in range(3):
        add_run(store, "baseline", s, 3.0 * (1 + 0.005 * rng.standard_normal()), environment=gpu0)
        add_run(store, "ra_v5", s, 3.0 * (1 + 0.005 * rng.standard_normal()), environment=gpu1)
    data = compare_json(db)
    assert data["different_devices"] and len(data["other_groups"]) == 0  # one env class
    assert data["devices"]["baseline"] == ["node1 cuda:0 (GPU-aaaaaaaa)"]
    out = ra("compare", "--db", db).stdout
    assert "Devices: the two sides ran on different devices" in out
    assert "node1 cuda:1 (GPU-bbbbbbbb)" in out


def test_groups_that_differ_say_what_differs(db, store):
    add_history(store, n=2, seed=6, cfg={**CFG_X, "code": "v1.0+abc"})
    add_history(store, n=1, seed=7, cfg={**CFG_X, "code": "v1.0+abc-dirty"})
    data_b = {**CFG_X, "code": "v1.0+abc", "data": {"name": "owt", "content_hash": "1234"}}
    add_history(store, n=1, seed=8, cfg=data_b)
    data = compare_json(db)
    differs = [o["differs"] for o in data["other_groups"]]
    assert ["code version differs"] in differs and ["data differs"] in differs
    out = ra("compare", "--db", db).stdout
    assert "[code version differs]" in out and "[data differs]" in out


def test_metric_tokens_per_s(db, store):
    rng = np.random.default_rng(4)
    for s in range(4):
        add_run(store, "baseline", s, 3.0, TPS * (1 + 0.005 * rng.standard_normal()))
        add_run(store, "ra_v5", s, 3.0, TPS * 1.05 * (1 + 0.005 * rng.standard_normal()))
    res = ra("compare", "--db", db, "--metric", "tokens_per_s")
    assert res.exit_code == 0, res.stderr
    assert "RA v5 WINS: throughput higher by" in res.stdout
    assert "Speed check skipped: the metric is throughput itself" in res.stdout
    data = compare_json(db, "--metric", "tokens_per_s")
    v = data["verdict"]
    assert data["metric"] == "tokens_per_s" and v["outcome"] == "WIN"
    assert not v["lower_is_better"] and v["d"] == pytest.approx(0.05, abs=0.01)


def test_only_finished_runs_count_and_runs_without_value_are_left_out(db, store):
    add_history(store, n=2, seed=5)
    add_run(store, "ra_v5", 9, 2.0, status="failed")
    add_run(store, "ra_v5", 10, 2.0, status="running")
    add_run(store, "ra_v5", 11, 2.0, status="diverged")
    add_run(store, "ra_v5", 12, None, curve=False)  # finished without a val_loss
    data = compare_json(db)
    assert data["group"]["runs"] == {"ra_v5": 2, "baseline": 2}
    assert data["left_out"] == {"ra_v5": 1}
    assert (
        "Left out: 1 finished ra_v5 run(s) without a recorded val_loss"
        in ra("compare", "--db", db).stdout
    )


# ---------------------------------------------------------------- groups


def test_groups_by_config_and_environment_class(db, store):
    a = add_history(store, n=2, seed=10, environment=ENV_A)
    a2 = add_history(store, n=1, seed=11, environment=ENV_A2)  # same class as ENV_A
    add_history(store, n=2, seed=12, environment=ENV_B)
    add_history(store, n=1, seed=13, cfg=CFG_Y)
    add_run(store, "ra_v5", 0, 3.0, environment=ENV_B, cfg=CFG_Y)  # one side only
    data = compare_json(db)
    g = data["group"]
    assert g["env_class"] == "NVIDIA H100 80GB HBM3 / torch 2.11.0"
    assert g["runs"] == {"ra_v5": 3, "baseline": 3}
    assert sorted(g["run_ids"]["ra_v5"]) == sorted(a["ra_v5"] + a2["ra_v5"])
    assert sorted(g["run_ids"]["baseline"]) == sorted(a["baseline"] + a2["baseline"])
    others = data["other_groups"]
    sizes = [(o["env_class"], o["runs"]["ra_v5"], o["runs"]["baseline"]) for o in others]
    assert sizes == [
        ("NVIDIA H100 80GB HBM3 / torch 2.10.0", 2, 2),
        ("NVIDIA H100 80GB HBM3 / torch 2.11.0", 1, 1),
        ("NVIDIA H100 80GB HBM3 / torch 2.10.0", 1, 0),
    ]
    assert [o["comparable"] for o in others] == [True, True, False]
    assert others[0]["config_hash"] == g["config_hash"] != others[1]["config_hash"]

    out = ra("compare", "--db", db).stdout
    assert f"Group: config {g['config_hash']} on NVIDIA H100 80GB HBM3 / torch 2.11.0" in out
    assert "Other groups, not compared (3):" in out
    assert f"config {g['config_hash']} on NVIDIA H100 80GB HBM3 / torch 2.10.0: 2 ra_v5" in out
    assert "(one side only)" in out

    # --any-env pools the environment classes of one config
    data = compare_json(db, "--any-env")
    assert data["group"]["env_class"] is None
    assert data["group"]["runs"] == {"ra_v5": 5, "baseline": 5}
    assert len(data["group"]["env_classes"]) == 2
    assert [o["runs"] for o in data["other_groups"]] == [{"ra_v5": 2, "baseline": 1}]
    assert "environment classes pooled" in ra("compare", "--db", db, "--any-env").stdout


def test_largest_group_wins_even_when_older(db, store):
    add_history(store, n=3, seed=20, environment=ENV_B)  # older but larger
    add_history(store, n=2, seed=21, environment=ENV_A)
    assert compare_json(db)["group"]["env_class"].endswith("torch 2.10.0")


def test_no_comparable_group(db, store):
    add_run(store, "ra_v5", 0, 3.0, environment=ENV_A)
    add_run(store, "baseline", 0, 3.0, environment=ENV_B)
    err = one_line_error(ra("compare", "--db", db))
    assert "no comparable runs" in err and "--any-env" in err
    assert compare_json(db, "--any-env")["group"]["runs"] == {"ra_v5": 1, "baseline": 1}


def test_tag_and_since_filters(db, store):
    add_history(store, n=2, seed=30, tag="old")
    new = add_history(store, n=3, seed=31, tag="new")
    data = compare_json(db, "--tag", "new")
    assert data["group"]["run_ids"] == new and data["filters"]["tag"] == "new"
    assert compare_json(db, "--since", "2000-01-01")["group"]["runs"]["ra_v5"] == 5
    assert compare_json(db, "--since", "2000-01-01T00:00:00+02:00")["verdict"]["outcome"]
    err = one_line_error(ra("compare", "--db", db, "--since", "3000-01-01"))
    assert "no finished train runs of 'ra_v5'" in err and "started since 3000-01-01" in err
    err = one_line_error(ra("compare", "--db", db, "--tag", "nope"))
    assert "with tag 'nope'" in err


def test_history_functions_directly(store):
    add_history(store, n=2, seed=40)
    add_history(store, n=1, seed=41, environment=ENV_B)
    rows = load_train_runs(store, attns=("ra_v5", "baseline"))
    assert len(rows) == 6 and {r.env_class for r in rows} == {
        "NVIDIA H100 80GB HBM3 / torch 2.11.0",
        "NVIDIA H100 80GB HBM3 / torch 2.10.0",
    }
    groups = group_runs(rows, candidate="ra_v5", baseline="baseline")
    assert [g.size for g in groups] == [4, 2]
    assert len(group_runs(rows, candidate="ra_v5", baseline="baseline", any_env=True)) == 1
    cmp = load_comparison(store)
    assert cmp.verdict.candidate.n == 2 and len(cmp.others) == 1
    curves = metric_curves(store, {"baseline": cmp.verdict.baseline.run_ids})
    assert [len(points) for _, points in curves["baseline"]] == [3, 3]
    assert parse_since("2025-06-01").isoformat() == "2025-06-01T00:00:00"
    assert parse_since("2025-06-01T12:00+02:00").hour == 10
    with pytest.raises(BadInput):
        parse_since("yesterday")


# ---------------------------------------------------------------- plot


def test_plot_writes_a_png(db, store, tmp_path):
    add_history(store, n=2, seed=50)
    png = tmp_path / "curves.png"
    res = ra("compare", "--db", db, "--plot", png)
    assert res.exit_code == 0, res.stderr
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert f"Plot written to {png}" in res.stdout
    png2 = tmp_path / "curves2.png"
    data = compare_json(db, "--plot", png2)
    assert data["plot"] == str(png2) and png2.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_without_curves_or_directory(db, store, tmp_path):
    add_run(store, "baseline", 0, 3.0, curve=False)
    add_run(store, "ra_v5", 0, 3.0, curve=False)
    err = one_line_error(ra("compare", "--db", db, "--plot", tmp_path / "x.png"))
    assert "no val_loss curves" in err and not (tmp_path / "x.png").exists()
    err = one_line_error(ra("compare", "--db", db, "--plot", tmp_path / "no" / "x.png"))
    assert "does not exist" in err
    # a folder that cannot be written: refused before the work, not when the image is saved
    err = one_line_error(ra("compare", "--db", db, "--plot", "/proc/ra-curves.png"))
    assert "cannot write plot /proc/ra-curves.png" in err


# ---------------------------------------------------------------- bench timings


def add_bench(store, rows, *, environment=ENV_A, status="finished", shape=(8, 1024, 12, 64)):
    rec = RunRecorder.start(
        store,
        kind="bench",
        config={"bench": {"shape": list(shape)}},
        env_info=environment,
        git_commit="0123abc",
        heartbeat=False,
    )
    b, t, h, d = shape
    for attn, mode, phase, ms, st in rows:
        rec.timing(
            attn=attn, mode=mode, phase=phase, batch=b, seq=t, heads=h, head_dim=d,
            dtype="float16", device="cuda", backend="flash", median_ms=ms,
            p10_ms=None if ms is None else ms * 0.98, p90_ms=None if ms is None else ms * 1.02,
            iters=100, tflops=None, status=st, reason=None if st == "ok" else "no CUDA graph",
        )  # fmt: skip
    if status == "finished":
        rec.finish()
    else:
        rec.end(status)
    return rec.run_id


SEED_TIMINGS = [
    ("baseline", "eager", "fwd", 1.33, "ok"),
    ("baseline", "compile", "fwd", 1.15, "ok"),
    ("baseline", "cuda_graph", "fwd", 1.07, "ok"),
    ("ra_v5", "eager", "fwd", 1.33, "ok"),
    ("ra_v5", "compile", "fwd", 1.15, "ok"),
    ("ra_v5", "cuda_graph", "fwd", None, "skipped"),
    ("baseline", "eager", "fwd_bwd", 4.0, "ok"),
    ("baseline", "cuda_graph", "fwd_bwd", 3.0, "ok"),
    ("ra_v5", "eager", "fwd_bwd", 4.2, "ok"),
    ("ra_v5", "compile", "fwd_bwd", 3.3, "ok"),
    ("ra_beta", "eager", "fwd", 0.5, "ok"),  # another variant: not part of this comparison
]


def test_metric_ms_best_vs_best(db, store):
    first = add_bench(store, SEED_TIMINGS)
    # a later run of the same shape and environment: a better ra_v5 graph time counts
    second = add_bench(store, [("ra_v5", "cuda_graph", "fwd", 1.06, "ok")])
    add_bench(store, [("ra_v5", "eager", "fwd", 0.01, "ok")], status="failed")  # ignored
    other = add_bench(
        store,
        [("baseline", "eager", "fwd", 0.2, "ok"), ("ra_v5", "eager", "fwd", 0.4, "ok")],
        shape=(2, 64, 4, 32),
    )
    res = ra("compare", "--db", db, "--metric", "ms")
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert out.count("FAIR COMPARISON (Best vs Best)") == 2
    assert "Best Baseline:  1.070ms (cuda_graph)" in out
    assert "Best RA v5:     1.060ms (cuda_graph)" in out
    assert "RA v5 / Baseline: 0.99x  ✅ parity: within 5%" in out
    assert "RA v5 / Baseline: 1.10x  within 15%: acceptable overhead (10.0% slower)" in out
    assert "RA v5 / Baseline: 2.00x  ❌ overhead: 100.0% slower" in out
    assert "ra_beta" not in out and "Ra_beta" not in out
    # newest group first
    assert out.index("B=2 T=64") < out.index("B=8 T=1024")

    data = compare_json(db, "--metric", "ms")
    assert data["metric"] == "ms"
    g_new, g_old = data["groups"]
    assert g_new["run_ids"] == [other] and g_old["run_ids"] == [first, second]
    assert g_old["shape"] == {
        "batch": 8, "seq": 1024, "heads": 12, "head_dim": 64, "dtype": "float16", "device": "cuda"
    }  # fmt: skip
    best = {(b["phase"], b["attn"]): b for b in g_old["best"]}
    assert best[("fwd", "ra_v5")]["best_ms"] == 1.06
    assert best[("fwd", "ra_v5")]["best_mode"] == "cuda_graph"
    assert best[("fwd", "ra_v5")]["wording"] == "✅ parity: within 5%"
    assert best[("fwd_bwd", "ra_v5")]["ratio"] == pytest.approx(1.1)
    for b in g_old["best"]:
        if b["ratio"] is not None and b["attn"] != "baseline":
            assert f"{b['ratio']:.2f}x  {b['wording']}" in out
    assert data["plot"] is None


def test_metric_ms_plot_draws_the_best_of_each_side(db, store, tmp_path):
    """A panel per group, phase and backend, the best row of each side as a box (the
    medians and p10-p90 of rows without repeats), the mark in words (no emoji glyphs)."""
    from PIL import Image

    add_bench(store, SEED_TIMINGS)
    add_bench(store, [("baseline", "eager", "fwd", 0.2, "ok"), ("ra_v5", "eager", "fwd", 0.4, "ok")],
              shape=(2, 64, 4, 32))  # fmt: skip
    png = tmp_path / "ms.png"
    res = ra("compare", "--db", db, "--metric", "ms", "--plot", png)
    assert res.exit_code == 0, res.stderr
    assert f"Plot written to {png}" in res.stdout and "Glyph" not in res.stderr
    assert Image.open(png).size[0] > 1000  # three panels: two phases of one group, one of the other
    svg = tmp_path / "ms.svg"
    assert compare_json(db, "--metric", "ms", "--plot", svg)["plot"] == str(svg)
    from racli.bench.history import best_rows, load_bench_comparison

    groups = load_bench_comparison(
        store, candidate="ra_v5", baseline="baseline", tag=None, since=None, any_env=False
    ).groups
    panels = [
        (phase, [r.attn for r in rows], w) for g in groups for phase, _, rows, w in best_rows(g)
    ]
    assert panels == [
        ("fwd", ["baseline", "ra_v5"], "2.00x: ❌ overhead: 100.0% slower"),
        ("fwd", ["baseline", "ra_v5"], "1.07x: within 15%: acceptable overhead (7.5% slower)"),
        ("fwd_bwd", ["baseline", "ra_v5"], "1.10x: within 15%: acceptable overhead (10.0% slower)"),
    ]


def test_metric_ms_groups_by_environment_class(db, store):
    add_bench(store, SEED_TIMINGS, environment=ENV_A)
    add_bench(store, SEED_TIMINGS, environment=ENV_B)
    data = compare_json(db, "--metric", "ms")
    assert [g["env_class"][-6:] for g in data["groups"]] == ["2.10.0", "2.11.0"]
    data = compare_json(db, "--metric", "ms", "--any-env")
    assert len(data["groups"]) == 1 and data["groups"][0]["env_class"] is None


def test_metric_ms_without_bench_runs(db, store):
    add_history(store, n=1)
    err = one_line_error(ra("compare", "--db", db, "--metric", "ms"))
    assert "no ok bench timings of 'ra_v5'" in err and "ra bench" in err


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, words",
    [
        (["--metric", "perplexity"], "unknown metric 'perplexity'"),
        (["--candidate", "baseline"], "nothing to compare"),
        (["--candidate", "nope"], "unknown attention 'nope' (valid: baseline, ra_beta"),
        (["--baseline", "nope"], "unknown attention 'nope'"),
        (["--threshold", "1"], "--threshold is a fraction"),
        (["--since", "last week"], "bad --since 'last week'"),
        (["--candidate", "ra_beta"], "no finished train runs of 'ra_beta' (use `ra train --attn"),
        (["--baseline", "sdpa_gate"], "no finished train runs of 'sdpa_gate'"),
    ],
)
def test_bad_input_is_one_line_exit_2(db, store, args, words):
    add_history(store, n=1)
    err = one_line_error(ra("compare", "--db", db, *args))
    assert words in err


def test_missing_database_is_bad_input(tmp_path):
    err = one_line_error(ra("compare", "--db", tmp_path / "none.db"))
    assert "no database" in err and not (tmp_path / "none.db").exists()


def test_empty_database(db):
    err = one_line_error(ra("compare", "--db", db))
    assert "no finished train runs of 'ra_v5'" in err


@pytest.mark.slow
def test_compare_imports_no_torch(db, store, tmp_path):
    add_history(store, n=2, seed=60)
    add_bench(store, SEED_TIMINGS)
    png = tmp_path / "p.png"
    code = f"""
import sys
from racli.cli import app
codes = []
for args in (["compare", "--db", {str(db)!r}, "--plot", {str(png)!r}],
             ["compare", "--db", {str(db)!r}, "--json", "--metric", "tokens_per_s"],
             ["compare", "--db", {str(db)!r}, "--metric", "ms"]):
    try:
        app(args)
    except SystemExit as exc:
        codes.append(exc.code)
assert codes == [0, 0, 0], codes
assert "torch" not in sys.modules, "torch was imported"
"""
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert png.read_bytes()[:8] == PNG_SIGNATURE


# ---------------------------------------------------------------- designs, experiments


H200_STEPS = {"baseline": 2007, "ra_v5": 1998}
H200_LOSS = {"baseline": (2.1531, 2.1841, 2.1881), "ra_v5": (2.1902, 2.2019, 2.2026)}


def add_h200_experiment(
    store, *, pairing=False, key="h200exp", seed_offset=0, curve="val_loss", ratio_ci=None
):
    """The six runs of the H200 report (GPT-2 124M, 2 minutes a run at matched time, seeds
    1-3), as `ra experiment` records them: matched-time budgets from a calibrated ratio of
    0.9957 [0.9910, 1.0004] (or `ratio_ci`, unsettled), loss curves (`curve`: val_loss,
    train_loss beside the final val_loss alone, or None: the final val_loss alone), the
    experiment's key and arm in the config."""
    cfg = {
        "model": {"preset": "gpt2"},
        "train": {"lr": 6e-4},
        "data": {"name": "code", "train_tokens": 201_000_000},
    }
    if pairing:
        from racli.names import PAIRING_RULE

        cfg["pairing"] = dict(PAIRING_RULE)
    ids = {}
    for attn in ("baseline", "ra_v5"):
        steps = H200_STEPS[attn]
        ratio, ci = (1.0, None) if attn == "baseline" else (0.9957, ratio_ci or [0.9910, 1.0004])
        for seed, loss in zip((1, 2, 3), H200_LOSS[attn]):
            config = {
                **cfg,
                "attn": attn,
                "seed": seed + seed_offset,
                "budget": {"steps": steps},
                "experiment": {"key": key, "arm": attn, "arms": ["baseline", "ra_v5"]},
                "budget_source": {
                    "kind": "matched_time",
                    "minutes": 2.0,
                    "calibration_run": 1,
                    "reference": "baseline",
                    "reference_steps": 2007,
                    "ratio": ratio,
                    "ratio_ci": ci,
                    "steps": steps,
                    **({"calibration_settled": False} if ratio_ci and ci else {}),
                },
            }
            rec = RunRecorder.start(
                store, kind="train", config=config, attn=attn, seed=seed + seed_offset,
                env_info=env(gpu="NVIDIA H200"), git_commit="0123abc", heartbeat=False,
            )  # fmt: skip
            for step in (500, 1000, 1500, steps) if curve else ():
                value = loss + 0.05 * math.log(steps / step) + (0.1 if curve == "train_loss" else 0)
                rec.metric(step, curve, value, step / 17)
            if curve != "val_loss":
                rec.metric(steps, "val_loss", loss, steps / 17)
            rec.finish(
                iterations=steps, tokens=steps * 524_288, epochs=0.5, train_seconds=120.0,
                val_loss=loss, tokens_per_s=steps * 524_288 / 120.0,
            )  # fmt: skip
            ids.setdefault(attn, []).append(rec.run_id)
    return ids


@pytest.mark.parametrize("pairing", [False, True])
def test_h200_experiment_runs_are_judged_paired(db, store, pairing):
    add_h200_experiment(store, pairing=pairing)
    res = ra("compare", "--db", db)
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    v = compare_json(db)["verdict"]
    assert v["method"] == "paired" and v["design"] == "paired"
    assert "paired by design" in v["method_why"] and "Method: paired by seed" in out
    lo, hi = v["interval"]
    assert (lo, hi) == pytest.approx((-0.0247, 0.0035), abs=2e-4)
    assert hi - lo < 0.0086 - -0.0299  # narrower than the report's Welch [-2.99%, +0.86%]
    # each arm's steps and the calibrated ratio, never "compared at equal steps"
    assert "equal steps" not in out
    assert (
        "Budget: matched time, 2 minutes a side: baseline 2007 steps, ra_v5 1998 steps "
        "(calibrated speed ratio 0.9957 [0.9910, 1.0004])" in out
    )
    assert "Matched time: RA v5 trained 1998 steps, Baseline 2007" in out
    gap = v["speed_gap"]
    assert gap["kind"] == "matched_time" and not gap["too_large"] and not gap["mismatch"]
    assert abs(gap["explained"]) < 0.001 and "At either end of that interval" in out
    assert v["outcome"] == "INCONCLUSIVE" and v["seeds_needed"] >= 4
    assert v["seeds_needed_range"][0] < v["seeds_needed"] < v["seeds_needed_range"][1]


def test_matched_time_with_a_wide_calibration_is_invalid(db, store):
    ids = add_h200_experiment(store)
    from sqlalchemy import update

    from racli.store.models import Run

    with store.writing() as conn:  # a CPU-like calibration: x0.9637 [0.4423, 2.0998]
        for rid in ids["ra_v5"]:
            row = conn.execute(Run.__table__.select().where(Run.id == rid)).mappings().one()
            config = dict(row["config"])
            config["budget_source"] = {
                **config["budget_source"],
                "ratio_ci": [0.4423, 2.0998],
                "calibration_settled": False,
            }
            conn.execute(update(Run).where(Run.id == rid).values(config=config))
    v = compare_json(db)["verdict"]
    assert v["outcome"] == "INVALID" and v["invalid_causes"] == ["budget"]
    assert "Calibrate longer" in v["recommendation"]
    assert any("UNSETTLED CALIBRATION" in label for label in v["labels"])
    out = ra("compare", "--db", db).stdout
    assert "UNSETTLED" in out and "step budgets imprecise" in out


@pytest.mark.parametrize("curve", ["train_loss", None])
def test_matched_time_without_val_loss_curves_fits_the_train_loss(db, store, tmp_path, curve):
    """Runs shorter than train.eval_interval record their final val_loss alone: the
    budgets' check then fits the train-loss curves (within one epoch the training loss
    falls as the validation loss does), and says so; with no curve at all it is labelled
    unchecked (it let such verdicts through labelled before)."""
    wide = [0.4423, 2.0998]
    add_h200_experiment(store, curve=curve, ratio_ci=wide)
    v = compare_json(db)["verdict"]
    gap = v["speed_gap"]
    if curve is None:
        assert gap["explained"] is None and v["outcome"] != "INVALID"
        assert any("precision was not checked (no loss curve)" in x for x in v["labels"])
        return
    assert v["outcome"] == "INVALID" and v["invalid_causes"] == ["budget"]
    assert "6 train-loss curve(s)" in gap["basis"] and "no val-loss curve" in gap["basis"]
    # the slope the val-loss curves give (here the two differ by a constant)
    other = open_store(str(tmp_path / "val.db"))
    try:
        add_h200_experiment(other, ratio_ci=wide)
    finally:
        other.close()
    by_val = compare_json(str(tmp_path / "val.db"))["verdict"]["speed_gap"]
    assert "val-loss curve(s)" in by_val["basis"] and "train-loss" not in by_val["basis"]
    assert gap["explained"] == pytest.approx(by_val["explained"], rel=0.05)


def test_aa_experiment_runs_on_separate_seeds_are_independent():
    from racli.compare.design import pairing

    rows = [_record(i, "baseline#1", i, 3.0) for i in range(3)]
    rows += [_record(10 + i, "baseline#2", 1_000_000 + i, 3.0) for i in range(3)]
    configs = {r.id: {"experiment": {"key": "k"}} for r in rows}
    d = pairing(rows[3:], rows[:3], configs, ("baseline#2", "baseline#1"))
    assert not d.paired and "A/A" in d.why
    d = pairing(rows[:3], rows[:3], configs, ("ra_v5", "baseline"))
    assert d.paired and "ra experiment" in d.why
    assert not pairing(rows[:3], rows[:3], {}, ("ra_v5", "baseline")).paired


def test_diverged_or_failed_runs_count_and_unbalanced_is_invalid(db, store):
    add_history(store, n=3, effect=-0.03, noise=0.005, seed=1, cfg=CFG_STEPS)
    # one more seed a side, as an experiment runs them: ra_v5's diverged
    gone = add_run(store, "ra_v5", 3, 9.9, cfg=CFG_STEPS, status="diverged")
    add_run(store, "baseline", 3, 3.0, cfg=CFG_STEPS)
    add_run(store, "ra_v5", 0, 9.9, cfg=CFG_STEPS, status="failed")  # seed 0 finished later
    v = compare_json(db)["verdict"]
    assert (v["candidate"]["diverged"], v["candidate"]["failed"]) == (1, 0)
    assert (v["baseline"]["diverged"], v["baseline"]["failed"]) == (0, 0)
    assert v["outcome"] == "INVALID" and v["invalid_causes"] == ["unfinished"]
    assert "as many attempts on both sides" in v["reason"]
    out = ra("compare", "--db", db).stdout
    assert "runs missing unevenly" in out and "diverged / failed" in out
    assert "ra runs show" in v["recommendation"]
    # a baseline seed lost as well: balanced, judged
    add_run(store, "baseline", 4, 9.9, cfg=CFG_STEPS, status="diverged")
    add_run(store, "ra_v5", 4, 2.9, cfg=CFG_STEPS)
    v = compare_json(db)["verdict"]
    assert v["outcome"] == "WIN" and v["baseline"]["diverged"] == 1
    # an excluded run does not count: 4 attempts against 5, one lost of 5 is chance
    res = ra("runs", "exclude", str(gone), "--reason", "test", "--db", db)
    assert res.exit_code == 0, res.stderr
    v = compare_json(db)["verdict"]
    assert v["outcome"] == "WIN" and v["candidate"]["diverged"] == 0


def _arm_cfg(arm: str) -> dict:
    return {**CFG_STEPS, "experiment": {"key": "k", "arm": arm, "device": "0"}}


def test_compare_judges_the_arms_of_an_aa_experiment(db, store):
    """`--candidate baseline#2 --baseline baseline#1`: an A/A experiment's arms from the
    store alone, unpaired (separate seed streams), mirrored when swapped; a plain variant
    on the other side means the runs of no repeated arm."""
    arm1 = [add_run(store, "baseline", s, 3.0 + 0.01 * s, cfg=_arm_cfg("baseline#1"))
            for s in range(3)]  # fmt: skip
    arm2 = [add_run(store, "baseline", 1_000_000 + s, 3.02 + 0.01 * s, cfg=_arm_cfg("baseline#2"))
            for s in range(3)]  # fmt: skip
    gone = add_run(store, "baseline", 1_000_003, 9.9, cfg=_arm_cfg("baseline#2"), status="failed")
    plain = add_history(store, n=3, noise=0.001, seed=3, cfg=CFG_STEPS)  # no arm: not A/A's
    data = compare_json(db, "--candidate", "baseline#2", "--baseline", "baseline#1")
    v = data["verdict"]
    assert sorted(v["candidate"]["run_ids"]) == arm2 and sorted(v["baseline"]["run_ids"]) == arm1
    assert v["design"] == "independent" and "A/A" in v["method_why"]
    assert (v["candidate"]["failed"], v["baseline"]["failed"]) == (1, 0)  # the arm's own
    assert v["improvement"] == pytest.approx(-math.log(3.03 / 3.01))
    w = compare_json(db, "--candidate", "baseline#1", "--baseline", "baseline#2")["verdict"]
    assert w["improvement"] == pytest.approx(-v["improvement"])
    lo, hi = v["interval"]
    assert w["interval"] == pytest.approx([-hi, -lo])
    out = ra("compare", "--db", db, "--candidate", "baseline#2", "--baseline", "baseline#1")
    assert out.exit_code == 0 and "baseline#2 vs baseline#1" in out.stdout
    # a plain variant beside an arm: its runs outside every repeated arm
    u = compare_json(db, "--candidate", "baseline", "--baseline", "baseline#1")["verdict"]
    assert sorted(u["candidate"]["run_ids"]) == plain["baseline"] and gone not in plain["baseline"]
    u = compare_json(db, "--candidate", "ra_v5", "--baseline", "baseline#2")["verdict"]
    assert sorted(u["candidate"]["run_ids"]) == plain["ra_v5"]
    assert sorted(u["baseline"]["run_ids"]) == arm2
    # without an arm named, the A/A runs stay baseline runs, as before
    v = compare_json(db)["verdict"]
    assert v["baseline"]["n"] == 9 and v["candidate"]["n"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--candidate", "baseline#0"], "bad arm 'baseline#0'"),
        (["--candidate", "baseline#two"], "bad arm 'baseline#two'"),
        (["--candidate", "nope#2"], "unknown attention 'nope'"),
        (["--candidate", "baseline#2", "--baseline", "baseline#2"], "both 'baseline#2'"),
        (["--candidate", "baseline#2", "--metric", "ms"], "not bench timings"),
        (["--candidate", "baseline#3", "--baseline", "baseline#1"],
         "an arm of `ra experiment --attn baseline,baseline`"),
    ],
)  # fmt: skip
def test_bad_arms_get_one_line(db, store, args, message):
    add_run(store, "baseline", 1, 3.0, cfg=_arm_cfg("baseline#1"))
    res = ra("compare", "--db", db, *args)
    assert res.exit_code == 2
    assert message in one_line_error(res)


def test_no_impossible_command_is_suggested():
    rows = [_record(i, "baseline#1", i, 3.0) for i in range(2)]
    with pytest.raises(BadInput) as exc:
        select_group(rows, metric="val_loss", candidate="baseline#2", baseline="baseline#1")
    assert "ra train" not in str(exc.value) and "baseline#2" in str(exc.value)
    with pytest.raises(BadInput, match="ra train --attn ra_v5"):
        select_group(rows, metric="val_loss", candidate="ra_v5", baseline="baseline#1")


# ---------------------------------------------------------------- 10,000 runs


N_BIG = 10_000


@pytest.fixture(scope="module")
def big_db(template, tmp_path_factory) -> Path:
    """10,000 finished train runs (plus some unfinished) with val-loss curves of 20 points
    (the speed check fits every curve of the group), inserted in one transaction."""
    from sqlalchemy import insert, select

    from racli.environment import fingerprint_of
    from racli.store.models import Environment, Metric, Run, utcnow
    from racli.store.recorder import config_hash

    path = tmp_path_factory.mktemp("big") / "big.db"
    shutil.copy(template, path)
    store = open_store(str(path))
    rnd = random.Random(0)
    envs = [ENV_A, ENV_B, env(gpu="NVIDIA H200")]
    configs = [{**CFG_X, "train": {**CFG_X["train"], "lr": lr}} for lr in (3e-4, 6e-4, 1e-3)]
    hashes = [config_hash(c) for c in configs]
    now = utcnow()
    rows = []
    for i in range(N_BIG + 500):
        attn = ("baseline", "ra_v5", "ra_beta", "ra_v5_untied")[i % 4]
        k = rnd.randrange(len(configs))
        seed = i // 4
        rows.append(
            {
                "kind": "train",
                "attn": attn,
                "status": "finished" if i < N_BIG else "failed",
                "config": {**configs[k], "attn": attn, "seed": seed},
                "config_hash": hashes[k],
                "seed": seed,
                "tag": None,
                "git_commit": "0123abc",
                "env_id": rnd.randrange(len(envs)) + 1,
                "started_at": now,
                "finished_at": now,
                "heartbeat_at": now,
                "iterations": 300,
                "tokens": 300 * 4096,
                "epochs": 0.4,
                "train_seconds": 2.5,
                "val_loss": 3.0 * (1 + 0.01 * rnd.gauss(0, 1)),
                "tokens_per_s": TPS * (1 + 0.01 * rnd.gauss(0, 1)),
            }
        )
    with store.writing() as conn:
        conn.execute(
            insert(Environment),
            [{"fingerprint": fingerprint_of(e), **e} for e in envs],
        )
        conn.execute(insert(Run), rows)
        ids = [i for (i,) in conn.execute(select(Run.id).order_by(Run.id))]
        curve = [(15 * k, 3.0 + 0.5 * math.log(300 / (15 * k))) for k in range(1, 21)]
        conn.execute(
            insert(Metric),
            [
                {"run_id": i, "step": step, "name": "val_loss", "value": value}
                for i in ids[:N_BIG]
                for step, value in curve
            ],
        )
    store.close()
    return path


@pytest.mark.slow
def test_compare_10000_runs(benchmark, big_db):
    store = open_store(str(big_db), create=False)
    try:
        cmp = benchmark.pedantic(load_comparison, args=(store,), rounds=5, iterations=1)
    finally:
        store.close()
    total = sum(g.size for g in [cmp.group, *cmp.others])
    assert total == N_BIG // 2  # the baseline and ra_v5 halves of the finished runs
    assert len(cmp.others) == 8  # 3 configs x 3 environment classes
    assert cmp.verdict.outcome in ("PARITY", "INCONCLUSIVE")
    assert "val-loss curve(s)" in cmp.verdict.speed_gap.basis  # every curve fitted

    t0 = time.perf_counter()
    res = ra("compare", "--db", big_db, "--json")
    cli_s = time.perf_counter() - t0
    assert res.exit_code == 0, res.stderr
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "racli", "compare", "--db", str(big_db)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    process_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    benchmark.extra_info["runs"] = N_BIG
    benchmark.extra_info["cli_in_process_s"] = round(cli_s, 3)
    benchmark.extra_info["cli_new_process_s"] = round(process_s, 3)
    print(
        f"\ncompare over {N_BIG} runs: CLI in process {cli_s:.3f} s, "
        f"`python -m racli compare` in a new process {process_s:.3f} s"
    )


# ---------------------------------------------------------------- history without a database


def _record(i, attn, seed, val_loss, **kw):
    base = {
        "id": i,
        "attn": attn,
        "seed": seed,
        "config_hash": "h1",
        "val_loss": val_loss,
        "tokens_per_s": TPS,
        "iterations": 300,
        "epochs": 0.5,
        "gpu_name": "H200",
        "torch": "2.11",
        "hostname": "n1",
        "gpu_index": 0,
        "gpu_uuid": "GPU-1",
    }
    return RunRow.from_record({**base, **kw})


def test_history_groups_and_judges_plain_rows():
    rows = [
        _record(i, "baseline" if i % 2 else "ra_v5", i // 2, 3.0 - 0.03 * (i % 2 == 0))
        for i in range(8)
    ]
    rows.append(_record(99, "ra_v5", 0, 3.0, config_hash="h2"))
    group, others, left = select_group(
        rows, metric="val_loss", candidate="ra_v5", baseline="baseline"
    )
    assert group.config_hash == "h1" and group.size == 8 and others[0].config_hash == "h2"
    assert group.devices("ra_v5") == ["n1 cuda:0 (GPU-1)"] and left == {"ra_v5": 0, "baseline": 0}
    describe_differences(group, others, {0: {"code": "a", "x": 1}, 99: {"code": "b"}})
    assert others[0].differs == ["code version differs", "x differs"]
    config = {"budget": {"steps": 300}}
    verdict, noise = judge(group, metric="val_loss", config=config)
    assert verdict.outcome == "WIN" and verdict.speed_gap is None and noise is not None
    assert not is_wall_clock(config) and is_wall_clock({"budget": {"minutes": 1}})
    assert is_wall_clock({})


def test_history_groups_bench_timings_from_plain_rows():
    def t(attn, ms, p10, p90, run_id=1):
        return {
            "run_id": run_id,
            "attn": attn,
            "mode": "eager",
            "phase": "fwd",
            "batch": 2,
            "seq": 64,
            "heads": 4,
            "head_dim": 32,
            "dtype": "float32",
            "device": "cpu",
            "backend": "math",
            "median_ms": ms,
            "p10_ms": p10,
            "p90_ms": p90,
            "tflops": None,
            "gpu_name": None,
            "torch": "2.13",
        }

    (g,) = group_timings(
        [t("baseline", 1.0, 0.99, 1.01), t("ra_v5", 0.5, 0.3, 9.0)],
        candidate="ra_v5",
        baseline="baseline",
    )
    ra = [b for b in g.best if b["attn"] == "ra_v5"][0]
    assert ra["noisy"] and ra["wording"] == "noisy: no mark"
    (g,) = group_timings(
        [t("baseline", 1.0, 0.99, 1.01), t("ra_v5", 0.5, 0.49, 0.51)],
        candidate="ra_v5",
        baseline="baseline",
    )
    assert [b for b in g.best if b["attn"] == "ra_v5"][0]["wording"].startswith("✅ faster")
