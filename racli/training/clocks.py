"""The clock behind the speed: the GPU's SM clock, power and temperature.

`ClockSampler(device).sample()` returns ``{"sm_clock_mhz", "power_w",
"temp_c"}`` for a CUDA device, read through NVML (the ``nvidia-ml-py``
package, optional extra ``ra[gpu]``; torch's own ``torch.cuda.clock_rate``
needs it too). The trainer records them as metrics at every log interval, so
a speed gap between runs can be traced to the machine (`ra runs show` prints
their medians). On CPU, or without NVML, `sample()` returns ``{}``: nothing
is recorded and nothing fails. A read costs a few NVML calls (microseconds).
"""

from __future__ import annotations

import os
from typing import Any

NAMES = ("sm_clock_mhz", "power_w", "temp_c")


def _nvml_index(index: int) -> int:
    """The NVML index of CUDA device `index` (NVML ignores CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return index
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if index < len(ids) and ids[index].isdigit():
        return int(ids[index])
    return index  # UUIDs or MIG names: let torch's mapping below decide


class ClockSampler:
    """Reads one CUDA device's clocks; silent (empty samples) when it cannot."""

    def __init__(self, device: Any):
        self._nvml = None
        self._handle = None
        dev_type = getattr(device, "type", str(device).split(":")[0])
        if dev_type != "cuda":
            return
        try:
            import pynvml
            import torch

            index = getattr(device, "index", None)
            if index is None:
                index = torch.cuda.current_device()
            try:
                nvml_index = torch.cuda._get_nvml_device_index(index)
            except Exception:
                nvml_index = _nvml_index(index)
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
            self._nvml = pynvml
        except Exception:
            self._nvml = self._handle = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def sample(self) -> dict[str, float]:
        if self._handle is None:
            return {}
        nv, h = self._nvml, self._handle
        out: dict[str, float] = {}
        for name, read in (
            ("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
            ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
            ("temp_c", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
        ):
            try:
                out[name] = float(read())
            except Exception:
                pass
        return out


def medians(values: dict[str, list[float]]) -> dict[str, float]:
    """Median of each clock metric that has values (for `ra runs show`)."""
    import statistics

    return {k: statistics.median(v) for k, v in values.items() if k in NAMES and v}


def recorded_medians(store, run_id: int) -> dict[str, float]:
    """Medians of a run's recorded clock metrics ({} when none were recorded)."""
    from sqlalchemy import select

    from racli.store.models import Metric

    values: dict[str, list[float]] = {}
    with store.engine.connect() as conn:
        q = select(Metric.name, Metric.value).where(Metric.run_id == run_id, Metric.name.in_(NAMES))
        for name, value in conn.execute(q):
            values.setdefault(name, []).append(float(value))
    return medians(values)
