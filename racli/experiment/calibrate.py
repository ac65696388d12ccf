"""Speed calibration: how many training steps per second each arm runs, measured
side by side in one process on the device.

Every arm's model, optimizer and batch stream are built from the public pieces
the trainer uses (``racli_models.GPT`` and its ``configure_optimizer``, the
``BatchSampler``, bf16 autocast and TF32 on CUDA, ``train.sdpa_backend``,
``torch.compile`` when the runs compile). After `warmup_steps` untimed steps per arm (compilation,
allocator), rounds of timed blocks of `block_steps` steps run in the order
A B ... B A (each arm twice per round, mirrored, so a drift within a round
falls on every arm alike). A block is timed from a device synchronisation to
the next.

Per round r and arm j, the speed ratio to the first arm is
``q_rj = t_r0 / t_rj`` (t: seconds per step in that round). The ratio is the
geometric mean of the q_rj, its interval the Student-t interval of their logs,
exponentiated. Timing stops when every ratio's interval lies within
``+-precision`` of it (after at least `min_rounds` rounds), or when the timed
seconds reach `max_s`.

The statistics are pure functions; torch is imported inside `measure` only.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


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

    def arm(self, label: str) -> ArmSpeed:
        return next(a for a in self.arms if a.label == label)

    def variant_ratios(self) -> dict[str, tuple[float, tuple[float, float] | None]]:
        """Variant -> (speed ratio to the first arm's variant, interval), pooling the arms
        of a variant (geometric mean; the widest interval)."""
        out: dict[str, tuple[float, tuple[float, float] | None]] = {}
        for attn in dict.fromkeys(a.attn for a in self.arms):
            mine = [a for a in self.arms if a.attn == attn]
            ratio = math.exp(sum(math.log(a.ratio) for a in mine) / len(mine))
            lo = min(a.ratio_lo for a in mine)
            hi = max(a.ratio_hi for a in mine)
            out[attn] = (ratio, (lo, hi) if math.isfinite(lo) else None)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arms"] = [{**asdict(a), "half_width": _finite_or_none(a.half_width)} for a in self.arms]
        for a in d["arms"]:
            for k in ("ratio_lo", "ratio_hi"):
                a[k] = _finite_or_none(a[k])
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
        )


def _finite_or_none(x: float) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _nan_if_none(x: float | None) -> float:
    return math.nan if x is None else float(x)


def ratio_interval(
    ref: list[float], other: list[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """(ratio, low, high) of the speed ratio other/ref from per-round seconds per step."""
    from scipy.special import stdtrit

    logs = [math.log(r / o) for r, o in zip(ref, other) if r > 0 and o > 0]
    n = len(logs)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(logs) / n
    if n < 2:
        return math.exp(mean), math.nan, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    half = float(stdtrit(n - 1, 0.5 + confidence / 2.0)) * sd / math.sqrt(n)
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


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
) -> Calibration:
    """A Calibration from per-round seconds per step of every arm (first arm = reference)."""
    ref = per_round[labels[0]]
    arms = []
    for label, attn in zip(labels, attns):
        times = per_round[label]
        sps = len(times) / sum(times) if times and sum(times) > 0 else math.nan
        if label == labels[0]:
            ratio, lo, hi = 1.0, 1.0, 1.0
        else:
            ratio, lo, hi = ratio_interval(ref, times, confidence)
        arms.append(ArmSpeed(label, attn, sps, ratio, lo, hi))
    rounds = len(ref)
    settled = rounds >= 2 and all(a.half_width <= precision for a in arms[1:])
    return Calibration(
        arms=arms,
        rounds=rounds,
        timed_s=timed_s,
        block_steps=block_steps,
        precision=precision,
        confidence=confidence,
        settled=settled,
        device=device,
        per_round={k: list(v) for k, v in per_round.items()},
    )


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
    one device) interleaved, until the ratios are known to `precision` or `max_s` of timed
    steps have run. `stop` (a threading.Event) ends it after the current round."""
    import torch

    from racli.names import sdpa_backend_context
    from racli.training import model_config
    from racli.training.batches import BatchSampler
    from racli.training.trainer import accumulate_gradients
    from racli_models import GPT

    device = torch.device(specs[0].device)
    cuda = device.type == "cuda"
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if cuda:
        if device.index is not None:
            torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    arms = []
    try:
        for spec in specs:
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
            fwd = torch.compile(raw) if spec.compile else raw
            params = [p for p in raw.parameters() if p.requires_grad]
            arms.append((fwd, opt, sampler, params, t.grad_clip, layout.micro))

        backend = specs[0].train.sdpa_backend  # as the trainer applies it

        def autocast() -> contextlib.ExitStack:
            ctx = contextlib.ExitStack()
            if cuda:
                ctx.enter_context(torch.autocast(device_type="cuda", dtype=torch.bfloat16))
            ctx.enter_context(sdpa_backend_context(backend))
            return ctx

        def steps(arm, n: int) -> None:  # optimizer steps, accumulation included
            fwd, opt, sampler, params, clip, micro = arm
            for _ in range(n):
                x, y = sampler.next()
                accumulate_gradients(fwd, x, y, micro, autocast)
                if clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                opt.step()
                opt.zero_grad(set_to_none=True)

        for arm in arms:  # compile and warm up, untimed
            steps(arm, warmup_steps)
        sync()
        order = list(range(len(arms))) + list(reversed(range(len(arms))))
        per_round: dict[str, list[float]] = {label: [] for label in labels}
        timed = 0.0
        attns = [s.attn for s in specs]
        while True:
            spent = [0.0] * len(arms)
            for i in order:
                sync()
                t0 = time.perf_counter()
                steps(arms[i], block_steps)
                sync()
                spent[i] += time.perf_counter() - t0
            timed += sum(spent)
            for i, label in enumerate(labels):
                per_round[label].append(spent[i] / (2 * block_steps))
            cal = summarise(
                labels,
                attns,
                per_round,
                block_steps=block_steps,
                precision=precision,
                timed_s=timed,
                device=str(device),
            )
            if on_round is not None:
                on_round(cal)
            rounds = len(per_round[labels[0]])
            if rounds >= min_rounds and cal.settled:
                return cal
            if stop is not None and stop.is_set():
                return cal
            if timed >= max_s and rounds >= 2:  # two rounds at least: an interval
                return cal
    finally:
        del arms
        if any(spec.compile for spec in specs):
            torch._dynamo.reset()  # compiled graphs hold the models: let them go
        if cuda:
            torch.cuda.empty_cache()
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
