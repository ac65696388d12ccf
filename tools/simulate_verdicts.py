"""Error rates of `ra compare`'s verdict rules and of `ra experiment --until-settled`, by
simulation through the real decision code (numpy, seconds).

Each trial draws ``n`` runs a side of a loss near 3.0: ``3 exp(e)``, ``e ~ N(0, noise)``
per run, a share ``r`` of whose variance is common to the two arms of one seed (shared
initialisation and batches); the candidate's loss is lower by the true improvement. The
outcome comes from `racli.compare.stats.outcomes`, the functions `compare_runs` itself
calls (`--check` also runs `compare_runs` on a sample of trials and counts any
difference). Independent runs are judged by Welch's rule, paired ones by the paired
rule, as `ra compare` does by design.

    python tools/simulate_verdicts.py                       # print the tables
    python tools/simulate_verdicts.py --readme README.md    # rewrite the README's tables
    python tools/simulate_verdicts.py --trials 10000 --check 2000
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from racli.compare import stats  # noqa: E402
from racli.compare.verdict import Design, Sample, compare_runs  # noqa: E402
from racli.experiment import sequential  # noqa: E402

SIZES = (2, 3, 5, 8)
NOISE = 0.007
THRESHOLD = 0.01
#: design -> (paired analysis, per-seed correlation of the two arms)
DESIGNS = {
    "independent (Welch)": (False, 0.0),
    "paired, r = 0": (True, 0.0),
    "paired, r = 0.5": (True, 0.5),
    "paired, r = 0.9": (True, 0.9),
    "paired, r = 0.99": (True, 0.99),
}
#: column -> (true improvement, outcomes counted)
COLUMNS = {
    "false WIN/LOSE (no effect)": (0.0, ("WIN", "LOSE")),
    "PARITY (no effect)": (0.0, ("PARITY",)),
    "WIN (true 1.5%)": (0.015, ("WIN",)),
    "WIN (true 3%)": (0.03, ("WIN",)),
}
SEQUENTIAL_DESIGNS = ("independent (Welch)", "paired, r = 0", "paired, r = 0.9")


def judge_for(paired: bool, threshold: float = THRESHOLD):
    def judge(c, b, confidence):
        return stats.outcomes(c, b, paired=paired, threshold=threshold, confidence=confidence)

    return judge


def rate(
    n: int,
    improvement: float,
    outcomes: tuple[str, ...],
    *,
    paired: bool,
    correlation: float,
    trials: int,
    noise: float = NOISE,
    threshold: float = THRESHOLD,
    seed: int = 0,
) -> float:
    """Share of ``trials`` comparisons at ``n`` runs a side whose outcome is in ``outcomes``."""
    rng = np.random.default_rng(seed)
    c, b = sequential.draw(
        rng, trials, n, effect=-improvement, noise=noise, correlation=correlation
    )
    got = stats.outcomes(c, b, paired=paired, threshold=threshold)
    return float(np.isin(got, outcomes).mean())


def fixed_table(trials: int, noise: float = NOISE, sizes=SIZES, designs=None) -> dict:
    """design -> n -> column -> rate."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for i, name in enumerate(designs or DESIGNS):
        paired, r = DESIGNS[name]
        out[name] = {
            n: {
                col: rate(
                    n,
                    imp,
                    outs,
                    paired=paired,
                    correlation=r,
                    trials=trials,
                    noise=noise,
                    seed=10_000 * i + 100 * n + j,
                )  # fmt: skip
                for j, (col, (imp, outs)) in enumerate(COLUMNS.items())
            }
            for n in sizes
        }
    return out


def sequential_table(
    histories: int, noise: float = NOISE, first: int = 2, max_seeds: int = 10, designs=None
) -> dict:
    """design -> column -> figure, for `--until-settled` from ``first`` to ``max_seeds``."""
    plan = sequential.Design.plan(first, max_seeds)
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(designs or SEQUENTIAL_DESIGNS):
        paired, r = DESIGNS[name]
        row = {}
        for j, (col, (imp, outs)) in enumerate(COLUMNS.items()):
            res = sequential.simulate(
                judge_for(paired), plan, effect=-imp, noise=noise, correlation=r,
                histories=histories, rng_seed=1000 * i + j,
            )  # fmt: skip
            row[col] = res.rate(*outs)
            if imp == 0.03:
                row["median seeds (true 3%)"] = float(np.median(res.seeds_used))
        out[name] = row
    return out


def followed_power(
    paired: bool,
    correlation: float,
    *,
    pilot: int = 3,
    histories: int = 2000,
    noise: float = NOISE,
    threshold: float = THRESHOLD,
    seed: int = 0,
) -> tuple[float, float]:
    """(power, median runs): a pilot of ``pilot`` runs a side with no effect gives the
    verdict's seeds-needed figure; an experiment of that many runs a side then faces a true
    improvement of the threshold. Power = share of those experiments that WIN."""
    rng = np.random.default_rng(seed)
    c, b = sequential.draw(rng, histories, pilot, noise=noise, correlation=correlation)
    eff = stats.paired_effect(c, b) if paired else stats.welch_effect(c, b)
    needed = np.array(
        [
            stats.seeds_needed_range(
                float(sp), float(df), threshold, paired=paired, confidence=0.95
            )[0]
            for sp, df in zip(eff.spread, eff.spread_df)
        ]
    )
    wins = 0
    for n in np.unique(needed):
        k = int((needed == n).sum())
        c, b = sequential.draw(
            rng, k, int(n), effect=-threshold, noise=noise, correlation=correlation
        )
        wins += int((stats.outcomes(c, b, paired=paired, threshold=threshold) == "WIN").sum())
    return wins / histories, float(np.median(needed))


def followed_sentence(histories: int = 2000) -> str:
    """The README's sentence on the seeds-needed figure followed after a 3-seed pilot."""
    got = {name: followed_power(*DESIGNS[name], histories=histories) for name in SEQUENTIAL_DESIGNS}
    (pi, ni), (p0, n0), (p9, n9) = (
        got[k] for k in ("independent (Welch)", "paired, r = 0", "paired, r = 0.9")
    )
    return (
        f"Followed after a 3-seed pilot ({histories:,} pilots a design), the seeds-needed "
        f"figure gives {pi:.1%} power at a true 1% for independent runs (median {ni:g} runs a "
        f"side), {p0:.1%} paired at r = 0 ({n0:g}) and {p9:.1%} paired at r = 0.9 ({n9:g})."
    )


def check_against_compare_runs(trials: int, seed: int = 0) -> int:
    """Trials whose outcome differs between `compare_runs` and the vectorised rules."""
    rng = np.random.default_rng(seed)
    wrong = 0
    for k in range(trials):
        n = int(rng.integers(2, 9))
        paired, r = list(DESIGNS.values())[k % len(DESIGNS)]
        imp = float(rng.choice([0.0, 0.01, 0.015, 0.03]))
        c, b = sequential.draw(rng, 1, n, effect=-imp, noise=NOISE, correlation=r)
        fast = stats.outcomes(c, b, paired=paired)[0]
        cs = [Sample(100 + i, i, float(v), None) for i, v in enumerate(c[0])]
        bs = [Sample(i, i, float(v), None) for i, v in enumerate(b[0])]
        design = Design(paired, "simulated")
        slow = compare_runs(cs, bs, wall_clock=False, design=design).outcome
        wrong += fast != slow
    return wrong


def markdown_fixed(table: dict) -> str:
    lines = [
        "| design | runs a side | " + " | ".join(COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    for name, rows in table.items():
        for n, row in rows.items():
            lines.append(f"| {name} | {n} | " + " | ".join(f"{row[c]:.1%}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def markdown_sequential(table: dict) -> str:
    cols = [*COLUMNS, "median seeds (true 3%)"]
    lines = ["| design | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in table.items():
        cells = [f"{row[c]:.1%}" for c in COLUMNS] + [f"{row[cols[-1]]:g}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    """Replace what lies between ``<!-- simulate_verdicts:NAME -->`` and its end marker."""
    start, end = f"<!-- simulate_verdicts:{name} -->", f"<!-- /simulate_verdicts:{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"no {start} ... {end} block to replace")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100_000, help="trials a cell (fixed n)")
    p.add_argument("--histories", type=int, default=100_000, help="histories a cell (sequential)")
    p.add_argument("--noise", type=float, default=NOISE)
    p.add_argument("--check", type=int, default=0, help="also run compare_runs on N trials")
    p.add_argument("--readme", type=Path, help="rewrite the tables in this README")
    a = p.parse_args()
    fixed = markdown_fixed(fixed_table(a.trials, a.noise))
    seq = markdown_sequential(sequential_table(a.histories, a.noise))
    head = (
        f"{a.trials:,} trials a cell, {a.noise:.1%} noise a run, threshold 1%, 95% intervals "
        f"(`python tools/simulate_verdicts.py`)"
    )
    head_seq = (
        f"`--until-settled` from 2 to 10 seeds a side, {a.histories:,} histories a cell, "
        f"{a.noise:.1%} noise a run"
    )
    print(head + "\n\n" + fixed + "\n\n" + head_seq + "\n\n" + seq)
    followed = followed_sentence(a.histories // 50)
    print("\n" + followed)
    if a.check:
        wrong = check_against_compare_runs(a.check)
        print(f"\ncompare_runs vs the vectorised rules: {wrong} of {a.check} trials differ")
    if a.readme is not None:
        text = a.readme.read_text(encoding="utf-8")
        text = replace_block(text, "fixed", head + ":\n\n" + fixed)
        text = replace_block(text, "sequential", head_seq + ":\n\n" + seq)
        text = replace_block(text, "followed", followed)
        a.readme.write_text(text, encoding="utf-8")
        print(f"\n{a.readme} rewritten")


if __name__ == "__main__":
    main()
