"""TensorBoard events (racli.text.tensorboard, racli.training.tensorboard,
racli.store.tensorboard_export): written while training and from the store, read back with
tensorboard's EventAccumulator; and the progress shown after training."""

from __future__ import annotations

import importlib.util
import io
import sqlite3
import threading

import pytest
from typer.testing import CliRunner

from racli import training
from racli.cli import app
from racli.config import load_config, packaged_config_path
from racli.store.engine import open_store
from racli.text.tensorboard import gate_scalars, run_folder
from racli.training.progress import ConsoleReporter, counted_phase, uncounted_phase
from racli.training.spec import run_config


def _have_tensorboard() -> bool:
    from racli.errors import BadInput
    from racli.text.tensorboard import check_available

    try:
        check_available()
    except BadInput:
        return False
    return True


HAVE_TB = _have_tensorboard()
needs_tb = pytest.mark.skipif(not HAVE_TB, reason="needs the tensorboard package (ra[tb])")

TINY = [
    "model.n_layer=2",
    "model.n_head=4",
    "model.n_embd=32",
    "model.block_size=32",
    "train.batch_size=8",
    "train.lr=0.003",
    "train.eval_interval=10",
    "train.eval_batches=2",
    "train.final_eval_batches=3",
    "train.log_interval=5",
]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def make_spec(attn="ra_v5", steps=20, extra=()):
    cfg = load_config(packaged_config_path())
    return training.spec_from_config(
        cfg,
        attn=attn,
        steps=steps,
        seed=0,
        device="cpu",
        compile=False,
        overrides=TINY + list(extra),
    )


def read_events(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def stored_metric(db, name) -> list[tuple[int, float]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT step, value FROM metrics WHERE name = ? ORDER BY step, id", (name,)
        ).fetchall()


# ---------------------------------------------------------------------------- pure


def test_gate_scalars_per_layer_means_and_ratios():
    out = gate_scalars(
        {
            0: {"w_std": [1.0, 2.0], "w_rec": [0.5, -1.0], "rec_share": [0.1, 0.3]},
            1: {"beta": [0.0, 1.0]},
        }
    )
    assert out == pytest.approx(
        {
            "gates/w_std/layer_0": 1.5,
            "gates/w_rec/layer_0": -0.25,
            "gates/rec_share/layer_0": 0.2,
            "gates/rec_ratio/layer_0": 0.5,  # mean of |0.5/1| and |-1/2|
            "gates/beta/layer_1": 0.5,
            "gates/tanh_beta/layer_1": 0.7615941559557649 / 2,
        }
    )
    assert run_folder("tb", 12, "ra_v5").as_posix() == "tb/run_12_ra_v5"


def test_tensorboard_is_not_part_of_the_recorded_config():
    from racli.training.datasets import load_dataset

    data = load_dataset(None, val_fraction=0.1, block_size=32)
    with_tb = run_config(make_spec(extra=['train.tensorboard="./tb"']), data)
    assert with_tb == run_config(make_spec(), data)


# ---------------------------------------------------------------------------- events


@needs_tb
def test_training_writes_events_and_the_export_writes_the_same(tmp_path):
    db = str(tmp_path / "ra.db")
    store = open_store(db)
    spec = make_spec(extra=[f'train.tensorboard="{tmp_path / "live"}"'])
    result = training.train(spec, store)
    store.close()
    live = read_events(run_folder(tmp_path / "live", result.run_id, "ra_v5"))
    steps = lambda tag: [s for s, _ in live[tag]]  # noqa: E731
    assert steps("loss/train") == [5, 10, 15, 20]
    assert steps("train/lr") == [5, 10, 15, 20]
    assert steps("train/tokens_per_s") == [s for s, _ in stored_metric(db, "tokens_per_s")]
    assert steps("loss/val") == [10, 20]
    for layer in (0, 1):
        for name in ("w_std", "w_rec", "rec_ratio", "rec_share"):
            assert steps(f"gates/{name}/layer_{layer}") == [0, 10, 20]
    # the same values as the store (float32 in the events)
    assert [s for s, _ in stored_metric(db, "train_loss")] == steps("loss/train")
    for (s1, v1), (s2, v2) in zip(stored_metric(db, "train_loss"), live["loss/train"]):
        assert s1 == s2 and v2 == pytest.approx(v1, rel=1e-6)
    with sqlite3.connect(db) as conn:
        (w_rec,) = conn.execute(
            "SELECT AVG(value) FROM gate_values WHERE name='w_rec' AND layer=1 AND step=20"
        ).fetchone()
    assert live["gates/w_rec/layer_1"][-1][1] == pytest.approx(w_rec, rel=1e-6)

    # after the fact: the same tags, steps and values
    r = invoke("runs", "export", "--db", db, "--tensorboard", tmp_path / "after")
    assert r.exit_code == 0 and f"run {result.run_id}:" in r.stdout, r.output
    after = read_events(run_folder(tmp_path / "after", result.run_id, "ra_v5"))
    assert after.keys() == live.keys()
    for tag in live:
        assert [s for s, _ in after[tag]] == [s for s, _ in live[tag]], tag
        assert [v for _, v in after[tag]] == pytest.approx([v for _, v in live[tag]]), tag
    # a folder that holds events is left alone
    r = invoke("runs", "export", "--db", db, "--tensorboard", tmp_path / "after", result.run_id)
    assert r.exit_code == 0 and "skipped" in r.stdout


@needs_tb
def test_a_failing_event_writer_loses_nothing_of_the_store(tmp_path, monkeypatch):
    from racli.text.tensorboard import EventLog

    def broken(self, *a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(EventLog, "scalars", broken)
    notes = []

    class Notes(ConsoleReporter):
        def note(self, text):
            notes.append(text)

    db = str(tmp_path / "ra.db")
    store = open_store(db)
    spec = make_spec(steps=10, extra=[f'train.tensorboard="{tmp_path / "tb"}"'])
    result = training.train(spec, store, reporter=Notes(stream=io.StringIO(), bar=False))
    store.close()
    assert result.status == "finished"
    assert [s for s, _ in stored_metric(db, "train_loss")] == [5, 10]
    assert [n for n in notes if "TensorBoard output stopped" in n and "No space" in n]


def test_export_tensorboard_bad_input(tmp_path):
    from helpers import record_run

    db = str(tmp_path / "ra.db")
    store = open_store(db)
    record_run(store, kind="bench")
    store.close()
    cases = [
        (["1"], "run ids go with --tensorboard"),
        (["--tensorboard", tmp_path / "tb", "--metrics"], "leave out --metrics"),
        (["--tensorboard", tmp_path / "tb", "--kind", "bench"], "exports train runs"),
    ]
    if HAVE_TB:
        cases.append((["--tensorboard", tmp_path / "tb", "1"], "run 1 is a bench run"))
        cases.append((["--tensorboard", tmp_path / "tb", "7"], "no run with id 7"))
    for args, message in cases:
        r = invoke("runs", "export", "--db", db, *args)
        assert r.exit_code == 2 and message in r.stderr, (args, r.output)
        assert not (tmp_path / "tb").exists(), args  # no folder made for a refused export


def test_without_tensorboard_one_line_names_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **kw: None if name == "tensorboard" else real(name, *a, **kw),
    )
    db = tmp_path / "ra.db"
    r = invoke("train", "--db", db, "--attn", "baseline", "--steps", 2, "--device", "cpu",
               "--tensorboard", tmp_path / "tb")  # fmt: skip
    assert r.exit_code == 2 and "pip install 'ra[tb]'" in r.stderr, r.output
    assert not db.exists()  # before anything is recorded
    r = invoke("runs", "export", "--db", db, "--tensorboard", tmp_path / "tb")
    assert r.exit_code == 2 and "pip install 'ra[tb]'" in r.stderr


# ---------------------------------------------------------------------------- progress


def test_phase_lines_and_bars():
    buf = io.StringIO()
    plain = ConsoleReporter(stream=buf, bar=False, every_s=0.0)
    show = counted_phase(plain, "final evaluation", 3)
    for i in (1, 2, 3):
        show(i)
    with uncounted_phase(plain, "writing checkpoint"):
        pass
    lines = buf.getvalue().splitlines()
    assert lines[0] == "final evaluation: 3 batches"
    assert lines[1].startswith("final evaluation: 1/3 batches")
    assert lines[3].startswith("final evaluation: done in")
    assert lines[4:6] == ["writing checkpoint ...", lines[5]]
    assert lines[5].startswith("writing checkpoint: done in")

    buf = io.StringIO()
    bar = ConsoleReporter(stream=buf, bar=True)
    bar.start(run_id=1, attn="ra_v5", total=10, unit="steps")
    bar.update(step=10, done=10, loss=2.0, tokens_per_s=5.0, left_s=0.0)
    show = counted_phase(bar, "final evaluation", 4)
    for i in range(1, 5):
        show(i)
    with uncounted_phase(bar, "writing checkpoint"):
        bar.note("step 10: final val_loss 2.1")
    bar.close()
    out = buf.getvalue()
    assert "ra_v5 run 1" in out and "final evaluation" in out and "4/4" in out
    assert "writing checkpoint" in out and "final val_loss 2.1" in out


def test_a_stop_request_shows_the_final_evaluation_and_checkpoint(tmp_path):
    buf = io.StringIO()
    stop = threading.Event()
    store = open_store(str(tmp_path / "ra.db"))

    def on_step(info):
        if info.step == 7:
            stop.set()  # what SIGINT does

    spec = make_spec(steps=1000, extra=["train.final_eval_batches=6"])
    reporter = ConsoleReporter(stream=buf, bar=False, every_s=0.0)
    result = training.train(spec, store, reporter=reporter, stop=stop, on_step=on_step)
    store.close()
    assert result.status == "interrupted" and result.iterations == 7
    lines = buf.getvalue().splitlines()
    asked = next(i for i, line in enumerate(lines) if "stop requested" in line)
    after = lines[asked + 1 :]
    assert after[0] == "final evaluation: 6 batches"
    assert [line for line in after if line.startswith("final evaluation: 5/6 batches")]
    evaluated = next(i for i, line in enumerate(after) if line.startswith("final evaluation: done"))
    written = next(i for i, line in enumerate(after) if line.startswith("writing checkpoint: done"))
    assert evaluated < written and "writing checkpoint ..." in after


@needs_tb
@pytest.mark.slow
def test_experiment_writes_a_folder_per_train_run(tmp_path):
    db = tmp_path / "ra.db"
    tiny = [
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_embd=32",
        "model.block_size=32",
        "train.batch_size=4",
        "train.eval_interval=1000",
        "train.eval_batches=2",
        "train.final_eval_batches=2",
        "train.log_interval=2",
        "experiment.calibration_max_s=0.1",
        "experiment.calibration_block_steps=2",
        "experiment.calibration_warmup_steps=1",
        "experiment.calibration_min_rounds=2",
    ]
    r = invoke("experiment", "--db", db, "--attn", "baseline,ra_v5", "--seeds", "1",
               "--minutes", "0.003", "--device", "cpu", "--tensorboard", tmp_path / "tb",
               *[a for item in tiny for a in ("--set", item)])  # fmt: skip
    assert r.exit_code == 0, r.output
    with sqlite3.connect(db) as conn:
        runs = conn.execute("SELECT id, attn FROM runs WHERE kind='train' ORDER BY id").fetchall()
    assert [attn for _, attn in runs] and {attn for _, attn in runs} == {"baseline", "ra_v5"}
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == sorted(
        run_folder(".", i, attn).name for i, attn in runs
    )
    for run_id, attn in runs:
        events = read_events(run_folder(tmp_path / "tb", run_id, attn))
        assert events["loss/train"] and events["loss/val"]


@needs_tb
def test_a_restart_drops_the_events_of_the_earlier_attempt_from_its_step_on(tmp_path):
    """A run resumed after its checkpoint (step 10) drops the events an earlier attempt
    wrote past it, and one trained again from step 0 drops them all, as the store does."""
    from racli.text.tensorboard import EventLog

    def attempt(first_step, values):
        log = EventLog(tmp_path / "run")
        log.restart_at(first_step)
        for step, v in values:
            log.scalars(step, {"loss/train": v})
        log.close()

    attempt(0, [(5, 5.0), (10, 4.0), (15, 3.0)])  # checkpoint at 10, stopped after 15
    attempt(11, [(15, 2.5), (20, 2.0)])
    assert read_events(tmp_path / "run")["loss/train"] == [
        (5, 5.0),
        (10, 4.0),
        (15, 2.5),
        (20, 2.0),
    ]
    attempt(0, [(5, 6.0)])  # no checkpoint: trained again from step 0
    assert read_events(tmp_path / "run")["loss/train"] == [(5, 6.0)]


@pytest.mark.parametrize(
    ("resume", "checkpoint_step", "first"), [(None, None, 0), (7, None, 0), (7, 10, 11)]
)
def test_the_recorder_names_the_step_a_run_goes_on_from(
    monkeypatch, resume, checkpoint_step, first
):
    import types

    from racli.training import run

    seen = {}
    monkeypatch.setattr(run.RunRecorder, "start", lambda *a, **k: "new")
    monkeypatch.setattr(run.RunRecorder, "resume", lambda *a, **k: "taken up")
    monkeypatch.setattr(run, "_take_up", lambda *a: None)
    monkeypatch.setattr(
        run, "with_tensorboard", lambda rec, *a, first_step, **k: seen.setdefault("f", first_step)
    )
    spec = types.SimpleNamespace(
        attn="ra_v5", seed=0, tag=None, train=types.SimpleNamespace(tensorboard="tb")
    )
    state = None if checkpoint_step is None else types.SimpleNamespace(step=checkpoint_step)
    reporter = types.SimpleNamespace(note=print)
    run._recorder(spec, None, {}, resume, state, reporter, flush_interval=1.0)
    assert seen["f"] == first
