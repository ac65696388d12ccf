"""The text of `ra runs`: the runs table and `ra runs show`'s page (no database).

Which run and environment fields the page lists is the store's choice
(racli.store.columns.SHOW_FIELDS and ENV_SHOWN, derived from the ORM models): the
command passes them in, so this module never imports the store."""

from __future__ import annotations

import json
from collections.abc import Sequence

from racli.provenance import describe
from racli.text.tables import Column, print_table
from racli.text.terminal import one_line

TAG_WIDTH = 24  # a tag longer than this is cut in the table (whole in show and --json)
KEY_COLUMNS = 4  # id, kind, attn, status: never left out of the table
STATUS_COLOURS = {
    "finished": "green",
    "failed": "red",
    "crashed": "red",
    "diverged": "magenta",
    "interrupted": "yellow",
    "running": "cyan",
}


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"
    return str(v)


def _status(r: dict) -> tuple[str, str]:
    return (
        r["status"] + (", excluded" if r.get("excluded") else ""),
        STATUS_COLOURS.get(r["status"], ""),
    )


def _field(name: str):
    return lambda r: r[name]


# (column, its cell on a terminal, its value in TSV: numbers whole, as stored); the key
# columns come first
RUN_TABLE_COLUMNS = (
    (Column("id", "right", None), lambda r: str(r["id"]), _field("id")),
    (Column("kind"), lambda r: r["kind"], _field("kind")),
    (Column("attn"), lambda r: r["attn"] or "-", lambda r: r["attn"] or "-"),
    (Column("status"), _status, lambda r: _status(r)[0]),
    (Column("seed", "right"), lambda r: _fmt(r["seed"]), _field("seed")),
    (Column("tag", width=TAG_WIDTH), lambda r: r["tag"] or "-", lambda r: r["tag"] or "-"),
    (Column("val_loss", "right"), lambda r: _fmt(r["val_loss"]), _field("val_loss")),
    (Column("tok/s", "right"), lambda r: _fmt(r["tokens_per_s"]), _field("tokens_per_s")),
    (Column("iters", "right"), lambda r: _fmt(r["iterations"]), _field("iterations")),
    (Column("started"), lambda r: (r["started_at"] or "")[:16], _field("started_at")),
    (Column("epochs", "right"), lambda r: _fmt(r["epochs"], 3), _field("epochs")),
)


def run_table_rows(rows: list[dict]) -> list[list]:
    return [[cell(r) for _, cell, _ in RUN_TABLE_COLUMNS] for r in rows]


def run_table_raw(rows: list[dict]) -> list[list]:
    """The rows as TSV prints them: numbers as stored (no separators, every digit)."""
    return [[value(r) for _, _, value in RUN_TABLE_COLUMNS] for r in rows]


def _order_text(sort: str | None) -> str:
    if not sort or sort.strip() in ("-started", "-started_at"):
        return "newest first"
    field = sort.strip()
    return f"by {field.lstrip('-+')}" + (", descending" if field.startswith("-") else "")


def print_runs_table(rows: list[dict], *, sort: str | None = None, tsv: bool = False) -> None:
    """The runs as a table: Rich on a terminal (trailing columns left out whole, with a
    note, when it is too narrow), tab-separated with every column and raw numbers in a
    pipe or with ``tsv``."""
    print_table(
        [c for c, _, _ in RUN_TABLE_COLUMNS],
        run_table_rows(rows),
        title=f"{len(rows)} run(s), {_order_text(sort)}",
        keep_min=KEY_COLUMNS,
        raw_rows=run_table_raw(rows),
        force_tsv=tsv,
    )


def show_text(d: dict, *, fields: Sequence[str], env_fields: Sequence[str]) -> str:
    """`ra runs show`'s page of a run's details (racli.store.run_details.show): `fields`
    of the run listed under its title, `env_fields` of its environment, in those orders."""
    title = (
        f"Run {d['id']}: {one_line(d['kind'])}"
        + (f" {one_line(d['attn'])}" if d["attn"] else "")
        + f" [{one_line(d['status'])}]"
    )
    lines = [title]
    if d.get("excluded"):
        lines.append(
            f"  EXCLUDED from verdicts: {one_line(d.get('exclude_reason') or 'no reason given')}"
        )
    for key in fields:
        v = d.get(key)
        if v is not None:
            lines.append(f"  {key:<14} {one_line(v) if isinstance(v, str) else _fmt(v, 6)}")
    lines += _data_lines(d)
    lines += _code_lines(d)
    lines += _environment_lines(d.get("environment"), env_fields)
    if d["metrics"]:
        lines.append("Metrics (count, last step, last value):")
        for name, m in sorted(d["metrics"].items()):
            lines.append(
                f"  {name:<14} {m['count']:>6}  step {m['last_step']:<7} {_fmt(m['last'], 6)}"
            )
    lines += _clock_lines(d.get("clocks"))
    if d["gate_snapshots"]:
        lines.append(
            f"Gate snapshots: {d['gate_snapshots']} (last step {d['gate_last_step']}; "
            f"see `ra gates --run {d['id']}`)"
        )
    lines += _timing_lines(d["timings"])
    lines.append("Config:")
    lines.extend(
        "  " + line for line in json.dumps(d["config"], indent=2, default=str).splitlines()
    )
    return "\n".join(lines)


def _data_lines(d: dict) -> list[str]:
    data = (d.get("config") or {}).get("data")
    if not (isinstance(data, dict) and data.get("name")):
        return []
    n = {
        k: f"{data[k]:,}" if isinstance(data.get(k), int) else "-"
        for k in ("train_tokens", "val_tokens", "vocab_size")
    }
    return [
        f"  {'data':<14} {one_line(data['name'])}: train {n['train_tokens']}, val "
        f"{n['val_tokens']} tokens, vocabulary {n['vocab_size']}, tokenizer "
        f"{data.get('tokenizer') or '-'}, hash {data.get('content_hash') or '-'}"
    ]


def _code_lines(d: dict) -> list[str]:
    lines = ["Code:", f"  {'ra':<14} {describe(d.get('code'))}"]
    if (d.get("code") or {}).get("commit"):
        lines.append(f"  {'ra commit':<14} {d['code']['commit']}")
    lines.append(f"  {'git_commit':<14} {d.get('git_commit') or '-'} (working directory)")
    return lines


def _environment_lines(env: dict | None, fields: Sequence[str]) -> list[str]:
    if not env:
        return []
    return ["Environment:"] + [
        f"  {key:<14} {one_line(env[key])}" for key in fields if env.get(key) is not None
    ]


def _clock_lines(c: dict | None) -> list[str]:
    if not c:
        return []
    figures = (
        f"{label} {c[k]:.0f}{unit}"
        for k, label, unit in (
            ("sm_clock_mhz", "SM clock", " MHz"),
            ("power_w", "power", " W"),
            ("temp_c", "temperature", " C"),
        )
        if k in c
    )
    return ["GPU (median over log points): " + ", ".join(figures)]


def _timing_lines(timings: list[dict]) -> list[str]:
    if not timings:
        return []
    lines = ["Timings:"]
    for t in timings:
        ms = f"{t['median_ms']:.4f} ms" if t["median_ms"] is not None else t["status"]
        extra = f" ({one_line(t['reason'])})" if t["reason"] else ""
        lines.append(
            f"  {t['attn']:<13} {t['mode']:<11} {t['phase']:<8} {t['backend'] or '-':<9} "
            f"{ms}{extra}"
        )
    return lines
