"""`ra train`: train one model on real text for a budget and record the run.

Parse -> `racli.training.launch` -> print (docs/training.md). Exit codes: 0 finished;
130 interrupted (resumable); 1 diverged or failed; 2 bad input. torch is imported only
once the command runs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from racli.commands import common, completers
from racli.errors import Interrupted
from racli.experiment.plan import parse_extra_config
from racli.names import check_seed
from racli.text.terminal import visible


def train(
    attn: Annotated[
        str | None,
        typer.Option(
            "--attn",
            help="Attention variant (baseline, ra_v5, ra_v5_untied, ra_beta, sdpa_gate).",
            show_default=False,
            autocompletion=completers.complete_attention,
        ),
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(
            "--minutes",
            help="Budget: wall-clock minutes of training steps (compile warm-up, "
            "evaluation and checkpoints not counted).",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            help="Budget: number of optimizer steps (instead of --minutes).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Model preset from ra.yaml, or auto: gpt2 on CUDA, tiny on the CPU "
            "(default: model.preset).",
            show_default=False,
            autocompletion=completers.complete_model,
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Training data: a folder from `ra data prepare`, a nanoGPT folder with "
            "train.bin/val.bin, a .txt file or a folder of .txt files (default: the built-in "
            "corpus).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of the model init and of the batch order, 0 to 2^63 - 1 (default 0).",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            help="Sequences per step per process (train.batch_size); with "
            "train.batch_tokens, the largest micro-batch.",
            show_default=False,
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="Peak learning rate (train.lr).", show_default=False),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="auto, cpu, cuda or cuda:N (default auto: cuda when available).",
            show_default=False,
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the model (default: train.compile; auto = on with CUDA).",
            show_default=False,
        ),
    ] = None,
    max_epochs: Annotated[
        float | None,
        typer.Option(
            "--max-epochs",
            help="Stop after this many passes over the training split (train.max_epochs).",
            show_default=False,
        ),
    ] = None,
    tag: Annotated[
        str | None, typer.Option("--tag", help="A label stored on the run.", show_default=False)
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a model or train field of ra.yaml for this run, e.g. "
            "--set model.ra_rank=8 (repeatable).",
            metavar="KEY=VALUE",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        int | None,
        typer.Option(
            "--resume",
            help="Continue run RUN from its checkpoint with its recorded configuration "
            "and remaining budget.",
            metavar="RUN",
            show_default=False,
            autocompletion=completers.complete_train_run,
        ),
    ] = None,
    extra_config: Annotated[
        str | None,
        typer.Option(
            "--extra-config",
            hidden=True,
            help="JSON entries of `ra experiment` recorded in the "
            "run's config (its arm and budget source).",
            show_default=False,
        ),
    ] = None,
    tensorboard: Annotated[
        str | None,
        typer.Option(
            "--tensorboard",
            help="Also write TensorBoard events to DIR/run_<id>_<attn> (train.tensorboard; "
            "pip install 'ra\\[tb]').",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the final summary (with the run id) as JSON on stdout; "
            "progress and notes stay on stderr.",
        ),
    ] = False,
) -> None:
    """Train a GPT-2 style model with one attention variant; record losses, throughput, gates."""
    from racli.training import launch  # the store, the data and torch: not for --help
    from racli.training.progress import summary_text

    opts = launch.TrainOptions(
        attn=attn,
        minutes=minutes,
        steps=steps,
        model=model,
        data=data,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        device=device,
        compile=compile,
        max_epochs=max_epochs,
        tag=tag,
        overrides=list(set_ or []),
        resume=resume,
        extra_config=extra_config,
        tensorboard=tensorboard,
    )
    launch.check_options(opts)
    if seed is not None:
        check_seed(seed)
    cfg = common.config(config)
    location = common.db_location(db, cfg)
    try:
        prepared = launch.prepare(opts, cfg, location, parse_extra=parse_extra_config)
    except KeyboardInterrupt:
        raise Interrupted("stopped before the run was recorded: nothing to continue") from None
    launched = launch.run(prepared)
    if launched.is_main:
        if json:
            common.print_json(launch.summary_dict(launched.result))
        else:
            typer.echo(visible(summary_text(launched.result)))
    message, code = launch.ending(launched)
    if message is not None:
        typer.echo(message, err=True)
    if code:
        raise typer.Exit(code)
