"""`ra train`'s work: check the options, open the store, train (or resume), and say how it ended.

    opts = TrainOptions(attn="ra_v5", steps=200)
    check_options(opts)                        # before anything else
    prepared = prepare(opts, cfg, location)    # BadInput before the store is written
    launched = run(prepared)                   # under the stop policy of training.stopping
    message, code = ending(launched)

Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import OperationalError

from racli import training
from racli.errors import BadInput, Interrupted
from racli.names import check_run_id, check_tag
from racli.store import checkpoints as ckpt_paths
from racli.store.engine import before_migrating, check_writable, open_store
from racli.store.queries import get_run
from racli.text import jsonout
from racli.text import tensorboard as tb_files
from racli.training import tensorboard
from racli.training.budget import check_budget_range
from racli.training.memory import check_fits
from racli.training.progress import ConsoleReporter
from racli.training.result import TrainResult
from racli.training.spec import (
    TrainSpec,
    check_resumable,
    load_data,
    prepare_resume,
    run_config,
    spec_from_config,
)
from racli.training.stopping import EXIT_INTERRUPTED, stop_on_signals, stop_when_parent_dies


@dataclass
class TrainOptions:
    """What `ra train` was given (None: not given)."""

    attn: str | None = None
    minutes: float | None = None
    steps: int | None = None
    model: str | None = None
    data: str | None = None
    seed: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str | None = None
    compile: bool | None = None
    max_epochs: float | None = None
    tag: str | None = None
    overrides: list[str] = field(default_factory=list)  # --set items
    resume: int | None = None
    extra_config: str | None = None  # JSON from `ra experiment`
    tensorboard: str | None = None  # --tensorboard DIR (also with --resume)

    def resume_conflicts(self) -> list[str]:
        """The options given with --resume that it would ignore (none may be)."""
        given = {
            "attn": self.attn,
            "minutes": self.minutes,
            "steps": self.steps,
            "model": self.model,
            "data": self.data,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "device": self.device,
            "compile": self.compile,
            "tag": self.tag,
            "set": self.overrides,
            "max_epochs": self.max_epochs,
            "extra_config": self.extra_config,
        }
        return [
            f"--{name.replace('_', '-')}"
            for name, value in given.items()
            if value not in (None, [], ())
        ]

    def _option_items(self) -> list[tuple[str, str]]:
        """(option, `--set` item) for --batch-size, --lr, --max-epochs and --tensorboard."""
        items = []
        if self.batch_size is not None:
            items.append(("--batch-size", f"train.batch_size={self.batch_size}"))
        if self.lr is not None:  # YAML needs the dot and sign
            items.append(("--lr", f"train.lr={self.lr:.17e}"))
        if self.max_epochs is not None:
            items.append(("--max-epochs", f"train.max_epochs={self.max_epochs:.17e}"))
        if self.tensorboard is not None:
            items.append(("--tensorboard", tensorboard.override(self.tensorboard)))
        return items

    def train_overrides(self) -> list[str]:
        """--set items, then --batch-size, --lr, --max-epochs and --tensorboard as train.*
        overrides."""
        return list(self.overrides) + [item for _, item in self._option_items()]

    def override_origins(self) -> dict[str, str]:
        """The option behind each of train_overrides()' keys that is not a --set."""
        return {item.partition("=")[0]: option for option, item in self._option_items()}


def check_options(opts: TrainOptions) -> None:
    """What is wrong whatever the configuration: the run id and the budget's range."""
    if opts.resume is not None:
        check_run_id(opts.resume, "--resume")
    check_budget_range(opts.minutes, opts.steps)
    check_tag(opts.tag)


def check_store_writable(location: str) -> None:
    """BadInput unless the store at `location` (a SQLite file or one to create, a
    server) can be written: train records its run there, so this is checked before any
    work and before anything is created (racli.store.engine.check_writable)."""
    check_writable(location)


def open_writable(open_fn: Callable[[], Any], location: str):
    """`open_fn()`, with a store SQLite refuses to write turned into bad input."""
    try:
        return open_fn()
    except OperationalError as exc:
        if "readonly" not in str(exc):
            raise
        raise BadInput(f"cannot record the run in {location}: the database is read-only") from exc


@dataclass
class Prepared:
    """A run ready to start: its spec and data, the store (None on ranks but 0)."""

    spec: TrainSpec
    dataset: Any
    store: Any
    info: Any  # distributed.DistInfo
    resume: int | None = None


def _check_tensorboard(spec: TrainSpec, info) -> None:
    """BadInput before any work when TensorBoard output is asked for and cannot be had."""
    if spec.train.tensorboard is not None and info.is_main:
        tb_files.check_available()
        tb_files.check_folder(spec.train.tensorboard)


def _prepare_resume(opts: TrainOptions, cfg, location: str, info) -> Prepared:
    conflicts = opts.resume_conflicts()
    if conflicts:
        raise BadInput(
            f"--resume continues run {opts.resume} with its recorded configuration "
            f"and budget: drop {', '.join(conflicts)}"
        )
    # rank 0 opens (and migrates) the store; other ranks only read it. The run is looked
    # up before any migration: a wrong id, a finished, live or bench run, a checkpoint that
    # cannot be found or read, or data that is gone or changed leaves an older store at
    # its schema (its checkpoint and data are then read twice, once on the upgraded copy).
    if info.is_main:
        with before_migrating(location) as view:
            if view is not None:
                prepare_resume(view, opts.resume, info)
    store = open_writable(
        lambda: open_store(
            location,
            create=False,
            migrate=info.is_main,
            run_ids=[opts.resume],
            run_check=lambda runs: check_resumable(opts.resume, *runs[opts.resume]),
        ),
        location,
    )
    store.wait_s = cfg.db_wait_minutes * 60.0
    spec, dataset, _ = prepare_resume(store, opts.resume, info)
    # where TensorBoard events go is not recorded: --tensorboard, else this ra.yaml's
    folder = opts.tensorboard if opts.tensorboard is not None else cfg.train.tensorboard
    spec.train = spec.train.model_copy(update={"tensorboard": folder})
    _check_tensorboard(spec, info)
    return Prepared(spec, dataset, store, info, opts.resume)


def prepare(
    opts: TrainOptions, cfg, location: str, *, parse_extra: Callable[[str], dict] | None = None
) -> Prepared:
    """Validate everything (spec, data, model config, checkpoint folder, store) and open the
    store; `parse_extra` reads --extra-config. Imports torch."""
    from racli.training import distributed as ddp  # torch

    info = ddp.detect()
    if info.is_main:
        check_store_writable(location)
    if opts.resume is not None:
        return _prepare_resume(opts, cfg, location, info)
    if opts.attn is None:
        raise BadInput("--attn is required (e.g. --attn ra_v5), or --resume RUN")
    spec = spec_from_config(
        cfg,
        attn=opts.attn,
        preset=opts.model,
        data=opts.data,
        minutes=opts.minutes,
        steps=opts.steps,
        seed=0 if opts.seed is None else opts.seed,
        tag=opts.tag,
        device=opts.device,
        compile=opts.compile,
        overrides=opts.train_overrides(),
        origins=opts.override_origins(),
    )
    if opts.extra_config is not None:
        if parse_extra is None:
            raise ValueError("--extra-config needs its parser (parse_extra)")
        spec.extra = parse_extra(opts.extra_config)
    _check_tensorboard(spec, info)
    dataset = load_data(spec)
    run_config(spec, dataset, info.world_size)  # validates the model config
    check_fits(spec, dataset, info.world_size)
    store = None
    if info.is_main:
        made = ckpt_paths.missing_folders(location)
        ckpt_paths.ensure_writable(location)  # before the database is created
        try:
            store = open_writable(lambda: open_store(location), location)
        except BaseException:
            ckpt_paths.remove_folders(made)  # a store that cannot open leaves nothing
            raise
        store.wait_s = cfg.db_wait_minutes * 60.0
    return Prepared(spec, dataset, store, info)


class Watch:
    """Passes the reporter's calls on and remembers the run id and the last loss, so a
    run stopped at once (second Ctrl-C) still gets its summary."""

    def __init__(self, inner):
        self.inner = inner
        self.run_id: int | None = None
        self.loss: float | None = None

    def recorded(self, run_id: int) -> None:
        self.run_id = run_id

    def start(self, *, run_id, **kw) -> None:
        self.run_id = run_id
        self.inner.start(run_id=run_id, **kw)

    def update(self, *, loss, **kw) -> None:
        if loss is not None:
            self.loss = loss
        self.inner.update(loss=loss, **kw)

    def note(self, text: str) -> None:
        self.inner.note(text)

    def phase(self, label: str, done: int, total: int | None, *, end: bool = False) -> None:
        self.inner.phase(label, done, total, end=end)

    def close(self) -> None:
        self.inner.close()


def forced_stop_result(store, run_id: int, attn: str, train_loss: float | None) -> TrainResult:
    """The TrainResult of a run stopped at once, read back from its recorded row."""
    r = get_run(store, run_id)
    return TrainResult(
        run_id=run_id,
        attn=attn,
        status=r.status,
        iterations=r.iterations or 0,
        tokens=r.tokens or 0,
        epochs=r.epochs,
        train_seconds=r.train_seconds or 0.0,
        val_loss=r.val_loss,
        train_loss=train_loss,
        tokens_per_s=r.tokens_per_s,
        it_per_s=None,
        setup_s=None,
        compile_s=None,
        eval_s=None,
        checkpoint_s=None,
        error=r.error,
        config=r.config or {},
    )


@dataclass
class Launched:
    result: TrainResult
    forced: bool  # stopped at once (a second signal): no final evaluation, no checkpoint
    is_main: bool = True


def run(p: Prepared) -> Launched:
    """Train (or resume) under the stop policy: a first SIGINT/SIGTERM ends the run after its
    final evaluation and a checkpoint, a second at once. Closes the store."""
    reporter = Watch(ConsoleReporter()) if p.info.is_main else None
    if (
        reporter is not None
        and p.spec.device_type == "cuda"
        and p.dataset.name.startswith("builtin:")
    ):
        reporter.note(
            f"note: the built-in corpus ({p.dataset.train_tokens:,} training tokens) is "
            f"for CPU runs and short checks; GPU runs need a large corpus (--data)"
        )
    stop = threading.Event()
    if reporter is not None:
        gone = "the ra experiment process is gone: stopping the run"
        stop_when_parent_dies(stop, on_stop=lambda: reporter.note(gone))
    forced = False
    try:
        with stop_on_signals(stop):
            try:
                result = training.train(
                    p.spec,
                    p.store,
                    dataset=p.dataset,
                    resume_run=p.resume,
                    reporter=reporter,
                    stop=stop,
                    on_recorded=reporter.recorded if reporter is not None else None,
                    dist_info=p.info,
                )
            except KeyboardInterrupt:  # stopped at once: the run is recorded interrupted
                if reporter is None:
                    raise
                if reporter.run_id is None:
                    raise Interrupted(
                        "stopped before the run was recorded: nothing to continue"
                    ) from None
                forced = True
                result = forced_stop_result(p.store, reporter.run_id, p.spec.attn, reporter.loss)
    finally:
        if p.store is not None:
            p.store.close()
    return Launched(result, forced, p.info.is_main)


def ending(launched: Launched) -> tuple[str | None, int]:
    """The closing line on stderr (None: none) and the exit code of a run's end."""
    r = launched.result
    if not launched.is_main:
        return None, 0 if r.status in ("finished", "interrupted") else 1
    if launched.forced:
        return (
            f"ra: interrupted: run {r.run_id} stopped at once at step "
            f"{r.iterations} (no final evaluation, no checkpoint); continue it with "
            f"`ra train --resume {r.run_id}` (from its last checkpoint, or from step 0 "
            f"without one)",
            EXIT_INTERRUPTED,
        )
    if r.status == "diverged":
        return f"ra: failed: run {r.run_id} diverged: {r.error}", 1
    if r.status == "interrupted":
        return (
            f"ra: interrupted: run {r.run_id} stopped at step {r.iterations}; "
            f"continue it with `ra train --resume {r.run_id}`",
            EXIT_INTERRUPTED,
        )
    return None, 0


def summary_dict(result: TrainResult) -> dict:
    return jsonout.ready(dataclasses.asdict(result))
