"""The lines `ra experiment` prints: its progress notes and its final summary. No torch."""

from __future__ import annotations

import math
import re

from racli.experiment import judge
from racli.experiment.calibrate import summary_text

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAISED = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)): \S.*$")


def last_error_line(text: str, limit: int = 300, *, strict: bool = False) -> str | None:
    """The line of a traceback or a log that names the exception (its last one, e.g.
    "ModuleNotFoundError: No module named 'racli'"), else (unless `strict`) the first
    non-empty line; at most `limit` characters, colour codes removed; or None."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    raised = [line for line in lines if _RAISED.match(line)]
    if raised:
        line = raised[-1]
    elif lines and not strict:
        line = lines[0]
    else:
        return None
    return line if len(line) <= limit else line[: limit - 3] + "..."


def seed_text(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def start_text(key: str, settings, devices: list[str], tag: str) -> str:
    return (
        f"experiment {key}: {', '.join(a.label for a in settings.arms)}; "
        f"seeds {seed_text(settings.seeds)}; {settings.minutes:g} min each at matched "
        f"time; devices {', '.join(devices)}; runs tagged '{tag}'"
    )


def calibrating_text(labels: list[str], device: str, run_id: int, e, cap_s: float) -> str:
    """`e`: the `experiment` section of ra.yaml; `cap_s`: the time cap of the timed rounds."""
    return (
        f"calibrating {', '.join(labels)} on {device} (run {run_id}): "
        f"until every speed ratio is within +-{e.calibration_precision:.2%} "
        f"or {cap_s:.3g} s of timed steps (at least {e.calibration_min_rounds} rounds)"
    )


def round_text(cal) -> str:
    """One calibration round: the first arm's speed and every other arm's ratio."""
    parts = [
        f"{a.label} {a.ratio:.4f}"
        + (f" +-{a.half_width:.2%}" if math.isfinite(a.half_width) else "")
        for a in cal.arms[1:]
    ]
    return (
        f"calibration round {cal.rounds}: {cal.arms[0].steps_per_s:.2f} steps/s "
        f"({cal.arms[0].label}); ratios {', '.join(parts)}"
    )


def missing_calibration_text(budgets) -> str:
    """The calibration line when the calibration run is gone but every arm's runs recorded
    their budget."""
    ids = sorted({b.calibration_run for b in budgets.values() if b.calibration_run is not None})
    which = f"run {', '.join(map(str, ids))}" if ids else "its run"
    return (
        f"calibration: {which} is no longer in the store; the step budgets are those the "
        f"experiment's runs recorded from it (not measured again)"
    )


def budgets_text(budgets) -> str:
    return "step budgets: " + ", ".join(f"{k} {b.steps}" for k, b in budgets.items())


def training_text(n_arms: int, n_seeds: int, design, n_looks: int, confidence: float) -> str:
    """The phase line of one look (`n_looks` made before it)."""
    return f"training {n_arms} arms x {n_seeds} seeds" + (
        f" (look {n_looks + 1} of {len(design.looks)}, verdict at {confidence:.3%} confidence)"
        if design
        else ""
    )


def next_look_text(n_seeds: int, added: list[int]) -> str:
    return f"look at {n_seeds} seeds: still INCONCLUSIVE; adding seeds {seed_text(added)}"


def interrupted_text(results, n_jobs: int) -> str:
    done = sum(r.status == "finished" for r in results)
    stopped = [r.run_id for r in results if r.status == "interrupted"]
    return (
        f"interrupted: {done} of {n_jobs} runs finished"
        + (f"; runs {', '.join(map(str, stopped))} stopped with a checkpoint" if stopped else "")
        + "; run the same command again to continue"
    )


def forced_text() -> str:
    """What a second Ctrl-C left, and how to continue."""
    return (
        "stopped at once (the run in progress has no final evaluation); run the same "
        "command again to continue: finished runs are kept, stopped ones resume under their "
        "own ids from their last checkpoint (from step 0 without one)"
    )


def _budget_text(b) -> str:
    ci = f" [{b.ratio_ci[0]:.4f}, {b.ratio_ci[1]:.4f}]" if b.ratio_ci else ""
    return f"{b.arm} {b.steps} (x{b.ratio:.4f}{ci})"


def outcome_text(outcome, written) -> str:
    """The summary on stdout: calibration, budgets, the design and every verdict."""
    lines = [
        f"Experiment {outcome.key}: runs tagged '{outcome.tag}'",
        summary_text(outcome.calibration)
        if outcome.calibration is not None
        else missing_calibration_text(outcome.budgets),
        "Step budgets: " + ", ".join(_budget_text(b) for b in outcome.budgets.values()),
    ]
    if outcome.design:
        lines.append(
            f"Sequential design: {outcome.design['spending']}, looks at "
            f"{outcome.design['looks']} seeds; stopped at {outcome.looks[-1]['seeds']} "
            f"(verdict at {outcome.confidence:.3%} confidence)"
        )
    if len(outcome.device_speeds) > 1:
        lines += ["", *device_speed_lines(outcome.device_speeds, [a.label for a in outcome.arms])]
    for av in outcome.verdicts:
        lines += ["", judge.verdict_text(av)]
    if written:
        lines += ["", written_text(written)]
    return "\n".join(lines)


def device_speed_lines(speeds: list, arms: list[str]) -> list[str]:
    """Each device's tokens/s per arm (`racli.experiment.speeds.DeviceSpeed`s): the median
    over the arm's finished runs there with their count, the ratio to the first arm on the
    same device, and the device's speed factor."""
    lines = [
        "Speed by device (median tokens/s of each arm's finished runs there, how many; "
        f"x: to {arms[0]} on the same device; device: its runs' speed over their arms' medians):"
    ]
    for d in speeds:
        factor = f"device x{d.factor:.4f}" if d.factor is not None else "device -"
        cells = ", ".join(f"{a} {d.cell(a)}" for a in arms)
        lines.append(f"  {d.device}: {cells}; {factor}")
    return lines


def written_text(written) -> str:
    return "Report written to " + ", ".join(str(p) for p in written)


def failed_text(failed) -> str:
    """The runs that failed (JobResults), and how to retry them."""
    ids = ", ".join(f"{r.job.arm.label} seed {r.job.seed}" for r in failed)
    return f"{len(failed)} run(s) failed ({ids}); run the same command again to retry them"


def report_failed_text(error: str) -> str:
    """A report that could not be written, under the verdict that stands."""
    return (
        f"{error}; the verdict stands (the same command prints it again without training anything)"
    )
