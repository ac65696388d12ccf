"""The store's shared pieces: column lists from the models, id chunks, the JSON writer,
first lines of errors, the recorder and progress-reporter protocols, and that
`ra --help` loads no database code."""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from racli.errors import first_line
from racli.store import columns
from racli.store.chunks import in_chunks
from racli.store.models import Environment, Run, Timing
from racli.store.recorder import NullRecorder, Recorder, RunRecorder
from racli.text import jsonout
from racli.training.progress import ConsoleReporter, NullReporter, ProgressReporter

ROOT = Path(__file__).resolve().parent.parent


def test_column_groups_follow_the_models():
    run = [c.name for c in Run.__table__.columns]
    assert columns.RUN_FIGURES == (
        "iterations",
        "tokens",
        "epochs",
        "train_seconds",
        "val_loss",
        "tokens_per_s",
    )
    assert columns.RUN_IDENTITY == ("uuid", "excluded", "exclude_reason", "origin")
    # every run column is in exactly one of: the listed fields, config, identity
    assert sorted([*columns.RUN_FIELDS, "config", *columns.RUN_IDENTITY]) == sorted(run)
    assert list(columns.RUN_FIELDS) == [c for c in run if c in columns.RUN_FIELDS]
    assert list(columns.ENV_FIELDS) == [c.name for c in Environment.__table__.columns]
    assert set(columns.ENV_SHOWN) == set(columns.ENV_FIELDS) - {"id", "created_at"}
    assert columns.ENV_SHOWN[-1] == "fingerprint"
    timing = [c.name for c in Timing.__table__.columns if c.name not in ("id", "run_id")]
    assert list(columns.TIMING_FIELDS) == timing
    assert sorted(columns.TIMING_SHOWN) == sorted(timing)
    shown = columns.TIMING_SHOWN
    assert shown[shown.index("device") + 1] == "backend"
    assert shown[shown.index("tflops") + 1] == "compile_s"


def test_curated_orders_name_known_columns_only():
    run = {c.name for c in Run.__table__.columns}
    extra = {"gpu_name", "torch", "ra_version", "ra_commit"}
    assert set(columns.EXPORT_COLUMNS) <= run | extra
    assert set(columns.SHOW_FIELDS) <= run
    assert set(columns.DIFF_FIELDS) <= run
    for order in (columns.EXPORT_COLUMNS, columns.SHOW_FIELDS, columns.DIFF_FIELDS):
        assert len(set(order)) == len(order)


def test_in_chunks():
    assert list(in_chunks([])) == []
    assert list(in_chunks(range(5), size=2)) == [[0, 1], [2, 3], [4]]
    ids = list(range(2000))
    chunks = list(in_chunks(ids))
    assert [len(c) for c in chunks] == [900, 900, 200]
    assert sum(chunks, []) == ids


def test_json_writer_turns_non_finite_numbers_into_null():
    data = {
        "a": math.nan,
        "b": [1.5, math.inf, (-math.inf, 2)],
        "c": {"d": np.float32(0.5), "e": np.int64(3), "f": np.float64("nan"), "g": np.bool_(1)},
        "when": __import__("datetime").datetime(2025, 1, 2, 3, 4, 5),
    }
    text = jsonout.dumps(data)
    back = json.loads(text)  # valid JSON: no NaN / Infinity tokens
    assert back == {
        "a": None,
        "b": [1.5, None, [None, 2]],
        "c": {"d": 0.5, "e": 3, "f": None, "g": True},
        "when": "2025-01-02 03:04:05",
    }
    assert "\n" in text and "\n" not in jsonout.dumps(data, indent=None)
    # finite data is written exactly as json.dumps writes it
    plain = {"x": [1, 2.25, "s", None, True], "y": {"z": 1e-7}}
    assert jsonout.dumps(plain) == json.dumps(plain, indent=2)


def test_first_line():
    assert first_line("\n  \n  first line  \nsecond") == "first line"
    assert first_line(ValueError("boom\nmore")) == "boom"
    assert first_line("") == "" and first_line(ValueError()) == ""
    assert first_line("x" * 10, limit=8) == "xxxxx..."
    assert first_line("x" * 8, limit=8) == "x" * 8


def _public(cls) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def test_recorders_implement_the_protocol_explicitly():
    wanted = _public(Recorder)
    assert wanted >= {"metric", "metrics", "gates", "timing", "flush", "end", "finish", "fail"}
    for cls in (RunRecorder, NullRecorder):
        assert wanted <= _public(cls) | {"run_id", "write_seconds"}, cls
        assert "__getattr__" not in vars(cls)
    null = NullRecorder()
    assert null.run_id is None and null.write_seconds == 0.0
    null.metric(1, "x", 1.0)
    null.end("finished", error=None, val_loss=1.0)
    with pytest.raises(AttributeError):
        null.no_such_method  # noqa: B018 - a typo is an error, not a silent no-op


def test_reporters_implement_the_protocol():
    wanted = {"start", "update", "note", "phase", "close"}
    assert _public(ProgressReporter) == wanted
    for cls in (NullReporter, ConsoleReporter):
        for name in wanted:
            theirs = inspect.signature(getattr(cls, name)).parameters
            ours = inspect.signature(getattr(ProgressReporter, name)).parameters
            assert list(theirs) == list(ours), (cls, name)


def test_help_loads_no_database_code_and_no_torch():
    code = (
        "import sys\n"
        "from racli.cli import app\n"
        "heavy = [m for m in ('sqlalchemy', 'torch', 'numpy', 'alembic') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert out.stdout.strip() == ""


def test_one_timing_row_type_records_the_table_columns_in_order():
    from racli.bench.ranking import TimingRow

    row = TimingRow("ra_v5", "eager", "fwd", 1.0, 0.9, 1.1, "ok", batch=2, device="cpu")
    assert list(row.record()) == list(columns.TIMING_FIELDS)
    assert row.record()["batch"] == 2 and row.record()["median_ms"] == 1.0
    # the recorder accepts exactly these fields
    from racli.store.recorder import TIMING_FIELDS

    assert TIMING_FIELDS == columns.TIMING_FIELDS
