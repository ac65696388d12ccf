"""`ra runs`: list, show, diff, tag, exclude / include, delete and export runs.

Thin: the changes are made by :mod:`racli.store.manage`, the side-by-side view
is :mod:`racli.store.run_diff`. No torch.
"""

from __future__ import annotations

import csv
import io
import json as jsonlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from racli.commands import common
from racli.errors import BadInput
from racli.names import check_run_id
from racli.store.run_diff import ENV_KEYS
from racli.text.tables import Column, print_table
from racli.text.terminal import one_line, visible

app = typer.Typer(
    help="List recorded runs (newest first); show, diff, tag, exclude, include, delete, export.",
    invoke_without_command=True,
)

KINDS = ("bench", "train", "calibration")
TAG_WIDTH = 24  # a tag longer than this is cut in the table (whole in show and --json)
STATUSES = ("running", "finished", "failed", "interrupted", "diverged", "crashed")

KindOpt = Annotated[
    Optional[str], typer.Option("--kind", help="bench, train or calibration.", show_default=False)
]
AttnOpt = Annotated[
    Optional[str],
    typer.Option("--attn", help="Attention variant (train runs).", show_default=False),
]
StatusOpt = Annotated[
    Optional[str],
    typer.Option(
        "--status",
        help="running, finished, failed, interrupted, diverged or crashed.",
        show_default=False,
    ),
]
TagOpt = Annotated[
    Optional[str], typer.Option("--tag", help="Only runs with this tag.", show_default=False)
]

EXPORT_COLUMNS = (
    "id",
    "kind",
    "attn",
    "status",
    "seed",
    "tag",
    "config_hash",
    "git_commit",
    "env_id",
    "gpu_name",
    "torch",
    "started_at",
    "finished_at",
    "iterations",
    "tokens",
    "epochs",
    "train_seconds",
    "val_loss",
    "tokens_per_s",
    "error",
    "uuid",
    "excluded",
    "exclude_reason",
    "origin",
    "ra_version",
    "ra_commit",
)
IDENTITY_COLUMNS = ("uuid", "excluded", "exclude_reason", "origin")


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
    (
        Column("status"),
        lambda r: (
            r["status"] + (", excluded" if r.get("excluded") else ""),
            STATUS_COLOURS.get(r["status"], ""),
        ),
    ),
    (Column("seed", "right"), lambda r: _fmt(r["seed"])),
    (Column("tag", width=TAG_WIDTH), lambda r: r["tag"] or "-"),
    (Column("val_loss", "right"), lambda r: _fmt(r["val_loss"])),
    (Column("tok/s", "right"), lambda r: _fmt(r["tokens_per_s"])),
    (Column("iters", "right"), lambda r: _fmt(r["iterations"])),
    (Column("started"), lambda r: (r["started_at"] or "")[:16]),
    (Column("epochs", "right"), lambda r: _fmt(r["epochs"], 3)),
)
KEY_COLUMNS = 4  # id, kind, attn, status
STATUS_COLOURS = {
    "finished": "green",
    "failed": "red",
    "crashed": "red",
    "diverged": "magenta",
    "interrupted": "yellow",
    "running": "cyan",
}


def run_table_rows(rows: list[dict]) -> list[list]:
    return [[get(r) for _, get in RUN_TABLE_COLUMNS] for r in rows]


def print_runs_table(rows: list[dict]) -> None:
    """The runs as a table: Rich on a terminal (trailing columns left out whole, with a
    note, when it is too narrow), tab-separated with every column in a pipe."""
    columns = [c for c, _ in RUN_TABLE_COLUMNS]
    print_table(
        columns,
        run_table_rows(rows),
        title=f"{len(rows)} run(s), newest first",
        keep_min=KEY_COLUMNS,
    )


def with_identity(d: dict, run) -> dict:
    """A run's dict plus its identity and exclusion (revision 0004) and ra's code."""
    d.update({c: getattr(run, c) for c in IDENTITY_COLUMNS})
    code = run.config.get("code") if isinstance(run.config, dict) else None
    d["code"] = code if isinstance(code, dict) else None
    return d


def list_run_dicts(store, **filters) -> list[dict]:
    from racli.store.queries import list_runs, run_dict

    return [with_identity(run_dict(r), r) for r in list_runs(store, **filters)]


def run_details(store, run_id: int) -> dict:
    """Everything about one run (racli.store.queries.run_details) with its identity."""
    from racli.store.queries import get_run
    from racli.store.queries import run_details as details

    return with_identity(details(store, run_id), get_run(store, run_id))


@app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    kind: KindOpt = None,
    attn: AttnOpt = None,
    status: StatusOpt = None,
    tag: TagOpt = None,
    limit: Annotated[
        int, typer.Option("--limit", help="Show at most N runs (0: all).", min=0)
    ] = 50,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """List runs, newest first (a `running` run with a stale heartbeat shows as crashed)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"db": db, "config": config}
        return
    _check_filters(kind, status)
    cfg = common.config(config)
    store = common.open_db(db, cfg, readonly=True)
    rows = list_run_dicts(store, kind=kind, attn=attn, status=status, tag=tag, limit=limit or None)
    if json:
        common.print_json(rows)
    elif not rows:
        typer.echo(
            "no runs recorded" + (" match the filters" if any((kind, attn, status, tag)) else "")
        )
    else:
        print_runs_table(rows)


def _inherit(ctx: typer.Context, db, config):
    parent = ctx.obj or {}
    return db or parent.get("db"), config or parent.get("config")


def show_text(d: dict) -> str:
    from racli.provenance import describe

    lines = [
        f"Run {d['id']}: {one_line(d['kind'])}"
        + (f" {one_line(d['attn'])}" if d["attn"] else "")
        + f" [{one_line(d['status'])}]"
    ]
    if d.get("excluded"):
        lines.append(
            f"  EXCLUDED from verdicts: {one_line(d.get('exclude_reason') or 'no reason given')}"
        )
    for key in (
        "seed",
        "tag",
        "config_hash",
        "uuid",
        "origin",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "iterations",
        "tokens",
        "epochs",
        "train_seconds",
        "val_loss",
        "tokens_per_s",
        "error",
    ):
        if d.get(key) is not None:
            lines.append(
                f"  {key:<14} {_fmt(d[key], 6) if not isinstance(d[key], str) else one_line(d[key])}"
            )
    data = (d.get("config") or {}).get("data")
    if isinstance(data, dict) and data.get("name"):
        n = {
            k: f"{data[k]:,}" if isinstance(data.get(k), int) else "-"
            for k in ("train_tokens", "val_tokens", "vocab_size")
        }
        lines.append(
            f"  {'data':<14} {one_line(data['name'])}: train {n['train_tokens']}, val {n['val_tokens']} "
            f"tokens, vocabulary {n['vocab_size']}, tokenizer {data.get('tokenizer') or '-'}, "
            f"hash {data.get('content_hash') or '-'}"
        )
    lines.append("Code:")
    lines.append(f"  {'ra':<14} {describe(d.get('code'))}")
    if (d.get("code") or {}).get("commit"):
        lines.append(f"  {'ra commit':<14} {d['code']['commit']}")
    lines.append(f"  {'git_commit':<14} {d.get('git_commit') or '-'} (working directory)")
    env = d.get("environment")
    if env:
        lines.append("Environment:")
        for key in ENV_KEYS:
            if env.get(key) is not None:
                lines.append(f"  {key:<14} {one_line(env[key])}")
    if d["metrics"]:
        lines.append("Metrics (count, last step, last value):")
        for name, m in sorted(d["metrics"].items()):
            lines.append(
                f"  {name:<14} {m['count']:>6}  step {m['last_step']:<7} {_fmt(m['last'], 6)}"
            )
    if d.get("clocks"):
        c = d["clocks"]
        lines.append(
            "GPU (median over log points): "
            + ", ".join(
                f"{label} {c[k]:.0f}{unit}"
                for k, label, unit in (
                    ("sm_clock_mhz", "SM clock", " MHz"),
                    ("power_w", "power", " W"),
                    ("temp_c", "temperature", " C"),
                )
                if k in c
            )
        )
    if d["gate_snapshots"]:
        lines.append(
            f"Gate snapshots: {d['gate_snapshots']} (last step {d['gate_last_step']}; see `ra gates --run {d['id']}`)"
        )
    if d["timings"]:
        lines.append("Timings:")
        for t in d["timings"]:
            ms = f"{t['median_ms']:.4f} ms" if t["median_ms"] is not None else t["status"]
            extra = f" ({one_line(t['reason'])})" if t["reason"] else ""
            lines.append(
                f"  {t['attn']:<13} {t['mode']:<11} {t['phase']:<8} {t['backend'] or '-':<9} {ms}{extra}"
            )
    lines.append("Config:")
    lines.extend(
        "  " + line for line in jsonlib.dumps(d["config"], indent=2, default=str).splitlines()
    )
    return "\n".join(lines)


@app.command("show")
def show(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(help="Run id.")],
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Everything about one run: figures, code, environment, metrics, timings, config."""
    check_run_id(run_id)
    db, config = _inherit(ctx, db, config)
    cfg = common.config(config)
    store = common.open_db(db, cfg, readonly=True)
    d = run_details(store, run_id)
    from racli.training.clocks import recorded_medians

    d["clocks"] = recorded_medians(store, run_id)
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
        with_identity(d, r)
        d["ra_version"] = (d["code"] or {}).get("version")
        d["ra_commit"] = (d["code"] or {}).get("commit")
        rows.append(d)
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS) + ["config"], extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "config": jsonlib.dumps(r.get("config"), sort_keys=True)})
    return buf.getvalue()


def write_metrics(store, out, fmt: str, *, names: list[str] | None = None, **filters) -> int:
    """Write the long-format curves of the runs matching `filters` to the text stream `out`
    as CSV or JSON Lines; returns the number of rows written."""
    from racli.store.manage import METRIC_EXPORT_COLUMNS, metric_rows
    from racli.store.queries import list_runs

    ids = [r.id for r in list_runs(store, **filters)]
    n = 0
    if fmt == "csv":
        w = csv.DictWriter(out, fieldnames=list(METRIC_EXPORT_COLUMNS), lineterminator="\n")
        w.writeheader()
        for row in metric_rows(store, ids, names):
            w.writerow(row)
            n += 1
    else:
        for row in metric_rows(store, ids, names):
            out.write(jsonlib.dumps(row) + "\n")
            n += 1
    return n


@app.command("export")
def export(
    ctx: typer.Context,
    fmt: Annotated[
        str,
        typer.Option("--format", help="csv or json (with --metrics: csv or jsonl, JSON Lines)."),
    ] = "csv",
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Write to FILE (default: stdout).", show_default=False),
    ] = None,
    metrics: Annotated[
        bool,
        typer.Option(
            "--metrics",
            help="Export the curves instead of the runs: one row per metric value "
            "(run_id, step, name, value, elapsed_s).",
        ),
    ] = False,
    names: Annotated[
        Optional[str],
        typer.Option(
            "--name",
            help="With --metrics: only these metric names (comma-separated).",
            show_default=False,
        ),
    ] = None,
    kind: KindOpt = None,
    attn: AttnOpt = None,
    status: StatusOpt = None,
    tag: TagOpt = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
) -> None:
    """Export runs with their final figures as CSV or JSON, or (--metrics) their curves."""
    formats = ("csv", "jsonl", "json") if metrics else ("csv", "json")
    if fmt not in formats:
        raise BadInput(
            f"unknown format '{fmt}' (valid{' with --metrics' if metrics else ''}: "
            f"{', '.join(formats[:2])})"
        )
    if names is not None and not metrics:
        raise BadInput("--name selects metric names: it goes with --metrics")
    _check_filters(kind, status)
    if output is not None and not output.parent.resolve().is_dir():
        raise BadInput(f"cannot write {output}: directory {output.parent} does not exist")
    if output is not None and output.is_dir():
        raise BadInput(
            f"cannot write {output}: it is a directory (give a file name, e.g. "
            f"{output / ('runs.' + fmt)})"
        )
    db, config = _inherit(ctx, db, config)
    cfg = common.config(config)
    store = common.open_db(db, cfg, readonly=True)
    filters = {"kind": kind, "attn": attn, "status": status, "tag": tag}
    if metrics:
        wanted = common.parse_csv_list(names) or None
        if output is None:
            write_metrics(store, sys.stdout, fmt, names=wanted, **filters)
            return
        with output.open("w", newline="") as fh:
            n = write_metrics(store, fh, fmt, names=wanted, **filters)
        typer.echo(f"wrote {n} metric value(s) to {output}", err=True)
        return
    rows = export_rows(store, **filters)
    text = to_csv(rows) if fmt == "csv" else jsonlib.dumps(rows, indent=2, default=str) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {len(rows)} run(s) to {output}", err=True)


# ---- run management ----------------------------------------------------------------

IdsArg = Annotated[list[int], typer.Argument(help="Run id(s).", show_default=False)]


def _check_ids(run_ids) -> None:
    for run_id in run_ids:
        check_run_id(run_id)


def _store(ctx: typer.Context, db, config):
    db, config = _inherit(ctx, db, config)
    return common.open_db(db, common.config(config), create=False)


@app.command("tag")
def tag_cmd(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(help="Run id.")],
    new_tag: Annotated[
        Optional[str], typer.Argument(metavar="TAG", help="The new tag.", show_default=False)
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the run's tag.")] = False,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
) -> None:
    """Set (or replace) a run's tag; --clear removes it."""
    from racli.store.manage import set_tag

    if clear == (new_tag is not None):
        raise BadInput(
            "give either a TAG or --clear" if not clear else "give a TAG or --clear, not both"
        )
    check_run_id(run_id)
    old, new = set_tag(_store(ctx, db, config), run_id, new_tag)
    typer.echo(f"run {run_id}: tag {one_line(old or '(none)')} -> {one_line(new or '(none)')}")


@app.command("exclude")
def exclude_cmd(
    ctx: typer.Context,
    run_ids: IdsArg,
    reason: Annotated[
        str,
        typer.Option(
            "--reason", help="Why (shown by `ra runs` and `ra compare`).", show_default=False
        ),
    ],
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
) -> None:
    """Leave runs out of every verdict; they stay recorded and shown (`ra runs include` undoes it)."""
    from racli.store.manage import set_excluded

    _check_ids(run_ids)
    runs = set_excluded(_store(ctx, db, config), run_ids, excluded=True, reason=reason)
    for r in runs:
        typer.echo(f"run {r.id}: excluded from verdicts ({one_line(reason.strip())})")


@app.command("include")
def include_cmd(
    ctx: typer.Context,
    run_ids: IdsArg,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
) -> None:
    """Count excluded runs in verdicts again."""
    from racli.store.manage import set_excluded

    _check_ids(run_ids)
    runs = set_excluded(_store(ctx, db, config), run_ids, excluded=False)
    for r in runs:
        typer.echo(
            f"run {r.id}: "
            + ("included in verdicts again" if r.excluded else "was not excluded (nothing to do)")
        )


def confirm_delete(runs, counts: dict, *, yes: bool, interactive: bool | None = None) -> bool:
    """--yes, or a yes at the prompt; without a terminal on stdin and without --yes,
    bad input (a script must say --yes)."""
    if yes:
        return True
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    what = ", ".join(str(r.id) for r in runs[:10]) + (", ..." if len(runs) > 10 else "")
    if not interactive:
        raise BadInput(
            f"refusing to delete {len(runs)} run(s) ({what}) without confirmation: pass --yes"
        )
    return typer.confirm(
        f"Delete {len(runs)} run(s) ({what}) with {counts['metrics']} metric "
        f"value(s), {counts['timings']} timing(s), {counts['gate_values']} gate "
        f"value(s) and their checkpoints?",
        default=False,
    )


@app.command("delete")
def delete_cmd(
    ctx: typer.Context,
    run_ids: IdsArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Delete runs for good: their metrics, timings, gate values and checkpoint files too."""
    from racli.store.manage import check_deletable, delete_runs, row_counts

    _check_ids(run_ids)
    store = _store(ctx, db, config)
    runs = check_deletable(store, run_ids)
    if not confirm_delete(runs, row_counts(store, [r.id for r in runs]), yes=yes):
        typer.echo("nothing deleted", err=True)
        raise typer.Exit(1)
    out = delete_runs(store, [r.id for r in runs])
    if json:
        common.print_json(out.to_dict())
        return
    typer.echo(
        f"deleted {len(out.runs)} run(s) ({', '.join(map(str, out.runs))}): "
        f"{out.metrics} metric value(s), {out.timings} timing(s), "
        f"{out.gate_values} gate value(s)"
    )
    for path in out.checkpoints:
        typer.echo(f"removed checkpoint {path}")


@app.command("diff")
def diff_cmd(
    ctx: typer.Context,
    run_a: Annotated[int, typer.Argument(metavar="A", help="Run id.")],
    run_b: Annotated[int, typer.Argument(metavar="B", help="Run id.")],
    only: Annotated[
        bool, typer.Option("--only-differences", help="Show the differing rows only.")
    ] = False,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Two runs side by side (run, code, environment, config, final figures), differences marked *."""
    from racli.store.manage import get_runs
    from racli.store.run_diff import diff_runs, diff_text

    _check_ids([run_a, run_b])
    store = _store(ctx, db, config)
    get_runs(store, [run_a, run_b])  # both unknown ids checked before any output
    diff = diff_runs(run_details(store, run_a), run_details(store, run_b))
    if json:
        common.print_json(diff)
    else:
        typer.echo(visible(diff_text(diff, only_differences=only)))
