"""Validity of a comparison: what makes a verdict INVALID or labels it (pure).

* past one epoch of the data (validation loss then measures memorisation);
* wall-clock budgets: the speed gap alone explains more than half the threshold
  (``loss ~ a + b ln(step)`` over the last half of the val-loss curves of both
  sides, with its sign; the train-loss curves where no val-loss curve has two
  points in its last half);
* matched-time budgets (`ra experiment`): at either end of the calibrated speed
  ratio's interval the step budgets alone explain more than half the threshold;
  labelled when the calibration had not settled or the runs measured a speed
  outside its interval;
* diverged or failed runs missing unevenly from the two sides (any difference
  with as many attempts a side, else shares that differ by Fisher's exact test).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from racli.compare import stats
from racli.text.numbers import pct

if TYPE_CHECKING:
    from racli.compare.verdict import SideStats


@dataclass(frozen=True)
class Unfinished:
    """Runs of one side that diverged or failed (seeds without a finished run)."""

    diverged: int = 0
    failed: int = 0
    run_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class MatchedTime:
    """Step budgets set from a calibrated speed ratio (`ra experiment`)."""

    ratio: float  # calibrated speed, candidate / baseline
    ratio_ci: tuple[float, float] | None
    settled: bool  # every calibration behind the budgets settled
    minutes: float | None = None

    def swapped(self) -> MatchedTime:
        ci = (1 / self.ratio_ci[1], 1 / self.ratio_ci[0]) if self.ratio_ci else None
        return MatchedTime(1 / self.ratio, ci, self.settled, self.minutes)


@dataclass
class SpeedGap:
    """What a speed difference alone does to the loss.

    Wall-clock budgets: the candidate sees ``ratio`` times the baseline's tokens.
    Matched time: the step budgets are right only if the true speed ratio is the
    calibrated one; ``at_bounds`` is what they explain at either end of its interval."""

    kind: str  # "wall_clock" | "matched_time"
    ratio: float  # tokens/s (wall clock) or calibrated speed (matched time), cand. / base.
    explained: float | None  # signed improvement it explains (matched: largest in size)
    limit: float  # half the threshold
    basis: str
    at_bounds: tuple[float, float] | None = None  # matched: at the interval's low, high end
    ratio_ci: tuple[float, float] | None = None
    measured_ratio: float | None = None  # matched: the runs' own tokens/s ratio
    measured_by_seed: bool = False  # that ratio: the geometric mean of the seeds' ratios

    @property
    def too_large(self) -> bool:
        return bool(self.explained is not None and abs(self.explained) > self.limit)

    @property
    def same_budget(self) -> bool:
        """Matched time with one variant on both sides: one step budget, no ratio applied."""
        return self.kind == "matched_time" and self.at_bounds == (0.0, 0.0)

    @property
    def mismatch(self) -> bool:
        """Matched time: the runs' speed ratio falls outside the calibrated interval (never
        with one budget for both sides: no calibrated ratio set their steps)."""
        if self.ratio_ci is None or self.measured_ratio is None or self.same_budget:
            return False
        lo, hi = self.ratio_ci
        return not lo <= self.measured_ratio <= hi


def speed_gap(
    cstats: SideStats,
    bstats: SideStats,
    curves: list[list[tuple[float, float]]],
    threshold: float,
    curve_kind: str = "val-loss",
) -> SpeedGap | None:
    """The speed check of a wall-clock comparison (None when a side has no throughput).
    `curve_kind`: what `curves` are, in words ("val-loss", or "train-loss" where the runs
    have no val-loss curve to fit)."""
    if not cstats.median_tokens_per_s or not bstats.median_tokens_per_s:
        return None
    ratio = cstats.median_tokens_per_s / bstats.median_tokens_per_s
    gaps = [g for g in stats.speed_explained_gaps(curves, ratio) if g is not None]
    if ratio == 1.0:
        gaps = gaps or [0.0]
    explained = float(statistics.median(gaps)) if gaps else None
    basis = (
        f"median over {len(gaps)} {curve_kind} curve(s) of both sides, loss ~ a + b ln(step) "
        f"over each curve's last half{_standing_in(curve_kind)}"
        if gaps
        else "no loss curve to estimate it from"
    )
    return SpeedGap("wall_clock", ratio, explained, threshold / 2, basis)


def _standing_in(curve_kind: str) -> str:
    return "" if curve_kind == "val-loss" else " (no val-loss curve has two points there)"


def budget_check(
    matched: MatchedTime,
    cstats: SideStats,
    bstats: SideStats,
    curves: list[list[tuple[float, float]]],
    threshold: float,
    by_seed: float | None = None,
    curve_kind: str = "val-loss",
) -> SpeedGap:
    """Matched time: the improvement the step budgets alone would explain if the true speed
    ratio lay at either end of the calibrated interval (the runs' steps as trained).
    `by_seed`: the runs' speed ratio paired by seed (a paired design), which cancels what
    a seed's runs share (a machine, a GPU); else the ratio of the sides' medians."""
    measured = by_seed
    if measured is None and cstats.median_tokens_per_s and bstats.median_tokens_per_s:
        measured = cstats.median_tokens_per_s / bstats.median_tokens_per_s
    same = (
        cstats.iterations_range is not None and cstats.iterations_range == bstats.iterations_range
    )
    kw = {
        "ratio_ci": matched.ratio_ci,
        "measured_ratio": measured,
        "measured_by_seed": by_seed is not None,
    }
    if same and matched.ratio == 1.0:
        basis = "both sides trained the same steps: one variant, one budget"
        return SpeedGap("matched_time", matched.ratio, 0.0, threshold / 2, basis, (0.0, 0.0), **kw)
    slopes = [s for s in stats.loss_slopes(curves) if s is not None]
    why = None
    if not slopes:
        why = "no loss curve"
    elif not (cstats.iterations_mean and bstats.iterations_mean):
        why = "no step count on a side"
    elif matched.ratio_ci is None:
        why = "no interval for the calibrated ratio"
    if why is not None:
        return SpeedGap("matched_time", matched.ratio, None, threshold / 2, why, None, **kw)
    steps = cstats.iterations_mean / bstats.iterations_mean
    slope = float(statistics.median(slopes))
    at = tuple(-slope * math.log(steps / q) for q in matched.ratio_ci)
    basis = (
        f"median slope over {len(slopes)} {curve_kind} curve(s) of both sides, loss ~ a + b "
        f"ln(step) over each curve's last half{_standing_in(curve_kind)}"
    )
    explained = max(at, key=abs)
    return SpeedGap("matched_time", matched.ratio, explained, threshold / 2, basis, at, **kw)


def missing_unevenly(cstats: SideStats, bstats: SideStats) -> str | None:
    """Why the diverged or failed runs make the comparison uneven, or None. With as many
    attempts on both sides (an experiment: one run per arm and seed), any difference; with
    different numbers of attempts (history), lost shares that differ beyond chance (Fisher's
    exact test at 5%)."""
    gone = [(s.diverged, s.failed) for s in (cstats, bstats)]
    if None in gone[0] + gone[1] or gone[0] == gone[1]:
        return None
    lost_c, lost_b = sum(gone[0]), sum(gone[1])
    if cstats.n + lost_c == bstats.n + lost_b:
        return "as many attempts on both sides"
    if lost_c == lost_b == 0:
        return None
    p = stats.fisher_exact_p([[lost_c, cstats.n], [lost_b, bstats.n]])
    return f"shares lost differ, Fisher's exact test p = {p:.3f}" if p < 0.05 else None


def validity(
    cstats: SideStats,
    bstats: SideStats,
    *,
    gap: SpeedGap | None,
    allow_epochs: bool,
    names: tuple[str, str] = ("candidate", "baseline"),
) -> tuple[list[str], list[str], list[str]]:
    """(invalid causes, their reasons, labels) of a comparison."""
    causes, reasons, labels = [], [], []
    epochs = [e for e in (cstats.epochs_max, bstats.epochs_max) if e is not None]
    if epochs and max(epochs) > 1.0:
        if allow_epochs:
            labels.append(f"past one epoch ({max(epochs):.2f} passes), allowed by --allow-epochs")
        else:
            causes.append("epochs")
            reasons.append(
                f"a side went past one epoch of its data (up to {max(epochs):.2f} passes): "
                "validation loss then measures memorisation as much as modelling"
            )
    if gap is not None and gap.too_large:
        favours = names[0] if gap.explained > 0 else names[1]
        if gap.kind == "wall_clock":
            causes.append("speed")
            reasons.append(
                f"the candidate runs at {gap.ratio:.3f}x the baseline's tokens/s under a "
                f"wall-clock budget: that speed gap alone explains a {pct(abs(gap.explained))} "
                f"loss gap in favour of {favours}, more than half the threshold ({pct(gap.limit)})"
            )
        else:
            lo, hi = gap.ratio_ci
            causes.append("budget")
            reasons.append(
                f"the step budgets come from a speed ratio known only to [{lo:.4f}, {hi:.4f}]: "
                f"at an end of that interval the budgets alone explain a "
                f"{pct(abs(gap.explained))} loss gap in favour of {favours}, more than half "
                f"the threshold ({pct(gap.limit)})"
            )
    uneven = missing_unevenly(cstats, bstats)
    if uneven is not None:
        gone = [(s.diverged, s.failed) for s in (cstats, bstats)]
        causes.append("unfinished")
        reasons.append(
            "runs are missing unevenly: "
            + "; ".join(f"{n} {d} diverged, {f} failed" for n, (d, f) in zip(names, gone))
            + f" ({uneven}): the finished runs alone would hide how the others ended"
        )
    return causes, reasons, labels


def speed_labels(gap: SpeedGap | None, matched: MatchedTime | None) -> list[str]:
    """Conditions let through but named: an unmeasured speed effect, an unsettled
    calibration, runs that went at another speed than the calibration said."""
    out = []
    if gap is not None and gap.kind == "wall_clock" and gap.explained is None:
        if abs(gap.ratio - 1) > 1e-9:
            out.append(
                f"speed gap {gap.ratio:.3f}x under a wall-clock budget: its effect on the "
                "loss was not estimated (no loss curve)"
            )
    if (
        gap is not None and gap.same_budget
    ):  # one variant, one budget: the calibration cannot favour either side
        return out
    if matched is not None and not matched.settled:
        ci = matched.ratio_ci
        where = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
        out.append(
            f"UNSETTLED CALIBRATION: the step budgets come from speed ratio "
            f"{matched.ratio:.4f}{where}, which had not settled"
        )
    if gap is not None and gap.kind == "matched_time":
        if gap.explained is None and gap.ratio != 1.0:
            out.append(f"the step budgets' precision was not checked ({gap.basis})")
        if gap.mismatch:
            lo, hi = gap.ratio_ci
            out.append(
                f"the runs went at {gap.measured_ratio:.4f}x the baseline's tokens/s, outside "
                f"the calibrated interval [{lo:.4f}, {hi:.4f}]: the budgets may not match the time"
            )
    return out
