"""Speed calibration: how many training steps per second each arm runs, measured
side by side in one process on the device.

Every arm's model, optimizer and batch stream are built from the public pieces
the trainer uses (``racli_models.GPT`` and its ``configure_optimizer``, the
``BatchSampler``, bf16 autocast and TF32 on CUDA, ``train.sdpa_backend``,
``torch.compile`` when the runs compile). After `warmup_steps` untimed steps per
arm (compilation, allocator), rounds of timed blocks of `block_steps` steps run in
the order A B ... B A (each arm twice per round, mirrored, so a drift within a
round falls on every arm alike). A block is timed from a device synchronisation
to the next.

Per round r and arm j, the speed ratio to the first arm is ``q_rj = t_r0 / t_rj``
(t: seconds per step in that round). A device keeps warming up for a while after
the untimed steps (clocks, caches, autotuning), and those rounds bias a plain
mean: on an H200 the running ratio climbed 0.971, 0.979, 0.983 ... 0.9957 over 14
rounds while the rounds after the fourth alone gave 0.9988. So:

* **warm-up dropped**: the first rounds are cut by MSER truncation (the cut d,
  at most half the rounds, that minimises ``var(x[d:]) / (n - d)`` of the log
  ratios and of the first arm's log seconds per step); the largest cut over the
  arms applies to all;
* the ratio is the geometric mean of the **kept** rounds, its interval the
  Student-t interval of their logs, exponentiated; each arm's steps/s is the
  first arm's (over the kept rounds) times its ratio, so the two always agree;
* **settled** when every ratio's interval lies within ``+-precision`` of it and
  the two halves of the kept rounds agree (their mean log ratios differ by at most
  ``precision``), with at least 4 kept rounds.

Timing stops when settled after at least `min_rounds` rounds, or at the time cap
(but never before `min_rounds`): ``min(calibration_max_s, calibration_max_share x
the experiment's planned training seconds)`` (:func:`time_cap`). An unsettled
calibration is said loudly (:func:`summary_text`), in the report and in every
verdict of the runs it budgeted.

The statistics are pure functions; torch is imported inside `measure` only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np

from racli.text import jsonout


@dataclass
class ArmSpeed:
    label: str
    attn: str
    steps_per_s: float
    ratio: float  # speed / the first arm's speed
    ratio_lo: float
    ratio_hi: float

    @property
    def half_width(self) -> float:
        """Largest distance of the interval's ends from the ratio, relative to it."""
        if not math.isfinite(self.ratio_lo):
            return math.inf
        return max(self.ratio - self.ratio_lo, self.ratio_hi - self.ratio) / self.ratio


@dataclass
class Calibration:
    arms: list[ArmSpeed]
    rounds: int
    timed_s: float
    block_steps: int
    precision: float
    confidence: float = 0.95
    settled: bool = False  # every interval within +-precision
    device: str = "cpu"
    run_id: int | None = None
    per_round: dict[str, list[float]] = field(default_factory=dict)  # label -> s/step per round
    dropped: int = 0  # leading rounds dropped as warm-up
    halves: dict[str, list[float]] = field(default_factory=dict)  # label -> ratio per half
    halves_agree: bool = True
    cap_s: float | None = None  # the time cap it ran under

    def arm(self, label: str) -> ArmSpeed:
        return next(a for a in self.arms if a.label == label)

    def variant_ratios(self) -> dict[str, tuple[float, tuple[float, float] | None, bool]]:
        """Variant -> (speed ratio to the first arm's variant, interval, settled), pooling
        the arms of a variant (geometric mean; the widest interval)."""
        out: dict[str, tuple[float, tuple[float, float] | None, bool]] = {}
        for attn in dict.fromkeys(a.attn for a in self.arms):
            mine = [a for a in self.arms if a.attn == attn]
            ratio = math.exp(sum(math.log(a.ratio) for a in mine) / len(mine))
            lo = min(a.ratio_lo for a in mine)
            hi = max(a.ratio_hi for a in mine)
            out[attn] = (ratio, (lo, hi) if math.isfinite(lo) else None, self.settled)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arms"] = [{**asdict(a), "half_width": jsonout.ready(a.half_width)} for a in self.arms]
        for a in d["arms"]:
            for k in ("ratio_lo", "ratio_hi"):
                a[k] = jsonout.ready(a[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        arms = [
            ArmSpeed(
                a["label"],
                a["attn"],
                a["steps_per_s"],
                a["ratio"],
                _nan_if_none(a["ratio_lo"]),
                _nan_if_none(a["ratio_hi"]),
            )
            for a in d["arms"]
        ]
        return cls(
            arms=arms,
            rounds=d["rounds"],
            timed_s=d["timed_s"],
            block_steps=d["block_steps"],
            precision=d["precision"],
            confidence=d.get("confidence", 0.95),
            settled=d.get("settled", False),
            device=d.get("device", "cpu"),
            run_id=d.get("run_id"),
            per_round=d.get("per_round", {}),
            dropped=d.get("dropped", 0),
            halves=d.get("halves", {}),
            halves_agree=d.get("halves_agree", True),
            cap_s=d.get("cap_s"),
        )


def _nan_if_none(x: float | None) -> float:
    return math.nan if x is None else float(x)


def ratio_interval(
    ref: list[float], other: list[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """(ratio, low, high) of the speed ratio other/ref from per-round seconds per step."""
    from scipy.special import stdtrit

    logs = np.array([math.log(r / o) for r, o in zip(ref, other) if r > 0 and o > 0])
    n = len(logs)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(logs.mean())
    if n < 2:
        return math.exp(mean), math.nan, math.nan
    half = float(stdtrit(n - 1, 0.5 + confidence / 2.0)) * float(logs.std(ddof=1)) / math.sqrt(n)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def mser_cut(x) -> int:
    """MSER truncation: the number of leading values d (at most half of them) that
    minimises ``sum((x[d:] - mean(x[d:]))^2) / (n - d)^2``, the squared standard error of
    the mean of what is kept. 0 for fewer than 4 values."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n < 4:
        return 0
    best, cut = math.inf, 0
    for d in range(0, n // 2 + 1):
        kept = x[d:]
        score = float(((kept - kept.mean()) ** 2).sum()) / len(kept) ** 2
        if score < best - 1e-18:
            best, cut = score, d
    return cut


def warmup_cut(labels: list[str], per_round: dict[str, list[float]]) -> int:
    """The rounds to drop: the largest MSER cut over the first arm's log seconds per step
    and every other arm's log ratio to it."""
    ref = np.log(np.asarray(per_round[labels[0]], dtype=float))
    series = [ref] + [ref - np.log(np.asarray(per_round[lab], dtype=float)) for lab in labels[1:]]
    return max(mser_cut(s) for s in series)


def halves(ref: list[float], other: list[float]) -> tuple[float, float]:
    """The ratios of the first and the second half of the rounds (geometric means)."""
    logs = np.log(np.asarray(ref, dtype=float)) - np.log(np.asarray(other, dtype=float))
    h = len(logs) // 2
    if h == 0:
        return math.nan, math.nan
    return math.exp(float(logs[:h].mean())), math.exp(float(logs[-h:].mean()))


MIN_KEPT = 4  # kept rounds needed to compare two halves


def summarise(
    labels: list[str],
    attns: list[str],
    per_round: dict[str, list[float]],
    *,
    block_steps: int,
    precision: float,
    timed_s: float,
    confidence: float = 0.95,
    device: str = "cpu",
    cap_s: float | None = None,
) -> Calibration:
    """A Calibration from per-round seconds per step of every arm (first arm = reference):
    warm-up rounds dropped, ratios over the kept rounds, settled or not."""
    rounds = len(per_round[labels[0]])
    cut = warmup_cut(labels, per_round)
    kept = {k: list(v[cut:]) for k, v in per_round.items()}
    ref = kept[labels[0]]
    sps0 = len(ref) / sum(ref) if ref and sum(ref) > 0 else math.nan
    arms, agree = [], {}
    for label, attn in zip(labels, attns):
        if label == labels[0]:
            arms.append(ArmSpeed(label, attn, sps0, 1.0, 1.0, 1.0))
            continue
        ratio, lo, hi = ratio_interval(ref, kept[label], confidence)
        arms.append(ArmSpeed(label, attn, sps0 * ratio, ratio, lo, hi))
        agree[label] = halves(ref, kept[label])
    n_kept = rounds - cut
    narrow = all(a.half_width <= precision for a in arms[1:])
    together = all(
        math.isfinite(h1) and abs(math.log(h2 / h1)) <= precision for h1, h2 in agree.values()
    )
    return Calibration(
        arms=arms,
        rounds=rounds,
        timed_s=timed_s,
        block_steps=block_steps,
        precision=precision,
        confidence=confidence,
        settled=n_kept >= MIN_KEPT and narrow and together,
        device=device,
        per_round={k: list(v) for k, v in per_round.items()},
        dropped=cut,
        halves={k: list(v) for k, v in agree.items()},
        halves_agree=together,
        cap_s=cap_s,
    )


def time_cap(max_s: float, max_share: float, minutes: float, n_arms: int, n_seeds: int) -> float:
    """Seconds of timed calibration allowed: ``min(max_s, max_share x the planned training
    seconds)``, the planned training being arms x seeds x minutes x 60."""
    return min(float(max_s), float(max_share) * n_arms * n_seeds * minutes * 60.0)


def should_stop(cal: Calibration, *, min_rounds: int, max_s: float, stopped: bool = False) -> bool:
    """Stop timing: settled after `min_rounds`, asked to stop, or past the time cap (never
    before `min_rounds` rounds: their cost is small and an interval needs them)."""
    if stopped:
        return True
    if cal.rounds < min_rounds:
        return False
    return cal.settled or cal.timed_s >= max_s


def state_text(cal: Calibration) -> str:
    """ "settled", or why not, in words."""
    if cal.settled:
        return "settled"
    why = []
    kept = cal.rounds - cal.dropped
    if kept < MIN_KEPT:
        why.append(f"{kept} kept rounds (needs {MIN_KEPT})")
    wide = [a.label for a in cal.arms[1:] if not a.half_width <= cal.precision]
    if wide:
        why.append(f"interval wider than +-{cal.precision:.2%} ({', '.join(wide)})")
    if not cal.halves_agree:
        why.append(f"the halves of the kept rounds differ by more than {cal.precision:.2%}")
    return "UNSETTLED: " + ("; ".join(why) or "stopped early")


def summary_text(cal: Calibration) -> str:
    """One line on the calibration, and a loud second one when it did not settle."""
    first = cal.arms[0]
    parts = [f"{first.label} {first.steps_per_s:.3f} steps/s"]
    for a in cal.arms[1:]:
        ci = f" [{a.ratio_lo:.4f}, {a.ratio_hi:.4f}]" if math.isfinite(a.ratio_lo) else ""
        parts.append(f"{a.label} x{a.ratio:.4f}{ci}")
    cap = ""
    if cal.cap_s is not None:  # a round is never cut, and the first rounds always run
        over = cal.timed_s > cal.cap_s
        cap = (
            f" (past its cap of {cal.cap_s:.3g} s: whole rounds, a minimum of them)"
            if over
            else f" of at most {cal.cap_s:.3g} s"
        )
    line = (
        f"calibration (run {cal.run_id}, {cal.rounds} rounds, first {cal.dropped} dropped as "
        f"warm-up, {cal.timed_s:.1f} s{cap}, {state_text(cal)}): " + "; ".join(parts)
    )
    if not cal.settled:
        line += (
            "\n⚠️  THE STEP BUDGETS COME FROM AN UNSETTLED SPEED RATIO: every verdict between "
            "arms of different budgets is labelled, and INVALID when the interval's ends alone "
            "could move the loss by half the threshold; raise experiment.calibration_max_s / "
            "calibration_max_share"
        )
    return line


# ---------------------------------------------------------------------------- timing (torch)


def measure(
    specs: list,
    labels: list[str],
    dataset,
    *,
    precision: float,
    max_s: float,
    min_rounds: int = 3,
    block_steps: int = 10,
    warmup_steps: int = 3,
    stop=None,
    on_round: Callable[[Calibration], None] | None = None,
) -> Calibration:
    """Time training steps of every arm (`specs[i]` is arm `labels[i]`'s TrainSpec, all on
    one device) interleaved, until settled or `max_s` seconds of timed steps (the time cap,
    :func:`time_cap`) have run, after `min_rounds` rounds in any case (:func:`should_stop`).
    `stop` (a threading.Event) ends it after the current round."""
    import torch

    device = torch.device(specs[0].device)
    cuda = device.type == "cuda"
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if cuda:
        if device.index is not None:
            torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    arms = []
    try:
        for spec in specs:
            arms.append(_timed_arm(spec, dataset, device, cuda))
        steps = _stepper(cuda, specs[0].train.sdpa_backend)  # as the trainer applies it
        for arm in arms:  # compile and warm up, untimed
            steps(arm, warmup_steps)
        _sync(device)
        rounds = _Rounds(labels, [s.attn for s in specs], block_steps, str(device))
        while True:
            cal = rounds.time_one(arms, steps, device, precision=precision, max_s=max_s)
            if on_round is not None:
                on_round(cal)
            stopped = stop is not None and stop.is_set()
            if should_stop(cal, min_rounds=min_rounds, max_s=max_s, stopped=stopped):
                return cal
    finally:
        del arms
        if any(spec.compile for spec in specs):
            torch._dynamo.reset()  # compiled graphs hold the models: let them go
        if cuda:
            torch.cuda.empty_cache()
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_arm(spec, dataset, device, cuda: bool) -> tuple:
    """An arm's model (compiled as its runs are), optimizer and batches, seeded alike:
    (forward, optimizer, sampler, parameters, grad clip, micro-batches)."""
    import torch

    from racli.training import model_config
    from racli.training.batches import BatchSampler
    from racli_models import GPT, compiler

    t = spec.train
    torch.manual_seed(0)
    raw = GPT(model_config(spec, dataset)).to(device)
    opt = raw.configure_optimizer(
        t.weight_decay, t.lr, (t.beta1, t.beta2), gate_lr_mult=t.gate_lr_mult, fused=cuda
    )
    for g in opt.param_groups:  # a steady, small rate: speed does not depend on it
        g["lr"] = 0.1 * t.lr * g["lr_mult"]
    layout = spec.batch_layout(raw.config.block_size)  # one process, as each run
    sampler = BatchSampler(
        dataset.train, layout.per_rank, raw.config.block_size, seed=0, device=device
    )
    fwd = compiler.compile(raw) if spec.compile else raw
    params = [p for p in raw.parameters() if p.requires_grad]
    return fwd, opt, sampler, params, t.grad_clip, layout.micro


def _stepper(cuda: bool, backend: str) -> Callable[[tuple, int], None]:
    """`steps(arm, n)`: n optimizer steps of an arm, gradient accumulation included."""
    import torch

    from racli.training.trainer import accumulate_gradients, step_context

    autocast = partial(step_context, cuda, backend)

    def steps(arm, n: int) -> None:
        fwd, opt, sampler, params, clip, micro = arm
        for _ in range(n):
            x, y = sampler.next()
            accumulate_gradients(fwd, x, y, micro, autocast)
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

    return steps


class _Rounds:
    """The timed rounds so far: each runs every arm's block forwards, then backwards."""

    def __init__(self, labels: list[str], attns: list[str], block_steps: int, device: str):
        self.labels, self.attns, self.block_steps, self.device = labels, attns, block_steps, device
        self.per_round: dict[str, list[float]] = {label: [] for label in labels}
        self.timed = 0.0

    def time_one(self, arms, steps, device, *, precision: float, max_s: float) -> Calibration:
        """Time one more round; the calibration of all rounds so far."""
        order = list(range(len(arms))) + list(reversed(range(len(arms))))
        spent = [0.0] * len(arms)
        for i in order:
            _sync(device)
            t0 = time.perf_counter()
            steps(arms[i], self.block_steps)
            _sync(device)
            spent[i] += time.perf_counter() - t0
        self.timed += sum(spent)
        for i, label in enumerate(self.labels):
            self.per_round[label].append(spent[i] / (2 * self.block_steps))
        return summarise(
            self.labels,
            self.attns,
            self.per_round,
            block_steps=self.block_steps,
            precision=precision,
            timed_s=self.timed,
            device=self.device,
            cap_s=max_s,
        )
