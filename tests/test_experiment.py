"""`ra experiment`'s pure parts: plan (arms, seeds, order, devices, budgets, key),
calibration statistics, the config_hash of matched-time arms, the sequential
design and its simulation, GPU clock sampling on CPU, and bad input. No training."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from helpers import one_line_error, ra_inprocess
from scipy.special import stdtrit

from racli.errors import BadInput
from racli.experiment import calibrate, plan, sequential
from racli.store.recorder import config_hash

# ---------------------------------------------------------------------------- plan


def test_arms_label_repeated_variants():
    arms = plan.parse_arms("baseline,ra_v5")
    assert [a.label for a in arms] == ["baseline", "ra_v5"]
    aa = plan.parse_arms("baseline, baseline")
    assert [(a.label, a.attn) for a in aa] == [
        ("baseline#1", "baseline"),
        ("baseline#2", "baseline"),
    ]
    three = plan.parse_arms("baseline,ra_v5,baseline")
    assert [a.label for a in three] == ["baseline#1", "ra_v5", "baseline#2"]


@pytest.mark.parametrize("text", ["baseline", "", "baseline,nope"])
def test_arms_bad_input(text):
    with pytest.raises(BadInput):
        plan.parse_arms(text, ("baseline", "ra_v5"))


def test_seeds():
    assert plan.parse_seeds("1-5") == [1, 2, 3, 4, 5]
    assert plan.parse_seeds("1,3,5") == [1, 3, 5]
    assert plan.parse_seeds("7,1-3") == [1, 2, 3, 7]
    for bad in ("", "a-b", "5-1", "1-2-3"):
        with pytest.raises(BadInput):
            plan.parse_seeds(bad)
    # a seed is one replicate of every arm: listing it twice promises runs that never come
    for twice, seed in (("1,1", 1), ("1-3,7,2", 2), ("1-5,4-9", 4)):
        with pytest.raises(BadInput, match=f"seed {seed} is listed twice"):
            plan.parse_seeds(twice)


def test_devices():
    assert plan.parse_devices("0,1", None) == ["cuda:0", "cuda:1"]
    assert plan.parse_devices(None, "cpu") == ["cpu"]
    assert plan.parse_devices(None, None) == ["auto"]
    for devices, device in (("0,0", None), ("x", None), ("0", "cpu")):
        with pytest.raises(BadInput):
            plan.parse_devices(devices, device)


def test_one_device_runs_seed_pairs_a_b_b_a():
    arms = plan.parse_arms("baseline,ra_v5")
    jobs = plan.schedule(arms, [1, 2, 3, 4], 1)
    assert [(j.arm.label, j.seed) for j in jobs] == [
        ("baseline", 1),
        ("ra_v5", 1),
        ("ra_v5", 2),
        ("baseline", 2),
        ("baseline", 3),
        ("ra_v5", 3),
        ("ra_v5", 4),
        ("baseline", 4),
    ]
    assert all(j.device == 0 for j in jobs)


@pytest.mark.parametrize("n_arms,n_dev", [(2, 2), (3, 2), (2, 4), (3, 3)])
def test_devices_rotate_so_every_arm_visits_every_device_equally(n_arms, n_dev):
    arms = plan.parse_arms(",".join(["baseline", "ra_v5", "ra_beta"][:n_arms]))
    seeds = list(range(1, 2 * n_dev + 1))
    jobs = plan.schedule(arms, seeds, n_dev)
    visits = Counter((j.arm.label, j.device) for j in jobs)
    assert set(visits.values()) == {len(seeds) // n_dev}
    assert len(visits) == n_arms * n_dev
    for seed in seeds:  # the arms of one seed run side by side on different devices
        devs = [j.device for j in jobs if j.seed == seed]
        assert len(set(devs)) == min(n_arms, n_dev)
    queues = plan.queues(jobs, n_dev)
    assert sorted(len(q) for q in queues) == [len(jobs) // n_dev] * n_dev


def test_aa_second_arm_trains_on_its_own_seeds():
    arms = plan.parse_arms("baseline,ra_v5,baseline")
    jobs = plan.schedule(arms, [1, 2], 1)
    seeds = {(j.arm.label, j.seed) for j in jobs}
    assert seeds == {
        ("baseline#1", 1), ("baseline#1", 2), ("ra_v5", 1), ("ra_v5", 2),
        ("baseline#2", 1_000_001), ("baseline#2", 1_000_002),
    }  # fmt: skip
    # a variant listed once keeps the experiment's seeds (the pairs of the verdict)
    assert [j.seed for j in plan.schedule(plan.parse_arms("baseline,ra_v5"), [3], 1)] == [3, 3]
    plan.check_aa_seeds(arms, [1, 999_999])
    with pytest.raises(BadInput, match="below 1,000,000"):
        plan.check_aa_seeds(arms, [1_000_000])
    plan.check_aa_seeds(plan.parse_arms("baseline,ra_v5"), [5_000_000])


def test_step_budgets_follow_the_speed_ratio():
    arms = plan.parse_arms("baseline,ra_v5,baseline")
    b = plan.step_budgets(arms, 10, 8.0, {"ra_v5": (0.97, (0.965, 0.975))})
    assert b["baseline#1"].steps == b["baseline#2"].steps == 4800
    assert b["ra_v5"].steps == round(4800 * 0.97)
    assert b["ra_v5"].ratio_ci == (0.965, 0.975)


def test_key_is_stable_and_names_the_comparable_settings():
    arms = plan.parse_arms("baseline,ra_v5")
    k = plan.experiment_key(arms=arms, comparable={"model": {"n_layer": 2}}, minutes=1, tag=None)
    assert k == plan.experiment_key(
        arms=arms, comparable={"model": {"n_layer": 2}}, minutes=1.0, tag=None
    )
    assert k != plan.experiment_key(
        arms=arms, comparable={"model": {"n_layer": 3}}, minutes=1, tag=None
    )
    assert k != plan.experiment_key(
        arms=arms, comparable={"model": {"n_layer": 2}}, minutes=2, tag=None
    )
    assert k != plan.experiment_key(
        arms=arms[::-1], comparable={"model": {"n_layer": 2}}, minutes=1, tag=None
    )


def test_matched_time_arms_share_config_hash():
    arms = plan.parse_arms("baseline,ra_v5")
    budgets = plan.step_budgets(arms, 2, 5.0, {"ra_v5": (0.95, None)})
    common = {"model": {"n_layer": 2}, "train": {"lr": 1e-3}, "device": "cuda"}
    configs = []
    for arm in arms:
        extra = plan.extra_config(
            key="k",
            arm=arm,
            arms=arms,
            budget=budgets[arm.label],
            minutes=2,
            calibration_run=1,
            reference_steps=budgets["baseline"].steps,
        )
        configs.append(
            {
                **common,
                "attn": arm.attn,
                "seed": 1,
                "budget": {"steps": budgets[arm.label].steps},
                **extra,
            }
        )
    assert configs[0]["budget"] != configs[1]["budget"]
    assert config_hash(configs[0]) == config_hash(configs[1])
    # a wall-clock run of the same minutes is another design: not pooled
    assert config_hash({**common, "budget": {"minutes": 2.0}}) != config_hash(configs[0])
    # and a step run without an experiment keeps its own budget in the hash
    assert config_hash({**common, "budget": {"steps": 10}}) != config_hash(
        {**common, "budget": {"steps": 11}}
    )


def test_extra_config_accepts_only_the_experiment_entries():
    assert plan.parse_extra_config('{"experiment": {"key": "k"}}') == {"experiment": {"key": "k"}}
    for bad in ("{", "[]", "{}", '{"model": {}}'):
        with pytest.raises(BadInput):
            plan.parse_extra_config(bad)


# ---------------------------------------------------------------------------- calibration


def _summary(ref, other, precision=0.005, **kw):
    return calibrate.summarise(
        ["baseline", "ra_v5"],
        ["baseline", "ra_v5"],
        {"baseline": list(ref), "ra_v5": list(other)},
        block_steps=10,
        precision=precision,
        timed_s=4.0,
        **kw,
    )


def test_ratio_interval_and_settling():
    rng = np.random.default_rng(0)
    ref = list(0.100 * (1 + rng.normal(0, 0.002, 20)))
    slow = list(0.104 * (1 + rng.normal(0, 0.002, 20)))
    ratio, lo, hi = calibrate.ratio_interval(ref, slow)
    assert lo < ratio < hi and lo < 0.100 / 0.104 < hi
    cal = _summary(ref, slow)
    assert cal.settled and cal.arm("ra_v5").half_width <= 0.005 and cal.halves_agree
    kept = ref[cal.dropped :]
    assert cal.arm("baseline").steps_per_s == pytest.approx(len(kept) / sum(kept))
    # every arm's steps/s is the first arm's times its ratio: a slower arm never reads faster
    assert cal.arm("ra_v5").steps_per_s == pytest.approx(
        cal.arm("baseline").steps_per_s * cal.arm("ra_v5").ratio
    )
    loose = _summary(ref[:3], slow[:3], precision=0.0001)
    assert not loose.settled and "UNSETTLED" in calibrate.state_text(loose)
    back = calibrate.Calibration.from_dict(cal.to_dict())
    assert back.arm("ra_v5").ratio == cal.arm("ra_v5").ratio
    assert (back.dropped, back.halves_agree) == (cal.dropped, cal.halves_agree)


@pytest.mark.parametrize("seed", range(5))
def test_calibration_drops_a_planted_warm_up_drift(seed):
    """The H200's drift: the per-round ratio climbs from 0.96 towards 0.9988 over the first
    rounds. The plain mean of 14 rounds lands near 0.994; the kept rounds within 0.3%."""
    rng = np.random.default_rng(seed)
    r = np.arange(14)
    steady = 0.9988
    q = steady * (1 - 0.04 * np.exp(-r / 1.5)) * np.exp(rng.normal(0, 0.002, 14))
    ref = 0.06 * (1 + 0.05 * np.exp(-r / 2)) * np.exp(rng.normal(0, 0.002, 14))
    cal = _summary(ref, ref / q)
    plain = math.exp(np.log(q).mean())
    assert abs(plain / steady - 1) > 0.004  # what the old calibration used
    assert cal.dropped >= 2
    assert abs(cal.arm("ra_v5").ratio / steady - 1) < 0.003


def test_calibration_with_halves_that_disagree_is_not_settled():
    # a trend through every round: a narrow interval, but the kept halves disagree
    rng = np.random.default_rng(3)
    q = np.linspace(0.98, 1.01, 24) * np.exp(rng.normal(0, 0.0003, 24))
    ref = np.full(24, 0.05)
    cal = _summary(ref, ref / q, precision=0.005)
    h1, h2 = cal.halves["ra_v5"]
    assert abs(h2 / h1 - 1) > 0.005 and cal.arm("ra_v5").half_width < 0.005
    assert not cal.settled and not cal.halves_agree
    assert "halves" in calibrate.state_text(cal)
    assert "UNSETTLED SPEED RATIO" in calibrate.summary_text(cal)


def test_calibration_summary_says_when_whole_rounds_went_past_the_cap():
    ref = np.full(6, 0.05)
    text = calibrate.summary_text(_summary(ref, ref, cap_s=1.2))  # 4.0 s timed
    assert "4.0 s (past its cap of 1.2 s: whole rounds, a minimum of them)" in text
    assert "of at most" not in text
    assert "4.0 s of at most 96 s" in calibrate.summary_text(_summary(ref, ref, cap_s=96.0))


def test_stop_rule_honours_min_rounds_and_the_cap():
    rng = np.random.default_rng(4)
    ref = 0.1 * np.exp(rng.normal(0, 0.05, 2))
    wide = _summary(ref, ref * 1.5)  # two rounds: a wide interval
    assert not wide.settled
    # past the time cap, but fewer rounds than min_rounds: timing goes on
    assert not calibrate.should_stop(wide, min_rounds=3, max_s=1.0)
    assert calibrate.should_stop(wide, min_rounds=2, max_s=1.0)
    assert calibrate.should_stop(wide, min_rounds=3, max_s=1.0, stopped=True)
    steady = _summary(np.full(8, 0.1), np.full(8, 0.1))
    assert steady.settled and calibrate.should_stop(steady, min_rounds=3, max_s=1e9)
    # the cap: a share of the planned training, never more than max_s
    assert calibrate.time_cap(120, 0.1, 2.0, 2, 3) == pytest.approx(72.0)
    assert calibrate.time_cap(120, 0.1, 60.0, 2, 3) == 120.0


def test_variant_ratios_pool_arms_of_one_variant():
    cal = calibrate.summarise(
        ["baseline#1", "ra_v5", "baseline#2"],
        ["baseline", "ra_v5", "baseline"],
        {"baseline#1": [0.1, 0.1], "ra_v5": [0.11, 0.11], "baseline#2": [0.1, 0.1]},
        block_steps=5,
        precision=0.005,
        timed_s=1.0,
    )
    ratios = cal.variant_ratios()
    assert ratios["ra_v5"][0] == pytest.approx(0.1 / 0.11)
    assert ratios["baseline"][0] == pytest.approx(1.0)
    assert ratios["ra_v5"][2] is cal.settled is False  # two rounds: too few kept to settle
    budgets = plan.step_budgets(plan.parse_arms("baseline,ra_v5"), 1, 5.0, ratios)
    assert not budgets["ra_v5"].settled


# ---------------------------------------------------------------------------- sequential


def test_normal_boundaries_spend_exactly_alpha():
    rng = np.random.default_rng(1)
    looks = [2, 4, 6, 8, 10]
    paths = rng.normal(size=(100_000, 10)).cumsum(axis=1)
    z = paths[:, np.array(looks) - 1] / np.sqrt(looks)
    for kind in sequential.SPENDING:
        c = np.array(sequential.boundaries(looks, 0.05, kind))
        assert np.all(np.diff(c) < 0) if kind == "obrien_fleming" else True
        crossed = (np.abs(z) > c).any(axis=1).mean()
        assert crossed == pytest.approx(0.05, abs=0.004)


def test_t_levels_spend_alpha_for_the_t_statistic():
    rng = np.random.default_rng(7)  # another stream than the design's own
    looks = [2, 4, 6]
    levels = sequential.t_levels(looks, 0.05)
    x = rng.standard_normal((100_000, 6))
    crossed = np.zeros(len(x), dtype=bool)
    for n, p in zip(looks, levels):
        t = np.abs(x[:, :n].mean(1)) / (x[:, :n].std(1, ddof=1) / np.sqrt(n))
        crossed |= t > stdtrit(n - 1, 1 - p / 2)
    assert crossed.mean() == pytest.approx(0.05, abs=0.004)


def test_design_looks_and_confidence():
    d = sequential.Design.plan(2, 9)
    assert d.looks == [2, 4, 6, 8, 9]
    conf = [d.confidence(n) for n in d.looks]
    assert all(a > b for a, b in zip(conf, conf[1:]))  # O'Brien-Fleming: strict early
    assert 0.95 < conf[-1] < 0.97
    assert d.next_look(4) == 6 and d.next_look(9) is None
    with pytest.raises(ValueError):
        sequential.Design.plan(1, 5)


def real_rules(paired: bool = True, threshold: float = 0.01):
    """The verdict rules of `ra compare` themselves (racli.compare.stats.outcomes, what
    compare_runs calls), vectorised over histories."""
    from racli.compare.stats import outcomes

    def judge(c, b, confidence):
        return outcomes(c, b, paired=paired, threshold=threshold, confidence=confidence)

    return judge


@pytest.mark.parametrize("paired", [True, False])
def test_simulation_aa_false_win_lose_at_most_5_percent(paired):
    design = sequential.Design.plan(2, 10)
    r = sequential.simulate(real_rules(paired), design, noise=0.007, histories=4000, rng_seed=3)
    assert r.rate("WIN", "LOSE") <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 4000), r.outcomes
    naive = sequential.simulate(
        real_rules(paired),
        None,
        looks=design.looks,
        confidence=0.95,
        noise=0.007,
        histories=4000,
        rng_seed=3,
    )
    assert naive.rate("WIN", "LOSE") > 0.08  # what repeated 95% looks would do


@pytest.mark.slow
@pytest.mark.parametrize("correlation", [0.0, 0.5, 0.9])
def test_simulation_real_rules_spend_at_most_5_percent(correlation):
    design = sequential.Design.plan(2, 10)
    r = sequential.simulate(
        real_rules(True), design, noise=0.007, correlation=correlation, histories=40_000,
        rng_seed=13,
    )  # fmt: skip
    assert r.rate("WIN", "LOSE") <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 40_000), r.outcomes


def test_simulation_planted_3_percent_is_found():
    design = sequential.Design.plan(2, 10)
    r = sequential.simulate(
        real_rules(True), design, effect=0.03, noise=0.007, histories=2000, rng_seed=4
    )
    assert r.rate("LOSE") >= 0.99  # a 3% higher loss: LOSE
    assert np.median(r.seeds_used) <= 6


def test_simulation_matches_compare_runs_history_by_history():
    from racli.compare.verdict import Design, Sample, compare_runs

    design = sequential.Design.plan(2, 6)
    rng = np.random.default_rng(8)
    c, b = sequential.draw(rng, 60, 6, effect=-0.01, noise=0.007, correlation=0.5)
    for n in design.looks:
        conf = design.confidence(n)
        fast = real_rules(True)(c[:, :n], b[:, :n], conf)
        for i in range(len(c)):
            cs = [Sample(100 + k, k, float(v), None) for k, v in enumerate(c[i, :n])]
            bs = [Sample(k, k, float(v), None) for k, v in enumerate(b[i, :n])]
            v = compare_runs(cs, bs, confidence=conf, wall_clock=False, design=Design(True, "test"))
            assert v.outcome == fast[i]


# ---------------------------------------------------------------------------- clocks


def test_clock_sampler_is_silent_on_cpu():
    from racli.store.clocks import medians
    from racli.training.clocks import ClockSampler

    s = ClockSampler("cpu")
    assert not s.available and s.sample() == {}
    assert medians({"sm_clock_mhz": [1980, 1755, 1980], "other": [1.0]}) == {"sm_clock_mhz": 1980}


def test_runs_show_prints_clock_medians(tmp_path):
    from helpers import record_run

    from racli.store.engine import open_store

    db = tmp_path / "ra.db"
    store = open_store(str(db))
    rid = record_run(store)
    from racli.store.recorder import RunRecorder

    rec = RunRecorder(store, rid, heartbeat=False)
    for step, clock in ((10, 1980.0), (20, 1755.0), (30, 1980.0)):
        rec.metrics(step, {"sm_clock_mhz": clock, "power_w": 650.0, "temp_c": 61.0})
    rec.flush()
    store.close()
    res = ra_inprocess("runs", "show", rid, "--db", db)
    assert res.exit_code == 0, res.stderr
    assert "SM clock 1980 MHz, power 650 W, temperature 61 C" in res.stdout


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--attn", "baseline", "--seeds", "1-2", "--minutes", "1"], "at least two variants"),
        (
            ["--attn", "baseline,nope", "--seeds", "1-2", "--minutes", "1"],
            "unknown attention 'nope'",
        ),
        (["--attn", "baseline,ra_v5", "--seeds", "2-1", "--minutes", "1"], "runs backwards"),
        (
            [
                "--attn",
                "baseline,ra_v5",
                "--seeds",
                "1-2",
                "--minutes",
                "1",
                "--devices",
                "0",
                "--device",
                "cpu",
            ],
            "not both",
        ),
        (
            [
                "--attn",
                "baseline,ra_v5",
                "--seeds",
                "1-2",
                "--minutes",
                "1",
                "--set",
                "experiment.nope=1",
            ],
            "experiment.nope",
        ),
        (
            [
                "--attn",
                "baseline,ra_v5",
                "--seeds",
                "1-2",
                "--minutes",
                "1",
                "--report",
                "/no/such/dir/r.md",
            ],
            "does not exist",
        ),
        (
            ["--attn", "baseline,ra_v5", "--seeds", "1-2", "--minutes", "0", "--device", "cpu"],
            "--minutes must be a positive",
        ),
        (
            [
                "--attn",
                "baseline,ra_v5",
                "--seeds",
                "1-2",
                "--minutes",
                "1",
                "--device",
                "cpu",
                "--until-settled",
            ],
            "--max-seeds",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, needle):
    res = ra_inprocess("experiment", "--db", tmp_path / "ra.db", *args)
    assert needle in one_line_error(res)


def test_help_does_not_import_torch():
    code = (
        "import sys; from racli.cli import app; from typer.testing import CliRunner; "
        "r = CliRunner().invoke(app, ['experiment', '--help']); "
        "assert r.exit_code == 0 and 'until-settled' in r.stdout, r.stdout; "
        "assert 'calibration_max_share' in r.stdout, r.stdout; "
        "assert 'torch' not in sys.modules"
    )
    from helpers import run_python

    res = run_python(code)
    assert res.returncode == 0, res.stderr


def test_sigint_is_forwarded_once_to_children():
    import os
    import signal
    import threading
    import time

    from racli.training.stopping import stop_on_signals

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process (a background job)")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\ntry:\n time.sleep(30)\nexcept KeyboardInterrupt:\n raise SystemExit(130)",
        ],
        start_new_session=True,
    )

    stop = threading.Event()
    time.sleep(0.3)  # let the child install Python's SIGINT handler
    with stop_on_signals(stop, [child]):
        os.kill(os.getpid(), signal.SIGINT)
        assert child.wait(timeout=20) == 130
    assert stop.is_set()


def test_live_view_draws_runs_devices_and_verdict():
    import io

    from racli.experiment.view import make_view

    stream = io.StringIO()
    view = make_view(stream, live=True)
    view.phase("training 2 arms x 2 seeds")
    view.state.total = 4
    view.started("cuda:0", "ra_v5 seed 1 (run 3)", 700)
    view.step("cuda:0", 350)
    view.state.done = 1
    view.finished("cuda:0", "ra_v5 seed 1 (run 3)", "finished", "val_loss 1.5606")
    view.verdict(["ra_v5 vs baseline: INCONCLUSIVE (d +0.10%, 1 vs 1 runs)"])
    view.close()
    view.close()  # idempotent
    out = stream.getvalue()
    assert "ra_v5 seed 1 (run 3): finished val_loss 1.5606" in out
    assert "1/4 runs done" in out and "interim, not a verdict: ra_v5 vs baseline" in out
    assert "verdict so far" not in out


def test_an_interim_line_without_an_interval_says_so():
    """The interim line names the method of its interval, or says there is none yet
    (one run a side), rather than printing the estimate's internal name."""
    import types

    from racli.experiment.judge import ArmVerdict

    side = types.SimpleNamespace(n=1, diverged=0, failed=0)
    v = types.SimpleNamespace(
        outcome="INCONCLUSIVE", improvement=0.0078, interval=None, confidence=0.95,
        method="none", candidate=side, baseline=side,
    )  # fmt: skip
    line = ArmVerdict("ra_v5", "baseline", types.SimpleNamespace(verdict=v)).short()
    assert (
        line == "ra_v5 vs baseline: INCONCLUSIVE (improvement +0.78%, no interval yet, 1 vs 1 runs)"
    )
    v.interval, v.method, side.n = (-0.0163, 0.0161), "paired", 4
    line = ArmVerdict("ra_v5", "baseline", types.SimpleNamespace(verdict=v)).short()
    assert "95.0% interval [-1.63%, +1.61%], paired, 4 vs 4 runs)" in line


def test_a_run_named_once_its_id_is_known_is_started_once():
    """A child's run id comes from the store after its start: the panel shows it, the
    plain log keeps one `started` line a run (the finished line names the id)."""
    import io

    from racli.experiment.view import make_view

    for live in (False, True):
        stream = io.StringIO()
        view = make_view(stream, live=live)
        view.started("cuda:0", "baseline seed 1", 2140)
        view.named("cuda:0", "baseline seed 1 (run 2)")
        view.named("cuda:9", "nothing runs there")  # no slot: nothing to name
        assert view.state.slots["cuda:0"].label == "baseline seed 1 (run 2)"
        assert "cuda:9" not in view.state.slots
        view.finished("cuda:0", "baseline seed 1 (run 2)", "finished", "val_loss 2.0905")
        view.close()
        out = stream.getvalue()
        assert out.count("started") == 1, out
        assert "[cuda:0] baseline seed 1: started (2140 steps)" in out
        assert "[cuda:0] baseline seed 1 (run 2): finished val_loss 2.0905" in out


def test_experiment_keys_of_ra_yaml_are_validated():
    from racli.config import ConfigError, apply_overrides, load_config, packaged_config_path

    cfg = load_config(packaged_config_path())
    assert cfg.experiment.calibration_precision == 0.005
    assert cfg.experiment.spending == "obrien_fleming"
    sections = ("model", "train", "experiment")
    ok = apply_overrides(cfg, ["experiment.calibration_max_s=30"], sections=sections)
    assert ok.experiment.calibration_max_s == 30.0
    assert cfg.experiment.calibration_max_share == 0.1
    for bad in (
        "experiment.calibration_precision=0",
        "experiment.spending=haybittle",
        "experiment.calibration_min_rounds=1",
        "experiment.false_decision_rate=0.7",
        "experiment.calibration_max_share=0",
        "experiment.calibration_max_share=1.5",
    ):
        with pytest.raises(ConfigError):
            apply_overrides(cfg, [bad], sections=sections)
