"""`ra experiment`: the paired matrix at matched time, in one command (docs/experiment.md).

Exit codes: 0 done (whatever the verdict); 130 interrupted (run the same command again to
continue); 1 a run failed; 2 bad input. The experiment modules are imported inside the
command (they bring torch and the database).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from racli.commands import common, completers
from racli.names import check_tag
from racli.text.terminal import for_stream
from racli.training.stopping import EXIT_INTERRUPTED


def experiment(
    attn: Annotated[
        str,
        typer.Option(
            "--attn",
            help="Variants, comma-separated; each is compared with the first. The same "
            "variant twice makes an A/A experiment (arms baseline#1, baseline#2; the second "
            "trains on its own seeds, seed + 1,000,000).",
            show_default=False,
            autocompletion=completers.complete_arms,
        ),
    ],
    seeds: Annotated[
        str,
        typer.Option(
            "--seeds",
            help="Seeds: a range 1-5 or a list 1,3,5 (one run per arm and seed).",
            show_default=False,
        ),
    ],
    minutes: Annotated[
        float,
        typer.Option(
            "--minutes",
            help="Matched time per run: the first variant trains minutes x 60 x its "
            "calibrated steps/s steps; the others that times their speed ratio.",
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Model preset from ra.yaml.",
            show_default=False,
            autocompletion=completers.complete_model,
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Training text or nanoGPT directory (default: the built-in corpus).",
            show_default=False,
        ),
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices",
            help="GPU indices to spread the runs over, e.g. 0,1 (one run per GPU at a time).",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="One device: auto, cpu, cuda or cuda:N (default auto).",
            show_default=False,
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a model, train or experiment field of ra.yaml, e.g. "
            "--set model.vocab_size=50304 (repeatable).",
            metavar="KEY=VALUE",
            show_default=False,
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile (default: train.compile; auto = on with CUDA).",
            show_default=False,
        ),
    ] = None,
    tag: Annotated[
        str | None,
        typer.Option(
            "--tag",
            help="Tag of the experiment's runs (default exp-<key>); part of the key.",
            show_default=False,
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write a Markdown report (and its PNG curves beside it).",
            show_default=False,
        ),
    ] = None,
    until_settled: Annotated[
        bool,
        typer.Option(
            "--until-settled",
            help="Add seed pairs while a verdict is INCONCLUSIVE (group-"
            "sequential design: false WIN/LOSE held at 5%).",
        ),
    ] = False,
    max_seeds: Annotated[
        int | None,
        typer.Option(
            "--max-seeds", help="With --until-settled: the most seeds per arm.", show_default=False
        ),
    ] = None,
    tensorboard: Annotated[
        str | None,
        typer.Option(
            "--tensorboard",
            help="Also write every run's TensorBoard events to DIR/run_<id>_<attn> "
            "(train.tensorboard; pip install 'ra\\[tb]').",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
    launcher: Annotated[
        str,
        typer.Option(
            "--launcher",
            autocompletion=common.complete_launcher,
            help="Where the runs go: local (this host's devices), slurm (sbatch jobs through "
            "submitit) or ray (Ray actors). slurm and ray take a PostgreSQL store and their "
            "settings from ra.yaml's slurm / ray sections (--set slurm.partition=gpu).",
        ),
    ] = "local",
    cancel_on_interrupt: Annotated[
        bool | None,
        typer.Option(
            "--cancel-on-interrupt/--leave-on-interrupt",
            help="slurm/ray: on Ctrl-C cancel the submitted jobs, or leave them running "
            "(default: asked on a terminal, else left running).",
            show_default=False,
        ),
    ] = None,
    status: Annotated[
        bool,
        typer.Option(
            "--status",
            help="Show the experiment's jobs and runs as the store has them, then exit "
            "(nothing is submitted or trained).",
        ),
    ] = False,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Calibrate speeds, train every variant x seed at matched time in a balanced order, judge.

    Calibration cap: at most calibration_max_s (120 s) and calibration_max_share (10%) of the
    planned training time (arms x seeds x minutes), ra.yaml's experiment section; warm-up rounds
    are dropped, and budgets from a ratio that did not settle are flagged in the output, the
    report and every verdict.
    """
    # imported here: the experiment modules take about a second to load (`ra --help`)
    from racli.experiment.options import settings_from_options
    from racli.experiment.text import failed_text

    check_tag(tag)
    cfg = common.config(config)
    common.check_not_input(report, db, cfg, "--report", data=data)
    if launcher.strip().lower() in ("slurm", "ray"):  # before anything is printed or created
        from racli.experiment.cluster import check_store

        check_store(common.db_location(db, cfg), launcher.strip().lower())
    settings = settings_from_options(
        cfg,
        attn=attn,
        seeds=seeds,
        devices=devices,
        device=device,
        report=None if status else report,  # --status reads: nothing is tried for writing
        max_seeds=max_seeds,
        overrides=set_,
        tensorboard=None if status else tensorboard,  # outside the key (not a run setting)
        launcher=launcher,
        minutes=minutes,
        preset=model,
        data=data,
        tag=tag,
        until_settled=until_settled,
        compile=compile,
        config_path=config if config is not None else common.GLOBAL.get("config"),
        db=common.db_location(db, cfg),
        cancel_on_interrupt=cancel_on_interrupt,
    )
    for given, ignored in (
        (status and report is not None, "--status writes no report: --report is left alone"),
        (
            cancel_on_interrupt is not None and settings.launcher == "local",
            "--cancel-on-interrupt/--leave-on-interrupt is for slurm and ray jobs: the local "
            "launcher stops its runs on Ctrl-C",
        ),
    ):
        if given:
            typer.echo(f"ra: note: {ignored}", err=True)
    if status:
        _status(settings, cfg, db, json)
        return
    from racli.experiment.prepare import prepare

    prepared = prepare(settings, cfg)  # the data, devices and configs, before the store opens
    store = common.open_db(db, cfg)
    outcome = _run(settings, cfg, store, prepared)
    _deliver(outcome, store, report, json)
    if outcome.failed:
        typer.echo(f"ra: failed: {failed_text(outcome.failed)}", err=True)
        raise typer.Exit(1)


def _run(settings, cfg, store, prepared):
    """The experiment with its live view on stderr; an interruption says how to go on."""
    from racli.experiment.orchestrate import run_live
    from racli.experiment.results import Interrupted
    from racli.experiment.text import forced_text

    try:
        return run_live(settings, cfg, store, sys.stderr, prepared)
    except Interrupted as exc:  # the view is closed by then
        typer.echo(f"ra: {exc}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:  # a second Ctrl-C: the run in progress stopped at once
        raise Interrupted(forced_text()) from None


def _deliver(outcome, store, report: Path | None, json: bool) -> None:
    """The verdict on stdout, then the report (a report that cannot be written does not
    hide the verdict: exit 1 after it)."""
    from racli.experiment.report import try_write_report
    from racli.experiment.text import outcome_text, report_failed_text, written_text

    if not json:
        sys.stdout.write(for_stream(outcome_text(outcome, []), sys.stdout.encoding) + "\n")
        sys.stdout.flush()
    written, error = try_write_report(report, outcome, store, command=_command())
    store.close()
    if json:
        common.print_json({**outcome.to_dict(), "report": [str(p) for p in written]})
    elif written:
        sys.stdout.write(for_stream(written_text(written), sys.stdout.encoding) + "\n")
    if error is not None:
        typer.echo(f"ra: failed: {report_failed_text(error)}", err=True)
        raise typer.Exit(1)


def _status(settings, cfg, db, json: bool) -> None:
    """--status: the experiment's units from the store (read only)."""
    from racli.experiment.prepare import prepare
    from racli.experiment.status import status_rows, status_text

    p = prepare(settings, cfg)
    store = common.open_db(db, cfg, readonly=True)
    try:
        rows = status_rows(store, p.key, settings.arms, settings.seeds)
    finally:
        store.close()
    if json:
        common.print_json({"key": p.key, "units": rows})
    else:
        sys.stdout.write(for_stream(status_text(p.key, rows), sys.stdout.encoding) + "\n")


def _command() -> str | None:
    """The command line as typed, for the report (None when not run as `ra experiment`)."""
    if len(sys.argv) > 2 and sys.argv[1] == "experiment":
        return "ra experiment " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    return None
