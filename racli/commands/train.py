"""`ra train`: train one model on real text for a budget and record the run.

A thin layer over `racli.training`: options -> validated spec (every bad
input, an unwritable checkpoint folder included, is refused before the
database is touched) -> trainer -> summary.
SIGINT/SIGTERM stop at the next step (a second one stops at once). Exit
codes: 0 finished; 130 interrupted (after the final evaluation and a
checkpoint; the run can be resumed); 1 diverged or failed; 2 bad input.
torch is imported inside the command only.
"""
from __future__ import annotations

from typing import Annotated

import typer

from racli.commands import common
from racli.errors import BadInput

EXIT_INTERRUPTED = 130


def _resume_conflicts(**given) -> list[str]:
    return [f"--{name.replace('_', '-')}" for name, value in given.items()
            if value not in (None, [], ())]


def train(
    attn: Annotated[str | None, typer.Option(
        "--attn", help="Attention variant (baseline, ra_v5, ra_v5_untied, ra_beta, sdpa_gate).",
        show_default=False)] = None,
    minutes: Annotated[float | None, typer.Option(
        "--minutes", help="Budget: wall-clock minutes of training steps (compile warm-up, "
        "evaluation and checkpoints not counted).", show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", help="Budget: number of optimizer steps (instead of --minutes).",
        show_default=False)] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Model preset from ra.yaml, or auto: gpt2 on CUDA, tiny on the CPU "
        "(default: model.preset).",
        show_default=False)] = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="Training data: a folder from `ra data prepare`, a nanoGPT folder with "
        "train.bin/val.bin, a .txt file or a folder of .txt files (default: the built-in "
        "corpus).",
        show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Seed of the model init and of the batch order (default 0).",
        show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", help="Sequences per step per process (train.batch_size).",
        show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(
        "--lr", help="Peak learning rate (train.lr).", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="auto, cpu, cuda or cuda:N (default auto: cuda when available).",
        show_default=False)] = None,
    compile: Annotated[bool | None, typer.Option(
        "--compile/--no-compile", help="torch.compile the model (default: train.compile; "
        "auto = on with CUDA).", show_default=False)] = None,
    max_epochs: Annotated[float | None, typer.Option(
        "--max-epochs", help="Stop after this many passes over the training split "
        "(train.max_epochs).", show_default=False)] = None,
    tag: Annotated[str | None, typer.Option(
        "--tag", help="A label stored on the run.", show_default=False)] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a model or train field of ra.yaml for this run, e.g. "
        "--set model.ra_rank=8 (repeatable).", metavar="KEY=VALUE", show_default=False)] = None,
    resume: Annotated[int | None, typer.Option(
        "--resume", help="Continue run RUN from its checkpoint with its recorded configuration "
        "and remaining budget.", metavar="RUN", show_default=False)] = None,
    extra_config: Annotated[str | None, typer.Option(
        "--extra-config", hidden=True, help="JSON entries of `ra experiment` recorded in the "
        "run's config (its arm and budget source).", show_default=False)] = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
) -> None:
    """Train a GPT-2 style model with one attention variant; record losses, throughput, gates."""
    import signal
    import threading

    from racli import training
    from racli.training import checkpoint as ckpt
    from racli.training import distributed as ddp
    from racli.training.progress import ConsoleReporter, summary_text

    info = ddp.detect()
    cfg = common.config(config)
    location = common.db_location(db, cfg)
    if resume is not None:
        conflicts = _resume_conflicts(attn=attn, minutes=minutes, steps=steps, model=model,
                                      data=data, seed=seed, batch_size=batch_size, lr=lr,
                                      device=device, compile=compile, tag=tag, set=set_,
                                      max_epochs=max_epochs, extra_config=extra_config)
        if conflicts:
            raise BadInput(f"--resume continues run {resume} with its recorded configuration "
                           f"and budget: drop {', '.join(conflicts)}")
        store = _open_for_resume(location, cfg, info)
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
        spec = training.spec_from_config(cfg, attn=attn, preset=model, data=data,
                                         minutes=minutes, steps=steps,
                                         seed=0 if seed is None else seed, tag=tag,
                                         device=device, compile=compile, overrides=overrides)
        if extra_config is not None:
            from racli.experiment.plan import parse_extra_config

            spec.extra = parse_extra_config(extra_config)
        dataset = training.load_data(spec)
        training.run_config(spec, dataset, info.world_size)  # validates the model config
        if info.is_main:
            ckpt.ensure_writable(location)  # before the database is created
        store = common.open_db(location, cfg) if info.is_main else None

    reporter = ConsoleReporter() if info.is_main else None
    if reporter is not None and spec.device_type == "cuda" and dataset.name.startswith("builtin:"):
        reporter.note(f"note: the built-in corpus ({dataset.train_tokens:,} training tokens) is "
                      f"for CPU runs and short checks; GPU runs need a large corpus (--data)")
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():  # a second signal: stop now, without the final evaluation
            raise KeyboardInterrupt
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = training.train(spec, store, dataset=dataset, resume_run=resume,
                                reporter=reporter, stop=stop, dist_info=info)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if store is not None:
            store.close()
    if not info.is_main:
        raise typer.Exit(0 if result.status in ("finished", "interrupted") else 1)
    typer.echo(summary_text(result))
    if result.status == "diverged":
        typer.echo(f"ra: failed: run {result.run_id} diverged: {result.error}", err=True)
        raise typer.Exit(1)
    if result.status == "interrupted":
        typer.echo(f"ra: interrupted: run {result.run_id} stopped at step {result.iterations}; "
                   f"continue it with `ra train --resume {result.run_id}`", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)


def _open_for_resume(location: str, cfg, info):
    """Rank 0 opens (and migrates) the store; other ranks only read it."""
    if info.is_main:
        return common.open_db(location, cfg, create=False)
    from racli.store.engine import open_store

    return open_store(location, create=False, migrate=False)
