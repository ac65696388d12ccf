"""One run's details for `ra runs show` and two side by side for `ra runs diff`."""

from __future__ import annotations

from racli.store import queries
from racli.store.clocks import NAMES as CLOCK_METRICS
from racli.store.clocks import medians
from racli.store.manage import get_runs
from racli.store.run_diff import diff_runs


def show(store, run_id: int) -> dict:
    """Everything about the run (racli.store.queries.run_details) and the medians of its
    recorded GPU clock, power and temperature ("clocks", {} when none were recorded)."""
    d = queries.run_details(store, run_id)
    d["clocks"] = medians(queries.metric_values(store, run_id, CLOCK_METRICS))
    return d


def diff(store, run_a: int, run_b: int) -> dict:
    """The two runs side by side (racli.store.run_diff); both ids checked first."""
    get_runs(store, [run_a, run_b])  # both unknown ids named before any output
    return diff_runs(queries.run_details(store, run_a), queries.run_details(store, run_b))
