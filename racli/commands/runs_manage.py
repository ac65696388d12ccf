"""`ra runs tag`, `exclude`, `include` and `delete`: the commands that change recorded runs
(racli/store/manage.py does the work)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from racli.commands import common, runs_common
from racli.errors import BadInput
from racli.names import check_run_id
from racli.text.terminal import one_line, visible


def tag_cmd(
    ctx: typer.Context,
    run_id: runs_common.RunArg,
    new_tag: Annotated[
        Optional[str], typer.Argument(metavar="TAG", help="The new tag.", show_default=False)
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the run's tag.")] = False,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
) -> None:
    """Set (or replace) a run's tag; --clear removes it."""
    from racli.store.manage import check_new_tag, set_tag

    if clear == (new_tag is not None):
        raise BadInput(
            "give either a TAG or --clear" if not clear else "give a TAG or --clear, not both"
        )
    check_run_id(run_id)
    check_new_tag(new_tag)
    store = runs_common.open_store(ctx, db, config, readonly=False, run_ids=[run_id])
    old, new = set_tag(store, run_id, new_tag)
    typer.echo(f"run {run_id}: tag {one_line(old or '(none)')} -> {one_line(new or '(none)')}")


def exclude_cmd(
    ctx: typer.Context,
    run_ids: runs_common.IdsArg,
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
    from racli.store.manage import check_reason, set_excluded

    runs_common.check_ids(run_ids)
    check_reason(reason)
    for r in set_excluded(
        runs_common.open_store(ctx, db, config, readonly=False, run_ids=run_ids),
        run_ids,
        excluded=True,
        reason=reason,
    ):
        typer.echo(f"run {r.id}: excluded from verdicts ({one_line(reason.strip())})")


def include_cmd(
    ctx: typer.Context,
    run_ids: runs_common.IdsArg,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
) -> None:
    """Count excluded runs in verdicts again."""
    from racli.store.manage import set_excluded

    runs_common.check_ids(run_ids)
    for r in set_excluded(
        runs_common.open_store(ctx, db, config, readonly=False, run_ids=run_ids),
        run_ids,
        excluded=False,
    ):
        done = "included in verdicts again" if r.excluded else "was not excluded (nothing to do)"
        typer.echo(f"run {r.id}: {done}")


def stdin_is_terminal() -> bool:
    """Whether a person can answer a prompt: a terminal on stdin."""
    return sys.stdin is not None and sys.stdin.isatty()


def confirm_delete(
    runs, counts: dict | None, *, yes: bool, interactive: bool | None = None, cascade=False
) -> bool:
    """--yes, or a yes at the prompt; without a terminal on stdin and without --yes,
    bad input (a script must say --yes). `runs`: the runs or their ids."""
    if yes:
        return True
    if interactive is None:
        interactive = stdin_is_terminal()
    ids = list(dict.fromkeys(getattr(r, "id", r) for r in runs))
    what = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
    if not interactive:
        deps = " and the runs that depend on them" if cascade else ""
        raise BadInput(
            f"refusing to delete {len(ids)} run(s) ({what}){deps} without confirmation: pass --yes"
        )
    return typer.confirm(
        f"Delete {len(runs)} run(s) ({what}) with {counts['metrics']} metric "
        f"value(s), {counts['timings']} timing(s), {counts['gate_values']} gate "
        f"value(s) and their checkpoints?",
        default=False,
    )


def delete_cmd(
    ctx: typer.Context,
    run_ids: runs_common.IdsArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    cascade: Annotated[
        bool,
        typer.Option(
            "--cascade",
            help="Also delete the runs that depend on these (train runs whose budget came "
            "from a calibration, runs resumed from one); without it such a run is refused.",
        ),
    ] = False,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Delete runs for good: their metrics, timings, gate values and checkpoint files too."""
    from racli.store.manage import check_deletable, delete_runs, refuse_live, row_counts

    runs_common.check_ids(run_ids)
    if not yes and not stdin_is_terminal():  # refused before the store is opened for writing
        runs_common.check_recorded(ctx, db, config, run_ids)
        confirm_delete(run_ids, None, yes=False, interactive=False, cascade=cascade)
    runs_common.check_before_migrating(
        ctx, db, config, lambda view: check_deletable(view, run_ids, cascade=cascade)
    )
    store = runs_common.open_store(
        ctx, db, config, readonly=False, run_ids=run_ids, run_check=refuse_live
    )
    runs = check_deletable(store, run_ids, cascade=cascade)
    if not confirm_delete(runs, row_counts(store, [r.id for r in runs]), yes=yes):
        typer.echo("nothing deleted", err=True)
        raise typer.Exit(1)
    out = delete_runs(store, [r.id for r in runs], cascade=cascade)
    if json:
        common.print_json(out.to_dict())
    else:
        typer.echo(out.summary())
        for path in out.checkpoints:
            typer.echo(visible(f"removed checkpoint {path}"))
    for kept in out.kept:
        typer.echo(visible(f"ra: failed: could not remove checkpoint {kept}"), err=True)
    if out.kept:
        raise typer.Exit(1)
