"""`ra bench` on CUDA: every mode, both phases, float16 and bfloat16 (needs a GPU)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from racli.bench import harness, inputs
from racli.cli import app
from racli.config.schema import BenchShape
from racli.store.engine import open_store
from racli.store.queries import list_runs, run_details

SMALL = BenchShape(batch=2, seq=256, heads=4, head_dim=64)
KERNELS = {"flash", "cudnn", "efficient", "math"}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("phase", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("mode", ["eager", "compile", "cuda_graph"])
@pytest.mark.parametrize("attn", ["baseline", "ra_v5"])
def test_every_mode_runs_on_cuda(attn, mode, phase, dtype):
    row = harness.time_config(
        attn, mode, phase, SMALL, dtype=dtype, device="cuda", repeats=10, warmup=3
    )
    assert row.status == "ok", row.reason
    assert (row.device, row.dtype, row.iters) == ("cuda", dtype, 10)
    assert 0 < row.p10_ms <= row.median_ms <= row.p90_ms
    assert row.backend in KERNELS
    assert row.tflops > 0
    if mode == "eager":
        assert row.compile_s is None
    else:  # compile time / capture time, recorded apart from the timings
        assert row.compile_s > 0


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["flash", "efficient", "math", "cudnn"])
def test_forced_backend_is_the_one_that_ran(backend):
    row = harness.time_config(
        "baseline",
        "eager",
        "fwd",
        SMALL,
        dtype="float16",
        device="cuda",
        repeats=5,
        warmup=2,
        sdpa_backend=backend,
    )
    if backend == "cudnn" and row.status == "skipped":  # builds without cuDNN attention
        assert row.reason
        return
    assert row.status == "ok", row.reason
    assert row.backend == backend


@pytest.mark.gpu
def test_auto_backend_matches_a_forced_run_of_the_same_kernel():
    auto = harness.time_config(
        "ra_v5", "eager", "fwd_bwd", SMALL, dtype="float16", device="cuda", repeats=5, warmup=2
    )
    assert auto.status == "ok" and auto.backend in KERNELS
    forced = harness.time_config(
        "ra_v5",
        "eager",
        "fwd_bwd",
        SMALL,
        dtype="float16",
        device="cuda",
        repeats=5,
        warmup=2,
        sdpa_backend=auto.backend,
    )
    assert forced.status == "ok" and forced.backend == auto.backend


@pytest.mark.gpu
@pytest.mark.parametrize("attn", ["baseline", "ra_v5", "ra_beta", "sdpa_gate"])
def test_cuda_graph_replays_rewrite_grads_like_one_eager_step(attn):
    dev = torch.device("cuda")
    m = inputs.build_module(attn, SMALL, dtype="float32", device="cuda").train()
    x, dout = inputs.make_inputs(SMALL, dtype="float32", device="cuda")
    x.requires_grad_(True)
    params = list(m.parameters())

    def clear():
        for p in params:
            p.grad = None
        x.grad = None

    step = harness.make_step(m, x, dout, "fwd_bwd")
    clear()
    step()
    want = [p.grad.clone() for p in params] + [x.grad.clone()]
    state: dict = {}
    replay, capture_s = harness._capture(step, clear, "fwd_bwd", dev, 3, state)
    assert capture_s > 0
    replay()
    replay()  # a second replay must not accumulate
    torch.cuda.synchronize()
    got = [p.grad for p in params] + [x.grad]
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_cli_modes_all_on_cuda(tmp_path):
    db = tmp_path / "ra.db"
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "--modes",
            "all",
            "--device",
            "cuda",
            "--shape",
            "2,256,4,64",
            "--repeats",
            "5",
            "--warmup",
            "2",
            "--db",
            str(db),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "FAIR COMPARISON (Best vs Best)" in res.stdout
    store = open_store(str(db))
    try:
        (run,) = list_runs(store)
        d = run_details(store, run.id)
    finally:
        store.close()
    assert run.status == "finished" and d["config"]["dtype"] == "float16"
    rows = d["timings"]
    assert len(rows) == 2 * 3 * 2
    for r in rows:
        assert r["status"] == "ok", r
        assert r["backend"] in KERNELS and r["device"] == "cuda"
    assert {r["mode"] for r in rows} == {"eager", "compile", "cuda_graph"}


@pytest.mark.gpu
def test_cli_explicit_cuda_graph_on_cuda_is_accepted(tmp_path):
    db = tmp_path / "ra.db"
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "--modes",
            "cuda_graph",
            "--attn",
            "baseline",
            "--phase",
            "fwd",
            "--dtype",
            "bfloat16",
            "--shape",
            "2,256,4,64",
            "--repeats",
            "5",
            "--warmup",
            "2",
            "--db",
            str(db),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "1. baseline cuda_graph fwd" in res.stderr
