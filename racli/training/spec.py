"""What one training run is: its spec, the config recorded for it, and the resume checks.

Design notes: docs/training.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from racli.config import apply_overrides, load_config, packaged_config_path
from racli.config.schema import TrainConfig
from racli.errors import BadInput
from racli.names import (
    PAIRING_RULE,
    check_attention,
    check_ra_rank,
    device_name,
    device_type,
    resolve_device,
)
from racli.store import checkpoints as ckpt_paths
from racli.store.connection import UNREADABLE
from racli.store.queries import get_run
from racli.store.recorder import is_stale
from racli.training.budget import check_budget
from racli.training.datasets import DataError, dataset_identity, load_dataset
from racli.training.global_batch import BatchLayout, batch_layout

if TYPE_CHECKING:
    from racli.training.datasets import Dataset

# TrainConfig fields that are not part of the recorded `train` section (resolved elsewhere;
# where TensorBoard events go changes nothing of the run)
_TRAIN_SKIP = ("compile", "tensorboard", "grad_reduce")
# the config entry naming where the run's data was read (racli.store.recorder keeps it out
# of config_hash: runs on machines with different paths to one corpus stay comparable)
DATA_PATH_KEY = "data_path"
# fields left out of the recorded `train` section while null: a run recorded before they
# existed and one recorded without them keep one config (and one config_hash)
_TRAIN_OMIT_NULL = ("batch_tokens",)


@dataclass
class TrainSpec:
    """Everything that defines one training run (resolved, validated by `check`)."""

    attn: str
    model: dict[str, Any]  # GPTConfig fields except attn; vocab_size None = the data's
    train: TrainConfig  # train.compile says "on"/"off" as `compile` below
    data: str | None = None  # None / "builtin": the built-in corpus; else a path
    minutes: float | None = None
    steps: int | None = None
    seed: int = 0
    tag: str | None = None
    device: str = "cpu"  # cpu | cuda | cuda:N
    compile: bool = False
    preset: str | None = None
    measures: dict[str, Any] = field(default_factory=dict)  # ra.yaml `gates` (reciprocity.py)
    extra: dict[str, Any] = dataclasses.field(
        default_factory=dict
    )  # recorded as is (ra experiment's arm)

    @property
    def device_type(self) -> str:
        return device_type(self.device)

    def batch_layout(self, block_size: int, world_size: int = 1) -> BatchLayout:
        """The split of one optimizer step's batch (BadInput for a batch_tokens that does not
        divide; see global_batch.py)."""
        return batch_layout(
            batch_size=self.train.batch_size,
            batch_tokens=self.train.batch_tokens,
            block_size=block_size,
            world_size=world_size,
        )

    @property
    def budget_seconds(self) -> float | None:
        return None if self.minutes is None else self.minutes * 60.0

    def budget(self) -> dict[str, float | int]:
        return {"minutes": self.minutes} if self.minutes is not None else {"steps": self.steps}

    def check(self) -> None:
        """Raise BadInput for an unusable spec (budget, attention name)."""
        check_budget(self.minutes, self.steps)
        check_attention(self.attn)


def train_section(train: TrainConfig) -> dict[str, Any]:
    """The recorded `train` section: the TrainConfig fields but `compile`, in field order
    (`batch_tokens` only when set)."""
    return {
        k: v
        for k, v in train.model_dump().items()
        if k not in _TRAIN_SKIP and not (k in _TRAIN_OMIT_NULL and v is None)
    }


def train_settings(section: dict[str, Any], compile: bool, grad_reduce: str = "ddp") -> TrainConfig:
    """The TrainConfig of a recorded `train` section (a field it lacks: null if recorded only
    while set, else the packaged ra.yaml's value); `compile` and `grad_reduce` are recorded
    beside it."""
    known = set(TrainConfig.model_fields) - set(_TRAIN_SKIP)
    unknown = sorted(set(section) - known)
    if unknown:
        raise BadInput(
            f"the run's recorded train settings hold unknown keys "
            f"({', '.join(unknown)}): it was recorded by another version of ra"
        )
    settings = load_config(packaged_config_path()).train.model_dump()
    settings.update(dict.fromkeys(_TRAIN_OMIT_NULL))
    settings.update(section, compile="on" if compile else "off", grad_reduce=grad_reduce)
    return TrainConfig.model_construct(**settings)


def spec_from_config(
    cfg,
    *,
    attn: str,
    preset: str | None = None,
    data: str | None = None,
    minutes: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    tag: str | None = None,
    device: str | None = "auto",
    compile: bool | None = None,
    overrides: list[str] | tuple = (),
    origins: dict[str, str] | None = None,
    on_this_host: bool = True,
) -> TrainSpec:
    """A validated TrainSpec from ra.yaml (`cfg`) and the command's options.

    `overrides` are `--set KEY=VALUE` items (`--model`, `--batch-size`, `--lr`
    are passed as overrides of model.preset, train.batch_size, train.lr, so
    they are validated exactly like the file; `origins` maps such a key to its option,
    which an error then names). `on_this_host=False`: the run is for another machine (a
    cluster's node), `device` ("cpu" or "cuda") is taken as it is, not looked for here.
    """
    check_budget(minutes, steps)
    check_attention(attn)
    overrides, origins = list(overrides), dict(origins or {})
    if preset is not None:
        overrides.insert(0, f"model.preset={preset}")
        origins.setdefault("model.preset", "--model")
    cfg = apply_overrides(cfg, overrides, origins=origins)
    dev = resolve_device(device) if on_this_host else device_name(device)
    preset = cfg.resolve_preset(cfg.model.preset, dev)  # `auto`: gpt2 on CUDA, tiny on CPU
    cfg = apply_overrides(cfg, [f"model.preset={preset}"]) if preset != cfg.model.preset else cfg
    model = cfg.model_fields(preset)
    check_ra_rank(attn, model["ra_rank"], model["n_embd"] // model["n_head"])
    model.setdefault("vocab_size", None)
    if compile is None:
        compile = {"on": True, "off": False}.get(cfg.train.compile, dev.startswith("cuda"))
    train = cfg.train.model_copy(update={"compile": "on" if compile else "off"})
    return TrainSpec(
        attn=attn,
        model=model,
        train=train,
        data=data,
        minutes=minutes,
        steps=steps,
        seed=int(seed),
        tag=tag,
        device=dev,
        compile=bool(compile),
        measures=cfg.gates.model_dump(),
        preset=preset,
    )


def spec_from_run_config(config: dict[str, Any]) -> TrainSpec:
    """The spec of a recorded run (for --resume)."""
    try:
        budget = config["budget"]
        compile = bool(config["compile"])
        return TrainSpec(
            attn=config["attn"],
            model=dict(config["model"]),
            train=train_settings(dict(config["train"]), compile, config.get("grad_reduce", "ddp")),
            data=None,
            minutes=budget.get("minutes"),
            steps=budget.get("steps"),
            seed=int(config["seed"]),
            tag=config.get("tag"),
            device=config["device"],
            compile=compile,
            preset=config.get("preset"),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise BadInput(f"the run's recorded config is not a train config ({exc})") from exc


# ---------------------------------------------------------------------------- data


def load_data(spec: TrainSpec, path: str | None = None) -> Dataset:
    """The spec's dataset (or `path`'s); unusable data is BadInput (one line)."""
    try:
        return load_dataset(
            path if path is not None else spec.data,
            val_fraction=spec.train.val_fraction,
            block_size=spec.model["block_size"],
        )
    except DataError as exc:
        raise BadInput(str(exc)) from exc


def data_identity(dataset: Dataset) -> dict[str, Any]:
    """What the config records about the data: a name and its size, not where it lives,
    so runs on machines with different paths to the same corpus stay comparable."""
    return dataset_identity(dataset)


def data_location(spec: TrainSpec, dataset: Dataset) -> str:
    """Where to find the data again on resume (absolute path, or the built-in name)."""
    if dataset.name.startswith("builtin:"):
        return dataset.name
    return str(Path(dataset.name).expanduser().resolve())


# ---------------------------------------------------------------------------- the recorded config


def model_config(spec: TrainSpec, dataset: Dataset):
    """The GPTConfig of a spec on a dataset (vocab from the data unless overridden)."""
    from racli_models import GPTConfig

    fields = dict(spec.model)
    vocab = fields.get("vocab_size")
    if vocab is None:
        fields["vocab_size"] = dataset.vocab_size
    elif vocab < dataset.vocab_size:
        raise BadInput(
            f"model.vocab_size {vocab} is smaller than the data's vocabulary ({dataset.vocab_size})"
        )
    try:
        return GPTConfig(attn=spec.attn, **fields)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"model: {exc}") from exc


def run_config(spec: TrainSpec, dataset: Dataset, world_size: int = 1) -> dict[str, Any]:
    """The config recorded on the run row; `config_hash` covers all of it but attn/seed/tag
    (and, with train.batch_tokens, but the world size and the micro-batch split it implies).
    BadInput for a model or a batch_tokens that does not fit."""
    mcfg = model_config(spec, dataset)
    model = {k: v for k, v in dataclasses.asdict(mcfg).items() if k != "attn"}
    if not mcfg.fused_loss:  # recorded only when on: runs without it keep their config_hash
        del model["fused_loss"]
    layout = spec.batch_layout(mcfg.block_size, world_size)
    split = (
        {"micro_batch_size": layout.micro, "grad_accum_steps": layout.accum}
        if spec.train.batch_tokens is not None
        else {}
    )
    return {
        "attn": spec.attn,
        "seed": spec.seed,
        "tag": spec.tag,
        "preset": spec.preset,
        "model": model,
        "train": train_section(spec.train),
        "data": data_identity(dataset),
        "budget": spec.budget(),
        "device": spec.device_type,
        "compile": spec.compile,
        "autocast": "bfloat16" if spec.device_type == "cuda" else None,
        "world_size": world_size,
        # several processes reducing their gradients in their own step (left out of
        # config_hash: the same mean of the same gradients, in another order of float
        # additions); DDP, the default, is not recorded: its runs keep their config
        **(
            {"grad_reduce": spec.train.grad_reduce}
            if world_size > 1 and spec.train.grad_reduce != "ddp"
            else {}
        ),
        "global_batch_size": layout.global_seqs,
        "tokens_per_step": layout.tokens_per_step,
        "pairing": dict(PAIRING_RULE),
        **split,
        # where the data was read (left out of config_hash): a run with no checkpoint yet
        # is trained again from it on --resume
        DATA_PATH_KEY: data_location(spec, dataset),
        **spec.extra,
    }


# ---------------------------------------------------------------------------- resume


def check_resumable(run_id: int, kind: str, status: str, live: bool) -> None:
    """BadInput when a run cannot be resumed: not a train run, finished, or still being
    written by a process (`live`: running with a fresh heartbeat). What `--resume` checks
    before the store is migrated, and again after."""
    if kind != "train":
        raise BadInput(f"run {run_id} is a {kind} run, not a train run")
    if status == "finished":
        raise BadInput(f"run {run_id} is finished: its budget is used up")
    if live:
        raise BadInput(
            f"run {run_id} is still running (its heartbeat is fresh; if its process "
            f"is gone, resume it once the heartbeat is 2 minutes old)"
        )


def prepare_resume(store, run_id: int, dist_info=None):
    """Validate `--resume RUN` and return (spec, dataset, checkpoint path). BadInput if the run
    is unknown, not a train run, finished, still running, or its checkpoint cannot be used.
    A run without a checkpoint (stopped before its first one) is trained again from step 0:
    the path returned does not exist then, and its data is found where its config says. A
    run that wrote a checkpoint whose file is gone (the store moved without its checkpoint
    folder) is refused: training it again would drop what it recorded."""
    from racli.training import distributed as ddp

    info = dist_info or ddp.detect()
    run, spec, path = check_resume(store, run_id, info)
    data_path = run.config.get(DATA_PATH_KEY)
    if path.is_file():
        data_path = _checked_checkpoint(path, run_id, spec).data_path or data_path
    dataset = load_data(spec, data_path)
    recorded = run.config.get("data", {})
    if (recorded.get("train_tokens"), recorded.get("val_tokens")) != (
        dataset.train_tokens,
        dataset.val_tokens,
    ):
        raise BadInput(
            f"the data at {data_path} changed since run {run_id} started (train/val tokens differ)"
        )
    if recorded.get("content_hash") not in (None, dataset.content_hash):
        raise BadInput(
            f"the data at {data_path} changed since run {run_id} started (its content differs)"
        )
    return spec, dataset, path


def check_resume(store, run_id: int, info):
    """The checks of `--resume RUN` that read the store alone (not the checkpoint's
    contents, not the data): the run's state, its record, where its checkpoint is or why
    none is usable, its device and process count. Returns (run, spec, checkpoint path).
    Also run on an older store's upgraded copy before that store is migrated."""
    run = get_run(store, run_id)
    check_resumable(run_id, run.kind, run.status, run.status == "running" and not is_stale(run))
    if UNREADABLE in (run.config or {}):
        raise BadInput(
            f"run {run_id}'s recorded configuration is not JSON (the store was changed "
            f"outside ra): it cannot be resumed; train a new run"
        )
    path = ckpt_paths.checkpoint_path(store.db, run_id)
    written = None if path.is_file() else checkpoint_written(store, run_id)
    if written is not None:  # its values after step 0 would be dropped: refused
        raise BadInput(
            f"run {run_id} wrote a checkpoint (last at step {written}) but {path} is missing: "
            f"put the store's checkpoint folder back beside it to resume the run, or train "
            f"a new run with the same settings"
        )
    if not path.is_file() and (run.config or {}).get(DATA_PATH_KEY) is None:
        raise BadInput(
            f"run {run_id} has no checkpoint at {path}"
            f"{ckpt_paths.legacy_hint(store.db, run_id)}, and its record does not say "
            f"where its data is (recorded by an older ra): start it again"
        )
    spec = spec_from_run_config(run.config)
    check_attention(spec.attn)
    if spec.device_type == "cuda":
        resolve_device("cuda")
    recorded_world = int(run.config.get("world_size", 1))
    if recorded_world != info.world_size:
        raise BadInput(
            f"run {run_id} was trained on {recorded_world} process(es); resume it "
            f"with the same number (now {info.world_size})"
        )
    return run, spec, path


def checkpoint_written(store, run_id: int) -> int | None:
    """The step of the last checkpoint run `run_id` recorded writing (its `checkpoint_s`
    metric), None when it wrote none."""
    from racli.store.experiment_queries import last_step

    return last_step(store, run_id, "checkpoint_s")


def _checked_checkpoint(path: Path, run_id: int, spec: TrainSpec):
    """The checkpoint at `path`, readable, of run `run_id` and with budget left."""
    from racli.training import checkpoint as ckpt

    state = ckpt.read(path)
    if state.run_id is not None and state.run_id != run_id:
        raise BadInput(f"checkpoint {path} belongs to run {state.run_id}, not run {run_id}")
    if (spec.steps is not None and state.step >= spec.steps) or (
        spec.minutes is not None and state.train_seconds >= spec.minutes * 60
    ):
        raise BadInput(f"run {run_id} has used its whole budget: nothing left to train")
    return state
