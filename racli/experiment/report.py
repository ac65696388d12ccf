"""The Markdown report of an experiment (`ra experiment --report FILE.md`).

Sections: the settings, the calibration (speed ratios with their intervals),
the step budgets, the table of runs (with the device each started on), each arm's
speed on each device (with several devices), each verdict with its interval (and the
`ra compare` blocks), the looks of --until-settled, the GPU clocks, the gate
summary, and the loss curves as PNG files written beside the report
(``<stem>-val_loss.png``, ``<stem>-train_loss.png``). No torch.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

from racli.compare.grouping import metric_curves
from racli.compare.text import measured_speed
from racli.errors import BadInput
from racli.experiment import judge, text
from racli.gates.analysis import analyse_gates
from racli.store.clocks import medians_by_run
from racli.store.experiment_queries import experiment_runs
from racli.store.queries import gate_rows
from racli.text.numbers import number
from racli.text.outputs import atomic_write, check_output_file
from racli.text.outputs import is_special as special_file


def check_report_path(path: Path | None) -> None:
    """BadInput unless the report (and its PNGs beside it) can be written, by the rules of
    every output file (racli.text.outputs). A device or a pipe something reads (/dev/null,
    `>(cat)`) is written as it is, with no PNGs, so nothing is created beside it."""
    if path is not None:
        check_output_file(path, "report", special_ok=True)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def try_write_report(
    path: Path | None, outcome, store, *, command: str | None = None
) -> tuple[list[Path], str | None]:
    """(the files written, None) or ([], why the report could not be written): a report
    that cannot be written does not hide the verdict. No report asked for: ([], None)."""
    if path is None:
        return [], None
    try:
        return write_report(path, outcome, store, command=command), None
    except OSError as exc:
        return [], f"cannot write the report {path}: {exc.strerror or exc}"
    except BadInput as exc:  # the report itself (racli.text.outputs.atomic_write)
        return [], str(exc)


def write_report(path: Path, outcome, store, *, command: str | None = None) -> list[Path]:
    """Write the report and its PNGs; returns the files written."""
    path = Path(path)
    written = [path]
    runs = experiment_runs(store, outcome.key)
    lines = _head_lines(outcome, command)
    lines += _calibration_lines(outcome.calibration, outcome.budgets)
    lines += _budget_lines(outcome, runs)
    lines += _run_lines(store, runs)
    lines += _device_lines(outcome)
    lines += _verdict_lines(outcome)
    lines += _curve_lines(path, outcome, store, runs, written)
    lines += ["## Gates", ""]
    lines += _gate_lines(store, runs)
    with atomic_write(path, "wb") as fh:
        fh.write(("\n".join(lines) + "\n").encode("utf-8"))
    return written


def _head_lines(outcome, command: str | None) -> list[str]:
    lines = [f"# Experiment {outcome.key}: {', '.join(a.label for a in outcome.arms)}", ""]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(
        f"Written {when}. Runs tagged `{outcome.tag}`; devices "
        f"{', '.join(outcome.devices)}; seeds {', '.join(map(str, outcome.seeds))}."
    )
    if command:
        lines += ["", "```", command, "```"]
    return lines


def _run_lines(store, runs) -> list[str]:
    lines = ["", "## Runs", ""]
    clocks = medians_by_run(store, [r.id for r in runs])
    rows = []
    for r in runs:
        c = clocks.get(r.id, {})
        clock = f"{c['sm_clock_mhz']:.0f} MHz" if "sm_clock_mhz" in c else "-"
        rows.append(
            [
                str(r.id),
                judge.arm_of(r) or "-",
                r.attn or "-",
                judge.experiment_entry(r).get("device") or "-",
                str(r.seed),
                r.status,
                str(r.iterations or "-"),
                number(r.val_loss),
                number(r.tokens_per_s, ",.0f"),
                number(r.train_seconds, ".1f"),
                clock,
            ]
        )
    lines += _table(
        [
            "run",
            "arm",
            "attention",
            "device",
            "seed",
            "status",
            "steps",
            "val_loss",
            "tok/s",
            "train s",
            "SM clock (median)",
        ],
        rows,
    )
    if any(clocks.values()):
        lines.append("")
        lines.append(
            "GPU medians per run (power, temperature): "
            + "; ".join(
                f"run {rid}: {number(c.get('power_w'), '.0f')} W, {number(c.get('temp_c'), '.0f')} C"
                for rid, c in sorted(clocks.items())
            )
        )
    return lines


def _device_lines(outcome) -> list[str]:
    """Each arm's tokens/s on each device, with several devices (`speeds.by_device`)."""
    speeds, arms = outcome.device_speeds, [a.label for a in outcome.arms]
    if len(speeds) < 2:
        return []
    lines = ["", "## Speed by device", ""]
    lines.append(
        "Median tokens/s of each arm's finished runs on each device (the device each "
        f"started on), how many runs, and the ratio to {arms[0]} on the same device, which "
        "the device's own speed cancels from. Device factor: the median over the device's "
        "runs of each run's tokens/s over its arm's median on every device."
    )
    lines.append("")
    rows = [
        [d.device, *(d.cell(a) for a in arms), f"x{d.factor:.4f}" if d.factor is not None else "-"]
        for d in speeds
    ]
    lines += _table(["device", *arms, "device factor"], rows)
    return lines


def _verdict_lines(outcome) -> list[str]:
    lines = ["", "## Verdict", ""]
    for av in outcome.verdicts:
        if av.comparison is None:
            lines.append(f"- **{av.candidate} vs {av.baseline}**: no verdict ({av.error})")
            continue
        lines += _one_verdict_lines(av)
    for av in outcome.verdicts:
        if av.comparison is not None:
            lines += ["", "```", judge.verdict_text(av), "```"]
    if outcome.design:
        lines += _design_lines(outcome)
    return lines


def _one_verdict_lines(av) -> list[str]:
    v = av.comparison.verdict
    ci = (
        f"{v.confidence:.1%} interval of the improvement [{v.interval[0] * 100:+.2f}%, "
        f"{v.interval[1] * 100:+.2f}%]"
        if v.interval is not None
        else "no interval"
    )
    gone = "; ".join(
        f"{name}: {s.diverged} diverged, {s.failed} failed"
        for name, s in ((av.candidate, v.candidate), (av.baseline, v.baseline))
        if s.diverged is not None
    )
    lines = [
        f"- **{av.candidate} vs {av.baseline}: {v.outcome}** -- improvement "
        f"{v.improvement * 100:+.2f}% ({ci}; {v.method}, {v.candidate.n} vs "
        f"{v.baseline.n} runs{'; ' + gone if gone else ''}). {v.method_why}. {v.reason}."
    ]
    for label in v.labels:
        lines.append(f"  - ⚠️ {label}")
    g = v.speed_gap
    if g is not None and g.kind == "matched_time" and g.measured_ratio is not None:
        lines.append(f"  - speed during the runs: {measured_speed(g)}")
    return lines


def _design_lines(outcome) -> list[str]:
    d = outcome.design
    lines = ["", "### Sequential design", ""]
    lines.append(
        f"--until-settled: {d['spending']} alpha spending, false WIN/LOSE rate "
        f"{d['alpha']:.0%} over planned looks at {', '.join(map(str, d['looks']))} "
        f"seeds per arm."
    )
    lines.append("")
    lines += _table(
        ["look (seeds)", "confidence", "outcomes"],
        [
            [
                str(lk["seeds"]),
                f"{lk['confidence']:.4%}",
                ", ".join(f"{k}: {o}" for k, o in lk["outcomes"].items()),
            ]
            for lk in outcome.looks
        ],
    )
    return lines


def _curve_lines(path: Path, outcome, store, runs, written: list[Path]) -> list[str]:
    """The loss curves section; the PNGs drawn are appended to `written`."""
    from racli.compare.plots import plot_loss_curves  # matplotlib: only to write a report

    stem = path.with_suffix("")
    by_arm: dict[str, list[int]] = {}
    for r in runs:
        if r.status == "finished":
            by_arm.setdefault(judge.arm_of(r), []).append(r.id)
    lines = ["", "## Loss curves", ""]
    if special_file(path):  # /dev/null, a pipe: nothing is written beside it
        lines.append("Not drawn: the report went to a special file.")
        return lines
    for metric in ("val_loss", "train_loss"):
        groups = {a.label: by_arm.get(a.label, []) for a in outcome.arms}
        curves = metric_curves(store, groups, name=metric)
        png = Path(f"{stem}-{metric}.png")
        try:
            plot_loss_curves(curves, png, f"{metric}: experiment {outcome.key}", ylabel=metric)
        except ValueError:
            lines.append(f"No {metric} curves recorded.")
            continue
        written.append(png)
        lines.append(f"![{metric}]({png.name})")
        lines.append("")
    return lines


def _gate_lines(store, runs) -> list[str]:
    out = []
    for r in runs:
        if r.status != "finished":
            continue
        rows = gate_rows(store, r.id)
        if not rows:
            continue
        try:
            rep = analyse_gates(rows)
        except ValueError:
            continue
        out.append(
            f"- run {r.id} ({judge.arm_of(r)}, seed {r.seed}), step {rep.step}: "
            + "; ".join(rep.summary + rep.warnings)
        )
    return out or ["No gated variant in this experiment (baseline has no gates)."]


def _calibration_lines(cal, budgets) -> list[str]:
    from racli.experiment.calibrate import MIN_KEPT, state_text

    lines = ["", "## Calibration", ""]
    if cal is None:
        return lines + [text.missing_calibration_text(budgets) + "."]
    if not cal.settled:
        lines += [
            f"> ⚠️ **{state_text(cal)}.** The step budgets below come from a speed ratio that "
            "had not settled; every verdict between arms of different budgets is labelled, and "
            "INVALID when the ends of the ratio's interval alone could move the loss by half "
            "the threshold.",
            "",
        ]
    cap = f" (time cap {cal.cap_s:.3g} s)" if cal.cap_s is not None else ""
    lines.append(
        f"Calibration run {cal.run_id} on {cal.device}: {cal.rounds} rounds of "
        f"{cal.block_steps}-step blocks in A B ... B A order, {cal.timed_s:.1f} s timed{cap}. "
        f"The first {cal.dropped} round(s) were dropped as warm-up (MSER truncation); the "
        f"ratios are over the {cal.rounds - cal.dropped} kept rounds. Settled means every "
        f"ratio's 95% interval within +-{cal.precision:.2%}, the two halves of the kept "
        f"rounds within {cal.precision:.2%} of each other and at least {MIN_KEPT} kept rounds: "
        f"{state_text(cal)}."
    )
    lines.append("")
    rows = []
    for a in cal.arms:
        first = a is cal.arms[0]
        ci = f"[{a.ratio_lo:.4f}, {a.ratio_hi:.4f}]" if math.isfinite(a.ratio_lo) else "-"
        hw = f"+-{a.half_width:.2%}" if math.isfinite(a.half_width) and not first else "-"
        h = cal.halves.get(a.label)
        halves = f"{h[0]:.4f} / {h[1]:.4f}" if h and not first else "-"
        rows.append(
            [a.label, a.attn, number(a.steps_per_s, ".3f"), f"{a.ratio:.4f}", ci, hw, halves]
        )
    lines += _table(
        ["arm", "attention", "steps/s", "speed ratio", "95% interval", "half-width", "halves"],
        rows,
    )
    return lines


def _budget_lines(outcome, runs) -> list[str]:
    arms = outcome.arms
    lines = ["", "## Step budgets (matched time)", ""]
    minutes = runs[0].config.get("budget_source", {}).get("minutes") if runs else None
    lines.append(
        f"The first arm gets {outcome.budgets[arms[0].label].steps} steps "
        f"(= {minutes if minutes is not None else '?'} min x 60 x its steps/s); every "
        f"other variant that many times its speed ratio; arms of one variant share "
        f"a budget."
    )
    if any(a.attn == b.attn for i, a in enumerate(arms) for b in arms[:i]):
        lines.append(
            "A repeated variant's further arms train on their own seeds (seed + 1,000,000 x k), "
            "so an A/A comparison is one of independent runs."
        )
    lines.append("")
    rows = []
    for k, b in outcome.budgets.items():
        ci = f"[{b.ratio_ci[0]:.4f}, {b.ratio_ci[1]:.4f}]" if b.ratio_ci else "-"
        rows.append([k, str(b.steps), f"{b.ratio:.4f}", ci])
    lines += _table(["arm", "steps", "ratio", "95% interval"], rows)
    return lines
