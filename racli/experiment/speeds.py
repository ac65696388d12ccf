"""Each arm's speed on each device of an experiment (pure: no torch, no store).

On several GPUs the rotation puts every arm on every GPU (arm j of seed i on GPU
(i + j) mod G), so a GPU that runs faster than another speeds every arm alike. Per
device: each arm's median tokens/s over its finished runs there, its ratio to the
first arm's median on that device (which that device's own speed cancels from), and the
device's speed factor: the median over its runs of each run's tokens/s over its arm's
median on every device (1.0 for one device; 1.02: its runs went 2% faster than their
arms' medians).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunSpeed:
    arm: str
    device: str  # where the run started ("cuda:1"; with several hosts "host cuda:1")
    tokens_per_s: float


@dataclass
class DeviceSpeed:
    device: str
    arms: dict[str, tuple[float, int]] = field(default_factory=dict)  # arm -> (median, runs)
    ratios: dict[str, float] = field(default_factory=dict)  # arm -> median / first arm's
    factor: float | None = None

    def cell(self, arm: str) -> str:
        """`arm`'s median tokens/s here with its run count, and its ratio to the first
        arm's ("512,500 (2) x0.9900"); "-" without a run of it here."""
        if arm not in self.arms:
            return "-"
        median, n = self.arms[arm]
        ratio = f" x{self.ratios[arm]:.4f}" if arm in self.ratios else ""
        return f"{median:,.0f} ({n}){ratio}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "tokens_per_s": {a: m for a, (m, _) in self.arms.items()},
            "runs": {a: n for a, (_, n) in self.arms.items()},
            "ratio_to_first_arm": dict(self.ratios),
            "factor": self.factor,
        }


def by_device(runs: list[RunSpeed], arms: list[str]) -> list[DeviceSpeed]:
    """One DeviceSpeed per device (in the order of their names), arms in `arms`' order;
    runs without a positive tokens/s are left out."""
    runs = [r for r in runs if r.tokens_per_s and r.tokens_per_s > 0]
    overall = {
        a: statistics.median(r.tokens_per_s for r in runs if r.arm == a)
        for a in arms
        if any(r.arm == a for r in runs)
    }
    out = []
    for device in sorted({r.device for r in runs}):
        mine = [r for r in runs if r.device == device and r.arm in overall]
        d = DeviceSpeed(device)
        for a in arms:
            values = [r.tokens_per_s for r in mine if r.arm == a]
            if values:
                d.arms[a] = (statistics.median(values), len(values))
        first = d.arms.get(arms[0]) if arms else None
        if first is not None:
            d.ratios = {a: m / first[0] for a, (m, _) in d.arms.items() if a != arms[0]}
        if mine:
            d.factor = statistics.median(r.tokens_per_s / overall[r.arm] for r in mine)
        out.append(d)
    return out


def device_label(device: str, host: str | None, several_hosts: bool) -> str:
    return f"{host} {device}" if several_hosts and host else device
