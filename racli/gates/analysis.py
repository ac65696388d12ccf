"""Analysis of learned gate values: pure functions, no torch, no database.

Design notes: docs/gates.md.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from racli.text import jsonout
from racli.text.numbers import share_pct

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
                    "init": jsonout.ready(e.init),
                    "value": jsonout.ready(e.value),
                    "moved": jsonout.ready(e.moved),
                    "state": e.state,
                }
                for e in self.entries
            ],
            "dead": [{"layer": la, "head": h, "name": n} for la, h, n in self.dead],
            "summary": list(self.summary),
            "warnings": list(self.warnings),
        }


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
    series = _series(data)
    values, inits, missing = _at_step(series, step)
    present = {k[2] for k in values}
    use = next((m for m in USE_MEASURES if m in present), None)
    note = _raw_note(series, step) if use is None and present & {"w_rec", "beta"} else None

    def state_of(key: Key) -> str:
        return _state(key, values, use, use_threshold, ratio_threshold)

    keys = sorted(values, key=lambda k: (_name_key(k[2]), k[0], k[1]))
    entries = [
        GateEntry(k[0], k[1], k[2], inits[k], values[k], values[k] - inits[k], state_of(k))
        for k in keys
    ]
    dead = _dead_gates(series, moved_tolerance)
    warnings = _warnings(steps, step, series, dead, missing, entries)
    all_names = sorted({e.name for e in entries}, key=_name_key)
    first = {k: pts[0][0] for k, pts in series.items()}
    summary = [
        _name_summary(name, [e for e in entries if e.name == name], first, values, use,
                      use_threshold, ratio_threshold)
        for name in all_names
    ]  # fmt: skip
    return GateReport(
        step=step,
        steps=steps,
        entries=entries,
        dead=dead,
        summary=summary,
        warnings=warnings,
        ratio_threshold=ratio_threshold,
        names=[n for n in all_names if n not in LAYER_MEASURES],
        use_threshold=use_threshold,
        classified_by=use or RAW_CLASSIFICATION,
        note=note,
        layer_names=[n for n in all_names if n in LAYER_MEASURES],
    )


def _series(data: list[tuple[int, int, int, str, float]]) -> dict[Key, list[tuple[int, float]]]:
    """(layer, head, name) -> [(step, value)] in step order."""
    series: dict[Key, list[tuple[int, float]]] = defaultdict(list)
    for s, layer, head, name, value in data:
        series[(layer, head, name)].append((s, value))
    for pts in series.values():
        pts.sort(key=lambda p: p[0])
    return series


def _at_step(series, step: int) -> tuple[dict[Key, float], dict[Key, float], list[Key]]:
    """Each value at ``step``, each initial value, and the gates with no value there."""
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
    return values, inits, missing


def _raw_note(series, step: int) -> str:
    why = (
        f"at step {step}"
        if any(k[2] in USE_MEASURES for k in series)
        else "for this run (recorded before they existed, or with gates.measure_batches = 0)"
    )
    return (
        f"no reciprocity measures recorded {why}: heads are classified by raw gate, which "
        "cannot measure use (scale moves freely between w_rec and P)"
    )


def _state(
    key: Key, values: dict[Key, float], use: str | None, use_threshold: float, ratio: float
) -> str:
    """``on`` / ``off`` / ``-`` for one entry: by the use measure when the run has one,
    else by the raw gate ratio."""
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
        return "on" if _rec_ratio(ws, wr) > ratio else "off"
    if name == "beta":
        return "on" if abs(math.tanh(values[key])) > ratio else "off"
    return "-"


def _dead_gates(series, moved_tolerance: float) -> list[Key]:
    """Gates (not measures) that never moved at any recorded step after their first."""
    dead: list[Key] = []
    for key in sorted(series, key=lambda k: (_name_key(k[2]), k[0], k[1])):
        pts = series[key]
        if len(pts) < 2 or key[2] in MEASURES:
            continue
        init = pts[0][1]
        if all(abs(v - init) <= moved_tolerance for _, v in pts[1:]):
            dead.append(key)
    return dead


def _warnings(steps: list[int], step: int, series, dead, missing, entries) -> list[str]:
    """Dead gates first, then gates missing at ``step``, a single snapshot, non-finite values."""
    out: list[str] = []
    if dead:
        n_judged = sum(1 for k, pts in series.items() if len(pts) >= 2 and k[2] not in MEASURES)
        names = sorted({k[2] for k in dead}, key=_name_key)
        out.append(
            f"DEAD GATES: {len(dead)} of {n_judged} gates never moved from their initial "
            f"values across steps {steps[0]}..{steps[-1]} ({', '.join(names)}): they "
            "most likely receive no gradient (wired into nothing), so they are not learned",
        )
    if missing:
        out.append(f"{len(missing)} gate(s) have no value recorded at step {step} and are left out")
    if len(steps) < 2:
        out.append(
            f"only one snapshot recorded (step {steps[0]}): movement from init cannot be judged"
        )
    nonfinite = [e for e in entries if not math.isfinite(e.value)]
    if nonfinite:
        out.append(f"{len(nonfinite)} gate value(s) are not finite (NaN or inf)")
    return out


def _name_summary(name, group, first, values, use, use_threshold, ratio_threshold) -> str:
    """The summary line of one gate or measure name."""
    if name in USE_MEASURES:
        return _use_line(name, group, first, use_threshold)
    if name in LAYER_MEASURES:
        return _layer_line(name, group, first)
    if name == "rec_effect":
        return _effect_line(group, first)
    if use is not None and name in ("w_std", "w_rec", "beta"):
        return _summary_line(name, group, values, ratio_threshold, raw=False)
    return _summary_line(name, group, values, ratio_threshold)


def _rec_ratio(w_std: float, w_rec: float) -> float:
    if w_std == 0:
        return math.inf if w_rec != 0 else 0.0
    return abs(w_rec / w_std)


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
        f"{name}: {on}/{len(entries)} heads above {share_pct(use_threshold)}; "
        f"largest layer {top.layer} head {top.head} ({share_pct(top.value)}); "
        f"at init ({_at_init(entries, first)}) {on0}/{len(entries)} above, "
        f"largest {share_pct(top0.init)}"
    )


def _effect_line(entries: list[GateEntry], first: dict[Key, int]) -> str:
    vals = [e.value for e in entries if math.isfinite(e.value)]
    if not vals:
        return f"rec_effect: {len(entries)} heads, no finite values"
    top = max((e for e in entries if math.isfinite(e.value)), key=lambda e: e.value)
    inits = [e.init for e in entries if math.isfinite(e.init)]
    init_mean = sum(inits) / len(inits) if inits else math.nan
    return (
        f"rec_effect: mean KL {sum(vals) / len(vals):.3g} nats per query "
        f"(largest layer {top.layer} head {top.head}: {top.value:.3g}); "
        f"at init ({_at_init(entries, first)}) mean {init_mean:.3g}"
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
                f"largest layer {top.layer} head {top.head} ({r:.3g}); {moved}"
            )
    if raw and name == "beta":
        scored = [(abs(math.tanh(e.value)), e) for e in entries]
        on = sum(1 for r, _ in scored if r > ratio_threshold)
        r, top = max(scored, key=lambda p: p[0])
        return (
            f"beta: {on}/{total} heads above {ratio_threshold:g} (|tanh(beta)|); "
            f"largest layer {top.layer} head {top.head} ({r:.3g}); {moved}"
        )
    vals = [e.value for e in entries if math.isfinite(e.value)]
    if not vals:
        return f"{name}: {total} heads, no finite values"
    mean = sum(vals) / len(vals)
    spread = f"min {min(vals):.3g}, max {max(vals):.3g}"
    return f"{name}: {total} heads, mean {mean:.3g} ({spread}); {moved}"


# --------------------------------------------------------------------------
# several runs (seeds)
# --------------------------------------------------------------------------
