"""Several runs' gate reports aggregated per layer and head (mean, spread, rank agreement)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from racli.gates.analysis import (
    RAW_CLASSIFICATION,
    USE_MEASURES,
    GateReport,
    _rec_ratio,
    analyse_gates,
)
from racli.text import jsonout
from racli.text.numbers import share_pct

RAW_MEASURES = {"w_rec": "|w_rec/w_std|", "beta": "|tanh(beta)|"}


@dataclass
class HeadStats:
    layer: int
    head: int
    values: dict[int, float]  # run id -> measure at the run's step
    inits: dict[int, float]  # run id -> measure at the run's first step
    above: int  # runs where the measure is above the threshold

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return _mean(list(self.values.values()))

    @property
    def std(self) -> float:
        return _sd(list(self.values.values()))

    @property
    def init_mean(self) -> float:
        return _mean(list(self.inits.values()))


@dataclass
class RunsReport:
    runs: list[int]
    measure: str  # rec_share, rec_norm_ratio, or a raw ratio (|w_rec/w_std|, |tanh(beta)|)
    by_measure: bool
    threshold: float
    steps: dict[int, int]
    heads: list[HeadStats]
    ablation: dict[int, dict[int, float]]  # layer -> run -> rec_ablation at the run's step
    agreement: float | None  # mean pairwise rank correlation of the measure over heads
    summary: list[str]
    warnings: list[str]
    note: str | None = None
    left_out: list[int] = field(default_factory=list)

    @property
    def layers(self) -> list[int]:
        return sorted({h.layer for h in self.heads})

    @property
    def head_ids(self) -> list[int]:
        return sorted({h.head for h in self.heads})

    def counts(self) -> tuple[int, int, int]:
        """Heads above the threshold in every run, in some runs only, in none."""
        n = len(self.runs)
        every = sum(1 for h in self.heads if h.above == h.n == n)
        none = sum(1 for h in self.heads if h.above == 0)
        return every, len(self.heads) - every - none, none

    def to_dict(self, attn: str | None) -> dict[str, Any]:
        every, some, none = self.counts()
        return {
            "runs": list(self.runs),
            "attn": attn,
            "measure": self.measure,
            "classified_by": self.measure if self.by_measure else RAW_CLASSIFICATION,
            "threshold": self.threshold,
            "steps": {str(r): s for r, s in self.steps.items()},
            "heads_above_in_every_run": every,
            "heads_above_in_some_runs": some,
            "heads_above_in_no_run": none,
            "agreement": jsonout.ready(self.agreement),
            "heads": [
                {
                    "layer": h.layer,
                    "head": h.head,
                    "n": h.n,
                    "mean": jsonout.ready(h.mean),
                    "std": jsonout.ready(h.std),
                    "min": jsonout.ready(min(h.values.values())),
                    "max": jsonout.ready(max(h.values.values())),
                    "above": h.above,
                    "init_mean": jsonout.ready(h.init_mean),
                    "values": {str(r): jsonout.ready(v) for r, v in h.values.items()},
                }
                for h in self.heads
            ],
            "rec_ablation": [
                {
                    "layer": layer,
                    "mean": jsonout.ready(_mean(list(per_run.values()))),
                    "std": jsonout.ready(_sd(list(per_run.values()))),
                    "values": {str(r): jsonout.ready(v) for r, v in per_run.items()},
                }
                for layer, per_run in sorted(self.ablation.items())
            ],
            "left_out": list(self.left_out),
            "note": self.note,
            "summary": list(self.summary),
            "warnings": list(self.warnings),
        }


def _finite(xs: list[float]) -> np.ndarray:
    return np.asarray([x for x in xs if math.isfinite(x)], dtype=float)


def _mean(xs: list[float]) -> float:
    v = _finite(xs)
    return float(v.mean()) if v.size else math.nan


def _sd(xs: list[float]) -> float:
    """Sample standard deviation (n - 1); 0 for one value."""
    v = _finite(xs)
    if v.size < 2:
        return 0.0 if v.size else math.nan
    return float(v.std(ddof=1))


def rank_correlation(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (ties averaged); None when either side is constant."""
    if len(xs) != len(ys) or len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


def _run_measure(report: GateReport) -> tuple[str, dict[tuple[int, int], tuple[float, float]]]:
    """(measure name, (layer, head) -> (value, init)) of one run's report."""
    if report.by_measure:
        name = report.classified_by
        return name, {
            (e.layer, e.head): (e.value, e.init) for e in report.entries if e.name == name
        }
    if any(e.name == "w_rec" for e in report.entries):
        out = {}
        for e in report.entries:
            if e.name == "w_rec":
                ws = report.entry(e.layer, e.head, "w_std")
                if ws is not None:
                    out[(e.layer, e.head)] = (
                        _rec_ratio(ws.value, e.value),
                        _rec_ratio(ws.init, e.init),
                    )
        return RAW_MEASURES["w_rec"], out
    if any(e.name == "beta" for e in report.entries):
        return RAW_MEASURES["beta"], {
            (e.layer, e.head): (abs(math.tanh(e.value)), abs(math.tanh(e.init)))
            for e in report.entries
            if e.name == "beta"
        }
    return "", {}


def aggregate_runs(
    rows_by_run: dict[int, Iterable[Any]],
    *,
    use_threshold: float = 0.05,
    ratio_threshold: float = 0.05,
    moved_tolerance: float = 1e-6,
) -> RunsReport:
    """Per layer and head, the use measure of several runs (each at its last
    recorded step): mean, spread, how many runs put the head above the
    threshold, and how well the runs agree on which heads use reciprocity.

    Runs with the scale-free measure are aggregated on it; runs without it are
    left out with a warning. When no run has it, the raw gate ratio is used for
    all, with a note. ValueError when no run has anything to aggregate."""
    reports = {}
    for run, rows in rows_by_run.items():
        rows = list(rows)
        if rows:
            reports[run] = analyse_gates(
                rows,
                ratio_threshold=ratio_threshold,
                moved_tolerance=moved_tolerance,
                use_threshold=use_threshold,
            )
    per_run = {run: _run_measure(rep) for run, rep in reports.items()}
    per_run = {run: m for run, m in per_run.items() if m[1]}
    if not per_run:
        raise ValueError("none of these runs has reciprocity measures or gates to aggregate")
    scale_free = sorted({m[0] for m in per_run.values() if m[0] in USE_MEASURES})
    if len(scale_free) > 1:
        raise ValueError(
            f"the runs carry different measures ({', '.join(scale_free)}): "
            "aggregate one attention at a time"
        )
    measure, by_measure, threshold, note, warnings, left_out = _choose_measure(
        per_run, scale_free, set(rows_by_run), use_threshold, ratio_threshold
    )
    runs = sorted(run for run, m in per_run.items() if m[0] == measure)
    heads = _head_stats(runs, per_run, threshold)
    ablation: dict[int, dict[int, float]] = {}
    for run in runs:
        for e in reports[run].entries:
            if e.name == "rec_ablation":
                ablation.setdefault(e.layer, {})[run] = e.value
    pairs = _pair_agreements(runs, heads)
    agreement = sum(pairs) / len(pairs) if pairs else None

    rep = RunsReport(
        runs=runs,
        measure=measure,
        by_measure=by_measure,
        threshold=threshold,
        steps={run: reports[run].step for run in runs},
        heads=heads,
        ablation=ablation,
        agreement=agreement,
        summary=[],
        warnings=warnings,
        note=note,
        left_out=left_out,
    )
    rep.summary = _runs_summary(rep, len(pairs))
    return rep


def _choose_measure(per_run, scale_free, all_runs, use_threshold, ratio_threshold):
    """The measure the runs are aggregated on, its threshold, and the note, warnings and
    runs left out that the choice implies."""
    warnings: list[str] = []
    note = None
    left_out = sorted(all_runs - set(per_run))
    if scale_free:
        measure, by_measure, threshold = scale_free[0], True, use_threshold
        old = sorted(run for run, m in per_run.items() if m[0] != measure)
        if old:
            warnings.append(
                f"run(s) {', '.join(map(str, old))} have no {measure} (recorded before the "
                "measures existed) and are left out"
            )
            left_out = sorted(set(left_out) | set(old))
    else:
        raws = sorted({m[0] for m in per_run.values()})
        if len(raws) > 1:
            raise ValueError("the runs carry different gates: aggregate one attention at a time")
        measure, by_measure, threshold = raws[0], False, ratio_threshold
        note = (
            "none of these runs has reciprocity measures: heads are classified by raw gate "
            f"({measure}), which cannot measure use (scale moves freely between w_rec and P)"
        )
    if left_out and not warnings:
        warnings.append(f"run(s) {', '.join(map(str, left_out))} have nothing to aggregate")
    return measure, by_measure, threshold, note, warnings, left_out


def _head_stats(runs: list[int], per_run, threshold: float) -> list[HeadStats]:
    cells: dict[tuple[int, int], HeadStats] = {}
    for run in runs:
        for (layer, head), (value, init) in per_run[run][1].items():
            h = cells.setdefault((layer, head), HeadStats(layer, head, {}, {}, 0))
            h.values[run] = value
            h.inits[run] = init
            h.above += value > threshold
    return [cells[k] for k in sorted(cells)]


def _pair_agreements(runs: list[int], heads: list[HeadStats]) -> list[float]:
    """Spearman's correlation of every pair of runs over the heads both measured."""
    pairs = []
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            common = [h for h in heads if a in h.values and b in h.values]
            r = rank_correlation([h.values[a] for h in common], [h.values[b] for h in common])
            if r is not None:
                pairs.append(r)
    return pairs


def _runs_summary(rep: RunsReport, n_pairs: int) -> list[str]:
    fmt = share_pct if rep.by_measure else (lambda x: f"{x:.3g}")
    every, some, none = rep.counts()
    out = [
        f"{rep.measure} over {len(rep.runs)} runs ({', '.join(map(str, rep.runs))}): "
        f"{every}/{len(rep.heads)} heads above {fmt(rep.threshold)} in every run, "
        f"{some} in some, {none} in none"
    ]
    finite = [h for h in rep.heads if math.isfinite(h.mean)]
    if finite:
        top = max(finite, key=lambda h: h.mean)
        lo, hi = min(top.values.values()), max(top.values.values())
        out.append(
            f"largest mean layer {top.layer} head {top.head}: {fmt(top.mean)} "
            f"(sd {fmt(top.std)}, runs {fmt(lo)}..{fmt(hi)}; at init {fmt(top.init_mean)})"
        )
    if rep.agreement is not None:
        out.append(
            f"seed agreement: rank correlation of {rep.measure} over heads between runs, "
            f"mean {rep.agreement:+.2f} over {n_pairs} pair(s) (1: the same heads, 0: unrelated)"
        )
    if rep.ablation:
        parts = []
        for layer, per_run in sorted(rep.ablation.items()):
            xs = list(per_run.values())
            parts.append(f"layer {layer} {100 * _mean(xs):+.2g}% (sd {100 * _sd(xs):.2g}%)")
        out.append(
            "rec_ablation (loss change without the layer's reciprocal term), mean over "
            "runs: " + ", ".join(parts)
        )
    return out
