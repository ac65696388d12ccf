"""ra.yaml -> typed, validated configuration.

ra.yaml holds every value; the pydantic classes below declare only the types
and ranges. `load_config(path)` reads the file given with `--config`, else
`./ra.yaml` when present, else the copy packaged with ra (the same file). A file
other than the packaged one is laid over the packaged defaults (mappings merge
key by key, lists and values replace), so `train: {lr: 1e-3}` alone is a whole
config. An unknown or missing key, a wrong type or an out-of-range value raises
`ConfigError` naming the file, the key and the reason. docs/config.md: design notes.

This module imports neither torch nor the database.
"""

from __future__ import annotations

import os
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from racli.errors import BadInput
from racli.names import ATTENTION_NAMES, SDPA_BACKENDS, comma_list

BENCH_MODES = ("eager", "compile", "cuda_graph")
# model.preset `auto`: the preset that fits the device (resolved where the device is known)
AUTO_PRESET = "auto"
AUTO_PRESETS = {"cuda": "gpt2", "cpu": "tiny"}


#: keys older ra.yaml files may hold that are read and ignored
RETIRED_KEYS = {
    # replaced by the speed check of `ra compare` (the loss gap the speed gap explains)
    "verdict.speed_tolerance",
}


class ConfigError(BadInput):
    """An invalid configuration file or override."""

    def __init__(self, source: str, key: str, reason: str):
        self.source, self.key, self.reason = source, key, reason
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")


# ---- what YAML gives -> what a setting holds -------------------------------

_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml11_float(value: Any) -> Any:
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


Number = Annotated[float, BeforeValidator(_yaml11_float)]
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


class BenchShape(_Schema):
    batch: int = Field(ge=1)
    seq: int = Field(ge=1)
    heads: int = Field(ge=1)
    head_dim: int = Field(ge=2)


class BenchConfig(_Schema):
    shape: str
    shapes: Annotated[dict[str, BenchShape], BeforeValidator(_text_keys)]
    attn: Names
    modes: Names
    repeats: int = Field(ge=1)
    warmup: int = Field(ge=0)
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
    # a folder for TensorBoard event files (one folder per run; null: none); not recorded
    tensorboard: str | None


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


# ---- pydantic's errors -> ConfigError --------------------------------------

_TYPE_REASONS = {
    "model_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def _bare(tp: Any) -> Any:
    """``tp`` without its Annotated metadata and its ``| None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


def _schema_at(loc: tuple) -> Any:
    """The declared type at ``loc`` (a pydantic error location) in `Config`."""
    tp: Any = Config
    for part in loc:
        tp = _bare(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = tp.__pydantic_fields__[part].annotation
        else:  # dict[str, X] or list[X]: the entry's type
            tp = get_args(tp)[-1]
    return _bare(tp)


def _dotted(loc: tuple) -> str:
    """("bench", "attn", 1) -> "bench.attn[1]"."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key


def _position(data: Any, loc: tuple) -> tuple:
    """Where ``loc`` stands in ``data``, keys in the file's order (absent: after them)."""
    where, node = [], data
    for part in loc:
        if isinstance(node, dict):
            keys = [str(k) for k in node]
            i = keys.index(part) if part in keys else len(keys)
            node = list(node.values())[i] if i < len(keys) else None
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            i, node = part, node[part]
        else:
            i, node = 0, None
        where.append(i)
    return tuple(where)


def _reason(err: dict) -> str:
    kind, value, loc = err["type"], err["input"], err["loc"]
    if kind == "extra_forbidden":
        return f"unknown key (valid: {', '.join(_schema_at(loc[:-1]).__pydantic_fields__)})"
    if kind == "missing":
        return "missing key"
    if kind == "literal_error":
        if isinstance(value, str):
            return f"must be one of {', '.join(get_args(_schema_at(loc)))}, got {value!r}"
        kind = "string_type"
    if kind in _TYPE_REASONS:
        return f"{_TYPE_REASONS[kind]}, got {_describe(value)}"
    value = _yaml11_float(value)
    if kind == "finite_number":
        return f"must be a finite number, got {value}"
    if kind in _BOUNDS:
        name, sign = _BOUNDS[kind]
        if _schema_at(loc) is float:
            value = float(value)
        return f"must be {sign} {err['ctx'][name]}, got {value}"
    return f"{err['msg']}, got {_describe(value)}"  # no other check is declared


def _without(data: Any, path: list[str]) -> Any:
    """``data`` less the key at ``path`` (a copy where it held one)."""
    head, *rest = path
    if not isinstance(data, dict) or head not in data:
        return data
    if not rest:
        return {k: v for k, v in data.items() if k != head}
    return {**data, head: _without(data[head], rest)}


def _first(errors: list[dict], order: dict) -> dict:
    """The error to report: a wrong key or value before a missing key, then the first
    in the order of ``order`` (the file as written)."""
    return min(errors, key=lambda e: (e["type"] == "missing", _position(order, e["loc"])))


def _validate(data: dict, source: str, order: dict) -> Config:
    """`Config` of ``data``; its first error (see `_first`) becomes a ConfigError."""
    for retired in RETIRED_KEYS:  # keys of an older ra.yaml that no longer mean anything
        data = _without(data, retired.split("."))
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        err = _first(exc.errors(include_url=False), order)
        raise ConfigError(source, _dotted(err["loc"]), _reason(err)) from None
    cfg._source = source
    return cfg


def _validate_cross(cfg: Config) -> None:
    src = cfg.source
    if not cfg.models:
        raise ConfigError(src, "models", "at least one model preset is needed")
    if cfg.model.preset == AUTO_PRESET:
        missing = [p for p in AUTO_PRESETS.values() if p not in cfg.models]
        if missing:
            raise ConfigError(
                src,
                "model.preset",
                f"auto needs the presets "
                f"{', '.join(AUTO_PRESETS.values())} (missing: {', '.join(missing)})",
            )
    elif cfg.model.preset not in cfg.models:
        raise ConfigError(
            src,
            "model.preset",
            f"unknown preset '{cfg.model.preset}' (valid: {AUTO_PRESET}, {', '.join(cfg.models)})",
        )
    for name, p in cfg.models.items():
        if p.n_embd % p.n_head:
            raise ConfigError(
                src, f"models.{name}", f"n_embd {p.n_embd} is not divisible by n_head {p.n_head}"
            )
    for i, a in enumerate(cfg.bench.attn):
        if a not in ATTENTION_NAMES:
            raise ConfigError(
                src,
                f"bench.attn[{i}]",
                f"unknown attention '{a}' (valid: {', '.join(ATTENTION_NAMES)})",
            )
    for i, m in enumerate(cfg.bench.modes):
        if m not in BENCH_MODES:
            raise ConfigError(
                src, f"bench.modes[{i}]", f"unknown mode '{m}' (valid: {', '.join(BENCH_MODES)})"
            )
    if cfg.bench.shape != "auto" and cfg.bench.shape not in cfg.bench.shapes:
        raise ConfigError(
            src,
            "bench.shape",
            f"unknown shape '{cfg.bench.shape}' (valid: auto, {', '.join(cfg.bench.shapes)})",
        )
    # `auto` is checked as it resolves without a device (tiny); a run checks its resolution
    fields = cfg.model_fields()
    head_dim = (
        fields["n_embd"] // fields["n_head"] if fields["n_embd"] % fields["n_head"] == 0 else None
    )
    if head_dim is None:
        raise ConfigError(
            src, "model", f"n_embd {fields['n_embd']} is not divisible by n_head {fields['n_head']}"
        )
    if not 0 < cfg.model.ra_rank < head_dim:
        raise ConfigError(
            src,
            "model.ra_rank",
            f"must be between 1 and head_dim-1 = {head_dim - 1}, got {cfg.model.ra_rank}",
        )


def packaged_config_path() -> Path:
    from importlib.resources import files

    return Path(str(files("racli") / "ra.yaml"))


def overlay(base: dict, over: dict) -> dict:
    """``over`` laid on ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = overlay(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(data: Any, source: str, *, defaults: dict | None = None) -> Config:
    """A validated Config from ``data``, which gives every key (as the packaged file
    does); with ``defaults`` (the packaged file's data), ``data`` is a partial file laid
    over them. Errors name ``source`` and the first bad key in ``data``'s order."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"must be a mapping of keys, got {_describe(data)}")
    cfg = _validate(data if defaults is None else overlay(defaults, data), source, data)
    _validate_cross(cfg)
    return cfg


def resolve_config_path(path: str | os.PathLike | None) -> Path:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise BadInput(f"config file not found: {p}")
        return p
    local = Path("ra.yaml")
    if local.is_file():
        return local
    return packaged_config_path()


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Load and validate ra.yaml (see module docstring for which file): a file other
    than the packaged one is laid over the packaged defaults, so it needs only the
    keys it changes."""
    p = resolve_config_path(path)
    packaged = packaged_config_path()
    data = _read_yaml(p)
    if p.resolve() == packaged.resolve():
        return config_from_dict(data, str(p))
    return config_from_dict(data, str(p), defaults=_read_yaml(packaged))


def _unique_key_loader():
    """A SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the
    last one silently, so an edited ra.yaml could hold a setting that is never used)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key}' given twice", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def _read_yaml(p: Path) -> Any:
    import yaml

    source = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"cannot read: {exc}") from exc
    try:
        data = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, "", f"YAML syntax error: {where}{problem}") from exc
    return data


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; a number was meant
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(
    cfg: Config, overrides: list[str], sections: tuple[str, ...] = ("model", "train")
) -> Config:
    """Apply `KEY=VALUE` overrides (e.g. `model.ra_rank=8`) and validate like the file."""
    if not overrides:
        return cfg
    data = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", item, "expected KEY=VALUE, e.g. model.ra_rank=8")
        key, _, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in sections:
            raise ConfigError(
                "--set", key, f"expected SECTION.FIELD with SECTION one of {', '.join(sections)}"
            )
        section, name = parts
        if name not in data[section]:
            raise ConfigError("--set", key, f"unknown key (valid: {', '.join(data[section])})")
        data[section][name] = _parse_scalar(raw)
    return config_from_dict(data, "--set")


def resolve_db(cli_value: str | None, cfg: Config) -> str:
    """--db beats RA_DB beats ra.yaml's `db`."""
    return cli_value or os.environ.get("RA_DB") or cfg.db
