"""The training run behind `ra train`: set-up, the recorded run, and how it ends.

Design notes: docs/training.md.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import torch

from racli.store import checkpoints as ckpt_paths
from racli.store.queries import get_run
from racli.store.recorder import NullRecorder, Recorder, RunRecorder
from racli.training import checkpoint as ckpt
from racli.training import distributed as ddp
from racli.training import memory
from racli.training.datasets import Dataset
from racli.training.progress import NullReporter, ProgressReporter
from racli.training.result import StepInfo, TrainResult
from racli.training.spec import TrainSpec, data_location, load_data, prepare_resume, run_config
from racli.training.tensorboard import with_tensorboard
from racli.training.trainer import Trainer, finite


def train(
    spec: TrainSpec | None,
    store,
    *,
    dataset: Dataset | None = None,
    resume_run: int | None = None,
    reporter: ProgressReporter | None = None,
    stop: threading.Event | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_recorded: Callable[[int], None] | None = None,
    dist_info: ddp.DistInfo | None = None,
    flush_interval: float = 5.0,
) -> TrainResult:
    """Run one training run and record it in `store` (rank 0 only; other ranks may pass None
    for a fresh run). `resume_run`: continue that run from its checkpoint with its recorded
    spec (pass `spec=None`, or the spec and dataset from `prepare_resume`).

    Raises BadInput for bad input (an unwritable checkpoint folder included) before
    anything is recorded; once the run is recorded, a NaN/inf loss ends it `diverged`, a set
    `stop` event (SIGINT / SIGTERM) ends it `interrupted` after the final evaluation and a
    checkpoint, a failed checkpoint write is recorded on the run and training goes on, and
    any other exception ends it `failed` and is re-raised. `on_recorded(run_id)` is called
    as soon as the run is in the store (rank 0).
    """
    info = dist_info or ddp.detect()
    reporter = reporter or NullReporter()
    stop = stop or threading.Event()
    if spec is not None:
        spec.check()
    spec, dataset, state, config, data_path = _starting_point(
        spec, store, dataset=dataset, resume_run=resume_run, info=info
    )
    if info.is_main:
        ckpt_paths.ensure_writable(store.db)

    device = ddp.setup(info, spec.device)
    # the Trainer turns TF32 on for CUDA runs; the caller's settings come back at the end
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        rec: Recorder = NullRecorder()
        if info.is_main:
            rec = _recorder(
                spec, store, config, resume_run, state, reporter, flush_interval=flush_interval
            )
            if on_recorded is not None:
                on_recorded(rec.run_id)
        ckpt_path = ckpt_paths.checkpoint_path(store.db, rec.run_id) if info.is_main else None
        result = _train_recorded(
            spec,
            dataset,
            rec=rec,
            info=info,
            device=device,
            config=config,
            ckpt_path=ckpt_path,
            state=state,
            reporter=reporter,
            stop=stop,
            on_step=on_step,
            data_path=data_path,
        )
        ddp.finish()
        return result
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        reporter.close()
        ddp.teardown()


def _starting_point(spec, store, *, dataset, resume_run, info) -> tuple:
    """(spec, dataset, checkpoint state or None, run config, data path) of a fresh run or
    of `resume_run` (its recorded spec and its checkpoint, when it has one)."""
    state = None
    if resume_run is not None and dataset is None:
        spec, dataset, _ = prepare_resume(store, resume_run, info)
    elif dataset is None:
        dataset = load_data(spec)
    if resume_run is not None:
        path = ckpt_paths.checkpoint_path(store.db, resume_run)
        if path.is_file():
            state = ckpt.load(path)
            config = state.config
        else:  # stopped before its first checkpoint: trained again from step 0, same config
            config = get_run(store, resume_run).config
        data_path = (state.data_path if state else None) or data_location(spec, dataset)
    else:
        config = run_config(spec, dataset, info.world_size)
        data_path = data_location(spec, dataset)
    return spec, dataset, state, config, data_path


def _recorder(
    spec, store, config, resume_run, state, reporter: ProgressReporter, *, flush_interval
) -> Recorder:
    """The run's recorder (rank 0): a new run, or `resume_run` taken up again."""
    if resume_run is not None:
        # the steps after the checkpoint (all steps, without one) are trained again
        rec = RunRecorder.resume(
            store,
            resume_run,
            flush_interval=flush_interval,
            drop_after_step=state.step if state is not None else -1,
        )
        _take_up(rec, state, reporter)
    else:
        rec = RunRecorder.start(
            store,
            kind="train",
            attn=spec.attn,
            config=config,
            seed=spec.seed,
            tag=spec.tag,
            flush_interval=flush_interval,
        )
    # the store keeps the rows up to the checkpoint's step; TensorBoard the same events
    first = state.step + 1 if resume_run is not None and state is not None else 0
    return with_tensorboard(
        rec, spec.train.tensorboard, spec.attn, note=reporter.note, first_step=first
    )


def _take_up(rec: RunRecorder, state, reporter: ProgressReporter) -> None:
    """A run without a checkpoint starts again from step 0 under its own id: its figures are
    cleared too (its rows went when it was taken up)."""
    if state is not None:
        return
    dropped = rec.dropped_rows
    rec.update(**dict.fromkeys(FIGURE_COLUMNS))
    reporter.note(
        f"run {rec.run_id} has no checkpoint (it stopped before its first one): training it "
        f"again from step 0 under its own id; the {dropped:,} value(s) it recorded are dropped"
    )


def resume(store, run_id: int, **kw) -> TrainResult:
    """Validate `run_id` for resumption (BadInput if it cannot be) and continue it."""
    return train(None, store, resume_run=run_id, **kw)


# the run row's figures of a train run (cleared when it is trained again from step 0)
FIGURE_COLUMNS = ("iterations", "tokens", "epochs", "train_seconds", "val_loss", "tokens_per_s")


def _train_recorded(spec, dataset, *, rec: Recorder, info, **trainer_args) -> TrainResult:
    """Train with a Trainer made of `trainer_args` and record how it ends."""
    trainer = None
    try:
        trainer = Trainer(spec, dataset, rec=rec, info=info, **trainer_args)
        status = trainer.run()
    except KeyboardInterrupt:
        figures = trainer.row_figures() if trainer is not None else {}
        rec.end(
            "interrupted",
            error="interrupted (forced: no final evaluation, no checkpoint)",
            **figures,
        )
        raise
    except BaseException as exc:
        figures = trainer.row_figures() if trainer is not None else {}
        if memory.allocation_failed(exc) and (trainer is None or trainer.warmup):
            bad = memory.too_big(exc, spec)  # the batch does not fit: bad input
            rec.fail(str(bad), **figures)
            raise bad from exc
        rec.fail(exc, **figures)
        raise
    finally:
        if trainer is not None:  # a device in an error state never hides how the run ended
            with contextlib.suppress(Exception):
                trainer.release()
    config, ckpt_path = trainer_args["config"], trainer_args["ckpt_path"]
    return record_end(
        trainer, status, rec=rec, info=info, spec=spec, config=config, ckpt_path=ckpt_path
    )


def end_error(trainer: Trainer, status: str) -> str | None:
    """The run row's `error` at the end: why it diverged or stopped, and a checkpoint that
    could not be written."""
    if status == "diverged":
        return trainer.error
    reason = (
        f"stopped on request (SIGINT/SIGTERM) at step {trainer.step}"
        if status == "interrupted"
        else None
    )
    note = trainer.checkpoint_note()
    return "; ".join(t for t in (reason, note) if t) or None


def record_end(
    trainer: Trainer, status: str, *, rec: Recorder, info, spec, config, ckpt_path
) -> TrainResult:
    """Record how the session ended (figures, overhead, status, error) and its result."""
    figures = trainer.figures()
    if status == "diverged":
        figures["val_loss"] = None  # an earlier evaluation says nothing about the end state
    secs = figures["train_seconds"]
    overhead = rec.write_seconds / secs if secs > 0 else None
    rec.metrics(trainer.step, finite({"record_overhead": overhead}), secs)
    error = end_error(trainer, status)
    row = {k: v for k, v in figures.items() if v is not None}
    if status == "diverged":
        row["val_loss"] = None  # clear the figure a periodic evaluation left on the row
    rec.end(status, error=error, **row)
    return TrainResult(
        run_id=rec.run_id,
        attn=spec.attn,
        status=status,
        iterations=trainer.step,
        tokens=trainer.tokens,
        epochs=trainer.epochs,
        train_seconds=secs,
        val_loss=figures["val_loss"],
        train_loss=trainer.train_loss,
        tokens_per_s=figures["tokens_per_s"],
        it_per_s=trainer.timed_steps / secs if secs > 0 else None,
        setup_s=trainer.setup_s,
        compile_s=trainer.compile_s,
        eval_s=trainer.eval_s,
        checkpoint_s=trainer.checkpoint_s,
        record_overhead=overhead,
        error=error,
        checkpoint=str(ckpt_path)
        if ckpt_path is not None and ckpt_path.exists() and status != "diverged"
        else None,
        world_size=info.world_size,
        config=config,
    )
