"""The trainer: one training session (a fresh run or a resumed one) on one process.

Design notes: docs/training.md.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from racli.names import sdpa_backend_context
from racli.store.recorder import Recorder
from racli.training import checkpoint as ckpt
from racli.training import distributed as ddp
from racli.training.batches import BatchSampler, eval_batches
from racli.training.budget import EpochBudget
from racli.training.clocks import ClockSampler
from racli.training.datasets import Dataset
from racli.training.progress import (
    ProgressReporter,
    counted_phase,
    epoch_warning,
    uncounted_phase,
)
from racli.training.reciprocity import record_measures
from racli.training.result import StepInfo
from racli.training.schedule import lr_at, step_progress, time_progress
from racli.training.spec import TrainSpec, model_config
from racli_models import compiler
from racli_models.step import clipped_step

# a run's first checkpoint comes this soon (or at its first evaluation, if earlier), so that
# a run killed young can be resumed; later ones every train.checkpoint_minutes
FIRST_CHECKPOINT_S = 60.0


def accumulate_gradients(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    micro: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Forward and backward over the batch `x, y` in micro-batches of `micro` sequences,
    each loss scaled by 1/accum: the gradients add up to those of the whole batch's mean
    loss (every sequence has the same number of tokens). Under DDP only the last
    micro-batch all-reduces. Returns the batch's mean loss, detached (no host sync)."""
    accum = x.shape[0] // micro
    total = None
    for i in range(accum):
        xs, ys = x[i * micro : (i + 1) * micro], y[i * micro : (i + 1) * micro]
        with ddp.grad_sync(model, last=i == accum - 1):
            with autocast():
                _, loss = model(xs, ys)
            (loss / accum if accum > 1 else loss).backward()
        part = loss.detach() / accum if accum > 1 else loss.detach()
        total = part if total is None else total + part
    return total


def step_context(cuda: bool, sdpa_backend: str) -> contextlib.ExitStack:
    """What a training step runs under: bf16 autocast on CUDA, and the SDPA backend
    `sdpa_backend` (a name of `racli.names.SDPA_BACKENDS`)."""
    stack = contextlib.ExitStack()
    if cuda:
        stack.enter_context(torch.autocast(device_type="cuda", dtype=torch.bfloat16))
    stack.enter_context(sdpa_backend_context(sdpa_backend))
    return stack


def finite(values: dict[str, float | None]) -> dict[str, float]:
    """The values that are numbers and finite (what the metrics table can store)."""
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


class _Clock:
    """Training time: runs only while training steps run."""

    def __init__(self, seconds: float = 0.0):
        self.base = seconds
        self._t0: float | None = None

    def start(self) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def pause(self) -> None:
        if self._t0 is not None:
            self.base += time.perf_counter() - self._t0
            self._t0 = None

    @property
    def running(self) -> bool:
        return self._t0 is not None

    @property
    def seconds(self) -> float:
        return self.base + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)


class Trainer:
    """One training session (a fresh run or a resumed one). Use `racli.training.train()`."""

    def __init__(
        self,
        spec: TrainSpec,
        dataset: Dataset,
        *,
        rec: Recorder,
        info: ddp.DistInfo,
        device: torch.device,
        config: dict,
        ckpt_path: Path | None,
        state: ckpt.CheckpointState | None,
        reporter: ProgressReporter,
        stop: threading.Event,
        on_step: Callable[[StepInfo], None] | None,
        data_path: str,
    ):
        self.spec, self.dataset, self.rec, self.info = spec, dataset, rec, info
        self.device, self.config, self.ckpt_path = device, config, ckpt_path
        self.reporter, self.stop, self.on_step = reporter, stop, on_step
        self.data_path = data_path
        self.made_at = time.perf_counter()  # set-up: from here to the first step (`setup_s`)
        self.setup_s = 0.0
        t = self.t = spec.train
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self._build()
        self._zero_counters()
        train_seconds = 0.0
        if state is not None:
            self._restore(state)
            train_seconds = state.train_seconds
        self.clock = _Clock(train_seconds)
        self._wrap()
        self.eval_set = eval_batches(
            dataset.val, t.batch_size, self.mcfg.block_size, t.eval_batches, device
        )
        self._loop_state()

    def _build(self) -> None:
        """The model (seeded by the run's seed), its optimizer and the batch sampler."""
        from racli_models import GPT

        spec, t, info, device = self.spec, self.t, self.info, self.device
        torch.manual_seed(spec.seed)
        self.mcfg = model_config(spec, self.dataset)
        self.raw = GPT(self.mcfg).to(device)
        self.opt = self.raw.configure_optimizer(
            t.weight_decay, t.lr, (t.beta1, t.beta2), gate_lr_mult=t.gate_lr_mult, fused=self.cuda
        )
        # the process's share of the global batch per step, taken in layout.accum micro-batches
        self.layout = spec.batch_layout(self.mcfg.block_size, info.world_size)
        self.sampler = BatchSampler(
            self.dataset.train,
            self.layout.per_rank,
            self.mcfg.block_size,
            seed=spec.seed,
            rank=info.rank,
            world_size=info.world_size,
            device=device,
        )
        self.tokens_per_step = self.layout.tokens_per_step  # global: every process's tokens

    def _zero_counters(self) -> None:
        """The progress counters of a fresh run (a checkpoint restores them on resume)."""
        self.step = 0
        self.tokens = 0
        self.timed_tokens = 0
        self.timed_steps = 0
        self.compile_s = self.eval_s = self.checkpoint_s = 0.0
        self.train_loss: float | None = None
        self.epoch_warned = False
        self.checkpoint_step: int | None = None  # the step of the checkpoint on disk

    def _wrap(self) -> None:
        """The model as it trains: compiled when asked, and either under DDP or in the step
        of racli_models.step (on CUDA replayed as one CUDA graph): one process, or several
        with `train.grad_reduce: step` (rank 0's weights broadcast, then one all-reduce of
        the gradients a step inside that step)."""
        self.params = [p for p in self.raw.parameters() if p.requires_grad]
        if self.spec.compile:
            # Dynamo keeps every graph compiled in this process under one recompile limit
            # (8 by default): runs trained one after another in one process (`ra
            # experiment` on the CPU) would fill it, and past it a run recorded as
            # compiled would run eager. Each run compiles afresh; earlier graphs (which
            # hold earlier runs' models) go.
            torch._dynamo.reset()
        self.fwd = compiler.compile(self.raw) if self.spec.compile else self.raw
        by_step = not self.info.enabled or self.t.grad_reduce == "step"
        self.model = self.fwd if by_step else ddp.wrap_ddp(self.fwd, self.device, self.info)
        self.stepper = None
        if by_step:
            from racli_models.step import TrainStep

            reduce = None
            if self.info.enabled:
                ddp.broadcast_parameters(self.raw, self.info)
                reduce = ddp.GradMean(self.params, self.info)
            self.stepper = TrainStep(
                self.raw,
                self.opt,
                fwd=self.fwd,
                micro=self.layout.micro,
                clip=self.t.grad_clip,
                autocast=self._autocast,
                reduce=reduce,
            )

    def _loop_state(self) -> None:
        """What the loop keeps between steps and log points."""
        self.last_gate_step: int | None = None
        self.val_loss: float | None = None
        self.error: str | None = None
        self.checkpoint_error: str | None = None  # why the last checkpoint write failed
        self.last_checkpoint = time.monotonic()
        self.clocks = ClockSampler(self.device)  # GPU clock, power, temperature at log points
        self.status = "finished"
        self.stopped_by_user = False
        self.warmup = True  # the session's first step: compile + set-up, not charged
        self.budget = EpochBudget(self)  # epoch estimate, --max-epochs
        self.epochs_stop = False  # --max-epochs reached
        self.loss_acc = torch.zeros((), device=self.device, dtype=torch.float32)
        self.since_log = 0
        self.last_log_tokens, self.last_log_secs = self.timed_tokens, 0.0

    def _restore(self, state: ckpt.CheckpointState) -> None:
        self.raw.load_state_dict(state.model)
        self.opt.load_state_dict(state.optimizer)
        self.sampler.load_state_dict(state.sampler)
        ckpt.set_rng_state(state.rng)
        self.step, self.tokens = state.step, state.tokens
        self.timed_tokens, self.timed_steps = state.timed_tokens, state.timed_steps
        self.compile_s, self.eval_s = state.compile_s, state.eval_s
        self.checkpoint_s = state.checkpoint_s
        self.train_loss, self.epoch_warned = state.train_loss, state.epoch_warned
        self.checkpoint_step = state.step

    # ---- small helpers ----------------------------------------------------
    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _autocast(self):
        """bf16 autocast on CUDA, and the SDPA backend of `train.sdpa_backend`."""
        return step_context(self.cuda, self.t.sdpa_backend)

    @property
    def epochs(self) -> float:
        return self.tokens / self.dataset.train_tokens

    def _progress(self, train_seconds: float) -> float:
        if self.spec.steps is not None:
            return step_progress(self.step, self.spec.steps)
        return time_progress(train_seconds, self.spec.budget_seconds)

    def _time_up(self) -> bool:
        budget = self.spec.budget_seconds
        return budget is not None and self.clock.seconds >= budget

    def figures(self) -> dict[str, Any]:
        """The run row's final columns as they stand (None where there is no value yet)."""
        secs = self.clock.seconds
        val = self.val_loss if self.val_loss is not None and math.isfinite(self.val_loss) else None
        return {
            "iterations": self.step,
            "tokens": self.tokens,
            "epochs": self.epochs,
            "train_seconds": secs,
            "tokens_per_s": self.timed_tokens / secs if secs > 0 else None,
            "val_loss": val,
        }

    def row_figures(self) -> dict[str, Any]:
        """`figures()` without the missing values, for the run row."""
        return {k: v for k, v in self.figures().items() if v is not None}

    def _left_s(self) -> float | None:
        secs = self.clock.seconds
        if self.spec.budget_seconds is not None:
            return max(0.0, self.spec.budget_seconds - secs)
        if self.timed_steps == 0:
            return None
        return (self.spec.steps - self.step) * secs / self.timed_steps

    # ---- the evaluation point ------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches, on_batch: Callable[[int], None] | None = None) -> float:
        """Mean validation loss over `batches` (sharded over ranks); `on_batch(n)` after the
        n-th batch of this rank. The weights are fixed meanwhile, so without torch.compile
        RA's composed weight is built once per evaluation; a compiled model composes
        inside its graph."""
        from racli_models import composed_once

        self.fwd.eval()
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        with composed_once() if not self.spec.compile else contextlib.nullcontext():
            for n, (x, y) in enumerate(batches[self.info.rank :: self.info.world_size], 1):
                with self._autocast():
                    _, loss = self.fwd(x, y)
                total[0] += loss.double()
                total[1] += 1
                if on_batch is not None:
                    on_batch(n)
        self.fwd.train()
        ddp.all_reduce_sum(total, self.info)
        return (total[0] / total[1]).item()

    def _eval_and_record(self, batches, *, final: bool) -> None:
        """The evaluation point: validation loss and gate values, recorded at this step."""
        self._sync()
        self.clock.pause()
        t0 = time.perf_counter()
        show = None
        if final and self.info.is_main:  # the final evaluation can take a while: shown
            mine = len(batches[self.info.rank :: self.info.world_size])
            show = counted_phase(self.reporter, "final evaluation", mine)
        self.val_loss = self.evaluate(batches, show)
        dt = time.perf_counter() - t0
        self.eval_s += dt
        secs = self.clock.seconds
        self.rec.metrics(
            self.step,
            finite({"val_loss": self.val_loss, "eval_s": dt, "epochs": self.epochs}),
            secs,
        )
        self._record_gates(final=final)
        self.reporter.note(
            f"step {self.step}: {'final ' if final else ''}val_loss "
            f"{self.val_loss:.4f} ({len(batches)} batches, {dt:.1f}s)"
        )
        if not final:
            self.rec.update(**self.row_figures())
            self.clock.start()

    def _record_gates(self, final: bool = False) -> None:
        if self.last_gate_step == self.step:
            return
        gates = self.raw.gate_values()
        if gates:
            self.rec.gates(self.step, gates)
        if self.info.is_main:  # reciprocity measures (racli/training/reciprocity.py)
            record_measures(
                self.raw,
                self.eval_set,
                self.rec,
                self.step,
                self.spec.measures,
                final=final,
                elapsed_s=self.clock.seconds,
            )
        self.last_gate_step = self.step

    # ---- checkpoints ---------------------------------------------------------
    def checkpoint_state(self) -> ckpt.CheckpointState:
        return ckpt.CheckpointState(
            run_id=self.rec.run_id,
            config=self.config,
            data_path=self.data_path,
            model=self.raw.state_dict(),
            optimizer=self.opt.state_dict(),
            sampler=self.sampler.state_dict(),
            rng=ckpt.rng_state(),
            step=self.step,
            tokens=self.tokens,
            timed_tokens=self.timed_tokens,
            timed_steps=self.timed_steps,
            train_seconds=self.clock.seconds,
            compile_s=self.compile_s,
            eval_s=self.eval_s,
            checkpoint_s=self.checkpoint_s,
            train_loss=self.train_loss,
            epoch_warned=self.epoch_warned,
        )

    def save_checkpoint(self) -> None:
        """Write the checkpoint (rank 0). A failed write is noted and kept in
        `checkpoint_error`; training goes on."""
        if not self.info.is_main or self.ckpt_path is None:
            return
        running = self.clock.running
        self._sync()
        self.clock.pause()
        self.rec.before_checkpoint()  # the rows so far first; RunLost if the run is gone
        t0 = time.perf_counter()
        try:
            ckpt.save(self.ckpt_path, self.checkpoint_state())
        except ckpt.CheckpointError as exc:
            self.checkpoint_error = str(exc)
            self.reporter.note(f"step {self.step}: {exc}")
            self.rec.update(error=self.checkpoint_note())
        else:
            if self.checkpoint_error is not None:
                self.rec.update(error=None)
            self.checkpoint_error = None
            self.checkpoint_step = self.step
        dt = time.perf_counter() - t0
        self.checkpoint_s += dt
        self.rec.metric(self.step, "checkpoint_s", dt, self.clock.seconds)
        self.last_checkpoint = time.monotonic()
        if running:
            self.clock.start()

    def checkpoint_note(self) -> str | None:
        """What the run row says when the last checkpoint write failed (None otherwise)."""
        if self.checkpoint_error is None:
            return None
        if self.checkpoint_step is None:
            return f"checkpoint missing: {self.checkpoint_error}"
        return (
            f"checkpoint out of date (it holds step {self.checkpoint_step}): "
            f"{self.checkpoint_error}"
        )

    # ---- the loop ----------------------------------------------------------
    def run(self) -> str:
        """Train until the budget is used, a stop is asked for, or the loss diverges.
        Returns the end status: finished, interrupted or diverged."""
        self._begin()
        self.budget.start(self)
        with self._compiled_only():
            while True:
                lr = self._train_step()
                self.epochs_stop = self.budget.after_step(self)
                done = self._stop_decision()
                if self.step % self.t.log_interval == 0 or done:
                    done = self._log_point(lr, done)
                if done:
                    break
                if self.step % self.t.eval_interval == 0:
                    self._eval_and_record(self.eval_set, final=False)
                    if self.checkpoint_step is None and self.checkpoint_error is None:
                        self.save_checkpoint()  # the run's first: at its first evaluation
        return self._end()

    def _compiled_only(self) -> contextlib.AbstractContextManager[None]:
        """Around the loop: a compiled model that would fall back to eager (dynamo's
        recompile limit) fails the run rather than train on eager as if compiled."""
        if not self.spec.compile:
            return contextlib.nullcontext()
        return compiler.compiled_or_error("the compiled model")

    def _begin(self) -> None:
        spec = self.spec
        self.last_checkpoint = time.monotonic()
        if self.step == 0:
            self._record_gates()  # the initial gate values
        self.reporter.start(
            run_id=self.rec.run_id,
            attn=spec.attn,
            total=spec.steps if spec.steps is not None else spec.budget_seconds,
            unit="steps" if spec.steps is not None else "seconds",
            done=self.step if spec.steps is not None else self.clock.seconds,
        )
        if spec.train.batch_tokens is not None:
            self.reporter.note(self.layout.describe(self.info.world_size))
        self.last_log_tokens, self.last_log_secs = self.timed_tokens, self.clock.seconds

    def _train_step(self) -> float:
        """One optimizer step; returns its learning rate. The session's first step is the
        warm-up: timed as `compile_s`, not charged to the budget."""
        warmup = self.warmup
        if warmup:
            self._sync()
            t_warm = time.perf_counter()
            # the model built and moved, the step wrapped, the validation batches placed
            self.setup_s = t_warm - self.made_at
        t = self.t
        lr = lr_at(self._progress(self.clock.seconds), t.lr, t.warmup_frac, t.min_lr_ratio)
        x, y = self.sampler.next()  # this process's share of the global batch
        if self.stepper is not None:
            self.stepper.set_lr(lr)
            loss = self.stepper(x, y)
        else:
            for g in self.opt.param_groups:
                g["lr"] = lr * g["lr_mult"]
            loss = accumulate_gradients(self.model, x, y, self.layout.micro, self._autocast)
            clipped_step(self.opt, self.params, t.grad_clip)  # inside fused AdamW on CUDA
            self.opt.zero_grad(set_to_none=True)
        self.loss_acc += loss
        self.step += 1
        self.tokens += self.tokens_per_step
        self.since_log += 1
        if warmup:
            self._sync()
            dt = time.perf_counter() - t_warm
            self.compile_s += dt
            self.rec.metric(self.step, "setup_s", self.setup_s, self.clock.seconds)
            self.rec.metric(self.step, "compile_s", dt, self.clock.seconds)
            if self.stepper is not None and self.stepper.graph_error and self.info.is_main:
                self.reporter.note(
                    f"the training step was not captured as a CUDA graph "
                    f"({self.stepper.graph_error}): it runs uncaptured, slower"
                )
            self.warmup = False
            self.clock.start()
            self.last_log_secs = self.clock.seconds
        else:
            self.timed_tokens += self.tokens_per_step
            self.timed_steps += 1
        if self.on_step is not None:
            self.on_step(StepInfo(self.step, x, y, self.raw))
        return lr

    def _stop_decision(self, joint: tuple[bool, bool] | None = None) -> bool:
        """Whether training stops after the step just taken: the step budget is used, or
        a stop was asked for (SIGINT/SIGTERM: `stopped_by_user`), or the time budget is up.

        One process decides after every step. Under DDP a rank decides alone only on the
        step budget; the rest is decided together at log points, from `joint` = (any rank
        was asked to stop, rank 0's time is up), so that every rank stops at one step."""
        done = (self.spec.steps is not None and self.step >= self.spec.steps) or self.epochs_stop
        if self.info.enabled:
            user_stop, time_up = joint if joint is not None else (False, False)
        else:
            user_stop = self.stop.is_set()
            time_up = not user_stop and self._time_up()
        if user_stop:
            self.stopped_by_user = True
            return True
        return done or time_up

    def _log_point(self, lr: float, done: bool) -> bool:
        """Every `train.log_interval` steps and at the last: one host sync for the mean loss
        (and, under DDP, the joint stop decision), the loss check, the metrics, progress and
        the periodic checkpoint. Returns whether training stops (a diverged loss sets
        `status`)."""
        if self.info.enabled:
            joint = torch.zeros(3, device=self.device, dtype=torch.float64)
            joint[0] = self.loss_acc
            joint[1] = 1.0 if self.stop.is_set() else 0.0
            joint[2] = 1.0 if self.info.is_main and self._time_up() else 0.0
            ddp.all_reduce_sum(joint, self.info)
            loss_sum, any_stop, time_up = joint.tolist()
            loss_sum /= self.info.world_size
            done = self._stop_decision((any_stop > 0, time_up > 0))
        else:
            loss_sum = self.loss_acc.item()
        mean_loss = loss_sum / self.since_log
        self.loss_acc.zero_()
        self.since_log = 0
        secs = self.clock.seconds
        d_tok, d_sec = self.timed_tokens - self.last_log_tokens, secs - self.last_log_secs
        tps = d_tok / d_sec if d_sec > 0 and d_tok > 0 else None
        self.last_log_tokens, self.last_log_secs = self.timed_tokens, secs
        if not math.isfinite(mean_loss):
            self.error = f"training loss is {mean_loss} at step {self.step} (diverged; lr {lr:.3g})"
            self.reporter.note(f"step {self.step}: {self.error}")
            self.status = "diverged"
            return True
        self.train_loss = mean_loss
        self.rec.metrics(
            self.step,
            finite(
                {"train_loss": mean_loss, "lr": lr, "tokens_per_s": tps, **self.clocks.sample()}
            ),
            secs,
        )
        self.reporter.update(
            step=self.step,
            done=self.step if self.spec.steps is not None else secs,
            loss=mean_loss,
            tokens_per_s=tps,
            left_s=self._left_s(),
        )
        if not self.epoch_warned and self.epochs > 1.0:
            self.epoch_warned = True
            self.reporter.note(epoch_warning(self.epochs))
        if not done and self.info.is_main and self._checkpoint_due():
            self.save_checkpoint()
        return done

    def _checkpoint_due(self) -> bool:
        """Time for a periodic checkpoint: every train.checkpoint_minutes, and the run's first
        within FIRST_CHECKPOINT_S of the session's start."""
        every = self.t.checkpoint_minutes * 60.0
        if self.checkpoint_step is None:
            every = min(every, FIRST_CHECKPOINT_S)
        return time.monotonic() - self.last_checkpoint >= every

    def release(self) -> None:
        """Give the GPU memory of the run's captured graphs (the step's, the measures') back
        to the allocator, and its cached blocks to the device: the next run in this process
        starts with the memory this one started with."""
        from racli_models import measures

        if self.stepper is not None:
            self.stepper.release()
        measures.release(self.raw)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _end(self) -> str:
        """After the loop: the final evaluation and checkpoint (not for a diverged run)."""
        self._sync()
        self.clock.pause()
        if self.status == "diverged":
            return self.status
        if self.stopped_by_user:
            self.reporter.note(
                f"step {self.step}: stop requested: final evaluation and checkpoint, then exit"
            )
        final = eval_batches(
            self.dataset.val,
            self.t.batch_size,
            self.mcfg.block_size,
            self.t.final_eval_batches,
            self.device,
        )
        self._eval_and_record(final, final=True)
        shown = self.info.is_main and self.ckpt_path is not None
        with uncounted_phase(self.reporter if shown else None, "writing checkpoint"):
            self.save_checkpoint()
        self.status = "interrupted" if self.stopped_by_user else "finished"
        return self.status
