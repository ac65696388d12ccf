"""ra.yaml -> typed, validated configuration.

The schema (types and ranges, no values) is racli/config/schema.py; ra.yaml holds every
value. `load_config(path)` reads the file given with `--config`, else
`./ra.yaml` when present, else the copy packaged with ra (the same file). A file
other than the packaged one is laid over the packaged defaults (mappings merge
key by key, lists and values replace), so `train: {lr: 1e-3}` alone is a whole
config. An unknown or missing key, a wrong type or an out-of-range value raises
`ConfigError` naming the file, the key and the reason. docs/config.md: design notes.

This module imports neither torch nor the database.
"""

from __future__ import annotations

import os
import reprlib
import stat
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from racli.config.schema import (
    AUTO_PRESET,
    AUTO_PRESETS,
    BENCH_MODES,
    FLOAT32_MAX,
    Config,
    yaml11_float,
)
from racli.errors import BadInput
from racli.names import ATTENTION_NAMES, FA4, fa4_head_size_ok

#: keys older ra.yaml files may hold that are read and ignored
RETIRED_KEYS = {
    # replaced by the speed check of `ra compare` (the loss gap the speed gap explains)
    "verdict.speed_tolerance",
}


class ConfigError(BadInput):
    """An invalid configuration file or override."""

    def __init__(self, source: str, key: str, reason: str):
        self.source, self.key, self.reason = source, key, reason
        shown = key if len(key) <= 80 else key[:77] + "..."
        super().__init__(f"{source}: {shown}: {reason}" if key else f"{source}: {reason}")


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


#: a bad value as an error shows it: a few items, levels and characters, so that a long
#: string or a nest of YAML aliases gives one short line (and takes no time to print)
_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40


def _brief(value: Any) -> str:
    return _REPR.repr(value)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {_brief(value)}"


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
            return f"must be one of {', '.join(get_args(_schema_at(loc)))}, got {_brief(value)}"
        kind = "string_type"
    if kind in _TYPE_REASONS:
        return f"{_TYPE_REASONS[kind]}, got {_describe(value)}"
    value = yaml11_float(value)
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
    t = cfg.train  # Adam's first step is lr / (1 - beta1), its decay lr x weight_decay
    top = t.lr * max(1.0, t.gate_lr_mult)
    if max(top / (1.0 - t.beta1), top * t.weight_decay) > FLOAT32_MAX:
        raise ConfigError(
            src,
            "train.lr",
            f"{t.lr:g} (x gate_lr_mult {t.gate_lr_mult:g}) makes the optimizer's first step "
            f"lr / (1 - beta1) or its decay lr x weight_decay overflow float32 "
            f"({FLOAT32_MAX:.4g})",
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
    # model.ra_rank < head_dim: checked where the attention is known (names.check_ra_rank)
    if cfg.train.sdpa_backend == FA4:
        if cfg.model.dropout:
            raise ConfigError(
                src, "train.sdpa_backend", "fa4 has no attention dropout: set model.dropout=0"
            )
        if not fa4_head_size_ok(head_dim):
            raise ConfigError(
                src,
                "train.sdpa_backend",
                f"fa4 needs a head size (n_embd / n_head) in 8..256, a multiple of 8; got {head_dim}",
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
    """The config file to read: `path` (--config), else ./ra.yaml when present, else the
    packaged copy. BadInput when `path` is missing, a folder, not a regular file, or
    cannot be reached."""
    if path is not None:
        if not str(path).strip():
            raise BadInput("--config is empty: give a config file, or leave the option out")
        p = Path(path)
        if not _regular_file(p, given=True):
            raise BadInput(f"config file not found: {p}")
        return p
    local = Path("ra.yaml")
    if _regular_file(local, given=False):
        return local
    return packaged_config_path()


def _regular_file(p: Path, *, given: bool) -> bool:
    """Whether the config file `p` exists; BadInput when it cannot be read as one (a
    folder, a device or pipe where it was `given`, a path that cannot be reached)."""
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise BadInput(
            f"cannot read config file {p}: {(exc.strerror or str(exc)).lower()}"
        ) from None
    if stat.S_ISREG(mode):
        return True
    if not given:
        return False
    if stat.S_ISDIR(mode):
        raise BadInput(f"config path {p} is a folder, not a file")
    raise BadInput(f"config file {p} is not a regular file (a device, pipe or socket)")


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


def parse_value(text: str) -> Any:
    """The value of a `--set KEY=VALUE` item, as YAML reads it (a 1e-3 a number)."""
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
    cfg: Config,
    overrides: list[str],
    sections: tuple[str, ...] = ("model", "train"),
    origins: dict[str, str] | None = None,
) -> Config:
    """Apply `KEY=VALUE` overrides (e.g. `model.ra_rank=8`) and validate like the file.

    `origins` names the option that gave a key (e.g. ``{"train.lr": "--lr"}``): an
    error in that key then names the option rather than ``--set``."""
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
        data[section][name] = parse_value(raw)
    try:
        return config_from_dict(data, "--set")
    except ConfigError as e:
        option = (origins or {}).get(e.key)
        if option is None:
            raise
        raise ConfigError(option, "", e.reason) from None


def resolve_db(cli_value: str | None, cfg: Config) -> str:
    """--db beats RA_DB beats ra.yaml's `db`. An empty or blank location is bad input
    naming where it came from, an RA_DB set to nothing too (`RA_DB=$UNSET_NAME` would
    else record into the default store unnoticed)."""
    if cli_value is not None:
        return _location(cli_value, "--db")
    env = os.environ.get("RA_DB")
    if env is not None:
        return _location(env, "RA_DB")
    if not cfg.db.strip():
        raise ConfigError(cfg.source, "db", f"{cfg.db!r} is empty: give a file path or a URL")
    return cfg.db


def _location(value: str, where: str) -> str:
    if not value.strip():
        unset = " (or unset it)" if where == "RA_DB" else ""
        raise BadInput(f"{where} {value!r} is empty: give a database file path or URL{unset}")
    return value
