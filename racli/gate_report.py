"""Analysis of learned gate values: pure functions, no torch, no database.

Input rows are what the ``gate_values`` table records: ``(step, layer, head,
name, value)`` -- plain tuples, or any objects with those attributes. Gate
names:

* ``w_std``, ``w_rec`` -- the RA v5 family: one pair per head; a head "uses
  reciprocity" (state ``on``) when ``|w_rec / w_std| > ratio_threshold``.
* ``beta`` -- ``ra_beta``: the reciprocal branch is weighted by ``tanh(beta)``;
  ``on`` when ``|tanh(beta)| > ratio_threshold``.
* ``gate`` -- ``sdpa_gate``: the mean of an input-dependent gate (state ``-``).

Reciprocity measures (recorded beside the gates since they exist; see
``racli_models.measures``): ``rec_share``, ``rec_effect`` (RA v5 family),
``rec_norm_ratio`` (ra_beta), ``gate_mean``, ``gate_std`` (sdpa_gate) per head,
and ``rec_ablation`` per layer (stored with head 0). When a run has a *use
measure* (``rec_share``, else ``rec_norm_ratio``), every entry of a head takes
its state from it: ``on`` when the measure is above ``use_threshold``. The raw
gate ratio is the fallback for runs recorded before the measures, with a note
saying so: it cannot measure use (in ra_v5, scaling P by c and w_rec by 1/c^2
changes the ratio and not the model).

A value's initial value is its value at the earliest step recorded for it (the
trainer records a snapshot at step 0). A gate is *dead* when its value never
moved from that initial value by more than ``moved_tolerance`` at any later
recorded step: the signature of a parameter that receives no gradient. Only
the raw gates are judged dead; the measures are not parameters.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Key = tuple[int, int, str]  # (layer, head, name)

#: Display order of known names; others follow alphabetically.
GATE_ORDER = (
    "rec_share",
    "rec_effect",
    "rec_norm_ratio",
    "gate_mean",
    "gate_std",
    "w_std",
    "w_rec",
    "beta",
    "gate",
    "rec_ablation",
)
#: Measures of use, in order of preference: a head is on when its value is above use_threshold.
USE_MEASURES = ("rec_share", "rec_norm_ratio")
#: Measures recorded per layer (head 0), not per head.
LAYER_MEASURES = ("rec_ablation",)
#: Everything that is a measure rather than a learned parameter.
MEASURES = ("rec_share", "rec_effect", "rec_norm_ratio", "gate_mean", "gate_std", "rec_ablation")
RAW_CLASSIFICATION = "raw gate"


@dataclass
class GateEntry:
    layer: int
    head: int
    name: str
    init: float
    value: float
    moved: float  # value - init
    state: str  # "on" | "off" | "-"


@dataclass
class GateReport:
    step: int
    steps: list[int]
    entries: list[GateEntry]
    dead: list[tuple[int, int, str]]  # (layer, head, name) never moved from init
    summary: list[str]
    warnings: list[str]
    ratio_threshold: float = 0.05
    names: list[str] = field(default_factory=list)  # per-head names (one table each)
    use_threshold: float = 0.05
    classified_by: str = RAW_CLASSIFICATION  # a USE_MEASURES name, or "raw gate"
    note: str | None = None
    layer_names: list[str] = field(default_factory=list)  # per-layer measures

    @property
    def by_measure(self) -> bool:
        return self.classified_by in USE_MEASURES

    @property
    def layers(self) -> list[int]:
        return sorted({e.layer for e in self.entries})

    @property
    def heads(self) -> list[int]:
        return sorted({e.head for e in self.entries})

    def entry(self, layer: int, head: int, name: str) -> GateEntry | None:
        for e in self.entries:
            if (e.layer, e.head, e.name) == (layer, head, name):
                return e
        return None

    def to_dict(self, run_id: int, attn: str | None) -> dict[str, Any]:
        return {
            "run": run_id,
            "attn": attn,
            "step": self.step,
            "steps": list(self.steps),
            "ratio_threshold": self.ratio_threshold,
            "use_threshold": self.use_threshold,
            "classified_by": self.classified_by,
            "note": self.note,
            "gates": [
                {
                    "layer": e.layer,
                    "head": e.head,
                    "name": e.name,
                    "init": _num(e.init),
                    "value": _num(e.value),
                    "moved": _num(e.moved),
                    "state": e.state,
                }
                for e in self.entries
            ],
            "dead": [{"layer": la, "head": h, "name": n} for la, h, n in self.dead],
            "summary": list(self.summary),
            "warnings": list(self.warnings),
        }


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _row(r: Any) -> tuple[int, int, int, str, float]:
    if hasattr(r, "step") and hasattr(r, "value"):
        step, layer, head, name, value = r.step, r.layer, r.head, r.name, r.value
    else:
        step, layer, head, name, value = r
    return int(step), int(layer), int(head), str(name), float(value)


def _name_key(name: str) -> tuple[int, str]:
    return (GATE_ORDER.index(name), name) if name in GATE_ORDER else (len(GATE_ORDER), name)


def trajectories(rows: Iterable[Any]) -> dict[str, dict[tuple[int, int], list[tuple[int, float]]]]:
    """name -> (layer, head) -> [(step, value)] sorted by step."""
    out: dict[str, dict[tuple[int, int], list[tuple[int, float]]]] = {}
    for step, layer, head, name, value in map(_row, rows):
        out.setdefault(name, {}).setdefault((layer, head), []).append((step, value))
    for per_head in out.values():
        for series in per_head.values():
            series.sort(key=lambda p: p[0])
    return {name: dict(sorted(out[name].items())) for name in sorted(out, key=_name_key)}


def _fmt_steps(steps: list[int]) -> str:
    if len(steps) <= 12:
        return ", ".join(map(str, steps))
    head = ", ".join(map(str, steps[:5]))
    tail = ", ".join(map(str, steps[-5:]))
    return f"{head}, ... ({len(steps) - 10} more), {tail}"


def analyse_gates(
    rows: Iterable[Any],
    *,
    step: int | None = None,
    ratio_threshold: float = 0.05,
    moved_tolerance: float = 1e-6,
    use_threshold: float = 0.05,
) -> GateReport:
    """Gate values and measures at ``step`` (default: the last recorded), their
    movement from init and the heads' states."""
    data = [_row(r) for r in rows]
    if not data:
        raise ValueError("run has no gate values")
    steps = sorted({r[0] for r in data})
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ValueError(f"step {step} was not recorded; recorded steps: {_fmt_steps(steps)}")

    series: dict[Key, list[tuple[int, float]]] = defaultdict(list)
    for s, layer, head, name, value in data:
        series[(layer, head, name)].append((s, value))
    for pts in series.values():
        pts.sort(key=lambda p: p[0])

    warnings: list[str] = []
    values: dict[Key, float] = {}
    inits: dict[Key, float] = {}
    missing: list[Key] = []
    for key, pts in series.items():
        inits[key] = pts[0][1]
        at = [v for s, v in pts if s == step]
        if at:
            values[key] = at[-1]
        elif key[2] not in MEASURES:  # the ablation, say, is measured at the ends only
            missing.append(key)
    if missing:
        warnings.append(
            f"{len(missing)} gate(s) have no value recorded at step {step} and are left out"
        )

    present = {k[2] for k in values}
    use = next((m for m in USE_MEASURES if m in present), None)
    note = None
    if use is None and present & {"w_rec", "beta"}:
        why = (
            f"at step {step}"
            if any(k[2] in USE_MEASURES for k in series)
            else "for this run (recorded before they existed, or with gates.measure_batches = 0)"
        )
        note = (
            f"no reciprocity measures recorded {why}: heads are classified by raw gate, which "
            "cannot measure use (scale moves freely between w_rec and P)"
        )

    def state_of(key: Key) -> str:
        layer, head, name = key
        if name in LAYER_MEASURES:
            return "-"
        if use is not None:
            if name in ("w_std", "w_rec", "beta", "rec_effect", use):
                u = values.get((layer, head, use))
                if u is None:
                    return "-"
                return "on" if u > use_threshold else "off"
            return "-"
        if name in ("w_std", "w_rec"):
            ws = values.get((layer, head, "w_std"))
            wr = values.get((layer, head, "w_rec"))
            if ws is None or wr is None:
                return "-"
            return "on" if _rec_ratio(ws, wr) > ratio_threshold else "off"
        if name == "beta":
            return "on" if abs(math.tanh(values[key])) > ratio_threshold else "off"
        return "-"

    keys = sorted(values, key=lambda k: (_name_key(k[2]), k[0], k[1]))
    entries = [
        GateEntry(
            layer=k[0],
            head=k[1],
            name=k[2],
            init=inits[k],
            value=values[k],
            moved=values[k] - inits[k],
            state=state_of(k),
        )
        for k in keys
    ]

    # dead gates: never moved at any recorded step after their first
    dead: list[Key] = []
    for key in sorted(series, key=lambda k: (_name_key(k[2]), k[0], k[1])):
        pts = series[key]
        if len(pts) < 2 or key[2] in MEASURES:
            continue
        init = pts[0][1]
        if all(abs(v - init) <= moved_tolerance for _, v in pts[1:]):
            dead.append(key)
    if len(steps) < 2:
        warnings.append(
            f"only one snapshot recorded (step {steps[0]}): movement from init cannot be judged"
        )
    if dead:
        n_judged = sum(1 for k, pts in series.items() if len(pts) >= 2 and k[2] not in MEASURES)
        names = sorted({k[2] for k in dead}, key=_name_key)
        warnings.insert(
            0,
            f"DEAD GATES: {len(dead)} of {n_judged} gates never moved from their initial "
            f"values across steps {steps[0]}..{steps[-1]} ({', '.join(names)}): they "
            "most likely receive no gradient (wired into nothing), so they are not learned",
        )
    nonfinite = [e for e in entries if not math.isfinite(e.value)]
    if nonfinite:
        warnings.append(f"{len(nonfinite)} gate value(s) are not finite (NaN or inf)")

    all_names = sorted({e.name for e in entries}, key=_name_key)
    names = [n for n in all_names if n not in LAYER_MEASURES]
    layer_names = [n for n in all_names if n in LAYER_MEASURES]
    first = {k: pts[0][0] for k, pts in series.items()}
    summary = []
    for name in all_names:
        group = [e for e in entries if e.name == name]
        if name in USE_MEASURES:
            summary.append(_use_line(name, group, first, use_threshold))
        elif name in LAYER_MEASURES:
            summary.append(_layer_line(name, group, first))
        elif name == "rec_effect":
            summary.append(_effect_line(group, first))
        elif use is not None and name in ("w_std", "w_rec", "beta"):
            summary.append(_summary_line(name, group, values, ratio_threshold, raw=False))
        else:
            summary.append(_summary_line(name, group, values, ratio_threshold))
    return GateReport(
        step=step,
        steps=steps,
        entries=entries,
        dead=dead,
        summary=summary,
        warnings=warnings,
        ratio_threshold=ratio_threshold,
        names=names,
        use_threshold=use_threshold,
        classified_by=use or RAW_CLASSIFICATION,
        note=note,
        layer_names=layer_names,
    )


def _rec_ratio(w_std: float, w_rec: float) -> float:
    if w_std == 0:
        return math.inf if w_rec != 0 else 0.0
    return abs(w_rec / w_std)


def _g(x: float) -> str:
    return f"{x:.3g}"


def pct(x: float) -> str:
    """A share as a percentage with 2 significant digits below 10% (0.0013 -> 0.13%)."""
    if not math.isfinite(x):
        return str(x)
    p = 100 * x
    if p == 0:
        return "0%"
    if abs(p) >= 10:
        return f"{p:.0f}%"
    return f"{p:.2g}%"


def _at_init(entries: list[GateEntry], first: dict[Key, int]) -> str:
    steps = {first.get((e.layer, e.head, e.name), 0) for e in entries}
    return f"step {steps.pop()}" if len(steps) == 1 else "their first step"


def _use_line(
    name: str, entries: list[GateEntry], first: dict[Key, int], use_threshold: float
) -> str:
    finite = [e for e in entries if math.isfinite(e.value)]
    if not finite:
        return f"{name}: {len(entries)} heads, no finite values"
    on = sum(1 for e in finite if e.value > use_threshold)
    top = max(finite, key=lambda e: e.value)
    on0 = sum(1 for e in entries if e.init > use_threshold)
    top0 = max(entries, key=lambda e: e.init if math.isfinite(e.init) else -math.inf)
    return (
        f"{name}: {on}/{len(entries)} heads above {pct(use_threshold)}; "
        f"largest layer {top.layer} head {top.head} ({pct(top.value)}); "
        f"at init ({_at_init(entries, first)}) {on0}/{len(entries)} above, "
        f"largest {pct(top0.init)}"
    )


def _effect_line(entries: list[GateEntry], first: dict[Key, int]) -> str:
    vals = [e.value for e in entries if math.isfinite(e.value)]
    if not vals:
        return f"rec_effect: {len(entries)} heads, no finite values"
    top = max((e for e in entries if math.isfinite(e.value)), key=lambda e: e.value)
    inits = [e.init for e in entries if math.isfinite(e.init)]
    init_mean = sum(inits) / len(inits) if inits else math.nan
    return (
        f"rec_effect: mean KL {_g(sum(vals) / len(vals))} nats per query "
        f"(largest layer {top.layer} head {top.head}: {_g(top.value)}); "
        f"at init ({_at_init(entries, first)}) mean {_g(init_mean)}"
    )


def _layer_line(name: str, entries: list[GateEntry], first: dict[Key, int]) -> str:
    per_layer = ", ".join(
        f"layer {e.layer} {100 * e.value:+.2g}%" for e in sorted(entries, key=lambda e: e.layer)
    )
    init = ", ".join(f"{100 * e.init:+.2g}%" for e in sorted(entries, key=lambda e: e.layer))
    return (
        f"{name} (loss change with the layer's reciprocal term removed): {per_layer}; "
        f"at init ({_at_init(entries, first)}) {init}"
    )


def _summary_line(
    name: str,
    entries: list[GateEntry],
    values: dict[Key, float],
    ratio_threshold: float,
    *,
    raw: bool = True,
) -> str:
    total = len(entries)
    biggest_move = max(entries, key=lambda e: abs(e.moved) if math.isfinite(e.moved) else -1)
    bm = biggest_move
    moved = f"largest move {bm.moved:+.3g} (layer {bm.layer} head {bm.head})"
    if raw and name == "w_rec":
        scored = []
        for e in entries:
            ws = values.get((e.layer, e.head, "w_std"))
            if ws is not None:
                scored.append((_rec_ratio(ws, e.value), e))
        if scored:
            on = sum(1 for r, _ in scored if r > ratio_threshold)
            r, top = max(scored, key=lambda p: p[0] if math.isfinite(p[0]) else math.inf)
            return (
                f"w_rec: {on}/{len(scored)} heads above {ratio_threshold:g} (|w_rec/w_std|); "
                f"largest layer {top.layer} head {top.head} ({_g(r)}); {moved}"
            )
    if raw and name == "beta":
        scored = [(abs(math.tanh(e.value)), e) for e in entries]
        on = sum(1 for r, _ in scored if r > ratio_threshold)
        r, top = max(scored, key=lambda p: p[0])
        return (
            f"beta: {on}/{total} heads above {ratio_threshold:g} (|tanh(beta)|); "
            f"largest layer {top.layer} head {top.head} ({_g(r)}); {moved}"
        )
    vals = [e.value for e in entries if math.isfinite(e.value)]
    if not vals:
        return f"{name}: {total} heads, no finite values"
    mean = sum(vals) / len(vals)
    spread = f"min {_g(min(vals))}, max {_g(max(vals))}"
    return f"{name}: {total} heads, mean {_g(mean)} ({spread}); {moved}"


# --------------------------------------------------------------------------
# several runs (seeds)
# --------------------------------------------------------------------------

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
            "agreement": _num_or_none(self.agreement),
            "heads": [
                {
                    "layer": h.layer,
                    "head": h.head,
                    "n": h.n,
                    "mean": _num_or_none(h.mean),
                    "std": _num_or_none(h.std),
                    "min": _num_or_none(min(h.values.values())),
                    "max": _num_or_none(max(h.values.values())),
                    "above": h.above,
                    "init_mean": _num_or_none(h.init_mean),
                    "values": {str(r): _num_or_none(v) for r, v in h.values.items()},
                }
                for h in self.heads
            ],
            "rec_ablation": [
                {
                    "layer": layer,
                    "mean": _num_or_none(_mean(list(per_run.values()))),
                    "std": _num_or_none(_sd(list(per_run.values()))),
                    "values": {str(r): _num_or_none(v) for r, v in per_run.items()},
                }
                for layer, per_run in sorted(self.ablation.items())
            ],
            "left_out": list(self.left_out),
            "note": self.note,
            "summary": list(self.summary),
            "warnings": list(self.warnings),
        }


def _num_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _sd(xs: list[float]) -> float:
    """Sample standard deviation (n - 1); 0 for one value."""
    xs = [x for x in xs if math.isfinite(x)]
    if len(xs) < 2:
        return 0.0 if xs else math.nan
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def rank_correlation(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (ties averaged); None when either side is constant."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


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
    warnings: list[str] = []
    note = None
    left_out = sorted(set(rows_by_run) - set(per_run))
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
    runs = sorted(run for run, m in per_run.items() if m[0] == measure)

    cells: dict[tuple[int, int], HeadStats] = {}
    for run in runs:
        for (layer, head), (value, init) in per_run[run][1].items():
            h = cells.setdefault((layer, head), HeadStats(layer, head, {}, {}, 0))
            h.values[run] = value
            h.inits[run] = init
            h.above += value > threshold
    heads = [cells[k] for k in sorted(cells)]
    ablation: dict[int, dict[int, float]] = {}
    for run in runs:
        for e in reports[run].entries:
            if e.name == "rec_ablation":
                ablation.setdefault(e.layer, {})[run] = e.value

    pairs = []
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            common = [h for h in heads if a in h.values and b in h.values]
            r = rank_correlation([h.values[a] for h in common], [h.values[b] for h in common])
            if r is not None:
                pairs.append(r)
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


def _runs_summary(rep: RunsReport, n_pairs: int) -> list[str]:
    fmt = pct if rep.by_measure else _g
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
