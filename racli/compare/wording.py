"""The words of a verdict: its headline and the seed's recommendation for each outcome."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from racli.compare.verdict import Verdict
from racli.names import display_name
from racli.text.numbers import pct, signed_pct

#: what `ra gates` can analyse per variant (variants without gates get no gate advice)
GATE_ADVICE = {
    "ra_v5": "analyse how much it uses its reciprocal term (ra gates)",
    "ra_v5_untied": "analyse how much it uses its reciprocal term (ra gates)",
    "ra_beta": "analyse its learned beta gates (ra gates)",
    "sdpa_gate": "analyse its learned gates (ra gates)",
}

_RECOMMENDATIONS: dict[str, str] = {
    "WIN": "INTEGRATE {c} into the training pipeline",
    "WIN:small": (
        "Do not integrate {c} yet: its gain is real but not shown to reach the {t} bar; "
        "run more seeds to tell whether it clears it"
    ),
    "PARITY": "Try longer training (8+ hours)",
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
    "INVALID:budget": (
        "Calibrate longer (experiment.calibration_max_s, experiment.calibration_max_share) "
        "so the speed ratio behind the step budgets is known to a narrow interval"
    ),
    "INVALID:unfinished": (
        "Find why the missing runs diverged or failed (ra runs show ID): rerun them (the same "
        "ra experiment command resumes its failed runs), or exclude runs whose failure has "
        "nothing to do with the variant (ra runs exclude ID --reason ...)"
    ),
    # A/A: one variant on both sides
    "AA:WIN": (
        "Two arms of one variant differ: by chance in 5% of A/A experiments; otherwise look "
        "for what differs between the arms (devices, order, data)"
    ),
    "AA:PARITY": "The arms agree: use their spread to plan the seeds of a real comparison",
    "AA:INCONCLUSIVE": "Run more seeds to measure the noise between runs",
}


def variant_of(label: str) -> str:
    """The attention of an arm label: ``baseline#2`` -> ``baseline``."""
    return label.split("#", 1)[0]


def recommendation(
    outcome: str,
    candidate: str,
    causes: tuple[str, ...] | list[str] = (),
    *,
    clears: bool = True,
    baseline: str | None = None,
    threshold: float = 0.01,
) -> str:
    """The seed's recommendation for ``outcome``, naming the candidate (display name).

    A WIN whose interval does not clear the threshold is no call to integrate; gate
    advice only for variants with gates; an A/A comparison gets advice about noise."""
    if outcome == "INVALID":
        keys = [f"INVALID:{c}" for c in causes if f"INVALID:{c}" in _RECOMMENDATIONS]
        text = " Then: ".join(_RECOMMENDATIONS[k] for k in keys) or "Fix the cause above first"
    elif baseline is not None and variant_of(baseline) == variant_of(candidate):
        text = _RECOMMENDATIONS["AA:WIN" if outcome == "LOSE" else f"AA:{outcome}"]
    elif outcome == "WIN" and not clears:
        text = _RECOMMENDATIONS["WIN:small"]
    else:
        text = _RECOMMENDATIONS[outcome]
        gates = GATE_ADVICE.get(variant_of(candidate))
        if outcome == "PARITY" and gates:
            text += f" or {gates}"
    return text.format(c=display_name(candidate), t=f"{threshold:.0%}")


_METRIC_WORDS = {"val_loss": "validation loss", "tokens_per_s": "throughput"}
_CAUSE_WORDS = {
    "epochs": "past one epoch",
    "speed": "speed gap",
    "budget": "step budgets imprecise",
    "unfinished": "runs missing unevenly",
}


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
        causes = " and ".join(_CAUSE_WORDS[c] for c in v.invalid_causes)
        line = f"INVALID: {causes}, {what} not judged"
    if v.labels and v.outcome != "INVALID":
        line += " [" + "; ".join(v.labels) + "]"
    return line
