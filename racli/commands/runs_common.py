"""What the `ra runs` commands share: their options and arguments, the store they open."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from racli.commands import common, completers
from racli.names import check_run_id

KindOpt = Annotated[
    Optional[str],
    typer.Option(
        "--kind",
        help="bench, train or calibration.",
        show_default=False,
        autocompletion=completers.complete_kind,
    ),
]
AttnOpt = Annotated[
    Optional[str],
    typer.Option(
        "--attn",
        help="Attention variant (train runs).",
        show_default=False,
        autocompletion=completers.complete_attention,
    ),
]
StatusOpt = Annotated[
    Optional[str],
    typer.Option(
        "--status",
        help="running, finished, failed, interrupted, diverged or crashed.",
        show_default=False,
        autocompletion=completers.complete_status,
    ),
]
TagOpt = Annotated[
    Optional[str],
    typer.Option(
        "--tag",
        help="Only runs with this tag.",
        show_default=False,
        autocompletion=completers.complete_tag,
    ),
]
IdsArg = Annotated[
    list[int],
    typer.Argument(
        help="Run id(s).", show_default=False, autocompletion=completers.complete_run_id
    ),
]
RunArg = Annotated[int, typer.Argument(help="Run id.", autocompletion=completers.complete_run_id)]


def _db_and_config(ctx: typer.Context, db, config):
    """`--db` and the loaded config, each given here or before the subcommand."""
    parent = ctx.obj or {}
    cfg = common.config(config if config is not None else parent.get("config"))
    return (db if db is not None else parent.get("db")), cfg


def open_store(ctx: typer.Context, db, config, *, readonly: bool, run_ids=(), run_check=None):
    """The store of `--db` (given here or before the subcommand); writing: must exist and
    hold every run of `run_ids`, which `run_check` may refuse (both before the store is
    migrated)."""
    db, cfg = _db_and_config(ctx, db, config)
    return (
        common.open_db(db, cfg, readonly=True)
        if readonly
        else common.open_db(db, cfg, create=False, run_ids=run_ids, run_check=run_check)
    )


def check_recorded(ctx: typer.Context, db, config, run_ids) -> None:
    """BadInput unless the store of `--db` holds these runs; the store is only read."""
    from racli.store.engine import check_recorded as recorded

    db, cfg = _db_and_config(ctx, db, config)
    recorded(common.db_location(db, cfg), run_ids)


def check_before_migrating(ctx: typer.Context, db, config, check) -> None:
    """`check(store)` on the current-schema view of an older SQLite store of `--db`, so
    that bad input leaves that store at its revision (nothing when none is pending)."""
    from racli.store.engine import before_migrating

    db, cfg = _db_and_config(ctx, db, config)
    with before_migrating(common.db_location(db, cfg)) as view:
        if view is not None:
            check(view)


def check_not_input(ctx: typer.Context, db, config, path, what: str) -> None:
    """BadInput when the output `path` is the store of `--db` (see common.check_not_input)."""
    db, cfg = _db_and_config(ctx, db, config)
    common.check_not_input(path, db, cfg, what)


def check_ids(run_ids) -> None:
    for run_id in run_ids:
        check_run_id(run_id)
