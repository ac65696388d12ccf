"""Tests for racli.config: the packaged ra.yaml, which file is read, validation, overrides, --db."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from racli.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
    packaged_config_path,
    resolve_config_path,
    resolve_db,
)
from racli.config.schema import Config
from racli.errors import BadInput

REPO = Path(__file__).resolve().parents[1]


def _packaged_data() -> dict:
    return yaml.safe_load((REPO / "ra.yaml").read_text())


def _dotted_keys(data: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _dotted_keys(value, f"{prefix}{key}.")
    return out


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---- the packaged file ----------------------------------------------------


def test_packaged_presets_shapes_and_verdict():
    cfg = load_config(packaged_config_path())
    presets = {
        name: (p.n_layer, p.n_head, p.n_embd, p.block_size) for name, p in cfg.models.items()
    }
    assert presets == {
        "tiny": (2, 4, 128, 128),
        "small": (6, 6, 384, 256),
        "gpt2": (12, 12, 768, 1024),
    }
    shapes = {name: (s.batch, s.seq, s.heads, s.head_dim) for name, s in cfg.bench.shapes.items()}
    assert shapes["tiny"] == (2, 64, 4, 32)
    assert shapes["gpt2"] == (8, 1024, 12, 64)
    assert cfg.verdict.threshold == pytest.approx(0.01)
    assert cfg.bench.noise_ratio == pytest.approx(1.5) and not hasattr(
        cfg.verdict, "speed_tolerance"
    )
    assert cfg.db == "ra.db"
    assert cfg.model.preset == "auto" and cfg.model.ra_rank == 4
    assert cfg.bench.attn == ["baseline", "ra_v5"]
    assert cfg.bench.modes == ["eager", "compile", "cuda_graph"]
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == pytest.approx(6e-4)
    assert cfg.model_fields("gpt2")["n_embd"] == 768


def test_packaged_file_is_the_repository_file_not_a_copy():
    packaged = packaged_config_path()
    assert packaged.is_file()
    assert packaged.read_bytes() == (REPO / "ra.yaml").read_bytes()
    assert os.path.samefile(packaged, REPO / "ra.yaml")
    in_package = REPO / "racli" / "ra.yaml"
    assert in_package.is_symlink(), "racli/ra.yaml must be a link to ra.yaml, not a second copy"
    assert in_package.resolve() == (REPO / "ra.yaml").resolve()


def test_every_key_of_the_packaged_file_is_known():
    # the schema and the file agree on the set of keys
    cfg = load_config(packaged_config_path())
    assert _dotted_keys(_packaged_data()) == _dotted_keys(cfg.to_dict())


def test_ra_yaml_gives_every_value_and_the_schema_none():
    # one source of defaults: no schema class holds a default of its own
    from pydantic import BaseModel

    from racli.config import schema as config_schema

    schema = [
        c
        for c in vars(config_schema).values()
        if isinstance(c, type)
        and issubclass(c, BaseModel)
        and c.__module__ == config_schema.__name__
    ]
    assert Config in schema and config_schema.BenchShape in schema
    for cls in schema:
        for name, info in cls.__pydantic_fields__.items():
            assert info.is_required(), f"{cls.__name__}.{name} has a default"
    # so a whole file (the packaged one) lacking a key is refused, naming it
    data = _packaged_data()
    del data["train"]["lr"]
    with pytest.raises(ConfigError, match=r"^x\.yaml: train\.lr: missing key$"):
        config_from_dict(data, "x.yaml")


# ---- which file -----------------------------------------------------------


def test_config_option_picks_another_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _packaged_data()
    data["db"] = "other.db"
    data["verdict"]["threshold"] = 0.02
    other = _write(tmp_path / "other.yaml", data)
    cfg = load_config(str(other))
    assert cfg.db == "other.db"
    assert cfg.verdict.threshold == pytest.approx(0.02)
    assert cfg.source == str(other)


def test_local_ra_yaml_is_used_when_present(tmp_path, monkeypatch):
    data = _packaged_data()
    data["db"] = "local.db"
    _write(tmp_path / "ra.yaml", data)
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path(None) == Path("ra.yaml")
    cfg = load_config()
    assert cfg.db == "local.db"
    assert Path(cfg.source).resolve() == (tmp_path / "ra.yaml").resolve()


def test_packaged_file_is_used_without_local_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path(None) == packaged_config_path()
    cfg = load_config()
    assert cfg.db == "ra.db"
    assert os.path.samefile(cfg.source, REPO / "ra.yaml")


def test_missing_config_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_partial_file_keeps_defaults(tmp_path):
    p = tmp_path / "mini.yaml"
    p.write_text("models:\n  tiny: {n_layer: 2, n_head: 4, n_embd: 128, block_size: 128}\n")
    cfg = load_config(p)
    assert cfg.train.batch_size == 32 and cfg.verdict.threshold == pytest.approx(0.01)


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    p = tmp_path / "twice.yaml"
    p.write_text("train:\n  lr: 0.001\n  batch_size: 2\n  lr: 0.003\n")
    with pytest.raises(ConfigError, match="line 4: key 'lr' given twice"):
        load_config(p)


def test_the_packaged_file_has_no_key_twice():
    load_config(REPO / "ra.yaml")  # read with the same duplicate check


def test_bare_on_off_is_read_as_the_word(tmp_path):
    # YAML 1.1 reads `compile: off` as false; the setting's choices are words
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  compile: off\n")
    assert load_config(p).train.compile == "off"
    p.write_text("train:\n  compile: on\n")
    assert load_config(p).train.compile == "on"
    p.write_text("gates:\n  ablation: off\n")  # not a setting with on/off: still refused
    with pytest.raises(ConfigError, match="gates.ablation"):
        load_config(p)


# ---- validation -----------------------------------------------------------


def _edit(data: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value
    return data


BAD_VALUES = [
    # (dotted key, value, key named in the message, words of the reason)
    ("bogus", 1, "bogus", "unknown key"),
    ("train.bogus", 1, "train.bogus", "unknown key"),
    ("models.tiny.n_lyer", 2, "models.tiny.n_lyer", "unknown key"),
    ("train.batch_size", "32", "train.batch_size", "must be an integer"),
    ("train.batch_size", True, "train.batch_size", "must be an integer"),
    ("models.tiny.n_head", 4.5, "models.tiny.n_head", "must be an integer"),
    ("model.bias", "yes please", "model.bias", "must be true or false"),
    ("train.lr", -0.001, "train.lr", "must be > 0"),
    ("train.lr", "fast", "train.lr", "must be a number"),
    ("verdict.threshold", 1.0, "verdict.threshold", "must be < 1"),
    ("verdict.threshold", 1.5, "verdict.threshold", "must be < 1"),
    ("train.compile", "maybe", "train.compile", "must be one of"),
    ("model.preset", "huge", "model.preset", "unknown preset"),
    ("models.tiny.n_embd", 130, "models.tiny", "not divisible by n_head"),
    ("model.ra_rank", 0, "model.ra_rank", "must be >= 1"),
    ("bench.attn", ["baseline", "flash9"], "bench.attn[1]", "unknown attention"),
    ("bench.modes", ["eager", "warp"], "bench.modes[1]", "unknown mode"),
    ("bench.shape", "huge", "bench.shape", "unknown shape"),
    ("train", 5, "train", "must be a mapping"),
    ("ray.nodes_per_run", 0, "ray.nodes_per_run", "must be >= 1"),
    ("ray.gpus_per_node", 0, "ray.gpus_per_node", "must be >= 1"),
    ("ray.nodes_per_run", 1.5, "ray.nodes_per_run", "must be an integer"),
    ("train.lr", 1e308, "train.lr", "must be a float32 number, at most 3.4028234663852886e+38"),
    ("model.w_rec_init", -1e39, "model.w_rec_init", "at most 3.4028234663852886e+38"),
    ("experiment.calibration_max_s", 1e39, "experiment.calibration_max_s", "float32"),
    ("bench.shapes.tiny.seq", 2**31, "bench.shapes.tiny.seq", "must be <= 2147483647"),
]


@pytest.mark.parametrize(
    "dotted,value,key,reason", BAD_VALUES, ids=[f"{d}={v!r}" for d, v, _, _ in BAD_VALUES]
)
def test_invalid_value_names_file_key_and_reason(tmp_path, dotted, value, key, reason):
    path = _write(tmp_path / "bad.yaml", _edit(_packaged_data(), dotted, value))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    msg = str(err)
    assert isinstance(err, BadInput)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}: "), msg
    assert f": {key}: " in msg, msg
    assert reason in msg, msg
    assert err.key == key


def test_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    text = (REPO / "ra.yaml").read_text().replace("  lr: 6.0e-4", "  lr: [6.0e-4")
    assert text != (REPO / "ra.yaml").read_text()
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    assert "YAML syntax error" in msg and "line " in msg


def test_a_bad_value_is_shown_short_however_large(tmp_path):
    """A long string, a long key or a nest of YAML aliases (each level eight references to
    the one below) is one short line, printed at once: the value's repr is clipped."""
    nest = "&a0 [x, x, x, x, x, x, x, x]"
    for i in range(1, 10):
        nest = f"&a{i} [{nest}" + f", *a{i - 1}" * 7 + "]"
    cases = {
        "nest.yaml": f"train:\n  lr: {nest}\n",
        "attn.yaml": f"bench:\n  attn: {nest}\n",
        "long.yaml": "train:\n  lr: '" + "x" * 1_000_000 + "'\n",
        "key.yaml": "train:\n  " + "k" * 100_000 + ": 1\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(tmp_path / name)
        msg = str(info.value)
        assert "\n" not in msg and len(msg) < len(str(tmp_path)) + 300, (name, msg[:400])


def test_tab_indentation_is_a_syntax_error(tmp_path):
    path = tmp_path / "tabs.yaml"
    path.write_text("train:\n\tlr: 0.1\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


# ---- overrides ------------------------------------------------------------


def test_apply_overrides_sets_values():
    cfg = load_config(packaged_config_path())
    out = apply_overrides(cfg, ["model.ra_rank=8", "train.gate_lr_mult=10"])
    assert out.model.ra_rank == 8
    assert out.train.gate_lr_mult == 10.0 and isinstance(out.train.gate_lr_mult, float)
    # the input is left as it was
    assert cfg.model.ra_rank == 4 and cfg.train.gate_lr_mult == 1.0
    # a preset field through the model section
    assert apply_overrides(cfg, ["model.n_layer=3"]).model_fields()["n_layer"] == 3
    assert apply_overrides(cfg, []) is cfg
    # the largest float32 is a float setting's limit, and kept as it is
    edge = apply_overrides(cfg, ["model.w_rec_init=-3.4028234663852886e38"])
    assert edge.model.w_rec_init == -3.4028234663852886e38


@pytest.mark.parametrize(
    "item,reason",
    [
        ("model.ra_rank", "expected KEY=VALUE"),
        ("model.ra_rank=abc", "must be an integer"),
        ("model.ra_rank=0", "must be >= 1"),
        ("model.nope=1", "unknown key"),
        ("verdict.threshold=0.5", "SECTION.FIELD"),
        ("ra_rank=8", "SECTION.FIELD"),
        ("train.lr=-1", "must be > 0"),
        ("train.gate_lr_mult=0", "must be > 0"),
        ("model.preset=huge", "unknown preset"),
        ("train.lr=1e308", "train.lr: must be a float32 number"),
        ("train.gate_lr_mult=1e308", "at most 3.4028234663852886e+38 in magnitude"),
        ("model.w_std_init=1e308", "model.w_std_init: must be a float32 number"),
        ("model.w_rec_init=-1e308", "model.w_rec_init: must be a float32 number"),
        ("train.lr=1e38", "train.lr: 1e+38 (x gate_lr_mult 1) makes the optimizer's first step"),
    ],
)
def test_apply_overrides_rejects_bad_items(item, reason):
    cfg = load_config(packaged_config_path())
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, [item])
    msg = str(info.value)
    assert reason in msg and "\n" not in msg
    assert msg.startswith("--set")


def test_a_rank_as_wide_as_the_head_is_refused_for_the_ra_variants_alone():
    """model.ra_rank splits the heads of ra_v5 and ra_v5_untied only: a config whose head
    dim it fills loads, trains the other variants and is refused for those two, before
    any data is read."""
    from racli.training.spec import spec_from_config

    cfg = apply_overrides(load_config(packaged_config_path()), ["model.ra_rank=32"])  # tiny: D 32
    for attn in ("baseline", "ra_beta", "sdpa_gate"):
        assert spec_from_config(cfg, attn=attn, steps=1, device="cpu").model["ra_rank"] == 32
    for attn in ("ra_v5", "ra_v5_untied"):
        with pytest.raises(BadInput) as info:
            spec_from_config(cfg, attn=attn, steps=1, device="cpu")
        assert str(info.value) == (
            f"model.ra_rank: must be between 1 and head_dim-1 = 31 for {attn} "
            f"(head_dim = n_embd / n_head = 32), got 32"
        )


def test_a_learning_rate_whose_first_step_overflows_is_refused():
    cfg = load_config(packaged_config_path())
    with pytest.raises(ConfigError, match="overflow float32"):
        apply_overrides(cfg, ["train.lr=1e30", "train.gate_lr_mult=1e10"])  # 1e40 / 0.1
    ok = apply_overrides(cfg, ["train.lr=1e30", "train.gate_lr_mult=1e7"])  # 1e38 fits
    assert ok.train.lr == 1e30


# ---- the database location -------------------------------------------------


def test_resolve_db_precedence(monkeypatch):
    cfg = load_config(packaged_config_path()).model_copy(update={"db": "from_file.db"})
    monkeypatch.delenv("RA_DB", raising=False)
    assert resolve_db(None, cfg) == "from_file.db"
    monkeypatch.setenv("RA_DB", "from_env.db")
    assert resolve_db(None, cfg) == "from_env.db"
    assert resolve_db("from_cli.db", cfg) == "from_cli.db"
    monkeypatch.delenv("RA_DB")
    assert resolve_db("from_cli.db", cfg) == "from_cli.db"


def test_older_file_with_the_retired_speed_tolerance_still_loads(tmp_path):
    data = _packaged_data()
    data["verdict"]["speed_tolerance"] = 0.10  # replaced by the speed check of ra compare
    data["bench"]["noise_ratio"] = 2.0
    cfg = load_config(str(_write(tmp_path / "old.yaml", data)))
    assert cfg.verdict.threshold == pytest.approx(0.01) and cfg.bench.noise_ratio == 2.0
    data["bench"]["noise_ratio"] = 1.0
    with pytest.raises(ConfigError, match="bench.noise_ratio: must be > 1.0"):
        load_config(str(_write(tmp_path / "bad.yaml", data)))


# ---- a partial file overlays the packaged defaults ----------------------------


def test_partial_file_with_one_key_overlays_the_defaults(tmp_path):
    p = tmp_path / "lr.yaml"
    p.write_text("train: {lr: 1e-3}\n")  # YAML 1.1 reads 1e-3 as a string; it is a number here
    cfg = load_config(p)
    packaged = load_config(packaged_config_path())
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.source == str(p)
    assert cfg.models == packaged.models and cfg.model == packaged.model
    assert cfg.bench == packaged.bench and cfg.verdict == packaged.verdict
    assert cfg.train.batch_size == packaged.train.batch_size


def test_partial_file_merges_mappings_and_replaces_lists(tmp_path):
    p = _write(
        tmp_path / "mine.yaml",
        {
            "models": {
                "tiny": {"n_layer": 3},
                "mine": {"n_layer": 1, "n_head": 2, "n_embd": 64, "block_size": 32},
            },
            "bench": {"attn": ["ra_v5"]},
        },
    )
    cfg = load_config(p)
    assert set(cfg.models) == {"tiny", "small", "gpt2", "mine"}
    assert (cfg.models["tiny"].n_layer, cfg.models["tiny"].n_embd) == (3, 128)
    assert cfg.bench.attn == ["ra_v5"] and set(cfg.bench.shapes) == {"tiny", "gpt2"}


def test_a_preset_of_ones_own_gives_every_key(tmp_path):
    # a preset the packaged file lacks has no defaults to take its other keys from
    p = _write(tmp_path / "mine.yaml", {"models": {"mine": {"n_layer": 1, "n_head": 2}}})
    with pytest.raises(
        ConfigError, match=f"^{re.escape(str(p))}: models\\.mine\\.n_embd: missing key$"
    ):
        load_config(p)


def test_partial_local_ra_yaml_overlays_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ra.yaml").write_text("db: here.db\nverdict: {threshold: 0.02}\n")
    cfg = load_config()
    packaged = load_config(packaged_config_path())
    assert (cfg.db, cfg.verdict.threshold) == ("here.db", 0.02)
    assert cfg.model == packaged.model and cfg.train == packaged.train


@pytest.mark.parametrize(
    "text,key,reason",
    [
        ("train: {lr: 1e-3, lerning_rate: 2}\n", "train.lerning_rate", "unknown key"),
        ("bogus: 1\n", "bogus", "unknown key"),
        ("train: {lr: -1}\n", "train.lr", "must be > 0"),
        ("train: {lr: 1e-3x}\n", "train.lr", "must be a number"),
        ("model: {preset: huge}\n", "model.preset", "unknown preset"),
        ("models: {tiny: {n_embd: 130}}\n", "models.tiny", "not divisible by n_head"),
    ],
)
def test_partial_file_errors_name_the_file_key_and_reason(tmp_path, text, key, reason):
    p = tmp_path / "partial.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}: {key}: ") and reason in msg and "\n" not in msg, msg


def test_partial_config_file_through_the_cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from racli.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RA_DB", raising=False)
    (tmp_path / "p.yaml").write_text("db: partial.db\ntrain: {lr: 1e-3}\n")
    res = CliRunner().invoke(app, ["--config", "p.yaml", "db", "upgrade"])
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "partial.db").exists()
    (tmp_path / "u.yaml").write_text("train: {lr: 1e-3, bogus: 1}\n")
    res = CliRunner().invoke(app, ["--config", "u.yaml", "runs", "--db", "partial.db"])
    assert res.exit_code == 2
    assert res.stderr.startswith("ra: error: u.yaml: train.bogus: unknown key")
