"""`ra runs`: list runs, show one, export them (CSV or JSON)."""
from __future__ import annotations

import csv
import io
import json as jsonlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from racli.commands import common
from racli.errors import BadInput
from racli.runid import check_run_id
from racli.tables import Column, print_table
from racli.textsafe import one_line, visible

app = typer.Typer(help="List recorded runs (newest first); show one; export them.",
                  invoke_without_command=True)

KINDS = ("bench", "train")
TAG_WIDTH = 24  # a tag longer than this is cut in the table (whole in show and --json)
STATUSES = ("running", "finished", "failed", "interrupted", "diverged", "crashed")

KindOpt = Annotated[Optional[str], typer.Option("--kind", help="bench or train.", show_default=False)]
AttnOpt = Annotated[Optional[str], typer.Option("--attn", help="Attention variant (train runs).",
                                                show_default=False)]
StatusOpt = Annotated[Optional[str], typer.Option(
    "--status", help="running, finished, failed, interrupted, diverged or crashed.", show_default=False)]
TagOpt = Annotated[Optional[str], typer.Option("--tag", help="Only runs with this tag.", show_default=False)]

EXPORT_COLUMNS = ("id", "kind", "attn", "status", "seed", "tag", "config_hash", "git_commit", "env_id",
                  "gpu_name", "torch", "started_at", "finished_at", "iterations", "tokens", "epochs",
                  "train_seconds", "val_loss", "tokens_per_s", "error")


def _check_filters(kind, status) -> None:
    if kind and kind not in KINDS:
        raise BadInput(f"unknown kind '{kind}' (valid: {', '.join(KINDS)})")
    if status and status not in STATUSES:
        raise BadInput(f"unknown status '{status}' (valid: {', '.join(STATUSES)})")


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"
    return str(v)


# (column, value of a row dict); the key columns come first and are never left out
RUN_TABLE_COLUMNS = (
    (Column("id", "right", None), lambda r: str(r["id"])),
    (Column("kind"), lambda r: r["kind"]),
    (Column("attn"), lambda r: r["attn"] or "-"),
    (Column("status"), lambda r: (r["status"], STATUS_COLOURS.get(r["status"], ""))),
    (Column("seed", "right"), lambda r: _fmt(r["seed"])),
    (Column("tag", width=TAG_WIDTH), lambda r: r["tag"] or "-"),
    (Column("val_loss", "right"), lambda r: _fmt(r["val_loss"])),
    (Column("tok/s", "right"), lambda r: _fmt(r["tokens_per_s"])),
    (Column("iters", "right"), lambda r: _fmt(r["iterations"])),
    (Column("started"), lambda r: (r["started_at"] or "")[:16]),
    (Column("epochs", "right"), lambda r: _fmt(r["epochs"], 3)),
)
KEY_COLUMNS = 4  # id, kind, attn, status
STATUS_COLOURS = {"finished": "green", "failed": "red", "crashed": "red", "diverged": "magenta",
                  "interrupted": "yellow", "running": "cyan"}


def run_table_rows(rows: list[dict]) -> list[list]:
    return [[get(r) for _, get in RUN_TABLE_COLUMNS] for r in rows]


def print_runs_table(rows: list[dict]) -> None:
    """The runs as a table: Rich on a terminal (trailing columns left out whole, with a
    note, when it is too narrow), tab-separated with every column in a pipe."""
    columns = [c for c, _ in RUN_TABLE_COLUMNS]
    print_table(columns, run_table_rows(rows), title=f"{len(rows)} run(s), newest first",
                keep_min=KEY_COLUMNS)


def list_run_dicts(store, **filters) -> list[dict]:
    from racli.store.queries import list_runs, run_dict

    return [run_dict(r) for r in list_runs(store, **filters)]


@app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    kind: KindOpt = None, attn: AttnOpt = None, status: StatusOpt = None, tag: TagOpt = None,
    limit: Annotated[int, typer.Option("--limit", help="Show at most N runs (0: all).", min=0)] = 50,
    db: common.DbOpt = None, config: common.ConfigOpt = None, json: common.JsonOpt = False,
) -> None:
    """List runs, newest first (a `running` run with a stale heartbeat shows as crashed)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"db": db, "config": config}
        return
    _check_filters(kind, status)
    cfg = common.config(config)
    store = common.open_db(db, cfg, create=False)
    rows = list_run_dicts(store, kind=kind, attn=attn, status=status, tag=tag, limit=limit or None)
    if json:
        common.print_json(rows)
    elif not rows:
        typer.echo("no runs recorded" + (" match the filters" if any((kind, attn, status, tag)) else ""))
    else:
        print_runs_table(rows)


def _inherit(ctx: typer.Context, db, config):
    parent = ctx.obj or {}
    return db or parent.get("db"), config or parent.get("config")


def show_text(d: dict) -> str:
    lines = [f"Run {d['id']}: {one_line(d['kind'])}" + (f" {one_line(d['attn'])}" if d["attn"] else "")
             + f" [{one_line(d['status'])}]"]
    for key in ("seed", "tag", "config_hash", "git_commit", "started_at", "finished_at", "heartbeat_at",
                "iterations", "tokens", "epochs", "train_seconds", "val_loss", "tokens_per_s", "error"):
        if d.get(key) is not None:
            lines.append(f"  {key:<14} {_fmt(d[key], 6) if not isinstance(d[key], str) else one_line(d[key])}")
    env = d.get("environment")
    if env:
        lines.append("Environment:")
        for key in ("hostname", "os", "python", "torch", "cuda", "cudnn", "gpu_name", "gpu_count",
                    "driver", "cpu", "cpu_count", "fingerprint"):
            if env.get(key) is not None:
                lines.append(f"  {key:<14} {one_line(env[key])}")
    if d["metrics"]:
        lines.append("Metrics (count, last step, last value):")
        for name, m in sorted(d["metrics"].items()):
            lines.append(f"  {name:<14} {m['count']:>6}  step {m['last_step']:<7} {_fmt(m['last'], 6)}")
    if d["gate_snapshots"]:
        lines.append(f"Gate snapshots: {d['gate_snapshots']} (last step {d['gate_last_step']}; see `ra gates --run {d['id']}`)")
    if d["timings"]:
        lines.append("Timings:")
        for t in d["timings"]:
            ms = f"{t['median_ms']:.4f} ms" if t["median_ms"] is not None else t["status"]
            extra = f" ({one_line(t['reason'])})" if t["reason"] else ""
            lines.append(f"  {t['attn']:<13} {t['mode']:<11} {t['phase']:<8} {t['backend'] or '-':<9} {ms}{extra}")
    lines.append("Config:")
    lines.extend("  " + line for line in jsonlib.dumps(d["config"], indent=2, default=str).splitlines())
    return "\n".join(lines)


@app.command("show")
def show(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(help="Run id.")],
    db: common.DbOpt = None, config: common.ConfigOpt = None, json: common.JsonOpt = False,
) -> None:
    """Everything about one run: figures, environment, metrics, timings, config."""
    from racli.store.queries import run_details

    check_run_id(run_id)
    db, config = _inherit(ctx, db, config)
    cfg = common.config(config)
    store = common.open_db(db, cfg, create=False)
    d = run_details(store, run_id)
    if json:
        common.print_json(d)
    else:
        typer.echo(visible(show_text(d)))


def export_rows(store, **filters) -> list[dict]:
    """Runs with their final figures and environment class, for CSV/JSON export."""
    from sqlalchemy import select

    from racli.store.models import Environment
    from racli.store.queries import list_runs, run_dict

    runs = list_runs(store, **filters)
    with store.session() as s:
        envs = {e.id: e for e in s.scalars(select(Environment))}
    rows = []
    for r in runs:
        d = run_dict(r, with_config=True)
        env = envs.get(r.env_id)
        d["gpu_name"] = env.gpu_name if env else None
        d["torch"] = env.torch if env else None
        rows.append(d)
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS) + ["config"], extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "config": jsonlib.dumps(r.get("config"), sort_keys=True)})
    return buf.getvalue()


@app.command("export")
def export(
    ctx: typer.Context,
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to FILE (default: stdout).",
                                                   show_default=False)] = None,
    kind: KindOpt = None, attn: AttnOpt = None, status: StatusOpt = None, tag: TagOpt = None,
    db: common.DbOpt = None, config: common.ConfigOpt = None,
) -> None:
    """Export runs with their final figures as CSV or JSON."""
    if fmt not in ("csv", "json"):
        raise BadInput(f"unknown format '{fmt}' (valid: csv, json)")
    _check_filters(kind, status)
    if output is not None and not output.parent.resolve().is_dir():
        raise BadInput(f"cannot write {output}: directory {output.parent} does not exist")
    if output is not None and output.is_dir():
        raise BadInput(f"cannot write {output}: it is a directory (give a file name, e.g. "
                       f"{output / ('runs.' + fmt)})")
    db, config = _inherit(ctx, db, config)
    cfg = common.config(config)
    store = common.open_db(db, cfg, create=False)
    rows = export_rows(store, kind=kind, attn=attn, status=status, tag=tag)
    text = to_csv(rows) if fmt == "csv" else jsonlib.dumps(rows, indent=2, default=str) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {len(rows)} run(s) to {output}", err=True)
