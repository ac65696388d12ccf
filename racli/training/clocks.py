"""The GPU's SM clock, power and temperature behind a run's speed (NVML; `{}` on CPU).

See docs/training.md, "GPU clocks"."""

from __future__ import annotations

import os
from typing import Any


def _nvml_index(index: int) -> int:
    """The NVML index of CUDA device `index` (NVML ignores CUDA_VISIBLE_DEVICES)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return index
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if index < len(ids) and (ids[index].isascii() and ids[index].isdigit()):
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

    def _read(self, reads: dict[str, Any]) -> dict[str, float]:
        """{name: read(nvml, handle)} for each read that succeeds; `{}` without NVML."""
        if self._handle is None:
            return {}
        out: dict[str, float] = {}
        for name, read in reads.items():
            try:
                out[name] = float(read(self._nvml, self._handle))
            except Exception:
                continue  # a read this card or driver does not support
        return out

    def sample(self) -> dict[str, float]:
        return self._read(
            {
                "sm_clock_mhz": lambda nv, h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                "power_w": lambda nv, h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
                "temp_c": lambda nv, h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
            }
        )

    def energy_mj(self) -> float | None:
        """The card's energy counter in millijoules since the driver loaded (None when it
        cannot read it); the difference of two reads is the energy used between them."""
        read = self._read({"mj": lambda nv, h: nv.nvmlDeviceGetTotalEnergyConsumption(h)})
        return read.get("mj")

    def limits(self) -> dict[str, float]:
        """The enforced power limit and the highest SM clock (`{}` when it cannot read them)."""
        return self._read(
            {
                "power_limit_w": lambda nv, h: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
                "max_sm_clock_mhz": lambda nv, h: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM),
            }
        )
