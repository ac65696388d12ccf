"""`ra bench`: time attention blocks in every mode and compare best vs best.

Parse -> call -> print over racli.bench.run: every input is checked before the
database is opened; a numbered progress line per configuration as it
finishes, then RESULTS and FAIR COMPARISON (Best vs Best). torch is imported
only when the command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from racli.commands import common, completers
from racli.names import MAX_BENCH_STEPS, check_seed, check_tag
from racli.text.outputs import check_plot_path
from racli.text.terminal import for_stream, visible

AttnOpt = Annotated[
    str | None,
    typer.Option(
        "--attn",
        help="Attention variants, comma list (default from ra.yaml: baseline,ra_v5).",
        show_default=False,
        autocompletion=completers.complete_attentions,
    ),
]
ModesOpt = Annotated[
    str | None,
    typer.Option(
        "--modes",
        help="eager, compile, cuda_graph (comma list) or all (default from ra.yaml: all three).",
        show_default=False,
        autocompletion=completers.complete_modes,
    ),
]
PhaseOpt = Annotated[
    str,
    typer.Option("--phase", help="fwd, fwd_bwd or both.", autocompletion=completers.complete_phase),
]
ShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--shape",
        help="A shape preset of ra.yaml (tiny, gpt2, ...) or B,T,H,D "
        "(default from ra.yaml: auto = gpt2 on CUDA, tiny on CPU).",
        show_default=False,
        autocompletion=completers.complete_shape,
    ),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="float16, bfloat16 or float32 (default: float16 on CUDA, float32 on CPU).",
        show_default=False,
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
RepeatsOpt = Annotated[
    int | None,
    typer.Option(
        "--repeats",
        min=1,
        max=MAX_BENCH_STEPS,
        help="Timed repeats per configuration (default from ra.yaml).",
        show_default=False,
    ),
]
WarmupOpt = Annotated[
    int | None,
    typer.Option(
        "--warmup",
        min=0,
        max=MAX_BENCH_STEPS,
        help="Untimed warm-up steps per configuration (default from ra.yaml).",
        show_default=False,
    ),
]
BackendOpt = Annotated[
    str,
    typer.Option(
        "--sdpa-backend",
        help="SDPA kernel: auto (torch's choice), flash, cudnn, efficient, math, or fa4 (cuDNN's forward, FlashAttention-4's backward; the fa4 extra, compute capability 9.x).",
    ),
]
SeedOpt = Annotated[
    int,
    typer.Option(
        "--seed",
        help="Seed of the weights and inputs (the same for every configuration), 0 to 2^63 - 1.",
    ),
]
TagOpt = Annotated[
    str | None, typer.Option("--tag", help="A label stored with the run.", show_default=False)
]

#: a test hook: called inside the timed region of every repeat (see BenchSettings.in_step)
IN_STEP = None


def _echo(text: str, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    typer.echo(for_stream(visible(text), getattr(stream, "encoding", None)), err=err)
    stream.flush()


def _plot(rows, run_id: int, path: Path) -> Path | None:
    """The bench plot, or None with a note when nothing was timed (the run is recorded:
    a plot that cannot be drawn is not a failure of the timings)."""
    from racli.bench.plots import plot_bench, title

    try:
        return plot_bench(rows, path, title(run_id, rows))
    except ValueError as exc:
        _echo(f"ra: note: no plot written: {exc}", err=True)
        return None


def bench(
    attn: AttnOpt = None,
    modes: ModesOpt = None,
    phase: PhaseOpt = "both",
    shape: ShapeOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = "auto",
    repeats: RepeatsOpt = None,
    warmup: WarmupOpt = None,
    sdpa_backend: BackendOpt = "auto",
    seed: SeedOpt = 0,
    tag: TagOpt = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Also draw every configuration's repeats, a panel per phase (.png, .pdf or .svg).",
            show_default=False,
        ),
    ] = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Time attention blocks in every mode (eager, compile, cuda_graph) and phase; best vs best.

    Every configuration gets a fresh block with identical weights; rows are
    recorded in one `bench` run (status ok, skipped or failed, with the reason).
    """
    from racli.bench import run as bench_run
    from racli.bench.ranking import best_vs_best

    check_seed(seed)
    check_tag(tag)
    check_plot_path(plot)
    cfg = common.config(config)
    common.check_not_input(plot, db, cfg, "--plot")
    p = bench_run.plan(
        cfg=cfg,
        attn=attn,
        modes=modes,
        phase=phase,
        shape=shape,
        dtype=dtype,
        device=device,
        repeats=repeats,
        warmup=warmup,
        sdpa_backend=sdpa_backend,
    )
    store = common.open_db(db, cfg)
    try:
        run_id, rows, failed = bench_run.record_bench(
            store, p, seed=seed, tag=tag, say=lambda line: _echo(line, err=json), in_step=IN_STEP
        )
    finally:
        store.close()
    best = best_vs_best(rows, noise_ratio=cfg.bench.noise_ratio)
    written = _plot(rows, run_id, plot) if plot is not None else None
    if json:
        common.print_json(
            {
                "run_id": run_id,
                "config": {**p, "seed": seed},
                "timings": [{"index": i, **r.record()} for i, r in enumerate(rows, 1)],
                "best_vs_best": best,
                "plot": str(written) if written else None,
            }
        )
    else:
        for block in bench_run.result_blocks(rows, p, best, run_id, common.db_location(db, cfg)):
            _echo(block)
        if written:
            _echo(f"Plot written to {written}")
    if failed:
        _echo(f"ra: failed: bench run {run_id}: {failed}", err=True)
        raise typer.Exit(1)
