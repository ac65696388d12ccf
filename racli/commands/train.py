"""`ra train`: train one model on real text for a budget and record the run.

A thin layer over `racli.training`: options -> validated spec (every bad
input, an unwritable checkpoint folder or database included, is refused before
the database is touched) -> trainer -> summary.
SIGINT/SIGTERM stop at the next step (a second one stops at once: the run is
recorded `interrupted` without a final evaluation, and its summary is still
printed). `--json` prints the summary as JSON on stdout (progress and notes
stay on stderr). Exit codes: 0 finished; 130 interrupted (after the final
evaluation and a checkpoint; the run can be resumed); 1 diverged or failed;
2 bad input. torch is imported inside the command only.
"""

from __future__ import annotations

import math
import os
from typing import Annotated

import typer

from racli.commands import common
from racli.errors import BadInput
from racli.names import check_run_id
from racli.text.terminal import visible

EXIT_INTERRUPTED = 130
# budgets beyond these are typing mistakes (2^53: still exact as a float)
MAX_STEPS = 2**53
MAX_MINUTES = 2**53 / 60


def check_budget_range(minutes: float | None, steps: int | None) -> None:
    if steps is not None and steps > MAX_STEPS:
        raise BadInput(f"--steps {steps} is beyond any budget (at most 2^53 = {MAX_STEPS})")
    if minutes is not None and math.isfinite(minutes) and minutes > MAX_MINUTES:
        raise BadInput(f"--minutes {minutes:g} is beyond any budget (at most {MAX_MINUTES:.3g})")


def check_store_writable(location: str) -> None:
    """BadInput unless a SQLite store at `location` (a file, or one to create) can be
    written: train records its run there, so this is checked before any work."""
    from racli.store.engine import sqlite_path

    path = sqlite_path(location)
    if path is None:
        return
    folder = path.parent if str(path.parent) else None
    if path.is_dir():
        raise BadInput(f"cannot record the run in {path}: it is a directory")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise BadInput(
            f"cannot record the run in {path}: the database file is read-only "
            "(read commands still work on it; train needs a writable store, e.g. --db)"
        )
    if folder is not None and folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"cannot record the run in {path}: its folder {folder} is read-only")


def _open_store(open_fn, location: str):
    """`open_fn()`, with a store SQLite refuses to write turned into bad input."""
    from sqlalchemy.exc import OperationalError

    try:
        return open_fn()
    except OperationalError as exc:
        if "readonly" not in str(exc):
            raise
        raise BadInput(f"cannot record the run in {location}: the database is read-only") from exc


def _json_ready(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


class _Watch:
    """Passes the reporter's calls on and remembers the run id and the last loss, so a
    run stopped at once (second Ctrl-C) still gets its summary."""

    def __init__(self, inner):
        self.inner = inner
        self.run_id: int | None = None
        self.loss: float | None = None

    def start(self, *, run_id, **kw) -> None:
        self.run_id = run_id
        self.inner.start(run_id=run_id, **kw)

    def update(self, *, loss, **kw) -> None:
        if loss is not None:
            self.loss = loss
        self.inner.update(loss=loss, **kw)

    def note(self, text: str) -> None:
        self.inner.note(text)

    def close(self) -> None:
        self.inner.close()


def forced_stop_result(store, run_id: int, attn: str, train_loss: float | None):
    """The TrainResult of a run stopped at once, read back from its recorded row."""
    from racli.store.queries import get_run
    from racli.training import TrainResult

    r = get_run(store, run_id)
    secs = r.train_seconds or 0.0
    return TrainResult(
        run_id=run_id,
        attn=attn,
        status=r.status,
        iterations=r.iterations or 0,
        tokens=r.tokens or 0,
        epochs=r.epochs,
        train_seconds=secs,
        val_loss=r.val_loss,
        train_loss=train_loss,
        tokens_per_s=r.tokens_per_s,
        it_per_s=None,
        compile_s=None,
        eval_s=None,
        checkpoint_s=None,
        error=r.error,
        config=r.config or {},
    )


def _resume_conflicts(**given) -> list[str]:
    return [
        f"--{name.replace('_', '-')}"
        for name, value in given.items()
        if value not in (None, [], ())
    ]


def train(
    attn: Annotated[
        str | None,
        typer.Option(
            "--attn",
            help="Attention variant (baseline, ra_v5, ra_v5_untied, ra_beta, sdpa_gate).",
            show_default=False,
        ),
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(
            "--minutes",
            help="Budget: wall-clock minutes of training steps (compile warm-up, "
            "evaluation and checkpoints not counted).",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            help="Budget: number of optimizer steps (instead of --minutes).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Model preset from ra.yaml, or auto: gpt2 on CUDA, tiny on the CPU "
            "(default: model.preset).",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Training data: a folder from `ra data prepare`, a nanoGPT folder with "
            "train.bin/val.bin, a .txt file or a folder of .txt files (default: the built-in "
            "corpus).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of the model init and of the batch order (default 0).",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            help="Sequences per step per process (train.batch_size); with "
            "train.batch_tokens, the largest micro-batch.",
            show_default=False,
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="Peak learning rate (train.lr).", show_default=False),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="auto, cpu, cuda or cuda:N (default auto: cuda when available).",
            show_default=False,
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the model (default: train.compile; auto = on with CUDA).",
            show_default=False,
        ),
    ] = None,
    max_epochs: Annotated[
        float | None,
        typer.Option(
            "--max-epochs",
            help="Stop after this many passes over the training split (train.max_epochs).",
            show_default=False,
        ),
    ] = None,
    tag: Annotated[
        str | None, typer.Option("--tag", help="A label stored on the run.", show_default=False)
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a model or train field of ra.yaml for this run, e.g. "
            "--set model.ra_rank=8 (repeatable).",
            metavar="KEY=VALUE",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        int | None,
        typer.Option(
            "--resume",
            help="Continue run RUN from its checkpoint with its recorded configuration "
            "and remaining budget.",
            metavar="RUN",
            show_default=False,
        ),
    ] = None,
    extra_config: Annotated[
        str | None,
        typer.Option(
            "--extra-config",
            hidden=True,
            help="JSON entries of `ra experiment` recorded in the "
            "run's config (its arm and budget source).",
            show_default=False,
        ),
    ] = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the final summary (with the run id) as JSON on stdout; "
            "progress and notes stay on stderr.",
        ),
    ] = False,
) -> None:
    """Train a GPT-2 style model with one attention variant; record losses, throughput, gates."""
    if resume is not None:
        check_run_id(resume, "--resume")
    check_budget_range(minutes, steps)

    import signal
    import threading

    from racli import training
    from racli.store import checkpoints as ckpt_paths
    from racli.training import distributed as ddp
    from racli.training.progress import ConsoleReporter

    info = ddp.detect()
    cfg = common.config(config)
    location = common.db_location(db, cfg)
    if info.is_main:
        check_store_writable(location)
    if resume is not None:
        conflicts = _resume_conflicts(
            attn=attn,
            minutes=minutes,
            steps=steps,
            model=model,
            data=data,
            seed=seed,
            batch_size=batch_size,
            lr=lr,
            device=device,
            compile=compile,
            tag=tag,
            set=set_,
            max_epochs=max_epochs,
            extra_config=extra_config,
        )
        if conflicts:
            raise BadInput(
                f"--resume continues run {resume} with its recorded configuration "
                f"and budget: drop {', '.join(conflicts)}"
            )
        store = _open_store(lambda: _open_for_resume(location, cfg, info), location)
        spec, dataset, _ = training.prepare_resume(store, resume, info)
    else:
        if attn is None:
            raise BadInput("--attn is required (e.g. --attn ra_v5), or --resume RUN")
        overrides = list(set_ or [])
        if batch_size is not None:
            overrides.append(f"train.batch_size={batch_size}")
        if lr is not None:
            overrides.append(f"train.lr={lr:.17e}")  # YAML needs the dot and sign
        if max_epochs is not None:
            overrides.append(f"train.max_epochs={max_epochs:.17e}")
        spec = training.spec_from_config(
            cfg,
            attn=attn,
            preset=model,
            data=data,
            minutes=minutes,
            steps=steps,
            seed=0 if seed is None else seed,
            tag=tag,
            device=device,
            compile=compile,
            overrides=overrides,
        )
        if extra_config is not None:
            from racli.experiment.plan import parse_extra_config

            spec.extra = parse_extra_config(extra_config)
        dataset = training.load_data(spec)
        training.run_config(spec, dataset, info.world_size)  # validates the model config
        if info.is_main:
            ckpt_paths.ensure_writable(location)  # before the database is created
        store = (
            _open_store(lambda: common.open_db(location, cfg), location) if info.is_main else None
        )

    reporter = _Watch(ConsoleReporter()) if info.is_main else None
    if reporter is not None and spec.device_type == "cuda" and dataset.name.startswith("builtin:"):
        reporter.note(
            f"note: the built-in corpus ({dataset.train_tokens:,} training tokens) is "
            f"for CPU runs and short checks; GPU runs need a large corpus (--data)"
        )
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():  # a second signal: stop now, without the final evaluation
            raise KeyboardInterrupt
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    forced = False
    try:
        try:
            result = training.train(
                spec,
                store,
                dataset=dataset,
                resume_run=resume,
                reporter=reporter,
                stop=stop,
                dist_info=info,
            )
        except KeyboardInterrupt:  # stopped at once: the run is recorded interrupted
            if reporter is None or reporter.run_id is None:
                raise
            forced = True
            result = forced_stop_result(store, reporter.run_id, spec.attn, reporter.loss)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if store is not None:
            store.close()
    if not info.is_main:
        raise typer.Exit(0 if result.status in ("finished", "interrupted") else 1)
    _print_summary(result, json)
    if forced:
        typer.echo(
            f"ra: interrupted: run {result.run_id} stopped at once at step "
            f"{result.iterations} (no final evaluation, no checkpoint)",
            err=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.status == "diverged":
        typer.echo(f"ra: failed: run {result.run_id} diverged: {result.error}", err=True)
        raise typer.Exit(1)
    if result.status == "interrupted":
        typer.echo(
            f"ra: interrupted: run {result.run_id} stopped at step {result.iterations}; "
            f"continue it with `ra train --resume {result.run_id}`",
            err=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED)


def _print_summary(result, as_json: bool) -> None:
    import dataclasses

    from racli.training.progress import summary_text

    if as_json:
        common.print_json(_json_ready(dataclasses.asdict(result)))
    else:
        typer.echo(visible(summary_text(result)))


def _open_for_resume(location: str, cfg, info):
    """Rank 0 opens (and migrates) the store; other ranks only read it."""
    if info.is_main:
        return common.open_db(location, cfg, create=False)
    from racli.store.engine import open_store

    return open_store(location, create=False, migrate=False)
