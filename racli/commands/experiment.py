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
from racli.errors import BadInput
from racli.experiment import plan
from racli.names import ATTENTION_NAMES
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
            "(train.tensorboard; pip install 'ra[tb]').",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
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
    from racli.experiment.jobs import experiment_config
    from racli.experiment.orchestrate import run_experiment
    from racli.experiment.report import check_report_path, write_report
    from racli.experiment.results import Interrupted, Settings, check_settings
    from racli.experiment.text import outcome_text
    from racli.experiment.view import make_view
    from racli.text import tensorboard as tb_files
    from racli.training import tensorboard as tb

    cfg = common.config(config)
    arms = plan.parse_arms(attn, ATTENTION_NAMES)
    seed_list = plan.parse_seeds(seeds)
    plan.check_aa_seeds(arms, seed_list + ([max(seed_list) + max_seeds] if max_seeds else []))
    device_list = plan.parse_devices(devices, device)
    check_report_path(report)
    if max_seeds is not None and max_seeds < 2:
        raise BadInput(f"--max-seeds must be at least 2, got {max_seeds}")
    overrides = list(set_ or []) + ([tb.override(tensorboard)] if tensorboard else [])
    ecfg = experiment_config(cfg, overrides)  # validates --set before any work
    if ecfg.train.tensorboard is not None:
        tb_files.check_available()
        tb_files.check_folder(ecfg.train.tensorboard)
    location = common.db_location(db, cfg)
    settings = Settings(
        arms=arms,
        seeds=seed_list,
        minutes=minutes,
        preset=model,
        data=data,
        devices=device_list,
        overrides=overrides,
        tag=tag,
        until_settled=until_settled,
        max_seeds=max_seeds,
        compile=compile,
        config_path=config or common.GLOBAL.get("config"),
        db=location,
    )
    check_settings(settings)
    store = common.open_db(db, cfg)
    view = make_view(sys.stderr)
    try:
        outcome = run_experiment(settings, cfg, store, view=view)
    except Interrupted as exc:
        view.close()
        typer.echo(f"ra: {exc}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        view.close()
    written = write_report(report, outcome, store, command=_command()) if report is not None else []
    store.close()
    if json:
        data_out = outcome.to_dict()
        data_out["report"] = [str(p) for p in written]
        common.print_json(data_out)
    else:
        sys.stdout.write(for_stream(outcome_text(outcome, written), sys.stdout.encoding) + "\n")
    if outcome.failed:
        ids = ", ".join(f"{r.job.arm.label} seed {r.job.seed}" for r in outcome.failed)
        typer.echo(
            f"ra: failed: {len(outcome.failed)} run(s) failed ({ids}); run the same "
            f"command again to retry them",
            err=True,
        )
        raise typer.Exit(1)


def _command() -> str | None:
    """The command line as typed, for the report (None when not run as `ra experiment`)."""
    if len(sys.argv) > 2 and sys.argv[1] == "experiment":
        return "ra experiment " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    return None
