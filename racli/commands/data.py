"""`ra data prepare`: tokenise a corpus into nanoGPT's format with meta.json and a hash.

A thin layer over `racli.dataprep.prepare`; no torch.
"""

from __future__ import annotations

from typing import Annotated

import typer

from racli.commands import common, completers
from racli.errors import Interrupted

app = typer.Typer(help="Prepare training data.", no_args_is_help=True)


@app.command("prepare")
def prepare(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Text files (.txt, .md), folders (files chosen by --glob), .jsonl/.jsonl.gz, "
            ".parquet, or hf:NAME for a Hugging Face dataset.",
            metavar="SOURCE",
            show_default=False,
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            help="The folder to write: train.bin, val.bin, meta.json (and tokenizer.json).",
            metavar="DIR",
            show_default=False,
        ),
    ],
    tokenizer: Annotated[
        str,
        typer.Option(
            "--tokenizer",
            help="gpt2 (tiktoken; needs its files once), train:VOCAB (a byte-level "
            "BPE trained on the corpus, offline; e.g. train:32768) or bytes.",
            autocompletion=completers.complete_tokenizer,
        ),
    ] = "gpt2",
    glob: Annotated[
        list[str] | None,
        typer.Option(
            "--glob",
            help="Which files of a folder to read (repeatable; default '**/*.txt' and "
            "'**/*.md'), e.g. --glob '**/*.py'.",
            show_default=False,
        ),
    ] = None,
    text_field: Annotated[
        str,
        typer.Option(
            "--text-field", help="The text field of .jsonl records, .parquet rows and hub records."
        ),
    ] = "text",
    subset: Annotated[
        str | None,
        typer.Option(
            "--subset", help="Hub dataset configuration, e.g. sample-10BT.", show_default=False
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Hub dataset split.")] = "train",
    max_tokens: Annotated[
        str | None,
        typer.Option(
            "--max-tokens",
            help="Stop once this many tokens are written (e.g. 120M).",
            show_default=False,
        ),
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction",
            help="Share of the documents held out for validation (whole documents).",
        ),
    ] = 0.05,
    seed: Annotated[
        int,
        typer.Option("--seed", help="Seed of the validation split and of the tokenizer's sample."),
    ] = 0,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Tokenising processes (default: every core; at most 4 per core).",
            show_default=False,
        ),
    ] = None,
    tokenizer_sample: Annotated[
        str,
        typer.Option(
            "--tokenizer-sample",
            help="Characters of text a train:VOCAB tokenizer is trained on "
            "(drawn across the corpus).",
        ),
    ] = "100M",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing prepared dataset at --out (refused if --out holds "
            "other files).",
        ),
    ] = False,
    json: common.JsonOpt = False,
) -> None:
    """Tokenise SOURCE... into DIR: train.bin/val.bin (nanoGPT's format) and meta.json."""
    from racli.dataprep.prepare import (
        ConsoleProgress,
        PrepareSettings,
        interrupted_text,
        parse_count,
        stoppable,
        summary_text,
    )
    from racli.dataprep.prepare import prepare as run_prepare

    settings = PrepareSettings(
        sources=list(sources),
        out=out,
        tokenizer=tokenizer,
        globs=list(glob or []),
        text_field=text_field,
        subset=subset,
        split=split,
        max_tokens=parse_count(max_tokens, "--max-tokens"),
        val_fraction=val_fraction,
        seed=seed,
        workers=workers,
        force=force,
        tokenizer_sample_bytes=parse_count(tokenizer_sample, "--tokenizer-sample"),
    )
    try:
        meta = stoppable(lambda: run_prepare(settings, ConsoleProgress()))
    except KeyboardInterrupt:
        raise Interrupted(interrupted_text(settings.out)) from None
    if json:
        common.print_json(meta)
        return
    typer.echo(summary_text(out, meta))
