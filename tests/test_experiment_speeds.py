"""Each arm's speed on each device of an experiment (racli.experiment.speeds), its text
and its report section: pure, no torch, no store."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from racli.experiment import judge, plan, report, text
from racli.experiment.speeds import RunSpeed, by_device


def _runs(device_factor: dict[str, float], ratio: float, seeds: int = 4) -> list[RunSpeed]:
    """The rotation of two arms over the devices: arm j of seed i on device (i + j) mod G,
    each device's speed `device_factor` times a common 500k tokens/s, the candidate at
    `ratio` times the baseline's speed."""
    devices = sorted(device_factor)
    out = []
    for i in range(seeds):
        for j, (arm, r) in enumerate((("baseline", 1.0), ("ra_v5", ratio))):
            d = devices[(i + j) % len(devices)]
            out.append(RunSpeed(arm, d, 500_000 * device_factor[d] * r))
    return out


def test_a_device_effect_cancels_from_the_ratio_on_each_device():
    speeds = by_device(_runs({"cuda:0": 1.0, "cuda:1": 1.025}, 0.99), ["baseline", "ra_v5"])
    assert [d.device for d in speeds] == ["cuda:0", "cuda:1"]
    for d in speeds:  # every arm visited every device, twice over 4 seeds
        assert {a: n for a, (_, n) in d.arms.items()} == {"baseline": 2, "ra_v5": 2}
        assert d.ratios["ra_v5"] == pytest.approx(0.99)
    # the device factors: each device's runs against their arms' medians over both devices
    mid = (1.0 + 1.025) / 2
    assert speeds[0].factor == pytest.approx(1.0 / mid)
    assert speeds[1].factor == pytest.approx(1.025 / mid)
    assert speeds[1].arms["baseline"][0] == pytest.approx(512_500)


def test_one_device_missing_arms_and_empty_speeds():
    one = by_device(_runs({"cuda:0": 1.0}, 1.01), ["baseline", "ra_v5"])
    assert len(one) == 1 and one[0].factor == pytest.approx(1.0)
    assert one[0].ratios["ra_v5"] == pytest.approx(1.01)
    runs = [RunSpeed("ra_v5", "cuda:1", 400.0), RunSpeed("baseline", "cuda:0", 0.0)]
    speeds = by_device(runs, ["baseline", "ra_v5"])  # a run without a speed is left out
    assert [(d.device, d.arms, d.ratios) for d in speeds] == [("cuda:1", {"ra_v5": (400.0, 1)}, {})]
    assert by_device([], ["baseline"]) == []


def _run(arm: str, device: str, tps: float | None, status="finished", host="h1"):
    entry = {"arm": arm, "device": device, "host": host}
    return SimpleNamespace(status=status, tokens_per_s=tps, config={plan.EXPERIMENT_KEY: entry})


def test_device_speeds_from_runs_and_their_texts():
    arms = plan.parse_arms("baseline,ra_v5")
    runs = [
        _run("baseline", "cuda:0", 500.0),
        _run("ra_v5", "cuda:1", 510.0),
        _run("ra_v5", "cuda:0", 495.0),
        _run("baseline", "cuda:1", 515.0),
        _run("baseline", "cuda:1", 900.0, status="failed"),  # only finished runs count
    ]
    speeds = judge.device_speeds(runs, arms)
    assert [(d.device, d.arms["baseline"][0], round(d.ratios["ra_v5"], 4)) for d in speeds] == [
        ("cuda:0", 500.0, 0.99),
        ("cuda:1", 515.0, round(510 / 515, 4)),
    ]
    lines = text.device_speed_lines(speeds, ["baseline", "ra_v5"])
    assert lines[1].startswith("  cuda:0: baseline 500 (1), ra_v5 495 (1) x0.9900; device x")
    outcome = SimpleNamespace(device_speeds=speeds, arms=arms)
    section = "\n".join(report._device_lines(outcome))
    assert (
        "## Speed by device" in section
        and "| device | baseline | ra_v5 | device factor |" in section
    )
    assert "| cuda:1 | 515 (1) | 510 (1) x0.9903 |" in section
    # several hosts: the device is named with its host
    two = judge.device_speeds(
        [_run("baseline", "cuda:0", 1.0, host="a"), _run("baseline", "cuda:0", 1.0, host="b")], arms
    )
    assert [d.device for d in two] == ["a cuda:0", "b cuda:0"]
    assert report._device_lines(SimpleNamespace(device_speeds=speeds[:1], arms=arms)) == []
