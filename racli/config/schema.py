"""The schema of ra.yaml: pydantic classes that declare the types and ranges of every
setting and no values (ra.yaml gives every value). racli/config/__init__.py reads the files,
lays them over each other, validates them against this schema and words its errors.

This module imports neither torch nor the database.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)
from pydantic_core import PydanticCustomError

from racli.errors import BadInput
from racli.names import MAX_BENCH_STEPS, SDPA_BACKENDS, comma_list

BENCH_MODES = ("eager", "compile", "cuda_graph")
# model.preset `auto`: the preset that fits the device (resolved where the device is known)
AUTO_PRESET = "auto"
AUTO_PRESETS = {"cuda": "gpt2", "cpu": "tiny"}


# ---- what YAML gives -> what a setting holds -------------------------------

_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def yaml11_float(value: Any) -> Any:
    """YAML 1.1 reads 1e-3 (no dot) as a string; a number was meant."""
    if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def _on_off_word(value: Any) -> Any:
    """YAML 1.1 reads a bare on/off as true/false; the setting's choices are words."""
    return ("on" if value else "off") if isinstance(value, bool) else value


def _text_keys(value: Any) -> Any:
    """YAML keys may be numbers (`1: ...`); a key is named by its text."""
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


def _split(value: Any) -> Any:
    return comma_list(value) if isinstance(value, str) else value


# the largest float32: settings end up in float32 tensors, and a larger one overflows there
FLOAT32_MAX = 3.4028234663852886e38


def _float32(value: float) -> float:
    if abs(value) > FLOAT32_MAX:
        raise PydanticCustomError(
            "float32_range", f"must be a float32 number, at most {FLOAT32_MAX!r} in magnitude"
        )
    return value


def _folder(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("empty_folder", "must name a folder (null: none)")
    return value


Number = Annotated[float, BeforeValidator(yaml11_float), AfterValidator(_float32)]
Folder = Annotated[str, AfterValidator(_folder)]
Names = Annotated[list[str], BeforeValidator(_split)]
OnOff = Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off_word)]


class _Schema(BaseModel):
    """Types and ranges only: no defaults, ra.yaml gives every value."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _keys_as_text(cls, data: Any) -> Any:
        return _text_keys(data)


# ---- the schema (field order is the order of ra.yaml and of the recorded config) ----


class ModelPreset(_Schema):
    n_layer: int = Field(ge=1)
    n_head: int = Field(ge=1)
    n_embd: int = Field(ge=1)
    block_size: int = Field(ge=2)


class ModelConfig(_Schema):
    preset: str
    dropout: Number = Field(ge=0.0, lt=1.0)
    bias: bool
    ra_rank: int = Field(ge=1)
    w_std_init: Number
    w_rec_init: Number
    fused_loss: bool  # chunked LM-head loss without full logits (racli_models.loss)
    # Overrides of the preset's fields (null: the preset's; `--set model.n_layer=4`).
    n_layer: int | None = Field(ge=1)
    n_head: int | None = Field(ge=1)
    n_embd: int | None = Field(ge=1)
    block_size: int | None = Field(ge=2)
    vocab_size: int | None = Field(ge=2)


# a bench shape: each dimension below 2^31 (the reach of a kernel's 32-bit index), and one
# q/k/v tensor (B x T x H x D) below 2^40 elements (2 TiB in float16: past any device's memory)
MAX_SHAPE_DIM = 2**31 - 1
MAX_SHAPE_ELEMENTS = 2**40


class BenchShape(_Schema):
    batch: int = Field(ge=1, le=MAX_SHAPE_DIM)
    seq: int = Field(ge=1, le=MAX_SHAPE_DIM)
    heads: int = Field(ge=1, le=MAX_SHAPE_DIM)
    head_dim: int = Field(ge=2, le=MAX_SHAPE_DIM)

    @property
    def elements(self) -> int:
        """Elements of one q/k/v tensor."""
        return self.batch * self.seq * self.heads * self.head_dim


class BenchConfig(_Schema):
    shape: str
    shapes: Annotated[dict[str, BenchShape], BeforeValidator(_text_keys)]
    attn: Names
    modes: Names
    repeats: int = Field(ge=1, le=MAX_BENCH_STEPS)
    warmup: int = Field(ge=0, le=MAX_BENCH_STEPS)
    noise_ratio: Number = Field(gt=1.0)  # p90/p10 above this: a timing too noisy to rank


class TrainConfig(_Schema):
    batch_size: int = Field(ge=1)
    lr: Number = Field(gt=0.0)
    min_lr_ratio: Number = Field(ge=0.0, le=1.0)
    warmup_frac: Number = Field(ge=0.0, lt=1.0)
    weight_decay: Number = Field(ge=0.0)
    beta1: Number = Field(ge=0.0, lt=1.0)
    beta2: Number = Field(ge=0.0, lt=1.0)
    grad_clip: Number = Field(ge=0.0)
    gate_lr_mult: Number = Field(gt=0.0)
    eval_interval: int = Field(ge=1)
    eval_batches: int = Field(ge=1)
    final_eval_batches: int = Field(ge=1)
    log_interval: int = Field(ge=1)
    checkpoint_minutes: Number = Field(gt=0.0)
    val_fraction: Number = Field(gt=0.0, lt=1.0)
    compile: OnOff
    sdpa_backend: Literal[SDPA_BACKENDS]
    max_epochs: Number | None = Field(gt=0.0)  # stop a run after this many passes
    # global batch in tokens (None: batch_size sequences per process); batch_size is then
    # the largest micro-batch, the rest is gradient accumulation (racli/training/global_batch.py)
    batch_tokens: int | None = Field(ge=1)
    # several processes: DistributedDataParallel, or one all-reduce at the end of each step
    # (racli_models.step.TrainStep's `reduce`, inside its CUDA graph on CUDA)
    grad_reduce: Literal["ddp", "step"]
    # a folder for TensorBoard event files (one folder per run; null: none); not recorded
    tensorboard: Folder | None


class VerdictConfig(_Schema):
    threshold: Number = Field(gt=0.0, lt=1.0)
    confidence: Number = Field(gt=0.5, lt=1.0)


class GatesConfig(_Schema):
    reciprocity_threshold: Number = Field(ge=0.0)
    moved_tolerance: Number = Field(ge=0.0)
    # reciprocity measures (racli_models.measures): classification and recording
    use_threshold: Number = Field(ge=0.0, le=1.0)
    measure_batches: int = Field(ge=0)
    measure_rows: int = Field(ge=0)
    measure_queries: int = Field(ge=0)  # folded RA: query rows per sequence (0: all)
    measure_precision: Literal["auto", "float32"]
    ablation: Literal["every", "ends", "never"]


class ExperimentConfig(_Schema):
    """`ra experiment`: speed calibration and the sequential design."""

    calibration_precision: Number = Field(gt=0.0, lt=0.5)  # half-width of each ratio's 95% CI
    calibration_max_s: Number = Field(gt=0.0)  # time cap of the timed rounds (not compile)
    # ... and at most this share of the experiment's planned training time (arms x seeds x minutes)
    calibration_max_share: Number = Field(gt=0.0, le=1.0)
    calibration_min_rounds: int = Field(ge=2)
    calibration_block_steps: int = Field(ge=1)  # training steps per timed block
    calibration_warmup_steps: int = Field(ge=1)  # untimed steps per variant first (compile)
    spending: Literal["obrien_fleming", "pocock"]
    false_decision_rate: Number = Field(gt=0.0, lt=0.5)  # WIN/LOSE error of --until-settled


class SlurmConfig(_Schema):
    """`ra experiment --launcher slurm` (submitit): what each sbatch job asks for."""

    partition: str | None
    account: str | None
    gpus_per_run: int = Field(ge=0)  # GPUs of one arm's run; a seed's job holds arms x this
    gpus_per_node: int = Field(ge=1)  # a run wanting more becomes one torchrun job of its own
    nodes_per_run: int = Field(ge=1)  # CPU runs: nodes one run spans (one process per node)
    cpus_per_task: int = Field(ge=1)
    time_limit_min: int = Field(ge=1)
    array_parallelism: int = Field(ge=1)  # seed jobs of one array running at once
    extra_sbatch: Names  # further sbatch options, e.g. --qos=high
    folder: str  # submitit's job folder (scripts, logs): on a filesystem every node sees
    poll_s: Number = Field(gt=0.0)


class RayConfig(_Schema):
    """`ra experiment --launcher ray`: the cluster and each seed's actor."""

    address: str  # auto: RAY_ADDRESS, else the cluster running on this machine
    gpus_per_run: int = Field(ge=0)
    gpus_per_node: int = Field(ge=1)  # a run wanting more spans nodes (a placement group)
    nodes_per_run: int = Field(ge=1)  # CPU runs: nodes one run spans (one process per node)
    cpus_per_job: Number = Field(ge=0.0)
    max_restarts: int = Field(ge=0)  # a job whose worker died is restarted this many times
    poll_s: Number = Field(gt=0.0)


class Config(_Schema):
    db: str
    db_wait_minutes: Number = Field(ge=0.0)  # a run waits this long for an unwritable store
    models: Annotated[dict[str, ModelPreset], BeforeValidator(_text_keys)]
    model: ModelConfig
    bench: BenchConfig
    train: TrainConfig
    verdict: VerdictConfig
    gates: GatesConfig
    experiment: ExperimentConfig
    slurm: SlurmConfig
    ray: RayConfig
    _source: str = PrivateAttr(default="<not from a file>")  # set by config_from_dict

    @property
    def source(self) -> str:
        """The file (or `--set`) the configuration was read from; error messages name it."""
        return self._source

    # ---- derived views -------------------------------------------------
    def resolve_preset(self, preset: str | None = None, device_type: str = "cpu") -> str:
        """The preset's name, with `auto` resolved for `device_type` (cuda: gpt2, else tiny)."""
        name = preset or self.model.preset
        if name == AUTO_PRESET:
            return AUTO_PRESETS["cuda" if device_type.split(":")[0] == "cuda" else "cpu"]
        return name

    # ra's own method, older than this schema: it shadows pydantic's class property of
    # the same name, which this module reads as `__pydantic_fields__`
    def model_fields(  # type: ignore[override]
        self, preset: str | None = None, device_type: str = "cpu"
    ) -> dict[str, Any]:
        """The GPTConfig fields for a preset (`auto`: for `device_type`), with the `model`
        section applied."""
        name = self.resolve_preset(preset, device_type)
        if name not in self.models:
            raise BadInput(
                f"unknown model preset '{name}' (valid: {', '.join(sorted(self.models))})"
            )
        fields = self.models[name].model_dump()
        for key, value in self.model.model_dump(exclude={"preset"}).items():
            if value is not None:
                fields[key] = value
        return fields

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()
