"""`ra gates`: does the model use its reciprocal term, and where?

One run (`--run`): its gates and reciprocity measures per layer and head; several
runs (`--runs 12,14,16`, or `--tag T [--attn A]`): their mean and spread, and
whether the same heads use it from seed to seed. Parse -> call -> print over
racli.gates.runs; no torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from racli.commands import common, completers
from racli.errors import BadInput
from racli.names import check_attention, check_run_id, check_utf8
from racli.text.outputs import check_plot_path
from racli.text.terminal import for_stream, visible


def gates(
    run: Annotated[
        int | None,
        typer.Option(
            "--run",
            help="Id of a train run (see `ra runs`).",
            show_default=False,
            autocompletion=completers.complete_train_run,
        ),
    ] = None,
    runs: Annotated[
        str | None,
        typer.Option(
            "--runs",
            help="Several train runs to aggregate (seeds): ids like 12,14,16 or 12-16.",
            show_default=False,
            autocompletion=completers.complete_train_runs,
        ),
    ] = None,
    tag: Annotated[
        str | None,
        typer.Option(
            "--tag",
            help="Aggregate the finished train runs with this tag.",
            show_default=False,
            autocompletion=completers.complete_tag,
        ),
    ] = None,
    attn: Annotated[
        str | None,
        typer.Option(
            "--attn",
            help="With --tag: only runs of this attention.",
            show_default=False,
            autocompletion=completers.complete_attention,
        ),
    ] = None,
    step: Annotated[
        int | None,
        typer.Option(
            "--step",
            help="Recorded step to show (default: the last; --run only).",
            show_default=False,
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Write a heatmap (and, for one run, trajectories): .png, .pdf or .svg.",
            show_default=False,
        ),
    ] = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Which heads use the reciprocal term (rec_share), raw gates and their movement;
    across seeds with --runs or --tag."""
    from racli.gates import runs as gate_runs

    picks = (("--run", run), ("--runs", runs), ("--tag", tag))
    chosen = [name for name, v in picks if v is not None]
    if len(chosen) != 1:
        raise BadInput(
            "give one of --run ID, --runs IDS or --tag TAG"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    for name, v in picks[1:]:
        if v is not None and not v.strip():
            raise BadInput(f"{name} is empty: give {'run ids' if name == '--runs' else 'a tag'}")
        if v is not None:
            check_utf8(v, name)
    if attn is not None and tag is None:
        raise BadInput("--attn goes with --tag (to pick runs); --run and --runs name them")
    if attn is not None:
        check_attention(attn)
    if step is not None and run is None:
        raise BadInput("--step goes with --run: several runs are read at their last step")
    if run is not None:
        check_run_id(run, "--run")
    check_plot_path(plot)
    cfg = common.config(config)
    common.check_not_input(plot, db, cfg, "--plot")
    store = common.open_db(db, cfg, readonly=True)
    if run is not None:
        view = gate_runs.one_run(store, cfg.gates, run, step=step, plot=plot)
    else:
        ids = gate_runs.parse_run_ids(runs) if runs else gate_runs.tagged_runs(store, tag, attn)
        label = f"tag {tag!r}" if tag else None
        view = gate_runs.many_runs(store, cfg.gates, ids, plot=plot, label=label)
    if json:
        common.print_json(view.to_dict())
    else:
        sys.stdout.write(for_stream(visible(view.text()), sys.stdout.encoding) + "\n")
