"""The words of a verdict: its headline and the seed's recommendation for each outcome."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from racli.compare.verdict import Verdict
from racli.names import display_name
from racli.text.numbers import (
    pct,
    signed_pct,
)

_RECOMMENDATIONS: dict[str, str] = {
    "WIN": "INTEGRATE {c} into the training pipeline",
    "PARITY": "Try longer training (8+ hours) or analyse the learned w_rec values (ra gates)",
    "LOSE": "Tune initialisation, learning rates or gates of {c}, or redesign",
    "INCONCLUSIVE": "Run more seeds: the interval is still too wide to decide",
    "INVALID:epochs": (
        "Train within one epoch (more data or fewer tokens) so validation loss measures "
        "modelling, not memorisation; --allow-epochs judges anyway, labelled"
    ),
    "INVALID:speed": (
        "Compare at equal steps (ra train --steps, or ra experiment) or on one device: "
        "with wall-clock budgets the speed gap alone moves the loss"
    ),
}


def recommendation(outcome: str, candidate: str, causes: tuple[str, ...] | list[str] = ()) -> str:
    """The seed's recommendation for ``outcome``, naming the candidate (display name)."""
    if outcome == "INVALID":
        keys = [f"INVALID:{c}" for c in causes if f"INVALID:{c}" in _RECOMMENDATIONS]
        text = " Then: ".join(_RECOMMENDATIONS[k] for k in keys) or "Fix the cause above first"
    else:
        text = _RECOMMENDATIONS[outcome]
    return text.format(c=display_name(candidate))


_METRIC_WORDS = {"val_loss": "validation loss", "tokens_per_s": "throughput"}


def headline(v: Verdict) -> str:
    """The verdict line, e.g. "RA v5 WINS: validation loss better by 0.40% to 2.10%"."""
    cn, bn = v.candidate_name, v.baseline_name
    what = _METRIC_WORDS.get(v.metric, v.metric)
    if v.outcome in ("WIN", "LOSE"):
        lo, hi = v.interval
        word = "WINS" if v.outcome == "WIN" else "LOSES"
        if v.outcome == "WIN":
            better = "higher" if v.metric == "tokens_per_s" else "better"
            size = f"{pct(lo)} to {pct(hi)}"
        else:
            better = "lower" if v.metric == "tokens_per_s" else "worse"
            size = f"{pct(-hi)} to {pct(-lo)}"
        line = f"{cn} {word}: {what} {better} by {size}"
        if v.clears_threshold:
            line += f", by at least {v.threshold:.0%}"
        else:
            line += f" (not shown to reach the {v.threshold:.0%} threshold)"
    elif v.outcome == "PARITY":
        lo, hi = v.interval90
        line = (
            f"PARITY: {cn} within {v.threshold:.0%} of {bn} on {what} "
            f"(improvement {signed_pct(lo, 2)} to {signed_pct(hi, 2)})"
        )
    elif v.outcome == "INCONCLUSIVE":
        line = f"INCONCLUSIVE: {cn} vs {bn} on {what} is not settled"
        if v.interval is not None:
            lo, hi = v.interval
            line += f" (improvement {signed_pct(lo, 2)} to {signed_pct(hi, 2)})"
    else:
        causes = {"epochs": "past one epoch", "speed": "speed gap"}
        line = f"INVALID: {' and '.join(causes[c] for c in v.invalid_causes)}, {what} not judged"
    if v.labels and v.outcome != "INVALID":
        line += " [" + "; ".join(v.labels) + "]"
    return line
