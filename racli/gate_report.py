"""Analysis of learned gate values: pure functions, no torch, no database.

Input rows are what the ``gate_values`` table records: ``(step, layer, head,
name, value)`` -- plain tuples, or any objects with those attributes. Gate
names:

* ``w_std``, ``w_rec`` -- the RA v5 family: one pair per head; a head "uses
  reciprocity" (state ``on``) when ``|w_rec / w_std| > ratio_threshold``.
* ``beta`` -- ``ra_beta``: the reciprocal branch is weighted by ``tanh(beta)``;
  ``on`` when ``|tanh(beta)| > ratio_threshold``.
* ``gate`` -- ``sdpa_gate``: the mean of an input-dependent gate (state ``-``).

A gate's initial value is its value at the earliest step recorded for it (the
trainer records a snapshot at step 0). A gate is *dead* when its value never
moved from that initial value by more than ``moved_tolerance`` at any later
recorded step: the signature of a parameter that receives no gradient.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Key = tuple[int, int, str]  # (layer, head, name)

#: Display order of known gate names; others follow alphabetically.
GATE_ORDER = ("w_std", "w_rec", "beta", "gate")


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
    names: list[str] = field(default_factory=list)

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
) -> GateReport:
    """Gate values at ``step`` (default: the last recorded), their movement and states."""
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
        else:
            missing.append(key)
    if missing:
        warnings.append(
            f"{len(missing)} gate(s) have no value recorded at step {step} and are left out"
        )

    # state per entry
    def state_of(key: Key) -> str:
        layer, head, name = key
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
        if len(pts) < 2:
            continue
        init = pts[0][1]
        if all(abs(v - init) <= moved_tolerance for _, v in pts[1:]):
            dead.append(key)
    if len(steps) < 2:
        warnings.append(
            f"only one snapshot recorded (step {steps[0]}): movement from init cannot be judged"
        )
    if dead:
        n_judged = sum(1 for pts in series.values() if len(pts) >= 2)
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

    names = sorted({e.name for e in entries}, key=_name_key)
    summary = [
        _summary_line(name, [e for e in entries if e.name == name], values, ratio_threshold)
        for name in names
    ]
    return GateReport(
        step=step,
        steps=steps,
        entries=entries,
        dead=dead,
        summary=summary,
        warnings=warnings,
        ratio_threshold=ratio_threshold,
        names=names,
    )


def _rec_ratio(w_std: float, w_rec: float) -> float:
    if w_std == 0:
        return math.inf if w_rec != 0 else 0.0
    return abs(w_rec / w_std)


def _g(x: float) -> str:
    return f"{x:.3g}"


def _summary_line(
    name: str, entries: list[GateEntry], values: dict[Key, float], ratio_threshold: float
) -> str:
    total = len(entries)
    biggest_move = max(entries, key=lambda e: abs(e.moved) if math.isfinite(e.moved) else -1)
    bm = biggest_move
    moved = f"largest move {bm.moved:+.3g} (layer {bm.layer} head {bm.head})"
    if name == "w_rec":
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
    if name == "beta":
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
