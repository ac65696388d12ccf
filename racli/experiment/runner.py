"""Running an experiment: calibrate, budget, run the matrix in order, judge.

    settings = Settings(arms=parse_arms("baseline,ra_v5"), seeds=[1, 2], minutes=10, ...)
    outcome = run_experiment(settings, cfg, store, view=PlainView())

* The calibration (:mod:`racli.experiment.calibrate`) runs in this process on
  the first device and is recorded as a run of kind ``calibration``; a finished
  one of the same experiment is reused.
* On CPU the runs train one after the other in this process
  (:func:`racli.training.train`). On CUDA each run is a child process
  ``python -m racli train --steps S --seed s ...`` (``--resume ID`` for an
  interrupted one) with ``CUDA_VISIBLE_DEVICES`` set to its GPU, one per GPU
  at a time, writing to the same store; its output goes to
  ``<db dir>/ra_experiment_logs/<key>/<arm>-seed<s>.log``.
* Every run is found again through its config's ``experiment`` entry (the
  experiment key and the arm), so running the same command again skips
  finished runs and resumes interrupted ones under their own ids.
* SIGINT / SIGTERM: no new run starts; running runs get one SIGINT each and
  stop after their final evaluation and a checkpoint (a second signal stops
  them at once); then `Interrupted` is raised with the way to continue.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from racli.errors import BadInput
from racli.experiment import judge, plan
from racli.experiment.plan import Arm, Budget, Job

STALE_NOTE = "its heartbeat is fresh: another process is running it"


class Interrupted(Exception):
    """The experiment was stopped by a signal; the message says how to continue."""


@dataclass
class Settings:
    arms: list[Arm]
    seeds: list[int]
    minutes: float
    preset: str | None = None
    data: str | None = None
    devices: list[str] = field(default_factory=lambda: ["auto"])
    overrides: list[str] = field(default_factory=list)  # --set items
    tag: str | None = None
    until_settled: bool = False
    max_seeds: int | None = None
    compile: bool | None = None
    processes: bool | None = None  # one child process per run (default: on CUDA)
    config_path: str | None = None  # handed to child processes
    db: str = "ra.db"  # the store's location, handed to child processes


@dataclass
class JobResult:
    job: Job
    run_id: int | None
    status: str  # finished | interrupted | failed | diverged | skipped (running elsewhere)
    note: str = ""


@dataclass
class Outcome:
    key: str
    tag: str
    arms: list[Arm]
    seeds: list[int]
    devices: list[str]
    calibration: Any  # calibrate.Calibration
    budgets: dict[str, Budget]
    verdicts: list[judge.ArmVerdict]
    confidence: float
    design: dict | None = None  # the sequential design, with --until-settled
    looks: list[dict] = field(default_factory=list)
    results: list[JobResult] = field(default_factory=list)

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.status in ("failed",)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "tag": self.tag,
            "arms": [a.label for a in self.arms],
            "attn": [a.attn for a in self.arms],
            "seeds": self.seeds,
            "devices": self.devices,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "budgets": {
                k: {
                    "steps": b.steps,
                    "ratio": b.ratio,
                    "ratio_ci": list(b.ratio_ci) if b.ratio_ci else None,
                }
                for k, b in self.budgets.items()
            },
            "confidence": self.confidence,
            "design": self.design,
            "looks": self.looks,
            "verdicts": [v.to_dict() for v in self.verdicts],
        }


# ---------------------------------------------------------------------------- set-up


def experiment_config(cfg, overrides: list[str]):
    """ra.yaml with every --set applied (model., train. and experiment. keys)."""
    from racli.config import apply_overrides

    return apply_overrides(cfg, overrides, sections=("model", "train", "experiment"))


def train_overrides(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.strip().startswith("experiment.")]


def resolve_devices(devices: list[str], processes: bool | None = None) -> list[str]:
    from racli.names import resolve_device

    out = [resolve_device(d) for d in devices]
    if len(out) > 1 and any(d == "cpu" for d in out) and not processes:
        raise BadInput("several devices are GPUs: --devices takes CUDA indices")
    return out


def base_specs(settings: Settings, cfg, device: str, steps: int = 1) -> list:
    from racli.training import spec_from_config

    return [
        spec_from_config(
            cfg,
            attn=a.attn,
            preset=settings.preset,
            data=settings.data,
            steps=steps,
            seed=0,
            tag=settings.tag,
            device=device,
            compile=settings.compile,
            overrides=train_overrides(settings.overrides),
        )
        for a in settings.arms
    ]


def comparable_config(spec, dataset) -> dict[str, Any]:
    from racli.training import run_config

    config = run_config(spec, dataset)
    return {
        k: v
        for k, v in config.items()
        if k not in ("attn", "seed", "tag", "budget", plan.EXPERIMENT_KEY, plan.BUDGET_SOURCE_KEY)
    }


# ---------------------------------------------------------------------------- calibration


def find_calibration(store, key: str):
    from racli.experiment.calibrate import Calibration

    runs = [
        r
        for r in judge.experiment_runs(store, key, kind="calibration")
        if r.status == "finished" and "calibration" in (r.config or {})
    ]
    if not runs:
        return None
    run = runs[-1]
    cal = Calibration.from_dict(run.config["calibration"])
    cal.run_id = run.id
    return cal


def calibrate(
    store,
    settings: Settings,
    ecfg,
    specs,
    dataset,
    key: str,
    tag: str,
    *,
    view,
    stop: threading.Event,
):
    """Time the arms, record a `calibration` run, return the Calibration."""
    from racli.experiment import calibrate as cal_mod
    from racli.store.recorder import RunRecorder
    from racli.training.spec import train_section

    e = ecfg.experiment
    labels = [a.label for a in settings.arms]
    config = {
        plan.EXPERIMENT_KEY: {"key": key, "arms": labels},
        "attn": [a.attn for a in settings.arms],
        "device": specs[0].device_type,
        "compile": specs[0].compile,
        "model": specs[0].model,
        "train": train_section(specs[0].train),
        "preset": specs[0].preset,
        "settings": {
            "precision": e.calibration_precision,
            "max_s": e.calibration_max_s,
            "min_rounds": e.calibration_min_rounds,
            "block_steps": e.calibration_block_steps,
            "warmup_steps": e.calibration_warmup_steps,
            "minutes": settings.minutes,
        },
    }
    rec = RunRecorder.start(store, kind="calibration", config=config, tag=tag)
    view.phase(
        f"calibrating {', '.join(labels)} on {specs[0].device} (run {rec.run_id}): "
        f"until every speed ratio is within +-{e.calibration_precision:.2%} "
        f"or {e.calibration_max_s:g} s of timed steps"
    )

    def on_round(cal) -> None:
        r = cal.rounds
        for a in cal.arms:
            rec.metric(r, f"s_per_step:{a.label}", cal.per_round[a.label][-1])
        parts = [
            f"{a.label} {a.ratio:.4f}"
            + (f" +-{a.half_width:.2%}" if math.isfinite(a.half_width) else "")
            for a in cal.arms[1:]
        ]
        view.note(
            f"calibration round {r}: {cal.arms[0].steps_per_s:.2f} steps/s "
            f"({cal.arms[0].label}); ratios {', '.join(parts)}"
        )

    try:
        cal = cal_mod.measure(
            specs,
            labels,
            dataset,
            precision=e.calibration_precision,
            max_s=e.calibration_max_s,
            min_rounds=e.calibration_min_rounds,
            block_steps=e.calibration_block_steps,
            warmup_steps=e.calibration_warmup_steps,
            stop=stop,
            on_round=on_round,
        )
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            rec.end("interrupted", error="interrupted during calibration")
        else:
            rec.fail(exc)
        raise
    cal.run_id = rec.run_id
    r = cal.rounds
    for a in cal.arms:
        values = {
            f"steps_per_s:{a.label}": a.steps_per_s,
            f"speed_ratio:{a.label}": a.ratio,
            f"speed_ratio_lo:{a.label}": a.ratio_lo,
            f"speed_ratio_hi:{a.label}": a.ratio_hi,
        }
        rec.metrics(r, {k: v for k, v in values.items() if v is not None and math.isfinite(v)})
    rec.update(config={**config, "calibration": cal.to_dict()})
    if stop.is_set():
        rec.end("interrupted", error="stopped on request during calibration")
        raise Interrupted("interrupted during calibration (nothing trained yet)")
    rec.finish(iterations=cal.rounds, train_seconds=cal.timed_s)
    return cal


# ---------------------------------------------------------------------------- jobs


def job_state(runs: list) -> tuple[str, Any]:
    """What to do with a job given its recorded runs (oldest first):
    ("done", run) / ("resume", run) / ("busy", run) / ("new", None)."""
    from racli.store.recorder import is_stale

    for r in runs:
        if r.status == "finished":
            return "done", r
    if not runs:
        return "new", None
    last = runs[-1]
    if last.status == "diverged":
        return "done", last
    if last.status == "running" and not is_stale(last):
        return "busy", last
    return "resume", last


def runs_by_job(store, key: str) -> dict[tuple[str, int], list]:
    out: dict[tuple[str, int], list] = {}
    for r in judge.experiment_runs(store, key):
        out.setdefault((judge.arm_of(r), r.seed), []).append(r)
    return out


def log_path(db: str, key: str, job: Job) -> Path:
    from racli.store.engine import sqlite_path

    path = sqlite_path(db)
    base = path.parent if path is not None else Path.cwd()
    safe = job.arm.label.replace("#", "-")
    return base / "ra_experiment_logs" / key / f"{safe}-seed{job.seed}.log"


class Context:
    """What every job of one invocation shares."""

    def __init__(
        self,
        settings: Settings,
        cfg,
        store,
        *,
        key: str,
        tag: str,
        dataset,
        budgets: dict[str, Budget],
        cal,
        devices: list[str],
        view,
        stop: threading.Event,
        on_step=None,
    ):
        self.settings, self.cfg, self.store = settings, cfg, store
        self.key, self.tag, self.dataset = key, tag, dataset
        self.budgets, self.cal, self.devices = budgets, cal, devices
        self.view, self.stop, self.on_step = view, stop, on_step
        self.children: list[subprocess.Popen] = []
        self.durations: list[float] = []

    def extra(self, job: Job) -> dict[str, Any]:
        arms = self.settings.arms
        extra = plan.extra_config(
            key=self.key,
            arm=job.arm,
            arms=arms,
            budget=self.budgets[job.arm.label],
            minutes=self.settings.minutes,
            calibration_run=self.cal.run_id,
            reference_steps=self.budgets[arms[0].label].steps,
        )
        extra[plan.EXPERIMENT_KEY]["device"] = self.devices[job.device]  # where it started
        return extra

    def label(self, job: Job, run_id: int | None) -> str:
        run = f" (run {run_id})" if run_id is not None else ""
        return f"{job.arm.label} seed {job.seed}{run}"


def _eta(ctx: Context, left: int, running: int) -> float | None:
    """Seconds left: runs to go x the mean duration of the runs done so far (before the
    first, the matched minutes plus a fifth for start-up and evaluation)."""
    per = (
        sum(ctx.durations) / len(ctx.durations)
        if ctx.durations
        else ctx.settings.minutes * 60.0 * 1.2
    )
    return per * (left + running) / max(1, len(ctx.devices))


def _verdict_so_far(ctx: Context, confidence: float) -> None:
    v = ctx.cfg.verdict
    found = judge.verdicts(
        ctx.store,
        ctx.key,
        ctx.settings.arms,
        threshold=v.threshold,
        confidence=confidence,
    )
    ctx.view.verdict([x.short() for x in found])


# ---- in this process (CPU) ---------------------------------------------------------


class _StepReporter:
    """Forwards the trainer's log points to the view."""

    def __init__(self, view, device: str):
        self.view, self.device = view, device

    def start(self, **kw) -> None:
        pass

    def update(self, *, step, **kw) -> None:
        self.view.step(self.device, step)

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def run_in_process(ctx: Context, jobs: list[Job], confidence: float) -> list[JobResult]:
    from racli import training

    results = []
    device = ctx.devices[0]
    jobs = sorted(jobs, key=lambda j: j.order)
    todo = _pending(ctx, jobs, results)
    ctx.view.state.total = len(jobs)
    ctx.view.state.done = len(jobs) - len(todo)
    ctx.view.state.eta_s = _eta(ctx, len(todo), 0)
    for job, action, run in todo:
        if ctx.stop.is_set():
            break
        t0 = time.monotonic()
        budget = ctx.budgets[job.arm.label]
        reporter = _StepReporter(ctx.view, device)
        result = None
        if action == "resume":
            ctx.view.started(device, ctx.label(job, run.id) + " resumed", budget.steps)
            try:
                result = training.resume(
                    ctx.store, run.id, stop=ctx.stop, reporter=reporter, on_step=ctx.on_step
                )
            except BadInput as exc:
                ctx.view.note(f"run {run.id} cannot be resumed ({exc}): starting it again")
        if result is None:
            spec = base_specs_for(ctx, job, device)
            ctx.view.started(device, ctx.label(job, None), budget.steps)
            try:
                result = training.train(
                    spec,
                    ctx.store,
                    dataset=ctx.dataset,
                    stop=ctx.stop,
                    reporter=reporter,
                    on_step=ctx.on_step,
                )
            except KeyboardInterrupt:
                raise
            except BadInput:
                raise
            except Exception as exc:  # recorded as failed by the trainer
                ctx.view.finished(device, ctx.label(job, None), "failed", str(exc))
                results.append(JobResult(job, None, "failed", str(exc)))
                continue
        ctx.view.state.done += result.status in ("finished", "diverged")
        ctx.durations.append(time.monotonic() - t0)
        ctx.view.state.eta_s = _eta(ctx, len(jobs) - ctx.view.state.done, 0)
        extra = f"val_loss {result.val_loss:.4f}" if result.val_loss is not None else ""
        ctx.view.finished(device, ctx.label(job, result.run_id), result.status, extra)
        results.append(JobResult(job, result.run_id, result.status))
        if result.status == "finished":
            _verdict_so_far(ctx, confidence)
    return results


def base_specs_for(ctx: Context, job: Job, device: str):
    from racli.training import spec_from_config

    s = ctx.settings
    spec = spec_from_config(
        ctx.cfg,
        attn=job.arm.attn,
        preset=s.preset,
        data=s.data,
        steps=ctx.budgets[job.arm.label].steps,
        seed=job.seed,
        tag=ctx.tag,
        device=device,
        compile=s.compile,
        overrides=train_overrides(s.overrides),
    )
    spec.extra = ctx.extra(job)
    return spec


def _pending(ctx: Context, jobs: list[Job], results: list[JobResult]) -> list[tuple]:
    """(job, action, run) of the jobs still to do; finished ones go to `results`."""
    known = runs_by_job(ctx.store, ctx.key)
    todo = []
    for job in jobs:
        action, run = job_state(known.get((job.arm.label, job.seed), []))
        if action == "done":
            results.append(JobResult(job, run.id, run.status, "recorded before"))
        elif action == "busy":
            ctx.view.note(f"{ctx.label(job, run.id)}: skipped, {STALE_NOTE}")
            results.append(JobResult(job, run.id, "skipped", STALE_NOTE))
        else:
            todo.append((job, action, run))
    return todo


# ---- child processes (CUDA) ---------------------------------------------------------


def child_argv(ctx: Context, job: Job, resume: int | None) -> list[str]:
    s = ctx.settings
    argv = [sys.executable, "-m", "racli", "train", "--db", s.db]
    if s.config_path:
        argv += ["--config", s.config_path]
    if resume is not None:
        return argv + ["--resume", str(resume)]
    budget = ctx.budgets[job.arm.label]
    device = "cpu" if ctx.devices[job.device] == "cpu" else "cuda"  # CUDA_VISIBLE_DEVICES picks
    argv += [
        "--attn",
        job.arm.attn,
        "--steps",
        str(budget.steps),
        "--seed",
        str(job.seed),
        "--tag",
        ctx.tag,
        "--device",
        device,
    ]
    if s.preset:
        argv += ["--model", s.preset]
    if s.data:
        argv += ["--data", s.data]
    if s.compile is not None:
        argv.append("--compile" if s.compile else "--no-compile")
    for item in train_overrides(s.overrides):
        argv += ["--set", item]
    argv += ["--extra-config", json.dumps(ctx.extra(job), sort_keys=True)]
    return argv


def child_env(device: str) -> dict[str, str]:
    env = dict(os.environ)
    index = int(device.split(":")[1]) if ":" in device else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = ids[index] if index < len(ids) else str(index)
    else:
        env["CUDA_VISIBLE_DEVICES"] = str(index)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class _Child:
    job: Job
    proc: subprocess.Popen
    log: Any
    started: float
    run_id: int | None
    total: int


def _last_error(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errs = [ln for ln in lines if ln.startswith("ra: ")]
    return (errs or lines or [""])[-1]


def run_children(ctx: Context, jobs: list[Job], confidence: float) -> list[JobResult]:
    results: list[JobResult] = []
    todo = _pending(ctx, jobs, results)
    per_device: list[list[tuple]] = [[] for _ in ctx.devices]
    for item in todo:
        per_device[item[0].device].append(item)
    ctx.view.state.total = len(jobs)
    ctx.view.state.done = len(jobs) - len(todo)
    ctx.view.state.eta_s = _eta(ctx, len(todo), 0)
    running: dict[int, _Child] = {}
    bad_input: str | None = None
    last_poll = 0.0
    while True:
        if not ctx.stop.is_set() and bad_input is None:
            for d, queue in enumerate(per_device):
                if d in running or not queue:
                    continue
                job, action, run = queue.pop(0)
                resume = run.id if action == "resume" else None
                if resume is not None and not _has_checkpoint(ctx, resume):
                    ctx.view.note(
                        f"run {resume} has no checkpoint: starting "
                        f"{job.arm.label} seed {job.seed} again"
                    )
                    resume = None
                path = log_path(ctx.settings.db, ctx.key, job)
                path.parent.mkdir(parents=True, exist_ok=True)
                log = open(path, "a")
                log.write(
                    f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} "
                    f"{'resume ' + str(resume) if resume else 'start'} ===\n"
                )
                log.flush()
                env = child_env(ctx.devices[d]) if ctx.devices[d] != "cpu" else dict(os.environ)
                proc = subprocess.Popen(
                    child_argv(ctx, job, resume),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
                ctx.children.append(proc)
                total = ctx.budgets[job.arm.label].steps
                running[d] = _Child(job, proc, log, time.monotonic(), resume, total)
                ctx.view.started(
                    ctx.devices[d], ctx.label(job, resume) + (" resumed" if resume else ""), total
                )
        if not running:
            break
        time.sleep(0.25)
        now = time.monotonic()
        if now - last_poll >= 2.0:
            last_poll = now
            _poll_steps(ctx, running)
        for d, child in list(running.items()):
            rc = child.proc.poll()
            if rc is None:
                continue
            child.log.close()
            ctx.children.remove(child.proc)
            del running[d]
            run = _run_of(ctx, child)
            status = run.status if run is not None else "failed"
            run_id = run.id if run is not None else None
            note = ""
            if rc == 2:
                bad_input = _last_error(log_path(ctx.settings.db, ctx.key, child.job))
                status, note = "failed", bad_input
            elif status != "finished" and rc not in (0, 130):
                note = _last_error(log_path(ctx.settings.db, ctx.key, child.job))
            if status in ("finished", "diverged"):
                ctx.view.state.done += 1
                ctx.durations.append(now - child.started)
            left = sum(len(q) for q in per_device)
            ctx.view.state.eta_s = _eta(ctx, left, len(running))
            extra = (
                f"val_loss {run.val_loss:.4f}"
                if run is not None and run.val_loss is not None and status == "finished"
                else note
            )
            ctx.view.finished(ctx.devices[d], ctx.label(child.job, run_id), status, extra)
            results.append(JobResult(child.job, run_id, status, note))
            if status == "finished":
                _verdict_so_far(ctx, confidence)
    if bad_input is not None:
        raise BadInput(f"a training run refused its input: {bad_input}")
    return results


def _has_checkpoint(ctx: Context, run_id: int) -> bool:
    from racli.store.checkpoints import checkpoint_path

    return checkpoint_path(ctx.store.db, run_id).is_file()


def _run_of(ctx: Context, child: _Child):
    """The newest recorded run of a child's job."""
    runs = runs_by_job(ctx.store, ctx.key).get((child.job.arm.label, child.job.seed), [])
    if child.run_id is not None:
        return next((r for r in runs if r.id == child.run_id), None)
    return runs[-1] if runs else None


def _poll_steps(ctx: Context, running: dict[int, _Child]) -> None:
    """The latest logged step of every running child's run (from the store)."""
    from sqlalchemy import func, select

    from racli.store.models import Metric

    for d, child in running.items():
        if child.run_id is None:
            run = _run_of(ctx, child)
            if run is None or run.status != "running":
                continue
            child.run_id = run.id
            ctx.view.started(ctx.devices[d], ctx.label(child.job, run.id), child.total)
        with ctx.store.engine.connect() as conn:
            step = conn.execute(
                select(func.max(Metric.step)).where(
                    Metric.run_id == child.run_id, Metric.name == "train_loss"
                )
            ).scalar()
        if step is not None:
            ctx.view.step(ctx.devices[d], int(step))


# ---------------------------------------------------------------------------- signals


@contextlib.contextmanager
def interruptible(ctx_ref: list, stop: threading.Event):
    """SIGINT/SIGTERM: set `stop` and forward one SIGINT to each child; a second signal
    forwards another (children stop at once) and, in this process, raises
    KeyboardInterrupt."""
    count = [0]

    def handler(signum, frame):
        count[0] += 1
        stop.set()
        ctx = ctx_ref[0] if ctx_ref else None
        for proc in list(ctx.children if ctx is not None else []):
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGINT)
        if count[0] > 1 and (ctx is None or not ctx.children):
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------- the whole


def check_settings(settings: Settings) -> None:
    """Bad input in the settings themselves (before any work)."""
    if settings.minutes is None or not (math.isfinite(settings.minutes) and settings.minutes > 0):
        raise BadInput(f"--minutes must be a positive number, got {settings.minutes}")
    if settings.until_settled:
        if settings.max_seeds is None:
            raise BadInput("--until-settled needs --max-seeds N (the most seeds per arm)")
        if len(settings.seeds) < 2:
            raise BadInput("--until-settled needs at least 2 seeds to start (--seeds 1-2)")
        if settings.max_seeds < len(settings.seeds):
            raise BadInput(
                f"--max-seeds {settings.max_seeds} is below the "
                f"{len(settings.seeds)} seeds of --seeds"
            )
    elif settings.max_seeds is not None:
        raise BadInput("--max-seeds applies with --until-settled")


def run_experiment(
    settings: Settings, cfg, store, *, view, stop: threading.Event | None = None, on_step=None
) -> Outcome:
    """Calibrate (or reuse the calibration), run every job not yet finished, judge.

    Raises BadInput before anything is recorded when the settings cannot work, and
    `Interrupted` after a stop request (runs stopped cleanly, to be continued by the
    same command)."""
    from racli.training import load_data

    stop = stop or threading.Event()
    ecfg = experiment_config(cfg, settings.overrides)
    check_settings(settings)
    devices = resolve_devices(settings.devices, settings.processes)
    specs = base_specs(settings, ecfg, devices[0])
    dataset = load_data(specs[0])
    from racli.training import run_config

    for spec in specs:
        run_config(spec, dataset)  # validates every arm's model config
    key = plan.experiment_key(
        arms=settings.arms,
        comparable=comparable_config(specs[0], dataset),
        minutes=settings.minutes,
        tag=settings.tag,
    )
    tag = plan.run_tag(settings.tag, key)
    view.note(
        f"experiment {key}: {', '.join(a.label for a in settings.arms)}; "
        f"seeds {_seed_text(settings.seeds)}; {settings.minutes:g} min each at matched "
        f"time; devices {', '.join(devices)}; runs tagged '{tag}'"
    )

    ctx_ref: list = []
    with interruptible(ctx_ref, stop):
        cal = find_calibration(store, key)
        if cal is not None:
            view.note(f"calibration: reusing run {cal.run_id}")
        else:
            cal = calibrate(store, settings, ecfg, specs, dataset, key, tag, view=view, stop=stop)
        view.note(_calibration_text(cal))
        ratios = cal.variant_ratios()
        budgets = plan.step_budgets(
            settings.arms, settings.minutes, cal.arm(settings.arms[0].label).steps_per_s, ratios
        )
        view.note("step budgets: " + ", ".join(f"{k} {b.steps}" for k, b in budgets.items()))
        ctx = Context(
            settings,
            ecfg,
            store,
            key=key,
            tag=tag,
            dataset=dataset,
            budgets=budgets,
            cal=cal,
            devices=devices,
            view=view,
            stop=stop,
            on_step=on_step,
        )
        ctx_ref.append(ctx)
        children = settings.processes if settings.processes is not None else devices[0] != "cpu"
        run = run_children if children else run_in_process

        seeds = list(settings.seeds)
        design = None
        if settings.until_settled:
            from racli.experiment.sequential import Design

            design = Design.plan(
                len(seeds),
                settings.max_seeds,
                alpha=ecfg.experiment.false_decision_rate,
                kind=ecfg.experiment.spending,
            )
        v = ecfg.verdict
        looks: list[dict] = []
        results: list[JobResult] = []
        while True:
            confidence = design.confidence(len(seeds)) if design else v.confidence
            view.phase(
                f"training {len(settings.arms)} arms x {len(seeds)} seeds"
                + (
                    f" (look {len(looks) + 1} of {len(design.looks)}, verdict at "
                    f"{confidence:.3%} confidence)"
                    if design
                    else ""
                )
            )
            jobs = plan.schedule(settings.arms, seeds, len(devices))
            results = run(ctx, jobs, confidence)
            if stop.is_set():
                done = sum(r.status == "finished" for r in results)
                stopped = [r.run_id for r in results if r.status == "interrupted"]
                raise Interrupted(
                    f"interrupted: {done} of {len(jobs)} runs finished"
                    + (
                        f"; runs {', '.join(map(str, stopped))} stopped with a checkpoint"
                        if stopped
                        else ""
                    )
                    + "; run the same command again to continue"
                )
            verdicts = judge.verdicts(
                store,
                key,
                settings.arms,
                threshold=v.threshold,
                confidence=confidence,
            )
            looks.append(
                {
                    "seeds": len(seeds),
                    "confidence": confidence,
                    "outcomes": {x.candidate: x.outcome for x in verdicts},
                }
            )
            if design is None:
                break
            if not any(x.outcome == "INCONCLUSIVE" for x in verdicts):
                break
            nxt = design.next_look(len(seeds))
            if nxt is None:
                break
            added = plan.next_seeds(seeds, nxt - len(seeds))
            view.note(
                f"look at {len(seeds)} seeds: still INCONCLUSIVE; adding seeds {_seed_text(added)}"
            )
            seeds += added
    view.close()
    return Outcome(
        key=key,
        tag=tag,
        arms=settings.arms,
        seeds=seeds,
        devices=devices,
        calibration=cal,
        budgets=budgets,
        verdicts=verdicts,
        confidence=confidence,
        design=design.to_dict() if design else None,
        looks=looks,
        results=results,
    )


def _seed_text(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def _calibration_text(cal) -> str:
    first = cal.arms[0]
    parts = [f"{first.label} {first.steps_per_s:.3f} steps/s"]
    for a in cal.arms[1:]:
        ci = f" [{a.ratio_lo:.4f}, {a.ratio_hi:.4f}]" if math.isfinite(a.ratio_lo) else ""
        parts.append(f"{a.label} x{a.ratio:.4f}{ci}")
    state = (
        "settled"
        if cal.settled
        else f"time cap reached, intervals wider than +-{cal.precision:.2%}"
    )
    return (
        f"calibration (run {cal.run_id}, {cal.rounds} rounds, {cal.timed_s:.1f} s, "
        f"{state}): " + "; ".join(parts)
    )
