"""`ra sample` (text from a trained model) and `ra runs export-weights` (its weights as
safetensors). Parse -> racli.training.weights / sampling -> print; torch, safetensors and
the store are imported only once a command runs."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from racli.commands import common
from racli.errors import BadInput
from racli.names import check_run_id
from racli.text.terminal import visible

SEPARATOR = "-" * 40


def _trained(run: int | None, checkpoint: str | None, weights: str | None, db, config):
    from racli.dataprep.paths import user_path
    from racli.training import weights as w

    sources = {"--run": run, "--checkpoint": checkpoint, "--weights": weights}
    given = [name for name, value in sources.items() if value is not None]
    if len(given) != 1:
        raise BadInput(
            "give one of --run N, --checkpoint FILE, --weights DIR"
            + (f" (not {' and '.join(given)})" if given else "")
        )
    if checkpoint is not None:
        return w.from_checkpoint(user_path(checkpoint, "--checkpoint"))
    if weights is not None:
        return w.from_folder(user_path(weights, "--weights"))
    check_run_id(run, "--run")
    store = common.open_db(db, common.config(config), readonly=True)
    try:
        return w.from_run(store, run)
    finally:
        store.close()


def sample(
    run: Annotated[
        Optional[int],
        typer.Option("--run", help="Sample from this train run's checkpoint.", show_default=False),
    ] = None,
    checkpoint: Annotated[
        Optional[str],
        typer.Option(
            "--checkpoint",
            help="Sample from a checkpoint file of `ra train` (run_N.pt).",
            metavar="FILE",
            show_default=False,
        ),
    ] = None,
    weights: Annotated[
        Optional[str],
        typer.Option(
            "--weights",
            help="Sample from a folder written by `ra runs export-weights`.",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str,
        typer.Option(
            "--prompt",
            help="Text to continue (default: a newline; empty: from end-of-text).",
            show_default=False,
        ),
    ] = "\n",
    tokens: Annotated[
        int,
        typer.Option("--tokens", help="New tokens per sample (1 to 1,000,000: a few books)."),
    ] = 200,
    temperature: Annotated[
        float,
        typer.Option("--temperature", help="Softmax temperature; 0 takes the likeliest token."),
    ] = 0.8,
    top_k: Annotated[
        Optional[int],
        typer.Option("--top-k", help="Draw from the k likeliest tokens only (0: all)."),
    ] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draws (0 to 2^63 - 1).")] = 0,
    samples: Annotated[int, typer.Option("--samples", help="Number of samples (1 to 1,000).")] = 1,
    device: Annotated[
        str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto: cuda when there).")
    ] = "auto",
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Generate text from a trained model with its own tokenizer (deterministic per seed)."""
    from racli.training.sampling import SampleSettings, check_settings
    from racli.training.sampling import sample as draw

    settings = SampleSettings(
        prompt=prompt,
        tokens=tokens,
        temperature=temperature,
        top_k=None if top_k == 0 else top_k,
        seed=seed,
        samples=samples,
        device=device,
    )
    check_settings(settings)
    trained = _trained(run, checkpoint, weights, db, config)
    out = draw(trained, settings)
    if json:
        source = {"source": trained.source, "attn": trained.attn, **_identity(trained.info)}
        common.print_json(out.to_dict({**source, "seed": seed, "prompt": prompt}))
        return
    tty = sys.stdout.isatty()
    for i, text in enumerate(out.texts):
        if i:
            typer.echo(SEPARATOR)
        typer.echo(visible(text) if tty else text)  # a model can emit control characters


def _identity(info: dict) -> dict:
    return {k: info.get(k) for k in ("run_id", "run_uuid", "step")}


def export_weights(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(metavar="RUN", help="Train run id.")],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Folder to write: created when absent; an existing one must be empty or "
            "hold only an earlier export, which is replaced.",
            metavar="DIR",
            show_default=False,
        ),
    ],
    nanogpt: Annotated[
        bool,
        typer.Option(
            "--nanogpt",
            help="Only nanoGPT's tensor names: ra_v5 / ra_v5_untied attention as its "
            "composed c_attn weight (same outputs; gates and P folded in).",
        ),
    ] = False,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Write a train run's weights as model.safetensors + config.json (`ra sample --weights`)."""
    from racli.training import weights as w

    check_run_id(run_id)
    folder = w.check_export_folder(out)  # before the checkpoint is read
    parent = ctx.obj or {}
    store = common.open_db(
        db if db is not None else parent.get("db"),
        common.config(config if config is not None else parent.get("config")),
        readonly=True,
    )
    try:
        trained = w.from_run(store, run_id)
    finally:
        store.close()
    files = w.export(trained, folder, nanogpt=nanogpt)
    if json:
        common.print_json({"run_id": run_id, "out": str(out), "files": [str(p) for p in files]})
        return
    typer.echo(f"run {run_id} ({trained.attn}, step {trained.info.get('step')}): wrote")
    for p in files:
        typer.echo(f"  {visible(p)}")
