"""`ra bench` and its harness `racli.bench`, on the CPU at the tiny shape.

Only one configuration in this file really compiles (compile on the CPU is
slow); one more calls `torch.compile` past dynamo's recompile limit, where nothing
compiles, and the other compile rows go through a stand-in for `torch.compile`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from racli.bench import harness, inputs
from racli.bench.ranking import TimingRow, best_vs_best
from racli.cli import app
from racli.config.schema import BenchShape
from racli.errors import BadInput
from racli.store.engine import open_store
from racli.store.queries import list_runs, run_details

TINY = BenchShape(batch=2, seq=64, heads=4, head_dim=32)  # ra.yaml's `tiny`
FAST = ["--repeats", "3", "--warmup", "1"]
VARIANTS = ("baseline", "ra_v5", "ra_v5_untied", "ra_beta", "sdpa_gate")
CUDA = torch.cuda.is_available()


def invoke(*args: str):
    return CliRunner().invoke(app, ["bench", *args])


def runs_in(db) -> list:
    store = open_store(str(db))
    try:
        return list_runs(store)
    finally:
        store.close()


def details(db, run_id: int) -> dict:
    store = open_store(str(db))
    try:
        return run_details(store, run_id)
    finally:
        store.close()


@pytest.fixture
def fake_compile(monkeypatch):
    """torch.compile stand-in: records its arguments, returns the module unchanged."""
    calls: list[dict] = []

    def fake(module, **kw):
        calls.append(kw)
        return module

    monkeypatch.setattr(torch, "compile", fake)
    return calls


# ---------------------------------------------------------------- FLOPs


def test_block_flops_formula_at_gpt2_shape():
    B, T, H, D = 8, 1024, 12, 64
    C = H * D
    proj = 2 * B * T * C * (3 * C) + 2 * B * T * C * C
    attn_full = 2 * B * H * T * T * D + 2 * B * H * T * T * D
    fwd = proj + attn_full // 2
    assert inputs.block_flops(B, T, H, D, "fwd") == fwd == 51_539_607_552
    assert inputs.block_flops(B, T, H, D, "fwd_bwd") == 3 * fwd
    assert inputs.block_flops(B, T, H, D, "fwd", causal=False) == proj + attn_full
    with pytest.raises(ValueError):
        inputs.block_flops(B, T, H, D, "bwd")


def test_tflops_from_median():
    assert inputs.tflops(2_000_000_000_000, 1000.0) == pytest.approx(2.0)
    assert inputs.tflops(10**12, 0.5) == pytest.approx(2000.0)
    assert inputs.tflops(10**12, None) is None
    assert inputs.tflops(10**12, 0.0) is None


# ---------------------------------------------------------------- input parsing


def test_parse_shape_presets_and_explicit():
    presets = {"tiny": TINY}
    assert inputs.parse_shape("tiny", presets) == ("tiny", TINY)
    name, shape = inputs.parse_shape(" 8, 1024 ,12,64", presets)
    assert name == "8,1024,12,64"
    assert (shape.batch, shape.seq, shape.heads, shape.head_dim) == (8, 1024, 12, 64)


@pytest.mark.parametrize(
    "text", ["huge", "1,2,3", "1,2,3,4,5", "0,64,4,32", "a,b,c,d", "2,64,4,1", ""]
)
def test_parse_shape_rejects(text):
    with pytest.raises(BadInput):
        inputs.parse_shape(text, {"tiny": TINY})


def test_parse_modes_phases_attns():
    assert inputs.parse_modes("all") == ["eager", "compile", "cuda_graph"]
    assert inputs.parse_modes("compile,eager,compile") == ["compile", "eager"]
    assert inputs.parse_modes(["eager"]) == ["eager"]
    assert inputs.parse_phases("both") == ["fwd", "fwd_bwd"]
    assert inputs.parse_phases("fwd_bwd") == ["fwd_bwd"]
    assert inputs.parse_attns("ra_v5,baseline", {"baseline": 1, "ra_v5": 2}) == [
        "ra_v5",
        "baseline",
    ]
    for bad in (
        lambda: inputs.parse_modes("eager,jit"),
        lambda: inputs.parse_modes(""),
        lambda: inputs.parse_phases("bwd"),
        lambda: inputs.parse_attns("flash", {"baseline": 1}),
        lambda: harness.check_sdpa_backend("xformers"),
        lambda: inputs.resolve_dtype("int8", "cpu"),
        lambda: harness.resolve_device("tpu"),
    ):
        with pytest.raises(BadInput):
            bad()


def test_dtype_and_device_defaults():
    assert inputs.resolve_dtype(None, "cpu") == "float32"
    assert inputs.resolve_dtype(None, "cuda") == "float16"
    assert inputs.resolve_dtype("bf16", "cpu") == "bfloat16"
    assert harness.resolve_device("cpu") == "cpu"
    assert harness.resolve_device("auto") == ("cuda" if CUDA else "cpu")


@pytest.mark.skipif(CUDA, reason="checks a machine without CUDA")
def test_resolve_device_cuda_absent_is_bad_input():
    with pytest.raises(BadInput, match="CUDA is not available"):
        harness.resolve_device("cuda")


# ---------------------------------------------------------------- modules


@pytest.mark.parametrize("attn", VARIANTS)
def test_fresh_modules_have_identical_weights(attn):
    a = inputs.build_module(attn, TINY, seed=0).state_dict()
    torch.randn(100)  # global RNG use in between must not matter
    b = inputs.build_module(attn, TINY, seed=0).state_dict()
    c = inputs.build_module(attn, TINY, seed=1).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(
        not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 8
    )
    x1, g1 = inputs.make_inputs(TINY, seed=0)
    x2, g2 = inputs.make_inputs(TINY, seed=0)
    assert torch.equal(x1, x2) and torch.equal(g1, g2) and x1.shape == (2, 64, 128)


@pytest.mark.slow
@pytest.mark.parametrize("attn", VARIANTS)
def test_detect_backend_sees_the_kernel_that_ran(attn):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = inputs.build_module(attn, TINY).eval()
    x, _ = inputs.make_inputs(TINY)

    def step():
        with torch.no_grad():
            m(x)

    assert harness.detect_backend(step) == "cpu_flash"
    with sdpa_kernel([SDPBackend.MATH]):
        assert harness.detect_backend(step) == "math"
    assert harness.detect_backend(lambda: torch.ones(3) * 2) == "none"


# ---------------------------------------------------------------- time_config


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["fwd", "fwd_bwd"])
def test_time_config_eager_row(phase):
    row = harness.time_config("ra_v5", "eager", phase, TINY, repeats=5, warmup=1)
    assert row.status == "ok" and row.reason is None
    assert (row.attn, row.mode, row.phase) == ("ra_v5", "eager", phase)
    assert (row.batch, row.seq, row.heads, row.head_dim) == (2, 64, 4, 32)
    assert (row.dtype, row.device, row.iters) == ("float32", "cpu", 5)
    assert 0 < row.p10_ms <= row.median_ms <= row.p90_ms
    assert row.backend == "cpu_flash"
    assert row.compile_s is None
    assert len(row.samples) == 5 and row.median_ms == pytest.approx(np.median(row.samples))
    flops = inputs.block_flops(2, 64, 4, 32, phase)
    assert row.tflops == pytest.approx(flops / (row.median_ms * 1e-3) / 1e12)
    assert set(row.record()) == {
        "attn",
        "mode",
        "phase",
        "batch",
        "seq",
        "heads",
        "head_dim",
        "dtype",
        "device",
        "median_ms",
        "p10_ms",
        "p90_ms",
        "iters",
        "tflops",
        "status",
        "reason",
        "backend",
        "compile_s",
        "samples",
    }


@pytest.mark.parametrize("attn", VARIANTS)
def test_fwd_bwd_step_grads_every_parameter_and_the_input(attn):
    m = inputs.build_module(attn, TINY).train()
    x, dout = inputs.make_inputs(TINY)
    x.requires_grad_(True)
    out = harness.make_step(m, x, dout, "fwd_bwd")()
    assert out.shape == x.shape
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None, name
    x.grad = None
    out = harness.make_step(m, x, dout, "fwd")()
    assert not out.requires_grad and x.grad is None


def test_compile_mode_uses_dynamic_false_and_records_compile_time(fake_compile):
    row = harness.time_config("ra_v5", "compile", "fwd_bwd", TINY, repeats=2, warmup=0)
    assert row.status == "ok" and row.compile_s is not None
    assert fake_compile == [{"dynamic": False}]


@pytest.mark.skipif(CUDA, reason="checks a machine without CUDA")
@pytest.mark.parametrize("phase", ["fwd", "fwd_bwd"])
def test_cuda_graph_on_cpu_is_skipped_with_reason(phase):
    row = harness.time_config("baseline", "cuda_graph", phase, TINY, repeats=3, warmup=1)
    assert row.status == "skipped"
    assert "CUDA" in row.reason
    assert row.median_ms is None and row.tflops is None


def test_forced_backend_math_runs_and_unavailable_backend_is_skipped():
    row = harness.time_config(
        "baseline", "eager", "fwd", TINY, repeats=3, warmup=1, sdpa_backend="math"
    )
    assert row.status == "ok" and row.backend == "math"
    row = harness.time_config(
        "ra_v5", "eager", "fwd_bwd", TINY, repeats=3, warmup=1, sdpa_backend="efficient"
    )
    if CUDA:  # pragma: no cover - the efficient kernel exists on CUDA
        return
    assert row.status == "skipped"
    assert row.backend == "efficient"
    assert row.reason.startswith("SDPA backend 'efficient' unavailable")
    assert "\n" not in row.reason


def test_forced_backend_reason_is_torchs_most_specific_line():
    import warnings

    def step():  # what a forced kernel that cannot serve the inputs does on CUDA
        warnings.warn("Flash attention kernel not used because:", stacklevel=1)
        warnings.warn(
            "Flash attention requires q,k,v to have the same last dimension", stacklevel=1
        )
        raise RuntimeError("No available kernel. Aborting execution.\nmore")

    with pytest.raises(
        harness._Skip, match="'flash' unavailable .*: Flash attention requires q,k,v"
    ):
        harness._probe(step, "flash")

    def bare():
        raise RuntimeError("No available kernel. Aborting execution.\nmore")

    with pytest.raises(
        harness._Skip, match=r"unavailable .*: No available kernel\. Aborting execution\.$"
    ):
        harness._probe(bare, "cudnn")


def test_compile_failure_is_a_failed_row(monkeypatch):
    def broken(module, **kw):
        raise RuntimeError("backend exploded\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    row = harness.time_config("baseline", "compile", "fwd", TINY, repeats=3, warmup=1)
    assert row.status == "failed"
    assert row.reason == "RuntimeError: backend exploded"


def test_a_compile_row_past_the_recompile_limit_fails_rather_than_time_eager():
    """Past dynamo's recompile limit the compiled block would run eager: the row fails
    with the reason instead of timing eager code as compiled."""
    with torch._dynamo.config.patch(recompile_limit=0):  # the first compilation is past it
        row = harness.time_config("baseline", "compile", "fwd", TINY, repeats=3, warmup=1)
    assert row.status == "failed" and row.median_ms is None
    assert row.reason.startswith("RecompileLimitHit: this block reached dynamo's recompile")


# ---------------------------------------------------------------- best vs best


def _r(attn, mode, phase, ms, status="ok", backend="flash"):
    return TimingRow(
        attn,
        mode,
        phase,
        median_ms=ms,
        p10_ms=ms,
        p90_ms=ms,
        status=status,
        backend=backend,
        batch=2,
        seq=64,
        heads=4,
        head_dim=32,
        dtype="float32",
        device="cpu",
    )


def test_best_vs_best_selection():
    rows = [
        _r("baseline", "eager", "fwd", 1.33),
        _r("baseline", "compile", "fwd", 1.15),
        _r("baseline", "cuda_graph", "fwd", 1.06),
        _r("ra_v5", "eager", "fwd", 1.33),
        _r("ra_v5", "compile", "fwd", 1.02),
        _r("ra_v5", "cuda_graph", "fwd", None, status="skipped", backend=None),
        _r("ra_v5", "cuda_graph", "fwd", 0.5, status="failed"),  # never counts
        _r("baseline", "eager", "fwd_bwd", 4.0),
        _r("ra_v5", "eager", "fwd_bwd", 5.0),
        _r("ra_v5", "compile", "fwd_bwd", 4.4),
        _r("ra_v5", "eager", "fwd_bwd", 1.0, backend="math"),  # other backend: not compared
    ]
    best = best_vs_best(rows)
    by = {(b["phase"], b["backend"], b["attn"]): b for b in best}
    assert by[("fwd", "flash", "baseline")]["best_mode"] == "cuda_graph"
    assert by[("fwd", "flash", "ra_v5")]["best_mode"] == "compile"
    assert by[("fwd", "flash", "ra_v5")]["ratio"] == pytest.approx(1.02 / 1.06)
    assert "parity" in by[("fwd", "flash", "ra_v5")]["wording"]
    assert by[("fwd_bwd", "flash", "ra_v5")]["ratio"] == pytest.approx(1.1)
    assert "within 15%" in by[("fwd_bwd", "flash", "ra_v5")]["wording"]
    assert by[("fwd_bwd", "math", "ra_v5")]["ratio"] is None


def test_baseline_eager_ratio():
    rows = [
        _r("baseline", "eager", "fwd", 2.0),
        _r("ra_v5", "compile", "fwd", 1.0),
        _r("ra_v5", "compile", "fwd", 1.0, backend="math"),
    ]
    assert harness.baseline_eager_ratio(rows[0], rows) == pytest.approx(1.0)
    assert harness.baseline_eager_ratio(rows[1], rows) == pytest.approx(0.5)
    assert harness.baseline_eager_ratio(rows[2], rows) is None


# ---------------------------------------------------------------- the command


@pytest.mark.slow
@pytest.mark.skipif(CUDA, reason="checks a machine without CUDA")
def test_cli_modes_all_on_cpu_with_a_real_compile(tmp_path):
    db = tmp_path / "ra.db"
    res = invoke(
        "--modes",
        "all",
        "--attn",
        "baseline",
        "--phase",
        "fwd",
        "--shape",
        "tiny",
        *FAST,
        "--db",
        str(db),
        "--tag",
        "t1",
    )
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "1. baseline eager fwd " in out and "ms/iter" in out
    assert "2. baseline compile fwd " in out
    assert "3. baseline cuda_graph fwd " in out and "skipped" in out
    assert "RESULTS" in out and "FAIR COMPARISON (Best vs Best)" in out
    (run,) = runs_in(db)
    assert (run.kind, run.status, run.tag, run.seed) == ("bench", "finished", "t1", 0)
    d = details(db, run.id)
    assert d["environment"] is not None and d["environment"]["fingerprint"]
    cfg = d["config"]
    assert cfg["shape"] == {"batch": 2, "seq": 64, "heads": 4, "head_dim": 32}
    assert (cfg["dtype"], cfg["device"], cfg["sdpa_backend"]) == ("float32", "cpu", "auto")
    assert cfg["modes"] == ["eager", "compile", "cuda_graph"] and cfg["phases"] == ["fwd"]
    assert (cfg["attn"], cfg["repeats"], cfg["warmup"]) == (["baseline"], 3, 1)
    t = {x["mode"]: x for x in d["timings"]}
    assert t["eager"]["status"] == "ok" and t["eager"]["compile_s"] is None
    assert t["compile"]["status"] == "ok" and t["compile"]["compile_s"] > 0
    assert t["cuda_graph"]["status"] == "skipped" and "CUDA" in t["cuda_graph"]["reason"]
    for x in (t["eager"], t["compile"]):
        assert x["iters"] == 3 and x["backend"] == "cpu_flash" and x["tflops"] > 0
        assert (x["batch"], x["seq"], x["heads"], x["head_dim"], x["dtype"], x["device"]) == (
            2,
            64,
            4,
            32,
            "float32",
            "cpu",
        )


@pytest.mark.slow
@pytest.mark.skipif(CUDA, reason="checks a machine without CUDA")
def test_cli_default_attns_every_mode_and_phase(tmp_path, fake_compile):
    db = tmp_path / "ra.db"
    res = invoke("--modes", "all", *FAST, "--db", str(db))
    assert res.exit_code == 0, res.output
    (run,) = runs_in(db)
    rows = details(db, run.id)["timings"]
    order = [(r["attn"], r["mode"], r["phase"]) for r in rows]
    assert order == list(
        harness.plan(["baseline", "ra_v5"], list(inputs.MODES), list(inputs.PHASES))
    )
    for r in rows:
        assert r["status"] == ("skipped" if r["mode"] == "cuda_graph" else "ok"), r
    assert fake_compile == [{"dynamic": False}] * 4
    out = res.stdout
    for i, (a, m, p) in enumerate(order, 1):
        assert f"{i}. {a} {m} {p} " in out
    assert "Best Baseline:" in out and "Best RA v5:" in out and "RA v5 / Baseline:" in out
    assert "[fwd] backend cpu_flash" in out and "[fwd_bwd] backend cpu_flash" in out


def test_cli_plot_draws_the_run_and_a_bad_plot_path_times_nothing(
    tmp_path, fake_compile, monkeypatch
):
    from PIL import Image

    db, png = tmp_path / "ra.db", tmp_path / "bench.png"
    res = invoke("--modes", "all", *FAST, "--db", str(db), "--plot", str(png))
    assert res.exit_code == 0, res.output
    assert f"Plot written to {png}" in res.stdout
    assert Image.open(png).size[0] >= 650  # a panel a phase
    res = invoke("--modes", "eager", "--phase", "fwd", *FAST, "--db", str(db), "--json",
                 "--plot", str(tmp_path / "b.svg"))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["plot"] == str(tmp_path / "b.svg")
    assert (tmp_path / "b.svg").read_text().lstrip().startswith("<?xml")
    before = len(runs_in(db))
    for bad, says in (
        (tmp_path / "no" / "x.png", "does not exist"),
        (tmp_path / "x.txt", "must end in"),
        (db, "must end in"),
    ):
        res = invoke("--modes", "eager", *FAST, "--db", str(db), "--plot", str(bad))
        assert res.exit_code == 2 and says in res.stderr, res.output
    assert len(runs_in(db)) == before  # refused before anything was timed or recorded

    # nothing timed (every compile failed): the run is recorded, the plot is not written
    def broken(module, **kw):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    pdf = tmp_path / "none.pdf"
    res = invoke("--modes", "compile", *FAST, "--db", str(db), "--plot", str(pdf))
    assert res.exit_code == 1, res.output  # the failed configurations
    assert "no plot written: no timed configuration" in res.stderr and not pdf.exists()
    assert len(runs_in(db)) == before + 1


def test_cli_failed_configuration_does_not_stop_the_others(tmp_path, monkeypatch):
    def broken(module, **kw):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    db = tmp_path / "ra.db"
    res = invoke("--modes", "eager,compile", "--phase", "fwd", *FAST, "--db", str(db))
    assert res.exit_code == 0, res.output
    (run,) = runs_in(db)
    assert run.status == "finished"
    st = {
        (r["attn"], r["mode"]): (r["status"], r["reason"]) for r in details(db, run.id)["timings"]
    }
    assert st[("baseline", "eager")] == ("ok", None) and st[("ra_v5", "eager")] == ("ok", None)
    assert st[("baseline", "compile")] == ("failed", "RuntimeError: no compiler here")
    assert "FAILED (RuntimeError: no compiler here)" in res.stdout


def test_cli_json(tmp_path):
    db = tmp_path / "ra.db"
    res = invoke(
        "--modes",
        "eager",
        "--attn",
        "baseline,ra_v5",
        "--phase",
        "both",
        "--shape",
        "2,32,2,16",
        "--device",
        "cpu",
        "--sdpa-backend",
        "math",
        *FAST,
        "--db",
        str(db),
        "--json",
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["run_id"] == runs_in(db)[0].id
    assert doc["config"]["shape"] == {"batch": 2, "seq": 32, "heads": 2, "head_dim": 16}
    assert doc["config"]["shape_name"] == "2,32,2,16"
    assert [t["index"] for t in doc["timings"]] == [1, 2, 3, 4]
    assert all(t["status"] == "ok" and t["backend"] == "math" for t in doc["timings"])
    assert {(b["phase"], b["attn"]) for b in doc["best_vs_best"]} == {
        ("fwd", "baseline"),
        ("fwd", "ra_v5"),
        ("fwd_bwd", "baseline"),
        ("fwd_bwd", "ra_v5"),
    }
    assert "1. baseline eager fwd" in res.stderr  # progress goes to stderr with --json


def test_cli_defaults_from_config(tmp_path):
    import yaml

    from racli.config import packaged_config_path

    data = yaml.safe_load(packaged_config_path().read_text())
    data["bench"].update(attn=["sdpa_gate"], modes=["eager"], repeats=2, warmup=0, shape="tiny")
    cfg = tmp_path / "ra.yaml"
    cfg.write_text(yaml.safe_dump(data))
    db = tmp_path / "ra.db"
    res = invoke("--config", str(cfg), "--phase", "fwd", "--db", str(db))
    assert res.exit_code == 0, res.output
    (row,) = details(db, runs_in(db)[0].id)["timings"]
    assert (row["attn"], row["mode"], row["iters"], row["seq"]) == ("sdpa_gate", "eager", 2, 64)


BAD = [
    (["--modes", "eager,jit"], "unknown mode 'jit'"),
    (["--attn", "baseline,flashy"], "unknown attention 'flashy'"),
    (["--shape", "enormous"], "unknown shape 'enormous'"),
    (["--shape", "2,64,4"], "bad shape"),
    (["--phase", "backward"], "unknown phase"),
    (["--dtype", "int8"], "unknown dtype"),
    (["--sdpa-backend", "xformers"], "unknown SDPA backend"),
    (["--device", "tpu"], "unknown device"),
    (["--shape", "2,64,4,4"], "does not fit"),
    (["--repeats", "0"], "--repeats"),
]
if not CUDA:
    BAD += [
        (["--device", "cuda"], "CUDA is not available"),
        (["--modes", "cuda_graph", "--device", "cpu"], "needs CUDA"),
        (["--modes", "eager,cuda_graph"], "needs CUDA"),  # --device auto resolves to cpu here
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_cli_bad_input_exits_2_and_leaves_the_db_alone(tmp_path, args, message):
    db = tmp_path / "ra.db"
    open_store(str(db)).close()  # an existing, empty database
    before = db.read_bytes()
    res = invoke(*FAST, *args, "--db", str(db))
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ra: error:") and message in lines[0], res.stderr
    assert res.stdout == ""
    assert db.read_bytes() == before
    assert runs_in(db) == []


def test_cli_bad_input_creates_no_database(tmp_path):
    db = tmp_path / "new.db"
    res = invoke("--attn", "nope", "--db", str(db))
    assert res.exit_code == 2
    assert not db.exists()


# ---------------------------------------------------------------- interleaving and noise


def test_round_times_configurations_interleaved():
    seen = []
    settings = harness.BenchSettings(
        shape=TINY, repeats=3, warmup=0, in_step=lambda c, i: seen.append((c.attn, i))
    )
    configs = [harness.Config("baseline", "eager", "fwd"), harness.Config("ra_v5", "eager", "fwd")]
    rows = harness.time_round(configs, settings)
    assert [r.status for r in rows] == ["ok", "ok"] and [r.iters for r in rows] == [3, 3]
    # round-robin: repeat i of every configuration before repeat i + 1 of any
    assert seen == [
        ("baseline", 0),
        ("ra_v5", 0),
        ("baseline", 1),
        ("ra_v5", 1),
        ("baseline", 2),
        ("ra_v5", 2),
    ]


@pytest.mark.slow
def test_injected_jitter_is_reported_as_noisy_not_as_a_speed_up(tmp_path, monkeypatch):
    import time

    from racli.commands import bench as command

    def jitter(config, i):  # a busy machine, on one side's repeats only
        if config.attn == "baseline" and i % 2:
            time.sleep(0.2)

    monkeypatch.setattr(command, "IN_STEP", jitter)
    db = tmp_path / "ra.db"
    args = [
        "--modes",
        "eager",
        "--phase",
        "fwd",
        "--shape",
        "1,16,2,8",
        "--repeats",
        "8",
        "--warmup",
        "0",
        "--db",
        str(db),
    ]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    out = res.stdout
    fair = out[out.index("FAIR COMPARISON") :]
    assert "RA v5 / Baseline:" in fair and "noisy" in fair
    assert "✅" not in fair and "faster" not in fair and "overhead" not in fair
    res = invoke(*args, "--json")
    (ra,) = [b for b in json.loads(res.stdout)["best_vs_best"] if b["attn"] == "ra_v5"]
    assert ra["noisy"] and ra["wording"] == "noisy: no mark"
    # ra compare --metric ms follows the same rule
    cmp = CliRunner().invoke(app, ["compare", "--db", str(db), "--metric", "ms"])
    assert cmp.exit_code == 0, cmp.output
    assert "noisy" in cmp.stdout and "✅" not in cmp.stdout
