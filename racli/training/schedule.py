"""The learning-rate schedule: linear warm-up, then cosine decay to a floor.

Pure functions of the *progress* through the budget, a number in [0, 1]:
for a `--steps N` budget the trainer passes `(step + 1) / N` (the share of the
budget used once the step it is about to take is done), for a `--minutes M`
budget `train_seconds / (60 M)` (training time already spent; compile
warm-up, evaluation and checkpoints are not part of it). Fitting the
schedule to the budget this way makes a one-hour run decay fully within its
hour whatever the model's speed.
"""

from __future__ import annotations

import math


def lr_at(progress: float, base_lr: float, warmup_frac: float, min_lr_ratio: float) -> float:
    """Learning rate at `progress` (clamped to [0, 1]).

    - warm-up (`progress < warmup_frac`): rises linearly from 0 to `base_lr`;
    - then cosine decay from `base_lr` at the end of warm-up to
      `base_lr * min_lr_ratio` at progress 1.
    """
    if base_lr < 0 or not 0.0 <= warmup_frac < 1.0 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(
            f"bad schedule: base_lr={base_lr}, warmup_frac={warmup_frac}, "
            f"min_lr_ratio={min_lr_ratio}"
        )
    p = min(max(float(progress), 0.0), 1.0)
    if p < warmup_frac:
        return base_lr * p / warmup_frac
    decay = (p - warmup_frac) / (1.0 - warmup_frac)
    min_lr = base_lr * min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * decay)) * (base_lr - min_lr)


def step_progress(step: int, total_steps: int) -> float:
    """Progress of a step budget once step number `step` (0-based) is done."""
    return min(1.0, (step + 1) / total_steps)


def time_progress(train_seconds: float, budget_seconds: float) -> float:
    """Progress of a wall-clock budget after `train_seconds` of training."""
    return min(1.0, max(0.0, train_seconds / budget_seconds))
