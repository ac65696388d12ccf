"""The trainer behind `ra train`: next-token prediction on real text for a budget.

    spec = spec_from_config(cfg, attn="ra_v5", steps=200, seed=1)   # validates
    data = load_data(spec)                                           # DataError -> BadInput
    result = train(spec, store, dataset=data)                        # records one `train` run

    result = resume(store, run_id)       # validates (prepare_resume), then continues the run

Budget: `--steps N` or `--minutes M` (wall-clock seconds of training steps).
The first step of every session (fresh start or resume) is a warm-up step: it
triggers compilation and CUDA set-up, so its time is recorded as metric
`compile_s` and neither charged to the budget nor counted in the throughput
(its tokens do count as trained on). Evaluation and checkpoint time are paused
out of the budget too (`eval_s`, `checkpoint_s`).

The step loop does no host synchronisation: the loss is accumulated on the
device and read once per log interval (which is also where a NaN/inf loss is
caught), the learning rate is set on the optimizer's few param groups, and
batches are prepared one step ahead by the BatchSampler (pinned memory,
non-blocking copies on CUDA).

Under torchrun (WORLD_SIZE > 1) every rank runs this same function; stop
decisions other than a step budget (time up, SIGINT/SIGTERM) are taken
together at log points so that every rank stops at the same step; only rank 0
records and writes checkpoints. `--batch-size` is per rank; the global batch
and global tokens/s are what is recorded.

Resume: the checkpoint restores the model, optimizer, batch-stream position
and RNG states, and the run continues under its recorded config with the same
run id and step numbers until the rest of its budget is used. Metric rows a
killed process flushed after its last checkpoint stay; the resumed run writes
those steps again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from racli.errors import BadInput
from racli.training import checkpoint as ckpt
from racli.training import distributed as ddp
from racli.training.data import BatchSampler, DataError, Dataset, eval_batches, load_dataset
from racli.training.progress import NullReporter, epoch_warning
from racli.training.schedule import lr_at, step_progress, time_progress

# train fields that are not part of the recorded `train` section (resolved elsewhere)
_TRAIN_SKIP = ("compile",)


# ---------------------------------------------------------------------------- the spec


@dataclass
class TrainSpec:
    """Everything that defines one training run (resolved, validated by `check`)."""

    attn: str
    model: dict[str, Any]  # GPTConfig fields except attn; vocab_size None = the data's
    train: dict[str, Any]  # TrainConfig fields except compile
    data: str | None = None  # None / "builtin": the built-in corpus; else a path
    minutes: float | None = None
    steps: int | None = None
    seed: int = 0
    tag: str | None = None
    device: str = "cpu"  # cpu | cuda | cuda:N
    compile: bool = False
    preset: str | None = None

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def budget_seconds(self) -> float | None:
        return None if self.minutes is None else self.minutes * 60.0

    def budget(self) -> dict[str, float | int]:
        return {"minutes": self.minutes} if self.minutes is not None else {"steps": self.steps}

    def check(self) -> None:
        """Raise BadInput for an unusable spec (budget, attention name)."""
        check_budget(self.minutes, self.steps)
        check_attention(self.attn)


def check_budget(minutes: float | None, steps: int | None) -> None:
    if minutes is not None and steps is not None:
        raise BadInput("give either --minutes or --steps, not both")
    if minutes is None and steps is None:
        raise BadInput("give a budget: --minutes M (wall-clock training time) or --steps N")
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise BadInput(f"--minutes must be a positive number, got {minutes}")
    if steps is not None and steps <= 0:
        raise BadInput(f"--steps must be a positive integer, got {steps}")


def check_attention(name: str) -> None:
    from racli_models import ATTENTION

    if name not in ATTENTION:
        raise BadInput(f"unknown attention '{name}' (valid: {', '.join(sorted(ATTENTION))})")


def resolve_device(name: str | None) -> str:
    """'auto' (or None) -> 'cuda' when available else 'cpu'; CUDA asked for but absent: BadInput."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise BadInput(f"--device {name}: CUDA is not available on this machine")
        if name.startswith("cuda:"):
            index = name.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise BadInput(f"--device {name}: no such CUDA device "
                               f"({torch.cuda.device_count()} present)")
        return name
    raise BadInput(f"unknown device '{name}' (valid: auto, cpu, cuda, cuda:N)")


def spec_from_config(cfg, *, attn: str, preset: str | None = None, data: str | None = None,
                     minutes: float | None = None, steps: int | None = None, seed: int = 0,
                     tag: str | None = None, device: str | None = "auto",
                     compile: bool | None = None, overrides: list[str] | tuple = ()) -> TrainSpec:
    """A validated TrainSpec from ra.yaml (`cfg`) and the command's options.

    `overrides` are `--set KEY=VALUE` items (`--model`, `--batch-size`, `--lr`
    are passed as overrides of model.preset, train.batch_size, train.lr), so
    they are validated exactly like the file.
    """
    from racli.config import apply_overrides

    check_budget(minutes, steps)
    check_attention(attn)
    overrides = list(overrides)
    if preset is not None:
        overrides.insert(0, f"model.preset={preset}")
    cfg = apply_overrides(cfg, overrides)
    model = cfg.model_fields(cfg.model.preset)
    model.setdefault("vocab_size", None)
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in _TRAIN_SKIP}
    dev = resolve_device(device)
    if compile is None:
        compile = {"on": True, "off": False}.get(cfg.train.compile, dev.startswith("cuda"))
    return TrainSpec(attn=attn, model=model, train=train, data=data, minutes=minutes,
                     steps=steps, seed=int(seed), tag=tag, device=dev, compile=bool(compile),
                     preset=cfg.model.preset)


def load_data(spec: TrainSpec, path: str | None = None) -> Dataset:
    """The spec's dataset (or `path`'s); unusable data is BadInput (one line)."""
    try:
        return load_dataset(path if path is not None else spec.data,
                            val_fraction=spec.train["val_fraction"],
                            block_size=spec.model["block_size"])
    except DataError as exc:
        raise BadInput(str(exc)) from exc


def data_identity(dataset: Dataset) -> dict[str, Any]:
    """What the config records about the data: a name and its size, not where it lives,
    so runs on machines with different paths to the same corpus stay comparable."""
    name = dataset.name
    if not name.startswith("builtin:"):
        name = Path(name.rstrip("/\\")).name or name
    return {"name": name, "vocab_size": dataset.vocab_size,
            "train_tokens": dataset.train_tokens, "val_tokens": dataset.val_tokens}


def data_location(spec: TrainSpec, dataset: Dataset) -> str:
    """Where to find the data again on resume (absolute path, or the built-in name)."""
    if dataset.name.startswith("builtin:"):
        return dataset.name
    return str(Path(dataset.name).expanduser().resolve())


def model_config(spec: TrainSpec, dataset: Dataset):
    """The GPTConfig of a spec on a dataset (vocab from the data unless overridden)."""
    from racli_models import GPTConfig

    fields = dict(spec.model)
    vocab = fields.get("vocab_size")
    if vocab is None:
        fields["vocab_size"] = dataset.vocab_size
    elif vocab < dataset.vocab_size:
        raise BadInput(f"model.vocab_size {vocab} is smaller than the data's vocabulary "
                       f"({dataset.vocab_size})")
    try:
        return GPTConfig(attn=spec.attn, **fields)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"model: {exc}") from exc


def run_config(spec: TrainSpec, dataset: Dataset, world_size: int = 1) -> dict[str, Any]:
    """The config recorded on the run row; `config_hash` covers all of it but attn/seed/tag."""
    mcfg = model_config(spec, dataset)
    model = {k: v for k, v in dataclasses.asdict(mcfg).items() if k != "attn"}
    bs = spec.train["batch_size"]
    return {
        "attn": spec.attn,
        "seed": spec.seed,
        "tag": spec.tag,
        "preset": spec.preset,
        "model": model,
        "train": dict(spec.train),
        "data": data_identity(dataset),
        "budget": spec.budget(),
        "device": spec.device_type,
        "compile": spec.compile,
        "autocast": "bfloat16" if spec.device_type == "cuda" else None,
        "world_size": world_size,
        "global_batch_size": bs * world_size,
        "tokens_per_step": bs * world_size * mcfg.block_size,
    }


def spec_from_run_config(config: dict[str, Any]) -> TrainSpec:
    """The spec of a recorded run (for --resume)."""
    try:
        budget = config["budget"]
        return TrainSpec(
            attn=config["attn"], model=dict(config["model"]), train=dict(config["train"]),
            data=None, minutes=budget.get("minutes"), steps=budget.get("steps"),
            seed=int(config["seed"]), tag=config.get("tag"), device=config["device"],
            compile=bool(config["compile"]), preset=config.get("preset"))
    except (KeyError, TypeError, AttributeError) as exc:
        raise BadInput(f"the run's recorded config is not a train config ({exc})") from exc


def prepare_resume(store, run_id: int, dist_info: ddp.DistInfo | None = None):
    """Validate `--resume RUN` and return (spec, dataset, checkpoint path). BadInput if the run
    is unknown, not a train run, finished, still running, or has no checkpoint."""
    from racli.store.queries import get_run
    from racli.store.recorder import is_stale

    info = dist_info or ddp.detect()
    run = get_run(store, run_id)
    if run.kind != "train":
        raise BadInput(f"run {run_id} is a {run.kind} run, not a train run")
    if run.status == "finished":
        raise BadInput(f"run {run_id} is finished: its budget is used up")
    if run.status == "running" and not is_stale(run):
        raise BadInput(f"run {run_id} is still running (its heartbeat is fresh; if its process "
                       f"is gone, resume it once the heartbeat is 2 minutes old)")
    path = ckpt.checkpoint_path(store.db, run_id)
    if not path.is_file():
        raise BadInput(f"run {run_id} has no checkpoint at {path}")
    spec = spec_from_run_config(run.config)
    check_attention(spec.attn)
    if spec.device_type == "cuda":
        resolve_device("cuda")
    recorded_world = int(run.config.get("world_size", 1))
    if recorded_world != info.world_size:
        raise BadInput(f"run {run_id} was trained on {recorded_world} process(es); resume it "
                       f"with the same number (now {info.world_size})")
    try:
        state = ckpt.load(path)
    except Exception as exc:
        from racli.training.load_errors import describe_load_error

        raise BadInput(f"cannot read checkpoint {path}: {describe_load_error(exc)}") from exc
    if (spec.steps is not None and int(state["step"]) >= spec.steps) or (
            spec.minutes is not None and float(state["train_seconds"]) >= spec.minutes * 60):
        raise BadInput(f"run {run_id} has used its whole budget: nothing left to train")
    dataset = load_data(spec, state.get("data_path"))
    recorded = run.config.get("data", {})
    if (recorded.get("train_tokens"), recorded.get("val_tokens")) != (
            dataset.train_tokens, dataset.val_tokens):
        raise BadInput(f"the data at {state.get('data_path')} changed since run {run_id} "
                       f"started (train/val tokens differ)")
    return spec, dataset, path


# ---------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    run_id: int | None
    attn: str
    status: str  # finished | interrupted | diverged | failed
    iterations: int = 0
    tokens: int = 0
    epochs: float | None = None
    train_seconds: float = 0.0
    val_loss: float | None = None
    train_loss: float | None = None
    tokens_per_s: float | None = None
    it_per_s: float | None = None
    compile_s: float = 0.0
    eval_s: float = 0.0
    checkpoint_s: float = 0.0
    record_overhead: float | None = None
    error: str | None = None
    checkpoint: str | None = None
    world_size: int = 1
    config: dict = field(default_factory=dict)


@dataclass
class StepInfo:
    """Passed to the `on_step` hook after every optimizer step (tests)."""

    step: int  # steps done, counting this one
    x: torch.Tensor
    y: torch.Tensor
    model: torch.nn.Module  # the bare model


class _NullRecorder:
    """Stands in for the recorder on ranks other than 0."""

    run_id = None
    write_seconds = 0.0

    def __getattr__(self, name):
        return lambda *a, **k: None


def _finite(values: dict[str, float | None]) -> dict[str, float]:
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


# ---------------------------------------------------------------------------- the trainer


class Trainer:
    """One training session (a fresh run or a resumed one). Use `train()`."""

    def __init__(self, spec: TrainSpec, dataset: Dataset, *, rec, info: ddp.DistInfo,
                 device: torch.device, config: dict, ckpt_path: Path | None,
                 state: dict | None, reporter, stop: threading.Event,
                 on_step: Callable[[StepInfo], None] | None, data_path: str):
        from racli_models import GPT

        self.spec, self.dataset, self.rec, self.info = spec, dataset, rec, info
        self.device, self.config, self.ckpt_path = device, config, ckpt_path
        self.reporter, self.stop, self.on_step = reporter, stop, on_step
        self.data_path = data_path
        t = spec.train
        self.t = t
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(spec.seed)
        self.mcfg = model_config(spec, dataset)
        self.raw = GPT(self.mcfg).to(device)
        self.opt = self.raw.configure_optimizer(
            t["weight_decay"], t["lr"], (t["beta1"], t["beta2"]),
            gate_lr_mult=t["gate_lr_mult"], fused=self.cuda)
        self.sampler = BatchSampler(dataset.train, t["batch_size"], self.mcfg.block_size,
                                    seed=spec.seed, rank=info.rank, world_size=info.world_size,
                                    device=device)
        self.tokens_per_step = t["batch_size"] * self.mcfg.block_size * info.world_size
        # progress counters (restored from a checkpoint on resume)
        self.step = 0
        self.tokens = 0
        self.timed_tokens = 0
        self.timed_steps = 0
        self.compile_s = self.eval_s = self.checkpoint_s = 0.0
        self.train_loss: float | None = None
        self.epoch_warned = False
        train_seconds = 0.0
        if state is not None:
            self.raw.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.sampler.load_state_dict(state["sampler"])
            ckpt.set_rng_state(state["rng"])
            self.step = int(state["step"])
            self.tokens = int(state["tokens"])
            self.timed_tokens = int(state["timed_tokens"])
            self.timed_steps = int(state["timed_steps"])
            train_seconds = float(state["train_seconds"])
            self.compile_s = float(state["compile_s"])
            self.eval_s = float(state["eval_s"])
            self.checkpoint_s = float(state["checkpoint_s"])
            self.train_loss = state.get("train_loss")
            self.epoch_warned = bool(state.get("epoch_warned"))
        self.clock = _Clock(train_seconds)
        self.params = [p for p in self.raw.parameters() if p.requires_grad]
        self.fwd = torch.compile(self.raw) if spec.compile else self.raw
        self.model = ddp.wrap_ddp(self.fwd, device, info)
        self.eval_set = eval_batches(dataset.val, t["batch_size"], self.mcfg.block_size,
                                     t["eval_batches"], device)
        self.last_gate_step: int | None = None
        self.val_loss: float | None = None
        self.error: str | None = None
        self.last_checkpoint = time.monotonic()

    # ---- small helpers ----------------------------------------------------
    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _autocast(self):
        """bf16 autocast on CUDA, and the SDPA backend of `train.sdpa_backend`."""
        stack = contextlib.ExitStack()
        if self.cuda:
            stack.enter_context(torch.autocast(device_type="cuda", dtype=torch.bfloat16))
        backend = self.t.get("sdpa_backend", "auto")
        if backend != "auto":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            names = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                     "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}
            stack.enter_context(sdpa_kernel([getattr(SDPBackend, names[backend])]))
        return stack

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
        return {"iterations": self.step, "tokens": self.tokens, "epochs": self.epochs,
                "train_seconds": secs,
                "tokens_per_s": self.timed_tokens / secs if secs > 0 else None,
                "val_loss": val}

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

    # ---- evaluation, gates, checkpoints ------------------------------------
    @torch.no_grad()
    def evaluate(self, batches) -> float:
        """Mean validation loss over `batches` (sharded over ranks). The weights are
        fixed meanwhile, so without torch.compile RA's composed weight is built once
        per evaluation; a compiled model composes inside its graph."""
        from racli_models import composed_once

        self.fwd.eval()
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        with composed_once() if not self.spec.compile else contextlib.nullcontext():
            for x, y in batches[self.info.rank::self.info.world_size]:
                with self._autocast():
                    _, loss = self.fwd(x, y)
                total[0] += loss.double()
                total[1] += 1
        self.fwd.train()
        ddp.all_reduce_sum(total, self.info)
        return (total[0] / total[1]).item()

    def _eval_and_record(self, batches, *, final: bool) -> None:
        self._sync()
        self.clock.pause()
        t0 = time.perf_counter()
        self.val_loss = self.evaluate(batches)
        dt = time.perf_counter() - t0
        self.eval_s += dt
        secs = self.clock.seconds
        self.rec.metrics(self.step, _finite({"val_loss": self.val_loss, "eval_s": dt,
                                             "epochs": self.epochs}), secs)
        self._record_gates()
        self.reporter.note(f"step {self.step}: {'final ' if final else ''}val_loss "
                           f"{self.val_loss:.4f} ({len(batches)} batches, {dt:.1f}s)")
        if not final:
            self.rec.update(**self.row_figures())
            self.clock.start()

    def _record_gates(self) -> None:
        if self.last_gate_step == self.step:
            return
        gates = self.raw.gate_values()
        if gates:
            self.rec.gates(self.step, gates)
        self.last_gate_step = self.step

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "run_id": self.rec.run_id, "config": self.config, "data_path": self.data_path,
            "model": self.raw.state_dict(), "optimizer": self.opt.state_dict(),
            "sampler": self.sampler.state_dict(), "step": self.step, "tokens": self.tokens,
            "timed_tokens": self.timed_tokens, "timed_steps": self.timed_steps,
            "train_seconds": self.clock.seconds, "compile_s": self.compile_s,
            "eval_s": self.eval_s, "checkpoint_s": self.checkpoint_s,
            "train_loss": self.train_loss, "epoch_warned": self.epoch_warned,
            "rng": ckpt.rng_state(),
        }

    def save_checkpoint(self) -> None:
        if not self.info.is_main or self.ckpt_path is None:
            return
        running = self.clock.running
        self._sync()
        self.clock.pause()
        t0 = time.perf_counter()
        ckpt.save(self.ckpt_path, self.checkpoint_state())
        dt = time.perf_counter() - t0
        self.checkpoint_s += dt
        self.rec.metric(self.step, "checkpoint_s", dt, self.clock.seconds)
        self.last_checkpoint = time.monotonic()
        if running:
            self.clock.start()

    # ---- the loop ----------------------------------------------------------
    def run(self) -> str:
        """Train until the budget is used, a stop is asked for, or the loss diverges.
        Returns the end status: finished, interrupted or diverged."""
        t = self.t
        spec = self.spec
        log_every, eval_every = t["log_interval"], t["eval_interval"]
        clip = t["grad_clip"]
        base_lr, warm, floor = t["lr"], t["warmup_frac"], t["min_lr_ratio"]
        ckpt_every = t["checkpoint_minutes"] * 60.0
        budget_s = spec.budget_seconds
        self.last_checkpoint = time.monotonic()
        if self.step == 0:
            self._record_gates()  # the initial gate values
        self.reporter.start(run_id=self.rec.run_id, attn=spec.attn,
                            total=spec.steps if spec.steps is not None else budget_s,
                            unit="steps" if spec.steps is not None else "seconds",
                            done=self.step if spec.steps is not None else self.clock.seconds)

        loss_acc = torch.zeros((), device=self.device, dtype=torch.float32)
        joint = torch.zeros(3, device=self.device, dtype=torch.float64)  # DDP: loss, stop, time
        since_log = 0
        last_log_tokens, last_log_secs = self.timed_tokens, self.clock.seconds
        warmup = True  # the session's first step: compile + set-up, not charged
        model, opt, sampler = self.model, self.opt, self.sampler
        groups = opt.param_groups
        stopped_by_user = False
        status = "finished"

        while True:
            if warmup:
                self._sync()
                t_warm = time.perf_counter()
            lr = lr_at(self._progress(self.clock.seconds), base_lr, warm, floor)
            for g in groups:
                g["lr"] = lr * g["lr_mult"]
            x, y = sampler.next()
            with self._autocast():
                _, loss = model(x, y)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_acc += loss.detach()
            self.step += 1
            self.tokens += self.tokens_per_step
            since_log += 1
            if warmup:
                self._sync()
                dt = time.perf_counter() - t_warm
                self.compile_s += dt
                self.rec.metric(self.step, "compile_s", dt, self.clock.seconds)
                warmup = False
                self.clock.start()
                last_log_secs = self.clock.seconds
            else:
                self.timed_tokens += self.tokens_per_step
                self.timed_steps += 1
            if self.on_step is not None:
                self.on_step(StepInfo(self.step, x, y, self.raw))

            done = spec.steps is not None and self.step >= spec.steps
            user_stop = self.stop.is_set()
            if not self.info.enabled:
                if user_stop:
                    stopped_by_user = done = True
                elif budget_s is not None and self.clock.seconds >= budget_s:
                    done = True
            if self.step % log_every == 0 or done:
                # one host sync per log interval: the loss and, under DDP, the joint stop
                # decision (any rank's signal; rank 0's clock)
                if self.info.enabled:
                    joint[0] = loss_acc
                    joint[1] = 1.0 if user_stop else 0.0
                    joint[2] = 1.0 if self.info.is_main and self._time_up() else 0.0
                    ddp.all_reduce_sum(joint, self.info)
                    loss_sum, any_stop, time_up = joint.tolist()
                    loss_sum /= self.info.world_size
                    if any_stop > 0:
                        stopped_by_user = done = True
                    elif time_up > 0:
                        done = True
                else:
                    loss_sum = loss_acc.item()
                mean_loss = loss_sum / since_log
                loss_acc.zero_()
                since_log = 0
                secs = self.clock.seconds
                d_tok, d_sec = self.timed_tokens - last_log_tokens, secs - last_log_secs
                tps = d_tok / d_sec if d_sec > 0 and d_tok > 0 else None
                last_log_tokens, last_log_secs = self.timed_tokens, secs
                if not math.isfinite(mean_loss):
                    self.error = (f"training loss is {mean_loss} at step {self.step} "
                                  f"(diverged; lr {lr:.3g})")
                    self.reporter.note(f"step {self.step}: {self.error}")
                    status = "diverged"
                    break
                self.train_loss = mean_loss
                self.rec.metrics(self.step, _finite({"train_loss": mean_loss, "lr": lr,
                                                     "tokens_per_s": tps}), secs)
                self.reporter.update(step=self.step,
                                     done=self.step if spec.steps is not None else secs,
                                     loss=mean_loss, tokens_per_s=tps, left_s=self._left_s())
                if not self.epoch_warned and self.epochs > 1.0:
                    self.epoch_warned = True
                    self.reporter.note(epoch_warning(self.epochs))
                if (not done and self.info.is_main
                        and time.monotonic() - self.last_checkpoint >= ckpt_every):
                    self.save_checkpoint()
            if done:
                break
            if self.step % eval_every == 0:
                self._eval_and_record(self.eval_set, final=False)

        self._sync()
        self.clock.pause()
        if status == "diverged":
            return status
        if stopped_by_user:
            self.reporter.note(f"step {self.step}: stop requested: final evaluation and "
                               f"checkpoint, then exit")
        final = eval_batches(self.dataset.val, t["batch_size"], self.mcfg.block_size,
                             t["final_eval_batches"], self.device)
        self._eval_and_record(final, final=True)
        self.save_checkpoint()
        return "interrupted" if stopped_by_user else "finished"


def train(spec: TrainSpec | None, store, *, dataset: Dataset | None = None,
          resume_run: int | None = None, reporter=None, stop: threading.Event | None = None,
          on_step: Callable[[StepInfo], None] | None = None,
          dist_info: ddp.DistInfo | None = None, flush_interval: float = 5.0) -> TrainResult:
    """Run one training run and record it in `store` (rank 0 only; other ranks may pass None
    for a fresh run). `resume_run`: continue that run from its checkpoint with its recorded
    spec (pass `spec=None`, or the spec and dataset from `prepare_resume`).

    Raises BadInput for bad input before anything is recorded; once the run is
    recorded, a NaN/inf loss ends it `diverged`, a set `stop` event (SIGINT /
    SIGTERM) ends it `interrupted` after the final evaluation and a checkpoint,
    and any exception ends it `failed` and is re-raised.
    """
    from racli.store.recorder import RunRecorder

    info = dist_info or ddp.detect()
    reporter = reporter or NullReporter()
    stop = stop or threading.Event()
    if spec is not None:
        spec.check()
    state = None
    if resume_run is not None and dataset is None:
        spec, dataset, _ = prepare_resume(store, resume_run, info)
    elif dataset is None:
        dataset = load_data(spec)
    if resume_run is not None:
        state = ckpt.load(ckpt.checkpoint_path(store.db, resume_run))
        config = state["config"]
        data_path = state.get("data_path") or data_location(spec, dataset)
    else:
        config = run_config(spec, dataset, info.world_size)
        data_path = data_location(spec, dataset)

    device = ddp.setup(info, spec.device)
    # the Trainer turns TF32 on for CUDA runs; the caller's settings come back at the end
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        rec = _NullRecorder()
        if info.is_main:
            if resume_run is not None:
                rec = RunRecorder.resume(store, resume_run, flush_interval=flush_interval)
            else:
                rec = RunRecorder.start(store, kind="train", attn=spec.attn, config=config,
                                        seed=spec.seed, tag=spec.tag,
                                        flush_interval=flush_interval)
        ckpt_path = ckpt.checkpoint_path(store.db, rec.run_id) if info.is_main else None
        return _train_recorded(spec, dataset, rec=rec, info=info, device=device, config=config,
                               ckpt_path=ckpt_path, state=state, reporter=reporter, stop=stop,
                               on_step=on_step, data_path=data_path)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        reporter.close()
        ddp.teardown()


def resume(store, run_id: int, **kw) -> TrainResult:
    """Validate `run_id` for resumption (BadInput if it cannot be) and continue it."""
    return train(None, store, resume_run=run_id, **kw)


def _train_recorded(spec, dataset, *, rec, info, device, config, ckpt_path, state, reporter,
                    stop, on_step, data_path) -> TrainResult:
    trainer = None
    try:
        trainer = Trainer(spec, dataset, rec=rec, info=info, device=device, config=config,
                          ckpt_path=ckpt_path, state=state, reporter=reporter, stop=stop,
                          on_step=on_step, data_path=data_path)
        status = trainer.run()
    except KeyboardInterrupt:
        figures = trainer.row_figures() if trainer is not None else {}
        rec.end("interrupted", error="interrupted (forced: no final evaluation, no checkpoint)",
                **figures)
        raise
    except BaseException as exc:
        figures = trainer.row_figures() if trainer is not None else {}
        rec.fail(exc, **figures)
        raise
    figures = trainer.figures()
    if status == "diverged":
        figures["val_loss"] = None  # an earlier evaluation says nothing about the end state
    secs = figures["train_seconds"]
    overhead = rec.write_seconds / secs if secs > 0 else None
    rec.metrics(trainer.step, _finite({"record_overhead": overhead}), secs)
    error = trainer.error if status == "diverged" else (
        f"stopped on request (SIGINT/SIGTERM) at step {trainer.step}"
        if status == "interrupted" else None)
    row = {k: v for k, v in figures.items() if v is not None}
    if status == "diverged":
        row["val_loss"] = None  # clear the figure a periodic evaluation left on the row
    rec.end(status, error=error, **row)
    return TrainResult(
        run_id=rec.run_id, attn=spec.attn, status=status, iterations=trainer.step,
        tokens=trainer.tokens, epochs=trainer.epochs, train_seconds=secs,
        val_loss=figures["val_loss"], train_loss=trainer.train_loss,
        tokens_per_s=figures["tokens_per_s"],
        it_per_s=trainer.timed_steps / secs if secs > 0 else None,
        compile_s=trainer.compile_s, eval_s=trainer.eval_s, checkpoint_s=trainer.checkpoint_s,
        record_overhead=overhead, error=error,
        checkpoint=str(ckpt_path) if ckpt_path is not None and ckpt_path.exists()
        and status != "diverged" else None,
        world_size=info.world_size, config=config)
