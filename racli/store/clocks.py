"""The GPU clock, power and temperature a run recorded (metrics sm_clock_mhz, power_w,
temp_c), read back as medians per run."""

from __future__ import annotations

import statistics

from racli.store.experiment_queries import metric_values

NAMES = ("sm_clock_mhz", "power_w", "temp_c")


def medians(values: dict[str, list[float]]) -> dict[str, float]:
    """Median of each clock metric that has values (for `ra runs show`)."""
    return {k: statistics.median(v) for k, v in values.items() if k in NAMES and v}


def medians_by_run(store, run_ids: list[int]) -> dict[int, dict[str, float]]:
    """{run id: medians of its recorded clock metrics} of the runs that recorded any."""
    return {rid: medians(v) for rid, v in metric_values(store, run_ids, NAMES).items()}


def recorded_medians(store, run_id: int) -> dict[str, float]:
    """Medians of a run's recorded clock metrics ({} when none were recorded)."""
    return medians_by_run(store, [run_id]).get(run_id, {})
