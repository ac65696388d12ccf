"""`ra compare`: a verdict from the recorded history (DESIGN.md, "Verdict rules").

Parse -> call -> print: racli.compare.view.compare_train (train runs: read by
racli.compare.grouping, judged by racli.compare.verdict) or racli.bench.history.compare_bench
(timings); each result gives its text and its JSON. Only reads the store; no torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from racli.commands import common, completers
from racli.errors import BadInput
from racli.text.outputs import check_plot_path
from racli.text.terminal import for_stream, visible


def _fraction(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise BadInput(f"{name} is a fraction between 0 and 1 (0.01 = 1%), got {value:g}")


def _echo(text: str) -> None:
    sys.stdout.write(for_stream(visible(text), sys.stdout.encoding) + "\n")


def compare(
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="val_loss (train runs), tokens_per_s (train runs) or ms (bench timings).",
            autocompletion=completers.complete_metric,
        ),
    ] = "val_loss",
    candidate: Annotated[
        str,
        typer.Option(
            "--candidate",
            help="Attention variant judged, or an arm of an A/A experiment (baseline#2).",
            autocompletion=completers.complete_attention,
        ),
    ] = "ra_v5",
    baseline: Annotated[
        str,
        typer.Option(
            "--baseline",
            help="Attention variant compared against (or an arm: baseline#1).",
            autocompletion=completers.complete_attention,
        ),
    ] = "baseline",
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Quality threshold as a fraction (default: ra.yaml verdict.threshold, 0.01).",
            show_default=False,
        ),
    ] = None,
    allow_epochs: Annotated[
        bool,
        typer.Option(
            "--allow-epochs",
            help="Judge runs that went past one epoch of their data (labelled; otherwise INVALID).",
        ),
    ] = False,
    tag: Annotated[
        str | None,
        typer.Option(
            "--tag",
            help="Only runs with this tag.",
            show_default=False,
            autocompletion=completers.complete_tag,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only runs started at or after this date (YYYY-MM-DD or ISO datetime, UTC).",
            show_default=False,
        ),
    ] = None,
    any_env: Annotated[
        bool,
        typer.Option("--any-env", help="Pool environment classes (GPU name + torch version)."),
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Write the compared runs' curves of the metric, or with --metric ms the best "
            "of each side's repeats (.png, .pdf or .svg).",
            show_default=False,
        ),
    ] = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Verdict for CANDIDATE vs BASELINE from every comparable finished run."""
    from racli.compare.grouping import check_pair
    from racli.store.filters import check_filter_text, parse_since

    # ---- validate everything before any work
    check_filter_text(tag=tag, since=since)
    check_pair(metric, candidate, baseline)
    cfg = common.config(config)
    threshold = cfg.verdict.threshold if threshold is None else threshold
    _fraction("--threshold", threshold)
    since_at = parse_since(since)
    check_plot_path(plot)
    common.check_not_input(plot, db, cfg, "--plot")
    store = common.open_db(db, cfg, readonly=True)

    filters = {"candidate": candidate, "baseline": baseline, "tag": tag, "since": since_at}
    if metric == "ms":  # best vs best per shape group over the finished bench runs
        from racli.bench.history import compare_bench

        result = compare_bench(
            store, **filters, any_env=any_env, noise_ratio=cfg.bench.noise_ratio, plot=plot
        )
    else:
        from racli.compare.view import compare_train

        result = compare_train(
            store,
            metric=metric,
            **filters,
            any_env=any_env,
            threshold=threshold,
            confidence=cfg.verdict.confidence,
            allow_epochs=allow_epochs,
            plot=plot,
        )
    if json:
        common.print_json(result.data())
    else:
        _echo(result.text())
