"""ra.yaml -> typed, validated configuration.

ra.yaml is the only place defaults live. `load_config(path)` reads the file
given with `--config`, else `./ra.yaml` when present, else the copy packaged
with ra (the same file, shipped as package data). A file other than the
packaged one is laid over the packaged defaults (mappings merge key by key,
lists and values replace), so `train: {lr: 1e-3}` alone is a whole config.
Every key is checked: an unknown key, a wrong type or an out-of-range value
raises `ConfigError` naming the file, the key and the reason.

This module imports neither torch nor the database.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

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


def _check(
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple | None = None,
) -> dict:
    return {"gt": gt, "ge": ge, "le": le, "lt": lt, "choices": choices}


def _f(default, **check):
    """A field with a default and range/choice constraints."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=_check(**check))
    return field(default=default, metadata=_check(**check))


@dataclass
class ModelPreset:
    n_layer: int = _f(2, ge=1)
    n_head: int = _f(4, ge=1)
    n_embd: int = _f(128, ge=1)
    block_size: int = _f(128, ge=2)


@dataclass
class ModelConfig:
    preset: str = "tiny"
    dropout: float = _f(0.0, ge=0.0, lt=1.0)
    bias: bool = False
    ra_rank: int = _f(4, ge=1)
    w_std_init: float = 1.0
    w_rec_init: float = 0.1
    fused_loss: bool = False  # chunked LM-head loss without full logits (racli_models.loss)
    # Optional overrides of the preset's fields (`--set model.n_layer=4`).
    n_layer: int | None = _f(None, ge=1)
    n_head: int | None = _f(None, ge=1)
    n_embd: int | None = _f(None, ge=1)
    block_size: int | None = _f(None, ge=2)
    vocab_size: int | None = _f(None, ge=2)


@dataclass
class BenchShape:
    batch: int = _f(2, ge=1)
    seq: int = _f(64, ge=1)
    heads: int = _f(4, ge=1)
    head_dim: int = _f(32, ge=2)


@dataclass
class BenchConfig:
    shape: str = "auto"
    shapes: dict[str, BenchShape] = field(default_factory=dict)
    attn: list[str] = field(default_factory=lambda: ["baseline", "ra_v5"])
    modes: list[str] = field(default_factory=lambda: list(BENCH_MODES))
    repeats: int = _f(100, ge=1)
    warmup: int = _f(20, ge=0)
    noise_ratio: float = _f(1.5, gt=1.0)  # p90/p10 above this: a timing too noisy to rank


@dataclass
class TrainConfig:
    batch_size: int = _f(32, ge=1)
    lr: float = _f(6e-4, gt=0.0)
    min_lr_ratio: float = _f(0.1, ge=0.0, le=1.0)
    warmup_frac: float = _f(0.05, ge=0.0, lt=1.0)
    weight_decay: float = _f(0.1, ge=0.0)
    beta1: float = _f(0.9, ge=0.0, lt=1.0)
    beta2: float = _f(0.95, ge=0.0, lt=1.0)
    grad_clip: float = _f(1.0, ge=0.0)
    gate_lr_mult: float = _f(1.0, gt=0.0)
    eval_interval: int = _f(100, ge=1)
    eval_batches: int = _f(20, ge=1)
    final_eval_batches: int = _f(100, ge=1)
    log_interval: int = _f(10, ge=1)
    checkpoint_minutes: float = _f(5.0, gt=0.0)
    val_fraction: float = _f(0.1, gt=0.0, lt=1.0)
    compile: str = _f("auto", choices=("auto", "on", "off"))
    sdpa_backend: str = _f("auto", choices=SDPA_BACKENDS)
    max_epochs: float | None = _f(None, gt=0.0)  # stop a run after this many passes
    # global batch in tokens (None: batch_size sequences per process); batch_size is then
    # the largest micro-batch, the rest is gradient accumulation (racli/training/global_batch.py)
    batch_tokens: int | None = _f(None, ge=1)


@dataclass
class VerdictConfig:
    threshold: float = _f(0.01, gt=0.0, lt=1.0)
    confidence: float = _f(0.95, gt=0.5, lt=1.0)


@dataclass
class GatesConfig:
    reciprocity_threshold: float = _f(0.05, ge=0.0)
    moved_tolerance: float = _f(1e-6, ge=0.0)
    # reciprocity measures (racli_models.measures): classification and recording
    use_threshold: float = _f(0.05, ge=0.0, le=1.0)
    measure_batches: int = _f(1, ge=0)
    measure_rows: int = _f(1, ge=0)
    measure_queries: int = _f(256, ge=0)  # folded RA: query rows per sequence (0: all)
    measure_precision: str = _f("auto", choices=("auto", "float32"))
    ablation: str = _f("ends", choices=("every", "ends", "never"))


@dataclass
class ExperimentConfig:
    """`ra experiment`: speed calibration and the sequential design."""

    calibration_precision: float = _f(
        0.005, gt=0.0, lt=0.5
    )  # target half-width of each ratio's 95% interval
    calibration_max_s: float = _f(
        120.0, gt=0.0
    )  # time cap of the timed rounds (compile not counted)
    # ... and at most this share of the experiment's planned training time (arms x seeds x minutes)
    calibration_max_share: float = _f(0.1, gt=0.0, le=1.0)
    calibration_min_rounds: int = _f(3, ge=2)
    calibration_block_steps: int = _f(10, ge=1)  # training steps per timed block
    calibration_warmup_steps: int = _f(3, ge=1)  # untimed steps per variant first (compile)
    spending: str = _f("obrien_fleming", choices=("obrien_fleming", "pocock"))
    false_decision_rate: float = _f(0.05, gt=0.0, lt=0.5)  # WIN/LOSE error of --until-settled


@dataclass
class Config:
    db: str = "ra.db"
    models: dict[str, ModelPreset] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    verdict: VerdictConfig = field(default_factory=VerdictConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    source: str = field(default="<defaults>", metadata={"internal": True})

    # ---- derived views -------------------------------------------------
    def resolve_preset(self, preset: str | None = None, device_type: str = "cpu") -> str:
        """The preset's name, with `auto` resolved for `device_type` (cuda: gpt2, else tiny)."""
        name = preset or self.model.preset
        if name == AUTO_PRESET:
            return AUTO_PRESETS["cuda" if device_type.split(":")[0] == "cuda" else "cpu"]
        return name

    def model_fields(self, preset: str | None = None, device_type: str = "cpu") -> dict[str, Any]:
        """The GPTConfig fields for a preset (`auto`: for `device_type`), with the `model`
        section applied."""
        name = self.resolve_preset(preset, device_type)
        if name not in self.models:
            raise BadInput(
                f"unknown model preset '{name}' (valid: {', '.join(sorted(self.models))})"
            )
        fields = dataclasses.asdict(self.models[name])
        m = dataclasses.asdict(self.model)
        m.pop("preset")
        for key, value in m.items():
            if value is not None:
                fields[key] = value
        return fields

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


# ---- validation ---------------------------------------------------------

_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is not None and type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _convert(value, inner, key, source)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"must be a mapping, got {_describe(value)}")
        return _build(tp, value, source, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"must be a mapping, got {_describe(value)}")
        vt = args[1]
        return {str(k): _convert(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = comma_list(value)
        if not isinstance(value, list):
            raise ConfigError(source, key, f"must be a list, got {_describe(value)}")
        return [_convert(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(source, key, f"must be true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(source, key, f"must be an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; a number was meant
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(source, key, f"must be a finite number, got {value}")
            return float(value)
        raise ConfigError(source, key, f"must be a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(source, key, f"must be a string, got {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def _check_range(value: Any, meta: dict, key: str, source: str) -> None:
    if value is None or not meta:
        return
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(
            source, key, f"must be one of {', '.join(meta['choices'])}, got {value!r}"
        )
    for op, bound, text in (
        ("gt", meta.get("gt"), ">"),
        ("ge", meta.get("ge"), ">="),
        ("lt", meta.get("lt"), "<"),
        ("le", meta.get("le"), "<="),
    ):
        if bound is None:
            continue
        ok = {"gt": value > bound, "ge": value >= bound, "lt": value < bound, "le": value <= bound}[
            op
        ]
        if not ok:
            raise ConfigError(source, key, f"must be {text} {bound}, got {value}")


def _build(cls: type, data: dict, source: str, prefix: str = ""):
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if key in RETIRED_KEYS:
            continue  # a key of an older ra.yaml that no longer means anything
        if k not in known:
            raise ConfigError(source, key, f"unknown key (valid: {', '.join(known)})")
        choices = known[k].metadata.get("choices") or ()
        if isinstance(v, bool) and {"on", "off"} <= set(choices):
            v = "on" if v else "off"  # YAML 1.1 reads a bare on/off as true/false
        kwargs[k] = _convert(v, hints[k], key, source)
        _check_range(kwargs[k], dict(known[k].metadata), key, source)
    return cls(**kwargs)


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
    """A validated Config from ``data``; with ``defaults`` (the packaged file's data),
    ``data`` is a partial file laid over them. Errors name ``source``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"must be a mapping of keys, got {_describe(data)}")
    if defaults is not None:
        _build(Config, data, source)  # the file's own keys, types and ranges first
        data = overlay(defaults, data)
    cfg = _build(Config, data, source)
    cfg.source = source
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
            valid = [f.name for f in dataclasses.fields(type(getattr(cfg, section)))]
            raise ConfigError("--set", key, f"unknown key (valid: {', '.join(valid)})")
        data[section][name] = _parse_scalar(raw)
    return config_from_dict(data, "--set")


def resolve_db(cli_value: str | None, cfg: Config) -> str:
    """--db beats RA_DB beats ra.yaml's `db`."""
    return cli_value or os.environ.get("RA_DB") or cfg.db
