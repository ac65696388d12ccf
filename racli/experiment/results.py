"""What an experiment is given (`Settings`) and what it hands back (`JobResult`, `Outcome`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from racli import errors
from racli.errors import BadInput
from racli.experiment.plan import Arm, Budget, Job
from racli.training.budget import check_budget_range, check_minutes

if TYPE_CHECKING:
    from racli.experiment.judge import ArmVerdict


class Interrupted(errors.Interrupted):
    """The experiment was stopped by a signal; the message says how to continue."""


@dataclass
class Settings:
    arms: list[Arm]
    seeds: list[int]
    minutes: float
    preset: str | None = None
    data: str | None = None
    devices: list[str] = field(default_factory=lambda: ["auto"])
    overrides: list[str] = field(default_factory=list)  # --set items
    tag: str | None = None
    until_settled: bool = False
    max_seeds: int | None = None
    compile: bool | None = None
    processes: bool | None = None  # one child process per run (default: on CUDA)
    config_path: str | None = None  # handed to child processes
    db: str = "ra.db"  # the store's location, handed to child processes
    launcher: str = "local"  # local | slurm | ray
    cancel_on_interrupt: bool | None = None  # slurm/ray jobs on Ctrl-C (None: ask on a tty)


def check_settings(settings: Settings) -> None:
    """Bad input in the settings themselves (before any work)."""
    check_minutes(settings.minutes)
    check_budget_range(settings.minutes, None)  # the limit of `ra train --minutes`
    if settings.until_settled:
        if settings.max_seeds is None:
            raise BadInput("--until-settled needs --max-seeds N (the most seeds per arm)")
        if len(settings.seeds) < 2:
            raise BadInput("--until-settled needs at least 2 seeds to start (--seeds 1-2)")
        if settings.max_seeds < len(settings.seeds):
            raise BadInput(
                f"--max-seeds {settings.max_seeds} is below the "
                f"{len(settings.seeds)} seeds of --seeds"
            )
    elif settings.max_seeds is not None:
        raise BadInput("--max-seeds applies with --until-settled")


@dataclass
class JobResult:
    job: Job
    run_id: int | None
    status: str  # finished | interrupted | failed | diverged | skipped (running elsewhere)
    note: str = ""


@dataclass
class Outcome:
    key: str
    tag: str
    arms: list[Arm]
    seeds: list[int]
    devices: list[str]
    calibration: Any  # calibrate.Calibration
    budgets: dict[str, Budget]
    verdicts: list[ArmVerdict]
    confidence: float
    design: dict | None = None  # the sequential design, with --until-settled
    looks: list[dict] = field(default_factory=list)
    results: list[JobResult] = field(default_factory=list)
    device_speeds: list = field(default_factory=list)  # speeds.DeviceSpeed, one a device

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.status in ("failed",)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "tag": self.tag,
            "arms": [a.label for a in self.arms],
            "attn": [a.attn for a in self.arms],
            "seeds": self.seeds,
            "devices": self.devices,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "budgets": {
                k: {
                    "steps": b.steps,
                    "ratio": b.ratio,
                    "ratio_ci": list(b.ratio_ci) if b.ratio_ci else None,
                    "settled": b.settled,
                }
                for k, b in self.budgets.items()
            },
            "confidence": self.confidence,
            "design": self.design,
            "looks": self.looks,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "device_speeds": [d.to_dict() for d in self.device_speeds],
        }
