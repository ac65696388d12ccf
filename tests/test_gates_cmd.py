"""`ra gates` end to end: gate snapshots recorded through the store API, read
back by the CLI (tables, --json, --step, --plot), bad input, no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_line_error
from helpers import ra_inprocess as ra

from racli.store.engine import open_store
from racli.store.recorder import RunRecorder

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENV = {
    "hostname": "node1",
    "os": "Linux-6.8",
    "python": "3.11.9",
    "torch": "2.11.0",
    "cuda": "13.0",
    "cudnn": "91000",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "gpu_count": 1,
    "gpu_memory_gb": 79.2,
    "driver": "580.65",
    "cpu": "Xeon",
    "cpu_count": 16,
}
LAYERS, HEADS = 2, 4

# w_rec at steps 100 and 200 (w_std starts at 1.0 and w_rec at 0.1 everywhere):
# layer 0 heads 0-1 grow (reciprocity on), layer 0 head 3 and layer 1 decay
# below 0.05 x w_std (off), layer 0 head 2 stays near its init.
W_REC = {
    100: [[0.15, 0.2, 0.1001, 0.06], [0.05, 0.04, 0.03, 0.02]],
    200: [[0.3, 0.4, 0.0999, 0.01], [0.01, 0.02, 0.03, 0.04]],
}


def _start(store, attn, kind="train"):
    return RunRecorder.start(
        store,
        kind=kind,
        config={"model": {"preset": "tiny"}, "attn": attn},
        attn=attn if kind == "train" else None,
        seed=0,
        env_info=ENV,
        git_commit="0123abc",
        heartbeat=False,
    )


def record_ra_v5(store) -> int:
    """Snapshots at steps 0, 100, 200; w_std of layer 1 head 2 never moves."""
    rec = _start(store, "ra_v5")
    for step in (0, 100, 200):
        snap = {}
        for layer in range(LAYERS):
            w_std = [1.0 if step == 0 else 1.0 + 0.01 * step / 100 * (h + 1) for h in range(HEADS)]
            if layer == 1:
                w_std[2] = 1.0  # the dead gate
            w_rec = [0.1] * HEADS if step == 0 else W_REC[step][layer]
            snap[layer] = {"w_std": w_std, "w_rec": w_rec}
        rec.gates(step, snap)
        rec.metric(step, "val_loss", 3.0 - step / 1000)
    rec.finish(iterations=200, val_loss=2.8, tokens_per_s=1e5)
    return rec.run_id


def record_ra_beta(store) -> int:
    rec = _start(store, "ra_beta")
    rec.gates(0, {0: {"beta": [0.0, 0.0]}})
    rec.gates(50, {0: {"beta": [0.5, -0.01]}})
    rec.finish(iterations=50, val_loss=2.9, tokens_per_s=1e5)
    return rec.run_id


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("gates") / "ra.db"
    store = open_store(str(path))
    ids = {"ra_v5": record_ra_v5(store), "ra_beta": record_ra_beta(store)}
    rec = _start(store, "baseline")
    rec.metric(0, "val_loss", 3.0)
    rec.finish(iterations=10, val_loss=3.0, tokens_per_s=1e5)
    ids["baseline"] = rec.run_id
    rec = _start(store, None, kind="bench")
    rec.timing(
        attn="baseline", mode="eager", phase="fwd", batch=2, seq=64, heads=4, head_dim=32,
        dtype="float32", device="cpu", median_ms=0.5, status="ok",
    )  # fmt: skip
    rec.finish()
    ids["bench"] = rec.run_id
    rec = _start(store, "ra_v5")
    rec.end("interrupted")  # stopped before its first snapshot
    ids["empty"] = rec.run_id
    store.close()
    return path, ids


@pytest.fixture(scope="module")
def db(recorded) -> Path:
    return recorded[0]


@pytest.fixture(scope="module")
def ids(recorded) -> dict[str, int]:
    return recorded[1]


def gates_json(db, *args) -> dict:
    res = ra("gates", "--db", db, "--json", *args)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_tables_dead_gate_and_summary(db, ids):
    res = ra("gates", "--db", db, "--run", ids["ra_v5"])
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert f"LEARNED GATES: run {ids['ra_v5']} (ra_v5, finished) at step 200" in out
    assert "(3 snapshots, steps 0..200)" in out
    # one table per gate name, layer x head
    assert "w_std (init +1.000 for every head" in out
    assert "w_rec (init +0.100 for every head; 3/8 heads on)" in out
    assert out.count("  value") == 2 and out.count("  Δ from init") == 2
    assert "layer       h0       h1       h2       h3" in out
    # the dead gate, loudly, and marked in the table
    assert "DEAD GATES: 1 of 16 gates never moved" in out and "(w_std)" in out
    assert "+1.000!" in out
    # the summary line
    assert "w_rec: 3/8 heads above 0.05 (|w_rec/w_std|); largest layer 0 head 1" in out
    assert "Legend: * on: |w_rec/w_std| > 0.05; ! never moved from init" in out


def test_json_shape_and_agreement(db, ids):
    data = gates_json(db, "--run", ids["ra_v5"])
    assert {"run", "attn", "step", "gates"} <= set(data)
    assert data["run"] == ids["ra_v5"] and data["attn"] == "ra_v5" and data["step"] == 200
    assert len(data["gates"]) == 2 * LAYERS * HEADS
    for g in data["gates"]:
        assert set(g) == {"layer", "head", "name", "init", "value", "moved", "state"}
        assert g["moved"] == pytest.approx(g["value"] - g["init"])
    by_key = {(g["layer"], g["head"], g["name"]): g for g in data["gates"]}
    assert by_key[(0, 1, "w_rec")]["value"] == 0.4 and by_key[(0, 1, "w_rec")]["state"] == "on"
    assert by_key[(0, 3, "w_rec")]["state"] == "off"
    assert by_key[(1, 2, "w_std")]["moved"] == 0.0
    assert data["dead"] == [{"layer": 1, "head": 2, "name": "w_std"}]
    # the human output shows the same summary and warnings
    out = ra("gates", "--db", db, "--run", ids["ra_v5"]).stdout
    for line in data["summary"]:
        assert line in out
    assert data["warnings"][0] in out
    on = sum(1 for g in data["gates"] if g["name"] == "w_rec" and g["state"] == "on")
    assert f"{on}/8 heads on" in out


def test_step_option(db, ids):
    data = gates_json(db, "--run", ids["ra_v5"], "--step", "100")
    assert data["step"] == 100
    by_key = {(g["layer"], g["head"], g["name"]): g for g in data["gates"]}
    assert by_key[(0, 1, "w_rec")]["value"] == 0.2
    assert by_key[(0, 3, "w_rec")]["state"] == "on"  # 0.06 / 1.04 > 0.05 at step 100
    out = ra("gates", "--db", db, "--run", ids["ra_v5"], "--step", "0").stdout
    assert "at step 0" in out and "8/8 heads on" in out
    err = one_line_error(ra("gates", "--db", db, "--run", ids["ra_v5"], "--step", "150"))
    assert "step 150 was not recorded; recorded steps: 0, 100, 200" in err


def test_beta_gates(db, ids):
    data = gates_json(db, "--run", ids["ra_beta"])
    states = {g["head"]: g["state"] for g in data["gates"]}
    assert states == {0: "on", 1: "off"} and data["dead"] == []
    out = ra("gates", "--db", db, "--run", ids["ra_beta"]).stdout
    assert "beta: 1/2 heads above 0.05 (|tanh(beta)|); largest layer 0 head 0" in out
    assert "DEAD GATES" not in out


@pytest.mark.slow
def test_plot_writes_a_png(db, ids, tmp_path):
    png = tmp_path / "gates.png"
    res = ra("gates", "--db", db, "--run", ids["ra_v5"], "--plot", png)
    assert res.exit_code == 0, res.stderr
    assert png.read_bytes()[:8] == PNG_SIGNATURE and f"Plot written to {png}" in res.stdout
    png2 = tmp_path / "gates2.png"
    data = gates_json(db, "--run", ids["ra_beta"], "--plot", png2)
    assert data["plot"] == str(png2) and png2.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize(
    "which, words",
    [
        ("baseline", "(baseline) has no gate values: the baseline attention has no gates"),
        ("bench", "is a bench run"),
        ("empty", "(ra_v5) has no gate values: none recorded (status interrupted)"),
        (None, "no run with id 9999"),
    ],
)
def test_bad_runs_are_one_line_exit_2(db, ids, which, words):
    run_id = ids[which] if which else 9999
    err = one_line_error(ra("gates", "--db", db, "--run", run_id))
    assert words in err


def test_other_bad_input(db, ids, tmp_path):
    err = one_line_error(ra("gates", "--db", db, "--run", ids["ra_v5"], "--plot",
                            tmp_path / "missing" / "g.png"))  # fmt: skip
    assert "does not exist" in err
    err = one_line_error(ra("gates", "--db", db, "--run", ids["ra_v5"], "--plot", "/proc/g.png"))
    assert "cannot write plot /proc/g.png" in err
    err = one_line_error(ra("gates", "--db", tmp_path / "none.db", "--run", 1))
    assert "no database" in err
    assert ra("gates", "--db", db).exit_code == 2  # --run is required
    assert ra("gates", "--db", db, "--run", "abc").exit_code == 2


@pytest.mark.slow
def test_gates_imports_no_torch(db, ids, tmp_path):
    png = tmp_path / "g.png"
    run_id = ids["ra_v5"]
    code = f"""
import sys
from racli.cli import app
try:
    app(["gates", "--db", {str(db)!r}, "--run", "{run_id}", "--plot", {str(png)!r}])
except SystemExit as exc:
    assert exc.code == 0, exc.code
assert "torch" not in sys.modules, "torch was imported"
"""
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert png.read_bytes()[:8] == PNG_SIGNATURE


# ---------------------------------------------------------------- reciprocity measures


def record_measured(store, seed, shares, tag="seeds", attn="ra_v5") -> int:
    """A run with the reciprocity measures: rec_share from 0.3% at step 0 to `shares` at
    step 100; the raw gates sit at w_rec/w_std = 0.1 (all 'on' by the old rule)."""
    rec = RunRecorder.start(
        store,
        kind="train",
        config={"model": {"preset": "tiny"}},
        attn=attn,
        seed=seed,
        tag=tag,
        env_info=ENV,
        git_commit="0123abc",
        heartbeat=False,
    )
    for step in (0, 100):
        snap = {}
        for layer in range(LAYERS):
            share = [0.003] * HEADS if step == 0 else shares[layer]
            snap[layer] = {
                "w_std": [1.0] * HEADS,
                "w_rec": [0.1 + 0.001 * step / 100] * HEADS,
                "rec_share": share,
                "rec_effect": [s / 10 for s in share],
                "rec_ablation": [0.0004 * step / 100 * (layer + 1)],
            }
        rec.gates(step, snap)
    rec.finish(iterations=100, val_loss=2.9, tokens_per_s=1e5)
    return rec.run_id


SEED_SHARES = {
    1: [[0.18, 0.01, 0.002, 0.06], [0.0, 0.0, 0.3, 0.01]],
    2: [[0.20, 0.02, 0.001, 0.04], [0.0, 0.0, 0.25, 0.01]],
    3: [[0.16, 0.00, 0.003, 0.07], [0.0, 0.0, 0.35, 0.02]],
}


@pytest.fixture(scope="module")
def seeds_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("seeds") / "ra.db"
    store = open_store(str(path))
    ids = {seed: record_measured(store, seed, shares) for seed, shares in SEED_SHARES.items()}
    ids["beta"] = record_ra_beta(store)
    ids["old"] = record_ra_v5(store)
    store.close()
    return path, ids


def test_one_run_is_classified_by_rec_share(seeds_db):
    db, ids = seeds_db
    res = ra("gates", "--db", db, "--run", ids[1])
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert "Note:" not in out
    assert "rec_share (init +0.3% for every head" not in out  # shares print without sign
    assert "rec_share (init 0.3% for every head; 3/8 heads on)" in out
    assert "w_rec (init +0.100 for every head; 3/8 heads on)" in out  # raw gate: same states
    assert "18%*" in out and "0.2%" in out
    assert (
        "rec_share: 3/8 heads above 5%; largest layer 1 head 2 (30%); at init (step 0) "
        "0/8 above, largest 0.3%"
    ) in out
    assert "Legend: * uses reciprocity: rec_share > 5%" in out
    assert (
        "rec_ablation (loss change with the layer's reciprocal term removed): layer 0 "
        "+0.04%, layer 1 +0.08%" in out
    )
    data = gates_json(db, "--run", ids[1])
    assert data["classified_by"] == "rec_share" and data["use_threshold"] == 0.05
    assert data["note"] is None
    st = {(g["layer"], g["head"], g["name"]): g["state"] for g in data["gates"]}
    assert st[(0, 0, "rec_share")] == "on" and st[(0, 1, "w_rec")] == "off"
    assert st[(1, 0, "rec_ablation")] == "-"


def test_threshold_comes_from_the_config(seeds_db, tmp_path):
    db, ids = seeds_db
    cfg = tmp_path / "ra.yaml"
    text = (ROOT / "ra.yaml").read_text().replace("use_threshold: 0.05", "use_threshold: 0.2")
    cfg.write_text(text)
    out = ra("gates", "--db", db, "--config", cfg, "--run", ids[1]).stdout
    assert "rec_share: 1/8 heads above 20%" in out


def test_old_database_shows_raw_gates_with_a_note(tmp_path):
    src = ROOT / "docs" / "h100" / "train.db"
    if not src.exists():
        pytest.skip("docs/h100/train.db is not in this checkout")
    import hashlib
    import shutil

    before = hashlib.sha256(src.read_bytes()).hexdigest()
    db = tmp_path / "train.db"
    shutil.copy(src, db)
    res = ra("gates", "--db", db, "--run", 2)
    assert res.exit_code == 0, res.stderr
    assert "Note: no reciprocity measures recorded for this run" in res.stdout
    assert "classified by raw gate" in res.stdout
    assert "w_rec: 144/144 heads above 0.05 (|w_rec/w_std|)" in res.stdout
    assert "Legend: * on: |w_rec/w_std| > 0.05" in res.stdout
    assert gates_json(db, "--run", 2)["classified_by"] == "raw gate"
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


def test_several_runs_by_ids_and_by_tag(seeds_db, tmp_path):
    db, ids = seeds_db
    run_list = ",".join(str(ids[s]) for s in (1, 2, 3))
    res = ra("gates", "--db", db, "--runs", run_list)
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert f"RECIPROCITY ACROSS RUNS: rec_share of ra_v5 runs {run_list.replace(',', ', ')}" in out
    assert "rec_share: mean over runs" in out and "rec_share: standard deviation over runs" in out
    assert "3/3" in out and "18%*" in out and "5.7%+" in out
    assert "2/8 heads above 5% in every run, 1 in some, 5 in none" in out
    assert "largest mean layer 1 head 2: 30%" in out and "seed agreement" in out
    by_tag = gates_json(db, "--tag", "seeds", "--attn", "ra_v5")
    assert by_tag["runs"] == [ids[1], ids[2], ids[3]]
    assert by_tag["heads_above_in_every_run"] == 2 and by_tag["measure"] == "rec_share"
    head = next(h for h in by_tag["heads"] if (h["layer"], h["head"]) == (0, 0))
    assert head["mean"] == pytest.approx(0.18) and head["std"] == pytest.approx(0.02)
    assert head["above"] == 3 and head["init_mean"] == pytest.approx(0.003)
    assert [a["layer"] for a in by_tag["rec_ablation"]] == [0, 1]
    png = tmp_path / "seeds.png"
    data = gates_json(db, "--runs", run_list, "--plot", png)
    assert data["plot"] == str(png) and png.read_bytes()[:8] == PNG_SIGNATURE
    # an old run among them is left out with a warning
    mixed = gates_json(db, "--runs", f"{run_list},{ids['old']}")
    assert mixed["runs"] == [ids[1], ids[2], ids[3]] and mixed["left_out"] == [ids["old"]]


@pytest.mark.parametrize(
    "args, words",
    [
        (("--runs", "x,2"), "--runs: 'x' is not a run id"),
        (("--runs", "5-3"), "--runs: '5-3' is not a run id"),
        (("--run", "1", "--runs", "1,2"), "give one of --run ID, --runs IDS or --tag TAG"),
        (("--tag", "nope"), "no finished train runs with tag 'nope'"),
        (("--runs", "1,2", "--step", "0"), "--step goes with --run"),
        (("--runs", "1,2", "--attn", "ra_v5"), "--attn goes with --tag"),
        (("--runs", "1,999"), "no run with id 999"),
        (("--tag", "seeds", "--attn", "ra_v6"), "unknown attention 'ra_v6' (valid: baseline,"),
    ],
)
def test_several_runs_bad_input(seeds_db, args, words):
    db, _ = seeds_db
    assert words in one_line_error(ra("gates", "--db", db, *args))


def test_several_runs_mixing_attentions_is_bad_input(seeds_db):
    db, ids = seeds_db
    err = one_line_error(ra("gates", "--db", db, "--runs", f"{ids[1]},{ids['beta']}"))
    assert "mix attentions" in err and "aggregate one attention at a time" in err


@pytest.mark.slow
def test_fresh_cpu_run_shows_the_new_classification(tmp_path):
    from racli.config import load_config
    from racli.training import load_data, spec_from_config, train

    cfg = load_config(ROOT / "ra.yaml")
    cfg = cfg.model_copy(update={"gates": cfg.gates.model_copy(update={"measure_batches": 1})})
    sets = [
        "model.n_layer=2",
        "model.n_head=2",
        "model.n_embd=32",
        "model.block_size=32",
        "train.batch_size=4",
        "train.eval_interval=3",
        "train.eval_batches=1",
        "train.final_eval_batches=1",
        "train.log_interval=3",
    ]
    spec = spec_from_config(
        cfg, attn="ra_v5", steps=3, seed=1, device="cpu", compile=False, overrides=sets
    )
    store = open_store(str(tmp_path / "ra.db"))
    run_id = train(spec, store, dataset=load_data(spec)).run_id
    store.close()
    res = ra("gates", "--db", tmp_path / "ra.db", "--run", run_id)
    assert res.exit_code == 0, res.stderr
    assert "Note:" not in res.stdout and "Legend: * uses reciprocity: rec_share > 5%" in res.stdout
    assert "rec_share: 0/4 heads above 5%" in res.stdout  # w_rec starts small: not in use
    assert "rec_ablation (loss change" in res.stdout


@pytest.mark.slow
def test_several_runs_import_no_torch(seeds_db, tmp_path):
    db, ids = seeds_db
    png = tmp_path / "runs.png"
    code = f"""
import sys
from racli.cli import app
try:
    app(["gates", "--db", {str(db)!r}, "--runs", "{ids[1]},{ids[2]}", "--plot", {str(png)!r}])
except SystemExit as exc:
    assert exc.code == 0, exc.code
assert "torch" not in sys.modules, "torch was imported"
"""
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert png.read_bytes()[:8] == PNG_SIGNATURE
