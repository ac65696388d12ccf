"""`ra bench`: time attention blocks in every mode and compare best vs best.

A thin command over `racli.bench`: it validates every input (before the
database is opened, so bad input never touches it), records one `bench` run
with a `timings` row per configuration, prints a numbered progress line per
configuration as it finishes, then the RESULTS table and the seed's
FAIR COMPARISON (Best vs Best). torch is imported only when the command runs.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from racli.commands import common
from racli.errors import BadInput

AttnOpt = Annotated[
    str | None,
    typer.Option(
        "--attn",
        help="Attention variants, comma list (default from ra.yaml: baseline,ra_v5).",
        show_default=False,
    ),
]
ModesOpt = Annotated[
    str | None,
    typer.Option(
        "--modes",
        help="eager, compile, cuda_graph (comma list) or all (default from ra.yaml: all three).",
        show_default=False,
    ),
]
PhaseOpt = Annotated[str, typer.Option("--phase", help="fwd, fwd_bwd or both.")]
ShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--shape",
        help="A shape preset of ra.yaml (tiny, gpt2, ...) or B,T,H,D "
        "(default from ra.yaml: auto = gpt2 on CUDA, tiny on CPU).",
        show_default=False,
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
        help="Timed repeats per configuration (default from ra.yaml).",
        show_default=False,
    ),
]
WarmupOpt = Annotated[
    int | None,
    typer.Option(
        "--warmup",
        min=0,
        help="Untimed warm-up steps per configuration (default from ra.yaml).",
        show_default=False,
    ),
]
BackendOpt = Annotated[
    str,
    typer.Option(
        "--sdpa-backend",
        help="SDPA kernel: auto (torch's choice), flash, cudnn, efficient or math.",
    ),
]
SeedOpt = Annotated[
    int,
    typer.Option(
        "--seed", help="Seed of the weights and inputs (the same for every configuration)."
    ),
]
TagOpt = Annotated[
    str | None, typer.Option("--tag", help="A label stored with the run.", show_default=False)
]

#: a test hook: called inside the timed region of every repeat (see BenchSettings.in_step)
IN_STEP = None

FLOPS_NOTE = (
    "TFLOP/s from nominal block FLOPs: projections 8*B*T*C^2 + causal attention "
    "2*B*H*T^2*D; fwd_bwd = 3x fwd."
)


def _echo(text: str, err: bool = False) -> None:
    from racli.text.terminal import for_stream, visible

    stream = sys.stderr if err else sys.stdout
    typer.echo(for_stream(visible(text), getattr(stream, "encoding", None)), err=err)
    stream.flush()


def validate(
    *, cfg, attn, modes, phase, shape, dtype, device, repeats, warmup, sdpa_backend
) -> dict:
    """Every input checked and resolved (BadInput on the first bad one); no database."""
    from racli.bench import inputs
    from racli.names import ATTENTION_NAMES, check_sdpa_backend, comma_list, resolve_device

    attns = inputs.parse_attns(attn if attn is not None else cfg.bench.attn, ATTENTION_NAMES)
    explicit_modes = modes is not None
    mode_list = inputs.parse_modes(modes if explicit_modes else cfg.bench.modes)
    phases = inputs.parse_phases(phase)
    backend = check_sdpa_backend(sdpa_backend)
    dev = resolve_device(device)
    if explicit_modes and "cuda_graph" in comma_list(modes) and not dev.startswith("cuda"):
        raise BadInput(
            f"--modes cuda_graph needs CUDA, and this bench runs on {dev} "
            "(--modes all records CUDA-graph rows as skipped instead)"
        )
    dt = inputs.resolve_dtype(dtype, dev)
    shape_text = shape if shape is not None else cfg.bench.shape
    if shape_text == "auto":
        shape_text = "gpt2" if dev.startswith("cuda") else "tiny"
    shape_name, block = inputs.parse_shape(shape_text, cfg.bench.shapes)
    model_kw = {
        "ra_rank": cfg.model.ra_rank,
        "bias": cfg.model.bias,
        "w_std_init": cfg.model.w_std_init,
        "w_rec_init": cfg.model.w_rec_init,
    }
    for a in attns:
        try:
            inputs.block_config(a, block, model_kw)
        except ValueError as exc:
            raise BadInput(f"shape {shape_name} does not fit {a}: {exc}") from exc
    return {
        "attn": attns,
        "modes": mode_list,
        "phases": phases,
        "sdpa_backend": backend,
        "device": dev,
        "dtype": dt,
        "shape_name": shape_name,
        "shape": {
            "batch": block.batch,
            "seq": block.seq,
            "heads": block.heads,
            "head_dim": block.head_dim,
        },
        "repeats": repeats if repeats is not None else cfg.bench.repeats,
        "warmup": warmup if warmup is not None else cfg.bench.warmup,
        "model": model_kw,
    }


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
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Time attention blocks in every mode (eager, compile, cuda_graph) and phase; best vs best.

    Every configuration gets a fresh block with identical weights; rows are
    recorded in one `bench` run (status ok, skipped or failed, with the reason).
    """
    cfg = common.config(config)
    plan_cfg = validate(
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

    from racli.bench import harness
    from racli.bench.ranking import best_vs_best
    from racli.bench.text import bench_progress_line, bench_results, fair_comparison
    from racli.config import BenchShape
    from racli.store.recorder import RunRecorder

    run_config = {**plan_cfg, "seed": seed}
    block = BenchShape(**plan_cfg["shape"])
    shape_info = {**plan_cfg["shape"], "dtype": plan_cfg["dtype"], "device": plan_cfg["device"]}
    settings = harness.BenchSettings(
        shape=block,
        dtype=plan_cfg["dtype"],
        device=plan_cfg["device"],
        repeats=plan_cfg["repeats"],
        warmup=plan_cfg["warmup"],
        sdpa_backend=plan_cfg["sdpa_backend"],
        seed=seed,
        model_kw=plan_cfg["model"],
        in_step=IN_STEP,
    )
    rounds = harness.rounds(plan_cfg["attn"], plan_cfg["modes"], plan_cfg["phases"])
    n_configs = sum(len(r) for r in rounds)

    store = common.open_db(db, cfg)
    rows: list = []
    try:
        rec = RunRecorder.start(store, kind="bench", config=run_config, seed=seed, tag=tag)
        s = plan_cfg["shape"]
        _echo(
            f"ra bench: run {rec.run_id}, shape {plan_cfg['shape_name']} "
            f"(B={s['batch']} T={s['seq']} H={s['heads']} D={s['head_dim']}), "
            f"{plan_cfg['dtype']} on {plan_cfg['device']}, "
            f"SDPA backend {plan_cfg['sdpa_backend']}, {plan_cfg['repeats']} repeats after "
            f"{plan_cfg['warmup']} warm-up, {n_configs} configurations, the "
            "configurations of each phase timed interleaved",
            err=json,
        )
        with rec:
            for configs in rounds:
                _echo(
                    f"  timing {len(configs)} {configs[0].phase} configurations round-robin ...",
                    err=json,
                )
                for row in harness.time_round(configs, settings):
                    rows.append(row)
                    rec.timing(**row.record())
                    line = bench_progress_line(
                        len(rows),
                        row.attn,
                        row.mode,
                        row.phase,
                        row.median_ms,
                        row.status,
                        row.reason,
                        ratio=harness.baseline_eager_ratio(row, rows),
                    )
                    if row.status == "ok" and row.compile_s is not None:
                        what = "compile" if row.mode == "compile" else "capture"
                        line += f"  [{what} {row.compile_s:.2f} s]"
                    _echo(line, err=json)
                rec.flush()
            all_failed = all_configs_failed(rows)
            if all_failed:  # nothing was timed: the run failed (not `finished`)
                rec.end("failed", error=all_failed)
    finally:
        store.close()

    trows = harness.timing_rows(rows)
    best = best_vs_best(trows, noise_ratio=cfg.bench.noise_ratio)
    if json:
        common.print_json(
            {
                "run_id": rec.run_id,
                "config": run_config,
                "timings": [{"index": i, **r.record()} for i, r in enumerate(rows, 1)],
                "best_vs_best": best,
            }
        )
        if all_failed:
            _echo(f"ra: failed: bench run {rec.run_id}: {all_failed}", err=True)
            raise typer.Exit(1)
        return
    _echo("")
    _echo(bench_results(trows, shape_info))
    _echo(FLOPS_NOTE)
    _echo("")
    _echo(fair_comparison(best))
    n_ok = sum(r.status == "ok" for r in rows)
    _echo("")
    _echo(
        f"Recorded bench run {rec.run_id}: {len(rows)} timings ({n_ok} ok) "
        f"in {common.db_location(db, cfg)}"
    )
    if all_failed:
        _echo(f"ra: failed: bench run {rec.run_id}: {all_failed}", err=True)
        raise typer.Exit(1)


def all_configs_failed(rows: list) -> str | None:
    """The error of a bench run in which no configuration was timed and some failed, else None."""
    failed = sum(r.status == "failed" for r in rows)
    if failed == 0 or any(r.status == "ok" for r in rows):
        return None
    return f"every configuration failed or was skipped ({failed} of {len(rows)} failed)"
