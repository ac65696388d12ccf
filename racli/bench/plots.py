"""`ra bench --plot`: every configuration's repeats, one panel per phase.

Within a panel the modes stand side by side and each attention variant has a box of
its repeats (median line, p25-p75 box, p10-p90 whiskers; a row recorded without its
repeats shows its median and p10-p90), in the variant's colour; the best row of each
variant in the panel is starred, and a configuration that was skipped or failed says
so where its box would be. Pure (matplotlib only, imported lazily): no torch."""

from __future__ import annotations

from pathlib import Path

from racli.bench.ranking import TimingRow
from racli.text.numbers import finite
from racli.text.plots import check_path, colours, figure, save


def _box(row: TimingRow) -> dict | None:
    """matplotlib's `bxp` statistics of one ok row (None for a row without figures)."""
    import numpy as np

    if row.samples and len(row.samples) >= 2:
        s = np.asarray(row.samples, dtype=float)
        q10, q25, q50, q75, q90 = np.percentile(s, [10, 25, 50, 75, 90])
        return {"med": q50, "q1": q25, "q3": q75, "whislo": q10, "whishi": q90, "fliers": []}
    if not finite(row.median_ms):
        return None
    lo = row.p10_ms if finite(row.p10_ms) else row.median_ms
    hi = row.p90_ms if finite(row.p90_ms) else row.median_ms
    m = row.median_ms
    return {"med": m, "q1": m, "q3": m, "whislo": lo, "whishi": hi, "fliers": []}


def _draw(ax, stats: dict, x: float, width: float, colour) -> None:
    """One box of repeats at `x`, in the variant's colour."""
    ax.bxp([stats], positions=[x], widths=width, showfliers=False, patch_artist=True,
           boxprops={"facecolor": colour, "alpha": 0.6}, medianprops={"color": "black"})  # fmt: skip


#: whiskers spanning more than this factor are drawn on a log scale (a busy machine's p90
#: can be 100x its median: on a linear axis every box is then a line at the bottom)
LOG_SPAN = 20.0


def _scale(ax, boxes: list[dict]) -> float:
    """The y axis for `boxes`: from 0 (linear), or logarithmic when their whiskers span
    more than LOG_SPAN; returns the axis' bottom (where notes go)."""
    low = min(b["whislo"] for b in boxes)
    top = max(b["whishi"] for b in boxes)
    if low > 0 and top / low > LOG_SPAN:
        ax.set_yscale("log")
        ax.set_ylim(low / 1.5, top * 2.0)
        return low / 1.4
    ax.set_ylim(0, top * 1.15)
    return top * 0.02


def _finish(fig, p: Path, colour: dict, title: str, right: float, top: float) -> Path:
    """The axes' common style, the variants' legend, the title; the file written."""
    from matplotlib.patches import Patch

    for ax in fig.axes:
        ax.set_ylabel("ms per iteration")
        ax.grid(True, axis="y", alpha=0.3)
    handles = [Patch(facecolor=c, alpha=0.6, label=a) for a, c in colour.items()]
    fig.legend(handles=handles, loc="upper right", fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout(rect=(0, 0, right, top))
    save(fig, p)
    return p


def title(run_id: int, rows: list[TimingRow]) -> str:
    """The plot's title: the run and the shape, dtype and device of its first row."""
    r = rows[0] if rows else None
    if r is None:
        return f"bench run {run_id}"
    return (
        f"bench run {run_id}: B={r.batch} T={r.seq} H={r.heads} D={r.head_dim} {r.dtype} {r.device}"
    )


def plot_bench(rows: list[TimingRow], path: str | Path, title: str) -> Path:
    """Draw the rows of one bench run to an image at `path` (ValueError: nothing to draw,
    or a path that cannot be written)."""
    p = check_path(path)
    phases = list(dict.fromkeys(r.phase for r in rows))
    if not any(r.status == "ok" and _box(r) for r in rows):
        raise ValueError("no timed configuration to plot (every one skipped or failed)")
    attns = list(dict.fromkeys(r.attn for r in rows))
    colour = dict(zip(attns, colours(len(attns)), strict=True))
    width = 0.8 / len(attns)
    fig = figure(max(6.5, 3.2 * len(phases) + 1.5 * len(attns)), 5.0)
    for k, phase in enumerate(phases, 1):
        ax = fig.add_subplot(1, len(phases), k)
        here = [r for r in rows if r.phase == phase]
        modes = list(dict.fromkeys(r.mode for r in here))
        best: dict[str, TimingRow] = {}
        for r in here:
            if r.status == "ok" and finite(r.median_ms):
                if r.attn not in best or r.median_ms < best[r.attn].median_ms:
                    best[r.attn] = r
        bottom = _scale(ax, [b for r in here if r.status == "ok" and (b := _box(r))] or
                        [{"whislo": 0.0, "whishi": 1.0}])  # fmt: skip
        for m, mode in enumerate(modes):
            for a, attn in enumerate(attns):
                x = m - 0.4 + width * (a + 0.5)
                row = next((r for r in here if r.mode == mode and r.attn == attn), None)
                if row is None:
                    continue
                stats = _box(row) if row.status == "ok" else None
                if stats is None:
                    ax.text(x, bottom, row.status, rotation=90, ha="center", va="bottom",
                            fontsize="small", color=colour[attn])  # fmt: skip
                    continue
                _draw(ax, stats, x, width * 0.8, colour[attn])
                if best.get(attn) is row:
                    ax.plot([x], [stats["whishi"] * 1.06], marker="*", color=colour[attn],
                            markersize=9)  # fmt: skip
        ax.set_xticks(range(len(modes)), modes)
        ax.set_xlim(-0.6, len(modes) - 0.4)
        ax.set_title(f"{phase} (best of each variant starred)", fontsize="medium")
    return _finish(fig, p, colour, title, 0.9, 1)


def plot_best_vs_best(panels: list[tuple[str, list[TimingRow], str]], path: str | Path,
                      title: str) -> Path:  # fmt: skip
    """`ra compare --metric ms --plot`: a panel per (group, phase, backend), each with the
    best row of every variant as a box of its repeats, labelled with its mode; the panel's
    title gives the group and the verdict's wording. `panels`: (panel title, best rows,
    wording). ValueError when nothing can be drawn."""
    p = check_path(path)
    panels = [(t, rows, w) for t, rows, w in panels if any(_box(r) for r in rows)]
    if not panels:
        raise ValueError("no best timings to plot")
    attns = list(dict.fromkeys(r.attn for _, rows, _ in panels for r in rows))
    colour = dict(zip(attns, colours(len(attns)), strict=True))
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig = figure(4.4 * cols + 1.2, 4.4 * rows_n)
    for k, (label, rows, wording) in enumerate(panels, 1):
        ax = fig.add_subplot(rows_n, cols, k)
        drawn = [(r, b) for r in rows if (b := _box(r))]
        for x, (r, b) in enumerate(drawn):
            _draw(ax, b, x, 0.5, colour[r.attn])
        ax.set_xticks(range(len(drawn)), [f"{r.attn}\n({r.mode})" for r, _ in drawn])
        _scale(ax, [b for _, b in drawn])
        ax.set_title(f"{label}\n{wording}" if wording else label, fontsize="small")
    return _finish(fig, p, colour, title, 0.88, 0.95)
