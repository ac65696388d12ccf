"""tools/vs_nanogpt.py: the side-by-side harness runs every arm and reports ratios.

A stand-in for a nanoGPT checkout (its interface: GPTConfig, GPT(cfg)(idx, targets)
-> (logits, loss), configure_optimizers(weight_decay, learning_rate, betas,
device_type)) is written into the test's folder; the real comparison runs on the GPU.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "vs_nanogpt.py"

STAND_IN = """
from dataclasses import dataclass, asdict
import torch
from racli_models import GPT as RaGPT, GPTConfig as RaConfig

@dataclass
class GPTConfig:
    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = False

class GPT(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.inner = RaGPT(RaConfig(**asdict(cfg)))

    def forward(self, idx, targets=None):
        return self.inner(idx, targets)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        print("stand-in optimizer")  # nanoGPT prints its groups: kept off stdout
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas,
                                 weight_decay=weight_decay)
"""


def _tool():
    spec = importlib.util.spec_from_file_location("vs_nanogpt", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("json_flag", [False, True])
def test_side_by_side_on_cpu(tmp_path, capsys, monkeypatch, json_flag):
    """The figures go to stdout's last line and to a file: --json's path, or by default
    $OUT/vs_nanogpt.json."""
    (tmp_path / "model.py").write_text(STAND_IN)
    (tmp_path / "out").mkdir()
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    written = tmp_path / "run1.json" if json_flag else tmp_path / "out" / "vs_nanogpt.json"
    args = ["--nanogpt", str(tmp_path), "--device", "cpu", "--preset", "tiny", "--no-compile"]
    args += ["--json", str(written)] if json_flag else []
    args += [
        "--arms",
        "nanogpt,baseline,ra_v5",
        "--batch",
        "1",
        "--steps",
        "2",
        "--rounds",
        "2",
        "--warmup",
        "1",
    ]
    assert _tool().main(args) == 0
    out = capsys.readouterr().out
    assert "stand-in optimizer" not in out
    result = json.loads(out.strip().splitlines()[-1])
    assert json.loads(written.read_text()) == result
    assert list((tmp_path / "out").iterdir()) == ([] if json_flag else [written])
    arms = result["arms"]
    assert list(arms) == ["nanogpt", "baseline", "ra_v5"]
    assert arms["nanogpt"]["params"] == arms["baseline"]["params"]  # the same model
    assert arms["nanogpt"]["speed_vs_nanogpt"] == 1.0
    for a in arms.values():
        assert a["ms_p10"] <= a["ms_median"] <= a["ms_p90"]
        assert a["round_ratio_min"] <= a["round_ratio_max"]
        # tokens/s comes from the unrounded median; the printed ms has 3 decimals
        assert a["tokens_per_s"] == pytest.approx(64 / (a["ms_median"] / 1e3), rel=1e-3)
        assert "sm_clock_mhz_median" not in a  # no clock to read on the CPU
    assert "power_limit_w" not in result and "GPU while each arm ran" not in out


class _FakeSampler:
    """Reads 1, 2, 3, ... as the SM clock and ten times that as the power; its energy
    counter goes up by 1000 mJ a read of it."""

    available = True

    def __init__(self):
        self.n = 0
        self.mj = 0.0

    def sample(self):
        self.n += 1
        return {"sm_clock_mhz": float(self.n), "power_w": 10.0 * self.n, "temp_c": 50.0}

    def energy_mj(self):
        self.mj += 1000.0
        return self.mj


def test_clock_reads_go_to_the_arm_whose_steps_run():
    tool = _tool()
    clocks = tool.ArmClocks(_FakeSampler(), settle=0.0)
    clocks.read()  # between arms: not kept
    with clocks.arm("nanogpt"):
        clocks.read()
        clocks.read()
    clocks.read()
    with clocks.arm("baseline"):
        for _ in range(3):
            clocks.read()
    assert clocks.summary("nanogpt") == {
        "sm_clock_mhz_median": 1.5,
        "power_w_median": 15.0,
        "clock_reads": 2,
    }
    assert clocks.summary("baseline") == {
        "sm_clock_mhz_median": 4.0,
        "power_w_median": 40.0,
        "clock_reads": 3,
    }
    assert clocks.summary("ra_v5") == {}


def test_energy_a_step_is_the_counter_across_an_arms_windows():
    tool = _tool()
    clocks = tool.ArmClocks(_FakeSampler(), settle=60.0)  # no clock reads kept
    for _ in range(2):  # two rounds of 4 steps: the counter goes up 1 J a window
        with clocks.arm("nanogpt", 4):
            pass
    with clocks.arm("baseline"):  # no step count given: no energy kept
        pass
    assert clocks.summary("nanogpt") == {"energy_j_per_step": 0.25}  # 2 J over 8 steps
    assert clocks.summary("baseline") == {}


def test_energy_a_step_carries_the_rounding_of_the_counters_steps():
    """The thread's reads see the counter move (1 J a read here); each window counts one
    move more or less by its phase, so the energy a step has a standard deviation of at
    most sqrt(windows) x move / 2 over the steps."""
    tool = _tool()
    clocks = tool.ArmClocks(_FakeSampler(), settle=60.0)
    clocks.read()  # the first read only starts the count
    assert clocks.counter_steps == []
    clocks.read()
    assert clocks.counter_steps == [1000.0] and clocks.counter_step_mj() == 1000.0
    for _ in range(4):  # four windows of 5 steps, 1 J each
        with clocks.arm("baseline", 5):
            pass
    assert clocks.summary("baseline") == {
        "energy_j_per_step": 0.2,  # 4 J over 20 steps
        "energy_j_per_step_sd": 0.05,  # sqrt(4) x 1 J / 2 / 20
    }
    assert tool.ArmClocks(_FakeSampler()).counter_step_mj() == 0.0  # nothing read yet


def test_the_clock_lines_print_energy_with_its_rounding():
    tool = _tool()
    result = {
        "power_limit_w": 700.0,
        "energy_counter_step_j": 69.03,
        "arms": {
            "nanogpt": {
                "sm_clock_mhz_median": 1665.0,
                "power_w_median": 694.1,
                "clock_reads": 117,
                "energy_j_per_step": 45.31,
                "energy_j_per_step_sd": 0.77,
            },
            "baseline": {"sm_clock_mhz_median": 1635.0, "power_w_median": 693.3, "clock_reads": 9},
            "ra_v5": {"ms_median": 59.5},  # no reads: no line
        },
    }
    lines = tool.clock_lines(result, 0.05)
    assert lines[0] == (
        "GPU while each arm ran (medians over reads every 50 ms; power limit 700 W; "
        "energy counter steps of 69 J):"
    )
    assert lines[1].split() == (
        "nanogpt SM clock 1665 MHz, power 694 W, 45.31 J a step (+-0.77) (117 reads)".split()
    )
    assert lines[2].split() == "baseline SM clock 1635 MHz, power 693 W (9 reads)".split()
    assert len(lines) == 3
    assert tool.clock_lines({"arms": {"ra_v5": {"ms_median": 59.5}}}, 0.05) == []


def test_clock_reads_wait_for_the_power_controller_to_settle():
    tool = _tool()
    clocks = tool.ArmClocks(_FakeSampler(), settle=60.0)
    with clocks.arm("nanogpt"):
        clocks.read()  # within the first minute of the window: the arm before's state
    assert clocks.summary("nanogpt") == {}


def test_the_clock_thread_reads_while_an_arm_runs_and_stops():
    tool = _tool()
    sampler = _FakeSampler()
    with tool.ArmClocks(sampler, period=0.001, settle=0.0) as clocks:
        with clocks.arm("baseline"):
            deadline = time.monotonic() + 5
            while not clocks.samples and time.monotonic() < deadline:
                time.sleep(0.005)
    assert clocks.samples["baseline"] and not clocks._thread.is_alive()


def test_no_clocks_reads_nothing(monkeypatch):
    tool = _tool()
    built = []
    monkeypatch.setattr(tool, "ClockSampler", lambda device: built.append(device))
    tool.clock_sampler("cuda", off=True)
    tool.clock_sampler("cuda", off=False)
    assert built == ["cpu", "cuda"]
    assert "--no-clocks" in tool.__doc__


def test_clock_limits_are_empty_on_cpu():
    from racli.training.clocks import ClockSampler

    assert ClockSampler("cpu").limits() == {}
    assert ClockSampler("cpu").energy_mj() is None


@pytest.mark.slow
def test_bench_py_runs_after_the_arms_gave_their_memory_back(tmp_path, capsys, monkeypatch):
    """nanoGPT's bench.py is another process: the arms' steps (ra's captured graphs), models
    and optimizers are released before it starts, and its ms per iteration is reported."""
    (tmp_path / "model.py").write_text(STAND_IN)
    (tmp_path / "bench.py").write_text("print('time per iteration: 12.50ms, MFU: 1.00%')\n")
    tool = _tool()
    released, seen = [], {}
    real_release, real_bench = tool.TrainStep.release, tool.run_bench_py
    monkeypatch.setattr(
        tool.TrainStep, "release", lambda self: (released.append(self), real_release(self))
    )

    def bench(folder, batch):
        seen["released"] = len(released)
        return real_bench(folder, batch)

    monkeypatch.setattr(tool, "run_bench_py", bench)
    args = ["--nanogpt", str(tmp_path), "--device", "cpu", "--preset", "tiny", "--no-compile"]
    args += ["--arms", "nanogpt,baseline,ra_v5", "--batch", "1", "--steps", "1"]
    assert tool.main(args + ["--rounds", "1", "--warmup", "1", "--bench-py"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert seen == {"released": 2}  # baseline's and ra_v5's steps, before bench.py
    assert result["bench_py"]["ms_per_iter"] == 12.5
    assert result["bench_py"]["tokens_per_s"] == round(64 / 12.5e-3)


@pytest.mark.parametrize(
    "arms, words",
    [
        ("nanogpt,flash9", "unknown arm 'flash9'"),
        ("baseline+oops", "bad setting 'oops'"),
        ("nanogpt+bias=1", "takes no settings but micro"),
        ("nanogpt+micro=0", "not a positive whole number"),
        ("baseline+micro=true", "not a positive whole number"),
        ("baseline+micro=2.5", "not a positive whole number"),
        ("nanogpt+micro=3", "micro=3 in arm 'nanogpt\\+micro=3' does not divide --batch 32"),
        ("baseline,baseline", "distinct arms"),
        ("baseline+sdpa=xformers", "unknown SDPA backend 'xformers'"),
        ("nanogpt+sdpa=fa4", "takes no settings but micro"),
        ("baseline+fa4qkv=true", "is true or false, with sdpa=fa4"),
        ("baseline+sdpa=fa4+fa4qkv=0", "is true or false, with sdpa=fa4"),
        ("baseline+ce.blocks=4096", "loss kernel setting blocks=4096: one of block"),
        ("baseline+ce.reverse=1", "loss kernel setting reverse=1"),
        ("baseline+ce.block=true", "loss kernel setting block=True"),
        ("nanogpt+ce.block=4096", "takes no settings but micro"),
        ("baseline+foldclip=0", "foldclip in arm 'baseline\\+foldclip=0' is true or false"),
        ("nanogpt+foldclip=false", "takes no settings but micro"),
        ("baseline+flat=no", "flat in arm 'baseline\\+flat=no' is true or false"),
        ("nanogpt+flat=false", "takes no settings but micro"),
        ("baseline+inductor.triton.no_such_knob=1", "has no 'inductor.triton.no_such_knob'"),
    ],
)
def test_bad_arms_stop_before_any_work(tmp_path, arms, words):
    with pytest.raises(SystemExit, match=words):
        _tool().main(["--nanogpt", str(tmp_path), "--arms", arms, "--device", "cpu"])


def test_a_json_path_in_no_folder_stops_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match="--json .*: no folder"):
        _tool().main(["--nanogpt", str(tmp_path), "--json", str(tmp_path / "no" / "x.json")])


def test_an_out_folder_that_is_missing_stops_before_any_work(tmp_path, monkeypatch):
    """The default JSON path, $OUT/vs_nanogpt.json, is checked at the start too, not
    after the arms have run."""
    monkeypatch.setenv("OUT", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match=r"\$OUT=.*missing: no folder"):
        _tool().main(["--nanogpt", str(tmp_path), "--device", "cpu"])


@pytest.mark.slow
def test_micro_batches_compare_equal_work(tmp_path, capsys):
    """Arms at different micro-batches train on the same global batch a step, and an
    arm named nanogpt+micro=N is nanoGPT's (the checkout is loaded for it)."""
    (tmp_path / "model.py").write_text(STAND_IN)
    args = ["--nanogpt", str(tmp_path), "--device", "cpu", "--preset", "tiny", "--no-compile"]
    args += ["--arms", "nanogpt+micro=1,baseline+micro=2,ra_v5", "--batch", "4"]
    args += ["--steps", "1", "--rounds", "1", "--warmup", "1"]
    assert _tool().main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["tokens_per_step"] == 4 * 64
    micro = {a: v["micro"] for a, v in result["arms"].items()}
    assert micro == {"nanogpt+micro=1": 1, "baseline+micro=2": 2, "ra_v5": 4}
    assert "speed_vs_nanogpt+micro=1" in result["arms"]["ra_v5"]


@pytest.mark.parametrize("micro", [1, 2])
def test_accumulated_nanogpt_step_is_the_whole_batch_step(micro, monkeypatch):
    """nanoGPT's step in micro-batches (each loss over their count) moves the weights as
    the one-batch step does: the ratio compares the same training, not a cheaper one."""
    from racli_models import GPT, GPTConfig

    tool = _tool()
    monkeypatch.setattr(tool, "CLIP", 1e9)  # clipping would hide a gradient twice too large
    shape = tool.PRESETS["tiny"]
    x = torch.randint(0, shape["vocab_size"], (4, 16))
    y = torch.randint(0, shape["vocab_size"], (4, 16))
    after = []
    for m in (None, micro):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**shape, attn="baseline", bias=False, dropout=0.0)).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        params = list(model.parameters())
        tool.make_step(model, opt, params, "cpu", m)(x, y)
        after.append(torch.cat([p.detach().flatten() for p in params]))
    torch.testing.assert_close(after[1], after[0], rtol=1e-10, atol=1e-12)


def test_missing_checkout_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no model.py in"):
        _tool().main(["--nanogpt", str(tmp_path), "--device", "cpu", "--preset", "tiny"])


def test_out_of_memory_names_the_arms_built(tmp_path, monkeypatch):
    """Each ra arm keeps its captured step's memory, so many arms can fill a GPU: the
    tool says how many were built and what to do, not a traceback."""
    tool = _tool()
    built = tool.build_arm

    def second_fails(arm, *a, **k):
        if arm == "ra_v5":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return built(arm, *a, **k)

    monkeypatch.setattr(tool, "build_arm", second_fails)
    args = ["--nanogpt", str(tmp_path), "--device", "cpu", "--preset", "tiny", "--no-compile"]
    args += ["--arms", "baseline,ra_v5", "--batch", "1", "--steps", "1", "--warmup", "1"]
    with pytest.raises(SystemExit, match=r"out of GPU memory with 1 of 2 arms built .* fewer arms"):
        tool.main(args)


def test_an_arm_names_its_sdpa_backend():
    tool = _tool()
    assert tool.parse_arm("baseline+sdpa=FA4") == ("baseline", {"sdpa": "fa4"})
    assert tool.parse_arm("ra_v5+sdpa=cudnn+micro=8") == ("ra_v5", {"sdpa": "cudnn", "micro": 8})
    qkv = tool.parse_arm("baseline+sdpa=fa4+fa4qkv=true")
    assert qkv == ("baseline", {"sdpa": "fa4", "fa4qkv": True})
    assert tool.parse_arm("ra_v5+foldclip=false") == ("ra_v5", {"foldclip": False})


def test_an_fa4_arm_chooses_its_operator():
    from racli_models import flash4

    tool = _tool()
    default = flash4.QKV
    for fa4qkv in (True, False):
        with tool.autocast_of("cpu", "math", fa4qkv)():
            assert flash4.QKV is fa4qkv
        assert flash4.QKV is default
    with tool.autocast_of("cpu", "math")():
        assert flash4.QKV is default


def test_an_arm_keeps_the_residual_stream_as_b_t_c_in_its_step():
    from racli_models import gpt

    tool = _tool()
    assert tool.parse_arm("ra_v5+flat=false") == ("ra_v5", {"flat": False})
    assert tool.parse_arm("baseline+inductor.triton.mix_order_reduction=false") == (
        "baseline",
        {"inductor.triton.mix_order_reduction": False},
    )
    assert gpt.FLAT is True
    with tool.autocast_of("cpu", "math", None, None, {"flat": False})():
        assert gpt.FLAT is False
    assert gpt.FLAT is True
    with tool.autocast_of("cpu", "math")():
        assert gpt.FLAT is True


def test_an_arm_sets_the_loss_kernel_in_its_step():
    from racli_models import loss

    tool = _tool()
    name, settings = tool.parse_arm("baseline+ce.block=4096+ce.evict=false")
    assert (name, settings) == ("baseline", {"ce.block": 4096, "ce.evict": False})
    before = (loss.CE_BLOCK, loss.CE_EVICT, loss.CE_REVERSE)
    with tool.autocast_of("cpu", "math", None, {"block": 1024, "evict": not before[1]})():
        assert (loss.CE_BLOCK, loss.CE_EVICT, loss.CE_REVERSE) == (1024, not before[1], before[2])
    assert (loss.CE_BLOCK, loss.CE_EVICT, loss.CE_REVERSE) == before


def test_an_arm_computes_gelus_backward_with_torchs_ops_in_its_step():
    from racli_models import gelu_mm

    tool = _tool()
    assert tool.parse_arm("baseline+gelumm=true") == ("baseline", {"gelumm": True})
    with pytest.raises(SystemExit, match="gelumm in arm"):
        tool.parse_arm("baseline+gelumm=2")
    assert tool.parse_arm("ra_v5+gelumm=false") == ("ra_v5", {"gelumm": False})
    assert gelu_mm.KERNEL is True
    with tool.autocast_of("cpu", "math", None, None, {"gelumm": False})():
        assert gelu_mm.KERNEL is False
    assert gelu_mm.KERNEL is True


def test_an_arm_computes_erf_twice_in_its_mlp_forward():
    from racli_models import gelu_mm

    tool = _tool()
    assert tool.parse_arm("ra_v5+sharederf=false") == ("ra_v5", {"sharederf": False})
    with pytest.raises(SystemExit, match="sharederf in arm"):
        tool.parse_arm("baseline+sharederf=2")
    assert gelu_mm.SHARED_ERF is True
    with tool.autocast_of("cpu", "math", None, None, {"sharederf": False})():
        assert gelu_mm.SHARED_ERF is False
    assert gelu_mm.SHARED_ERF is True


def test_an_arm_recomputes_its_layer_norms_in_its_step():
    from racli_models import gpt

    tool = _tool()
    assert tool.parse_arm("ra_v5+lnrecompute=true") == ("ra_v5", {"lnrecompute": True})
    with pytest.raises(SystemExit, match="lnrecompute in arm .* is true or false"):
        tool.parse_arm("baseline+lnrecompute=yes")
    assert tool.parse_arm("baseline+lnform=two_pass") == ("baseline", {"lnform": "two_pass"})
    with pytest.raises(SystemExit, match='lnform in arm .* is "var_mean" or "two_pass"'):
        tool.parse_arm("baseline+lnform=welford")
    before = gpt.LN_RECOMPUTE
    with tool.autocast_of("cpu", "math", None, None, {"lnrecompute": not before})():
        assert gpt.LN_RECOMPUTE is (not before)
    assert gpt.LN_RECOMPUTE is before


def test_an_fa4_arm_that_cannot_run_stops_before_any_arm_compiles(tmp_path, monkeypatch):
    tool = _tool()
    monkeypatch.setattr(tool.flash4, "problem", lambda device=None: "needs the package: gone")
    monkeypatch.setattr(tool, "warm_arm", lambda *a, **k: pytest.fail("an arm was built"))
    with pytest.raises(SystemExit, match="arm 'ra_v5\\+sdpa=fa4': sdpa=fa4 needs the package"):
        tool.main(["--nanogpt", str(tmp_path), "--arms", "baseline,ra_v5+sdpa=fa4"])
