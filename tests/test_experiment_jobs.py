"""The parts of `ra experiment` around its runs, without training: the store queries, a job's
state, the child launcher's start of a job, the stop policy and the printed text."""

from __future__ import annotations

import os
import signal
import threading
import types

import pytest
from helpers import one_line_error, ra_inprocess, record_run

from racli.experiment import jobs, local, plan, text
from racli.experiment.results import JobResult, Settings
from racli.experiment.view import PlainView
from racli.store import clocks
from racli.store import experiment_queries as eq
from racli.store.engine import open_store
from racli.store.recorder import RunRecorder
from racli.training import stopping


def _record(store, key, arm, seed, *, kind="train", status="finished", steps=()):
    rec = RunRecorder.start(
        store,
        kind=kind,
        attn=arm.split("#")[0] if kind == "train" else None,
        config={plan.EXPERIMENT_KEY: {"key": key, "arm": arm}, "seed": seed},
        seed=seed,
        env_info={"hostname": "h", "cpu_count": 1},
        git_commit="0123abcd",
        heartbeat=False,
    )
    for step in steps:
        rec.metric(step, "train_loss", 1.0)
    if status == "finished":
        rec.finish(iterations=1, train_seconds=1.0)
    elif status != "running":
        rec.end(status)
    return rec.run_id


def test_experiment_queries(store_url):
    assert eq.EXPERIMENT_ENTRY == plan.EXPERIMENT_KEY
    store = open_store(store_url)
    try:
        a = _record(store, "k1", "baseline", 1, steps=(0, 5, 10))
        _record(store, "k2", "baseline", 1)
        c = _record(store, "k1", "ra_v5", 1, status="interrupted")
        cal = _record(store, "k1", "baseline", 0, kind="calibration")
        other = record_run(store, attn="baseline", seed=1)  # not in an experiment
        assert [r.id for r in eq.experiment_runs(store, "k1")] == [a, c]
        assert [r.id for r in eq.experiment_runs(store, "k1", kind="calibration")] == [cal]
        assert eq.experiment_runs(store, "nope") == []
        assert eq.last_step(store, a) == 10 and eq.last_step(store, c) is None
        assert eq.metric_values(store, [], ("train_loss",)) == {}
        values = eq.metric_values(store, [a, c, other], ("train_loss",))
        assert values[a] == {"train_loss": [1.0, 1.0, 1.0]} and c not in values
        assert sorted(values[other]["train_loss"]) == pytest.approx([3.6, 3.7, 3.8, 3.9, 4.0])
        assert clocks.recorded_medians(store, a) == {}
        assert set(jobs.runs_by_job(store, "k1")) == {("baseline", 1), ("ra_v5", 1)}
    finally:
        store.close()


def test_clock_medians_per_run(tmp_path):
    store = open_store(str(tmp_path / "ra.db"))
    try:
        a = _record(store, "k", "baseline", 1, status="running")
        from racli.store.models import Metric

        with store.session() as s:
            for step, (mhz, watts) in enumerate([(1500, 300), (1700, 320), (1600, 310)]):
                s.add(Metric(run_id=a, step=step, name="sm_clock_mhz", value=mhz))
                s.add(Metric(run_id=a, step=step, name="power_w", value=watts))
            s.add(Metric(run_id=a, step=0, name="train_loss", value=2.0))
            s.commit()
        assert clocks.recorded_medians(store, a) == {"sm_clock_mhz": 1600.0, "power_w": 310.0}
        assert clocks.medians_by_run(store, [a, a + 1]) == {
            a: {"sm_clock_mhz": 1600.0, "power_w": 310.0}
        }
    finally:
        store.close()


def test_job_state():
    from datetime import timedelta

    from racli.store.models import utcnow

    def run(status, stale=True):
        beat = utcnow() - (timedelta(hours=1) if stale else timedelta(0))
        return types.SimpleNamespace(status=status, heartbeat_at=beat, started_at=beat)

    assert jobs.job_state([]) == ("new", None)
    done = run("finished")
    assert jobs.job_state([run("interrupted"), done]) == ("done", done)
    diverged = run("diverged")
    assert jobs.job_state([diverged]) == ("done", diverged)
    stopped = run("interrupted")
    assert jobs.job_state([run("failed"), stopped]) == ("resume", stopped)
    busy = run("running", stale=False)
    assert jobs.job_state([busy]) == ("busy", busy)
    dead = run("running", stale=True)
    assert jobs.job_state([dead]) == ("resume", dead)


def _context(tmp_path, store, devices=("cpu",)):
    from racli.config import load_config, packaged_config_path

    arms = plan.parse_arms("baseline,ra_v5")
    settings = Settings(
        arms=arms,
        seeds=[1],
        minutes=1.0,
        devices=list(devices),
        overrides=["model.n_layer=1", "experiment.calibration_max_s=3"],
        db=str(tmp_path / "ra.db"),
    )
    budgets = plan.step_budgets(arms, 1.0, 10.0, {"baseline": (1.0, None), "ra_v5": (0.5, None)})
    cal = types.SimpleNamespace(run_id=7)
    return jobs.Context(
        settings,
        load_config(packaged_config_path()),
        store,
        key="k1",
        tag="exp-k1",
        dataset=None,
        budgets=budgets,
        cal=cal,
        devices=list(devices),
        view=PlainView(open(os.devnull, "w")),
        stop=threading.Event(),
    )


def test_job_spec_and_child_argv(tmp_path):
    store = open_store(str(tmp_path / "ra.db"))
    try:
        ctx = _context(tmp_path, store)
        job = plan.schedule(ctx.settings.arms, [3], 1)[1]
        spec = ctx.job_spec(job, "cpu")
        assert (spec.attn, spec.seed, spec.steps, spec.tag) == (job.arm.attn, 3, 300, "exp-k1")
        assert spec.model["n_layer"] == 1  # train overrides only (no experiment. keys)
        assert spec.extra[plan.EXPERIMENT_KEY]["arm"] == job.arm.label
        assert spec.extra[plan.BUDGET_SOURCE_KEY]["calibration_run"] == 7
        argv = local.child_argv(ctx, job, None)
        assert argv[argv.index("--steps") + 1] == "300" and "--resume" not in argv
        assert "experiment.calibration_max_s=3" not in argv
        assert local.child_argv(ctx, job, 12)[-2:] == ["--resume", "12"]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("items", "want"),
    [
        ([], None),
        (['train.tensorboard="./tb runs"'], "./tb runs"),
        (["train.tensorboard=tb", "model.n_layer=1"], "tb"),
        (["train.tensorboard=tb", "train.tensorboard=null"], None),
    ],
)
def test_a_resumed_child_keeps_its_tensorboard_folder(tmp_path, items, want):
    """`ra train --resume` takes no --set items: the folder goes as --tensorboard."""
    from racli.training import tensorboard

    store = open_store(str(tmp_path / "ra.db"))
    try:
        ctx = _context(tmp_path, store)
        ctx.settings.overrides = list(ctx.settings.overrides) + items
        job = plan.schedule(ctx.settings.arms, [3], 1)[0]
        argv = local.child_argv(ctx, job, 12)
        tail = ["--resume", "12"] + (["--tensorboard", want] if want else [])
        assert argv[argv.index("--resume") :] == tail
        if items:  # a fresh start takes them as --set items
            fresh = local.child_argv(ctx, job, None)
            assert "--tensorboard" not in fresh and items[0] in fresh
        assert tensorboard.folder_in([tensorboard.override("tb")]) == "./tb"
    finally:
        store.close()


def _watched_context(tmp_path, store):
    """A context whose view notes and starts land in `lines`, and a Popen stand-in that
    keeps each child's argv in `started` (patched in by the test)."""
    started, lines = [], []

    class FakePopen:
        def __init__(self, argv, **kw):
            started.append(argv)

    ctx = _context(tmp_path, store)
    ctx.view.note = lines.append
    ctx.view.started = lambda device, label, total: lines.append(f"{label} {total}")
    return ctx, FakePopen, started, lines


def test_child_without_checkpoint_starts_again(tmp_path, monkeypatch):
    """An interrupted run with no checkpoint, recorded by an older ra (no data_path), is
    started again as a new run; one recorded now is trained again from step 0 under its own
    id (`ra train --resume`); with its checkpoint in place, it is resumed."""
    store = open_store(str(tmp_path / "ra.db"))
    try:
        ctx, fake_popen, started, lines = _watched_context(tmp_path, store)
        monkeypatch.setattr(local.subprocess, "Popen", fake_popen)
        job = plan.schedule(ctx.settings.arms, [1], 1)[0]
        stopped = types.SimpleNamespace(id=5, config={})
        child = local._start_child(ctx, 0, job, "resume", stopped)
        child.log.close()
        assert lines == [
            "run 5 has no checkpoint: starting baseline seed 1 again",
            "baseline seed 1 600",
        ]
        assert "--resume" not in started[0] and ctx.children == [child.proc]
        log = jobs.log_path(ctx.settings.db, "k1", job)
        assert log == tmp_path / "ra_experiment_logs" / "k1" / "baseline-seed1.log"
        assert log.read_text().strip().endswith("start ===")
        # recorded with where its data is: `ra train --resume` trains it again from step 0
        lines.clear()
        young = types.SimpleNamespace(id=5, config={"data_path": "builtin:shakespeare"})
        local._start_child(ctx, 0, job, "resume", young).log.close()
        assert started[1][-2:] == ["--resume", "5"] and lines == [
            "run 5 has no checkpoint: training it again from step 0",
            "baseline seed 1 (run 5) resumed 600",
        ]
        # with its checkpoint in place, the run is resumed under its own id
        from racli.store.checkpoints import checkpoint_path

        path = checkpoint_path(ctx.store.db, 5)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        lines.clear()
        local._start_child(ctx, 0, job, "resume", stopped).log.close()
        assert started[2][-2:] == ["--resume", "5"] and lines == [
            "baseline seed 1 (run 5) resumed 600"
        ]
        assert log.read_text().strip().endswith("resume 5 ===")
    finally:
        store.close()


def test_a_run_whose_checkpoint_is_elsewhere_is_kept_and_trained_anew(tmp_path, monkeypatch):
    """A run that wrote a checkpoint whose file is not here (the store came from another
    machine) is neither resumed nor trained again under its id (that would drop what it
    recorded): the job starts a new run and the old one stays as it is; `ra train --resume`
    of it is refused with one line."""
    store = open_store(str(tmp_path / "ra.db"))
    try:
        ctx, fake_popen, started, lines = _watched_context(tmp_path, store)
        job = plan.schedule(ctx.settings.arms, [1], 1)[0]
        rec = RunRecorder.start(
            store, kind="train", attn="baseline", config={"data_path": "builtin:shakespeare"},
            seed=1, env_info={"hostname": "h", "cpu_count": 1}, git_commit="0123abcd",
            heartbeat=False,
        )  # fmt: skip
        for step in (10, 20):
            rec.metric(step, "train_loss", 3.0)
        rec.metric(20, "checkpoint_s", 1.5)
        rec.end("interrupted")
        monkeypatch.setattr(local.subprocess, "Popen", fake_popen)  # after git's provenance
        gone = types.SimpleNamespace(id=rec.run_id, config={"data_path": "builtin:shakespeare"})
        local._start_child(ctx, 0, job, "resume", gone).log.close()
        assert "--resume" not in started[0]
        assert lines[0] == (
            f"run {rec.run_id}'s checkpoint (step 20) is not here: starting baseline seed 1 "
            f"again as a new run; run {rec.run_id} is kept"
        )
        assert eq.metric_values(store, [rec.run_id], ("train_loss",))[rec.run_id] == {
            "train_loss": [3.0, 3.0]
        }
        monkeypatch.undo()  # the command below starts real processes (git)
        err = one_line_error(ra_inprocess("train", "--resume", str(rec.run_id),
                                          "--db", str(tmp_path / "ra.db")))  # fmt: skip
        assert "wrote a checkpoint (last at step 20)" in err and "is missing" in err
        assert len(eq.metric_values(store, [rec.run_id], ("train_loss",))[rec.run_id]
                   ["train_loss"]) == 2  # fmt: skip
    finally:
        store.close()


def test_pending_skips_done_jobs_and_holds_busy_ones(tmp_path):
    store = open_store(str(tmp_path / "ra.db"))
    try:
        ctx = _context(tmp_path, store)
        done = _record(store, "k1", "baseline", 1)
        busy = _record(store, "k1", "ra_v5", 1, status="running")
        _record(store, "k1", "baseline", 2, status="interrupted")
        all_jobs = plan.schedule(ctx.settings.arms, [1, 2], 1)
        results: list[JobResult] = []
        todo = ctx.pending(all_jobs, results)
        assert [(j.arm.label, j.seed, action) for j, action, _ in todo] == [
            ("ra_v5", 2, "new"),
            ("baseline", 2, "resume"),
        ]
        # a run another process is running (fresh heartbeat) is not done: it is waited for
        assert [(r.run_id, r.status) for r in results] == [(done, "finished")]
        assert [(j.arm.label, j.seed) for j in ctx.held] == [("ra_v5", 1)] and busy
        assert (ctx.view.state.total, ctx.view.state.done) == (4, 1)
        assert ctx.view.state.eta_s == pytest.approx(3 * 60 * 1.2)
    finally:
        store.close()


def test_stop_policy_first_signal_stops_second_raises():
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process (a background job)")
    before = signal.getsignal(signal.SIGTERM)
    stop = threading.Event()
    with pytest.raises(KeyboardInterrupt):
        with stopping.stop_on_signals(stop):
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.is_set()
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(5)  # the handler raises before this ends
    assert signal.getsignal(signal.SIGTERM) == before
    # outside the main thread nothing is installed (and nothing fails)
    seen = []
    t = threading.Thread(
        target=lambda: seen.append(stopping.stop_on_signals(threading.Event()).__enter__())
    )
    t.start()
    t.join()
    assert seen == [None] and signal.getsignal(signal.SIGTERM) == before


def test_texts():
    assert text.seed_text([1, 2, 3]) == "1-3" and text.seed_text([1, 3]) == "1,3"
    assert text.seed_text([1, 2]) == "1,2"
    job = plan.schedule(plan.parse_arms("baseline,ra_v5"), [1], 1)[0]
    results = [JobResult(job, 3, "finished"), JobResult(job, 4, "interrupted")]
    assert text.interrupted_text(results, 4) == (
        "interrupted: 1 of 4 runs finished; runs 4 stopped with a checkpoint; "
        "run the same command again to continue"
    )
    design = types.SimpleNamespace(looks=[2, 4])
    assert text.training_text(2, 2, design, 0, 0.99449) == (
        "training 2 arms x 2 seeds (look 1 of 2, verdict at 99.449% confidence)"
    )
    assert text.training_text(2, 2, None, 0, 0.95) == "training 2 arms x 2 seeds"


def test_the_interim_judges_the_seeds_both_arms_finished(store_url):
    """While runs are still to come the interim line follows the paired design: an arm is
    judged on the seeds it and the first arm have both finished (the final verdict counts
    every finished run; an A/A arm stays unpaired)."""
    from racli.experiment import judge

    store = open_store(store_url)

    def add(key, arm, seed, loss):
        rec = RunRecorder.start(
            store,
            kind="train",
            attn=arm.split("#")[0],
            config={plan.EXPERIMENT_KEY: {"key": key, "arm": arm}, "seed": seed},
            seed=seed,
            env_info={"hostname": "h", "cpu_count": 1},
            git_commit="0123abcd",
            heartbeat=False,
        )
        rec.finish(iterations=10, train_seconds=1.0, val_loss=loss, tokens_per_s=1000.0)

    try:
        arms = plan.parse_arms("baseline,ra_v5")
        for arm, seed, loss in [("baseline", 1, 3.0), ("ra_v5", 1, 2.97), ("ra_v5", 2, 2.99),
                                ("baseline", 2, 3.01), ("baseline", 3, 3.05)]:  # fmt: skip
            add("k", arm, seed, loss)
        (final,) = judge.verdicts(store, "k", arms, threshold=0.01, confidence=0.95)
        v = final.comparison.verdict
        assert (v.method, v.candidate.n, v.baseline.n) == ("welch", 2, 3)
        (interim,) = judge.verdicts(
            store, "k", arms, threshold=0.01, confidence=0.95, pairs_only=True
        )
        v = interim.comparison.verdict
        assert (v.method, v.candidate.n, v.baseline.n) == ("paired", 2, 2)
        assert "paired, 2 vs 2 runs" in interim.short()
        # both arms have runs, but of different seeds: nothing to pair yet
        add("k2", "baseline", 1, 3.0)
        add("k2", "ra_v5", 2, 2.9)
        (none,) = judge.verdicts(store, "k2", arms, threshold=0.01, confidence=0.95,
                                 pairs_only=True)  # fmt: skip
        assert none.comparison is None and "no seed finished on both" in none.short()
        # an A/A arm trains on its own seeds: judged unpaired over every finished run
        aa = plan.parse_arms("baseline,baseline")
        for arm, seed, loss in [("baseline#1", 1, 3.0), ("baseline#1", 2, 3.02),
                                ("baseline#2", 1_000_001, 3.01)]:  # fmt: skip
            add("k3", arm, seed, loss)
        (a,) = judge.verdicts(store, "k3", aa, threshold=0.01, confidence=0.95, pairs_only=True)
        assert (a.comparison.verdict.candidate.n, a.comparison.verdict.baseline.n) == (1, 2)
    finally:
        store.close()
