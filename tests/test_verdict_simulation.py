"""The error rates of the verdict rules, simulated through the real decision function
(tools/simulate_verdicts.py, the README table): 0.7% seed noise, threshold 1%.

Rates are Monte Carlo estimates: a bound holds when the estimate is within two
standard errors of it (the README table, from 4000 trials a cell, has the figures)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "simulate_verdicts.py"
TRIALS = 1200
NOISE = 0.007


def _sim():
    spec = importlib.util.spec_from_file_location("simulate_verdicts", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _mc(p: float) -> float:
    return 2 * math.sqrt(p * (1 - p) / TRIALS)


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_false_win_or_lose_at_most_5_percent(n):
    rate = _sim().rate(n, 0.0, ("WIN", "LOSE"), trials=TRIALS, noise=NOISE, seed=100 + n)
    assert rate <= 0.05 + _mc(0.05), rate


@pytest.mark.slow
def test_parity_under_no_effect_at_least_25_percent_at_5_seeds():
    rate = _sim().rate(5, 0.0, ("PARITY",), trials=TRIALS, noise=NOISE, seed=7)
    assert rate >= 0.25 - _mc(0.25), rate


@pytest.mark.slow
def test_win_at_true_3_percent_at_least_90_percent_at_5_seeds():
    rate = _sim().rate(5, 0.03, ("WIN",), trials=TRIALS, noise=NOISE, seed=8)
    assert rate >= 0.90 - _mc(0.90), rate


def test_table_shape_and_markdown():
    sim = _sim()
    rates = sim.table(trials=20, noise=NOISE, sizes=(3,))
    assert list(rates) == [3] and set(rates[3]) == set(sim.COLUMNS)
    text = sim.markdown(rates)
    assert text.splitlines()[0].startswith("| runs a side | false WIN/LOSE")
