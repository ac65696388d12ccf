"""Error rates of `ra compare`'s decision rules, by simulation (numpy, seconds).

Each trial draws ``n`` runs a side of a loss near 3.0 with relative seed noise
``noise`` (independent runs, the same seeds on both sides so the pairing rule
is exercised), the candidate shifted by a true relative improvement, and
passes them through the real decision function `racli.compare.verdict.compare_runs`.

    python tools/simulate_verdicts.py                # the README table
    python tools/simulate_verdicts.py --trials 4000 --noise 0.007 --markdown
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from racli.compare.verdict import Sample, compare_runs  # noqa: E402

SIZES = (2, 3, 5, 8)
#: column -> (true improvement, outcomes counted)
COLUMNS = {
    "false WIN/LOSE (no effect)": (0.0, ("WIN", "LOSE")),
    "PARITY (no effect)": (0.0, ("PARITY",)),
    "WIN (true 1.5%)": (0.015, ("WIN",)),
    "WIN (true 3%)": (0.03, ("WIN",)),
}


def rate(
    n: int,
    improvement: float,
    outcomes: tuple[str, ...],
    *,
    trials: int,
    noise: float,
    threshold: float = 0.01,
    seed: int = 0,
) -> float:
    """Share of ``trials`` simulated comparisons whose outcome is in ``outcomes``."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        b = 3.0 * (1 + noise * rng.standard_normal(n))
        c = 3.0 * (1 - improvement) * (1 + noise * rng.standard_normal(n))
        cs = [Sample(100 + i, i, float(v), None) for i, v in enumerate(c)]
        bs = [Sample(i, i, float(v), None) for i, v in enumerate(b)]
        hits += compare_runs(cs, bs, threshold=threshold, wall_clock=False).outcome in outcomes
    return hits / trials


def table(trials: int = 2000, noise: float = 0.007, sizes=SIZES) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for k, n in enumerate(sizes):
        out[n] = {
            name: rate(n, imp, outs, trials=trials, noise=noise, seed=1000 * k + j)
            for j, (name, (imp, outs)) in enumerate(COLUMNS.items())
        }
    return out


def markdown(rates: dict[int, dict[str, float]]) -> str:
    lines = ["| runs a side | " + " | ".join(COLUMNS) + " |", "|---:|" + "---:|" * len(COLUMNS)]
    for n, row in rates.items():
        lines.append(f"| {n} | " + " | ".join(f"{row[c]:.1%}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--noise", type=float, default=0.007)
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    a = p.parse_args()
    rates = table(a.trials, a.noise)
    print(f"{a.trials} trials per cell, {a.noise:.1%} seed noise, threshold 1%, 95% intervals")
    print(markdown(rates))


if __name__ == "__main__":
    main()
