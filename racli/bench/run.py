"""One `ra bench` run: the plan resolved from the options and ra.yaml, the recorded
`bench` run with a `timings` row per configuration, and its text."""

from __future__ import annotations

from collections.abc import Callable

from racli.bench import harness, inputs
from racli.bench.ranking import TimingRow
from racli.bench.text import bench_progress_line, bench_results, fair_comparison
from racli.config.schema import BenchShape
from racli.errors import BadInput
from racli.names import (
    ATTENTION_NAMES,
    FA4,
    check_sdpa_backend,
    comma_list,
    fa4_head_size_ok,
    resolve_device,
)
from racli.store.recorder import RunRecorder

FLOPS_NOTE = (
    "TFLOP/s from nominal block FLOPs: projections 8*B*T*C^2 + causal attention "
    "2*B*H*T^2*D; fwd_bwd = 3x fwd."
)


def _check_fa4(dev: str, dt: str, shape_name: str, head_dim: int) -> None:
    """BadInput when `--sdpa-backend fa4` cannot run here (racli_models.flash4)."""
    from racli_models import flash4

    why = flash4.problem(dev) if dev.startswith("cuda") else "needs a CUDA GPU"
    if why:
        raise BadInput(f"--sdpa-backend fa4 {why}")
    if dt == "float32":
        raise BadInput("--sdpa-backend fa4 runs float16 or bfloat16, not float32")
    if not fa4_head_size_ok(head_dim):
        raise BadInput(
            f"--sdpa-backend fa4 needs a head size in 8..256, a multiple of 8; "
            f"shape {shape_name} has {head_dim}"
        )


def plan(*, cfg, attn, modes, phase, shape, dtype, device, repeats, warmup, sdpa_backend) -> dict:
    """Every input checked and resolved (BadInput on the first bad one); no database."""
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
    if backend == FA4:
        _check_fa4(dev, dt, shape_name, block.head_dim)
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


def _heading(run_id: int, p: dict, n_configs: int) -> str:
    s = p["shape"]
    return (
        f"ra bench: run {run_id}, shape {p['shape_name']} "
        f"(B={s['batch']} T={s['seq']} H={s['heads']} D={s['head_dim']}), "
        f"{p['dtype']} on {p['device']}, "
        f"SDPA backend {p['sdpa_backend']}, {p['repeats']} repeats after "
        f"{p['warmup']} warm-up, {n_configs} configurations, the "
        "configurations of each phase timed interleaved"
    )


def _progress(rows: list[TimingRow]) -> str:
    """The numbered line of the last row."""
    row = rows[-1]
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
    return line


def record_bench(
    store,
    p: dict,
    *,
    seed: int,
    tag: str | None,
    say: Callable[[str], None],
    in_step: Callable | None = None,
) -> tuple[int, list[TimingRow], str | None]:
    """Time every configuration of plan `p` and record them as one `bench` run, saying a
    heading, each round and each row as it finishes. Returns (run id, rows, the run's
    error when no configuration was timed and some failed: the run is then `failed`)."""
    settings = harness.BenchSettings(
        shape=BenchShape(**p["shape"]),
        dtype=p["dtype"],
        device=p["device"],
        repeats=p["repeats"],
        warmup=p["warmup"],
        sdpa_backend=p["sdpa_backend"],
        seed=seed,
        model_kw=p["model"],
        in_step=in_step,
    )
    rounds = harness.rounds(p["attn"], p["modes"], p["phases"])
    rows: list[TimingRow] = []
    rec = RunRecorder.start(store, kind="bench", config={**p, "seed": seed}, seed=seed, tag=tag)
    say(_heading(rec.run_id, p, sum(len(r) for r in rounds)))
    with rec:
        for configs in rounds:
            say(f"  timing {len(configs)} {configs[0].phase} configurations round-robin ...")
            for row in harness.time_round(configs, settings):
                rows.append(row)
                rec.timing(**row.record())
                say(_progress(rows))
            rec.flush()
        failed = all_configs_failed(rows)
        if failed:  # nothing was timed: the run failed (not `finished`)
            rec.end("failed", error=failed)
    return rec.run_id, rows, failed


def all_configs_failed(rows: list) -> str | None:
    """The error of a bench run in which no configuration was timed and some failed, else None."""
    failed = sum(r.status == "failed" for r in rows)
    if failed == 0 or any(r.status == "ok" for r in rows):
        return None
    return f"every configuration failed or was skipped ({failed} of {len(rows)} failed)"


def result_blocks(
    rows: list[TimingRow], p: dict, best_rows: list[dict], run_id: int, location: str
) -> list[str]:
    """The text after the progress lines: RESULTS, the FLOPs note, FAIR COMPARISON and
    where the run was recorded (one block each, blank blocks between)."""
    shape_info = {**p["shape"], "dtype": p["dtype"], "device": p["device"]}
    n_ok = sum(r.status == "ok" for r in rows)
    return [
        "",
        bench_results(rows, shape_info),
        FLOPS_NOTE,
        "",
        fair_comparison(best_rows),
        "",
        f"Recorded bench run {run_id}: {len(rows)} timings ({n_ok} ok) in {location}",
    ]
