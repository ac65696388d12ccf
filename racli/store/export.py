"""`ra runs export`: runs with their final figures as CSV or JSON, or their curves
(one row per metric value) as CSV, JSON Lines or JSON."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TextIO

from racli.errors import BadInput
from racli.store import queries
from racli.store.columns import EXPORT_COLUMNS
from racli.store.manage import METRIC_EXPORT_COLUMNS, metric_rows
from racli.text import jsonout
from racli.text.outputs import check_output_file

RUN_FORMATS = ("csv", "json")
METRIC_FORMATS = ("csv", "jsonl", "json")  # json is taken for jsonl (JSON Lines)


def check_request(fmt: str, *, metrics: bool, names: str | None) -> None:
    """BadInput for a format or a --name that does not go with what is exported."""
    formats = METRIC_FORMATS if metrics else RUN_FORMATS
    if fmt not in formats:
        raise BadInput(
            f"unknown format '{fmt}' (valid{' with --metrics' if metrics else ''}: "
            f"{', '.join(formats[:2])})"
        )
    if names is not None and not metrics:
        raise BadInput("--name selects metric names: it goes with --metrics")


def check_output(output: Path | None, fmt: str) -> None:
    """BadInput for an output file that cannot be written (racli.text.outputs' rules)."""
    if output is not None:
        check_output_file(output, "output", example=f"runs.{fmt}")


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS) + ["config"], extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "config": json.dumps(r.get("config"), sort_keys=True)})
    return buf.getvalue()


def runs_text(store, fmt: str, **filters) -> tuple[str, int]:
    """The runs matching `filters` as CSV or JSON text, and how many there are."""
    rows = queries.export_rows(store, **filters)
    return (to_csv(rows) if fmt == "csv" else jsonout.dumps(rows) + "\n"), len(rows)


def write_metrics(
    store, out: TextIO, fmt: str, *, names: list[str] | None = None, **filters
) -> int:
    """Write the long-format curves of the runs matching `filters` to the text stream `out`
    as CSV or JSON Lines; returns the number of rows written."""
    ids = [r.id for r in queries.list_runs(store, **filters)]
    n = 0
    if fmt == "csv":
        w = csv.DictWriter(out, fieldnames=list(METRIC_EXPORT_COLUMNS), lineterminator="\n")
        w.writeheader()
        for row in metric_rows(store, ids, names):
            w.writerow(row)
            n += 1
    else:
        for row in metric_rows(store, ids, names):
            out.write(jsonout.dumps(row, indent=None) + "\n")
            n += 1
    return n
