"""What a training session hands back: the result of a run and the per-step hook's record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class TrainResult:
    run_id: int | None
    attn: str
    status: str  # finished | interrupted | diverged | failed
    iterations: int = 0
    tokens: int = 0
    epochs: float | None = None
    train_seconds: float = 0.0
    val_loss: float | None = None
    train_loss: float | None = None
    tokens_per_s: float | None = None
    it_per_s: float | None = None
    setup_s: float | None = 0.0  # this session's: the Trainer made until its first step
    compile_s: float = 0.0
    eval_s: float = 0.0
    checkpoint_s: float = 0.0
    record_overhead: float | None = None
    error: str | None = None
    checkpoint: str | None = None
    world_size: int = 1
    config: dict = field(default_factory=dict)


@dataclass
class StepInfo:
    """Passed to the `on_step` hook after every optimizer step (tests)."""

    step: int  # steps done, counting this one
    x: torch.Tensor
    y: torch.Tensor
    model: torch.nn.Module  # the bare model
