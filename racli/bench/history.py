"""`ra compare --metric ms`: best vs best over every finished bench run, grouped by
shape, dtype, device and environment class (newest group first)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from racli.bench.ranking import NOISE_RATIO, TimingRow, best_vs_best
from racli.bench.text import bench_text, shape_text
from racli.environment import env_class
from racli.errors import BadInput
from racli.store import queries
from racli.store.filters import filters_dict, filters_text
from racli.store.manage import excluded_runs, excluded_text

# what a row of racli.store.queries.ok_bench_timings gives a TimingRow
_ROW_KEYS = (
    *("attn", "mode", "phase", "median_ms", "p10_ms", "p90_ms", "backend", "tflops"),
    *("batch", "seq", "heads", "head_dim", "dtype", "device", "samples"),
)


@dataclass
class BenchGroup:
    """ok timings of one shape, dtype, device (and environment class)."""

    shape: dict[str, Any]  # batch, seq, heads, head_dim, dtype, device
    env_class: str | None  # None: environments pooled (--any-env)
    run_ids: list[int]
    rows: list[TimingRow]
    best: list[dict]

    @property
    def newest(self) -> int:
        return max(self.run_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": dict(self.shape),
            "env_class": self.env_class,
            "run_ids": list(self.run_ids),
            "timings": len(self.rows),
            "best": [dict(b) for b in self.best],
        }


def best_rows(group: BenchGroup) -> list[tuple[str, str | None, list[TimingRow], str | None]]:
    """(phase, backend, the best row of each attention, the candidate's wording) per
    comparison of the group, in the order of `group.best` (baseline first)."""
    rows: dict[tuple[str, str | None], list[TimingRow]] = {}
    wording: dict[tuple[str, str | None], str] = {}
    for b in group.best:
        key = (b["phase"], b["backend"])
        best = (b["attn"], b["best_mode"], b["phase"], b["backend"], b["best_ms"])
        rows.setdefault(key, []).append(
            next(r for r in group.rows if (r.attn, r.mode, r.phase, r.backend, r.median_ms) == best)
        )
        if len(rows[key]) > 1 and b.get("wording") and b.get("ratio") is not None:
            wording[key] = f"{b['ratio']:.2f}x: {b['wording']}"  # the candidate's, not the base's
    return [(ph, be, r, wording.get((ph, be))) for (ph, be), r in rows.items()]


@dataclass
class BenchComparison:
    candidate: str
    baseline: str
    groups: list[BenchGroup]  # newest first
    any_env: bool
    tag: str | None = None
    since: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": "ms",
            "candidate": self.candidate,
            "baseline": self.baseline,
            "filters": filters_dict(self.tag, self.since, self.any_env),
            "groups": [g.to_dict() for g in self.groups],
        }


def group_timings(
    records: list[dict],
    *,
    candidate: str,
    baseline: str,
    any_env: bool = False,
    noise_ratio: float = NOISE_RATIO,
) -> list[BenchGroup]:
    """Rows of :func:`racli.store.queries.ok_bench_timings` -> best vs best per group,
    newest group first."""
    buckets: dict[tuple, tuple[set[int], list[TimingRow]]] = {}
    for r in records:
        med = r["median_ms"]
        if med is None or not math.isfinite(med):
            continue
        cls = None if any_env else env_class(r["gpu_name"], r["torch"])
        key = (r["batch"], r["seq"], r["heads"], r["head_dim"], r["dtype"], r["device"], cls)
        ids, rows = buckets.setdefault(key, (set(), []))
        ids.add(r["run_id"])
        rows.append(TimingRow(**{k: r[k] for k in _ROW_KEYS if k in r}))  # samples: 0008
    groups = []
    for (b, t, h, d, dtype, device, cls), (ids, rows) in buckets.items():
        shape = {"batch": b, "seq": t, "heads": h, "head_dim": d, "dtype": dtype, "device": device}
        best = best_vs_best(rows, baseline=baseline, noise_ratio=noise_ratio)
        groups.append(BenchGroup(shape, cls, sorted(ids), rows, best))
    groups.sort(key=lambda g: g.newest, reverse=True)
    return groups


def load_bench_comparison(
    store,
    *,
    candidate: str = "ra_v5",
    baseline: str = "baseline",
    tag: str | None = None,
    since: datetime | None = None,
    any_env: bool = False,
    noise_ratio: float = NOISE_RATIO,
) -> BenchComparison:
    """Best vs best per shape group from every finished bench run (newest group first)."""
    records = queries.ok_bench_timings(store, attns=(candidate, baseline), tag=tag, since=since)
    for attn in (candidate, baseline):
        if not any(r["attn"] == attn and r["median_ms"] is not None for r in records):
            raise BadInput(
                f"no ok bench timings of '{attn}' in finished bench runs"
                f"{filters_text(tag, since)} (use `ra bench --attn {baseline},{candidate}`)"
            )
    groups = group_timings(
        records, candidate=candidate, baseline=baseline, any_env=any_env, noise_ratio=noise_ratio
    )
    return BenchComparison(candidate, baseline, groups, any_env, tag, since)


@dataclass
class BenchVerdict:
    """`ra compare --metric ms`: the comparison and the excluded bench runs it leaves out."""

    comparison: BenchComparison
    excluded: list[dict]
    plot: Path | None = None  # the plot written (--plot)

    def data(self) -> dict[str, Any]:
        plot = str(self.plot) if self.plot else None
        return {**self.comparison.to_dict(), "excluded": self.excluded, "plot": plot}

    def text(self) -> str:
        excluded = "\n" + excluded_text(self.excluded) if self.excluded else ""
        written = f"\n\nPlot written to {self.plot}" if self.plot else ""
        return bench_text(self.comparison) + excluded + written


def plot_comparison(bc: BenchComparison, path: Path) -> Path:
    """`--plot`: the best row of each side as a box of its repeats, a panel per group,
    phase and backend (BadInput when there is nothing to draw)."""
    from racli.bench.plots import plot_best_vs_best

    panels = []
    for g in bc.groups:
        env = g.env_class if g.env_class is not None else "any environment"
        for phase, backend, rows, wording in best_rows(g):
            # the marks' emoji are not in matplotlib's font: the words alone
            plain = " ".join("".join(ch for ch in wording or "" if ord(ch) < 0x2000).split())
            panels.append((f"{shape_text(g.shape)}\n{env}\n{phase}, {backend}", rows, plain))
    title = f"Best vs best: {bc.candidate} vs {bc.baseline} (ms per iteration)"
    try:
        return plot_best_vs_best(panels, path, title)
    except ValueError as exc:
        raise BadInput(f"{exc}: no plot written") from exc


def compare_bench(
    store,
    *,
    candidate: str,
    baseline: str,
    tag: str | None,
    since: datetime | None,
    any_env: bool,
    noise_ratio: float,
    plot: Path | None = None,
) -> BenchVerdict:
    """Best vs best per shape group over the finished bench runs (load_bench_comparison),
    with the excluded runs the filters leave out, and the plot of it at `plot`."""
    bc = load_bench_comparison(
        store,
        candidate=candidate,
        baseline=baseline,
        tag=tag,
        since=since,
        any_env=any_env,
        noise_ratio=noise_ratio,
    )
    written = plot_comparison(bc, plot) if plot is not None else None
    return BenchVerdict(bc, excluded_runs(store, kind="bench", tag=tag, since=since), written)
