"""How much of its data a training budget will use, and the `--max-epochs` stop.

Before training starts, the tokens the budget will consume are estimated (a budget in steps:
exactly, steps x tokens per step; a budget in minutes: from the speed of the first
``TIMING_STEPS`` timed steps) and compared with the training split. Past one epoch the run
says so at once (the number of passes and the command that prepares a larger corpus) and the
estimate is recorded as metric ``epochs_estimate``. ``train.max_epochs`` (``--max-epochs``)
ends a run, status finished, once it has passed over the training split that many times
(metric ``max_epochs_stop``). The learning-rate schedule still follows the budget.

The trainer calls ``start`` before its first step and ``after_step`` after each step; the
per-step cost is a couple of comparisons. The text functions are pure (no torch).
"""

from __future__ import annotations

import math

TIMING_STEPS = 10  # timed steps (after the warm-up step) behind a --minutes estimate
PREPARE_HINT = (
    "ra data prepare SOURCE... --out DIR --tokenizer train:32768 (then ra train --data DIR)"
)


def epochs_note(
    epochs: float,
    tokens: float,
    train_tokens: int,
    data_name: str,
    *,
    timed: bool,
    max_epochs: float | None = None,
) -> str:
    how = "at the speed of the first steps, the budget" if timed else "the budget"
    text = (
        f"note: {how} trains on ~{tokens:,.0f} tokens = {epochs:.1f} passes over the "
        f"{train_tokens:,} training tokens of {data_name}: past one epoch, validation "
        f"loss measures memorisation as much as modelling. For a larger corpus: "
        f"{PREPARE_HINT}"
    )
    if max_epochs is not None and epochs > max_epochs:
        text += f"; this run stops at --max-epochs {max_epochs:g}"
    else:
        text += "; or stop at one pass with --max-epochs 1"
    return text


def stop_note(step: int, epochs: float, max_epochs: float) -> str:
    return (
        f"step {step}: stopped at --max-epochs {max_epochs:g} ({epochs:.3f} passes over "
        f"the training split)"
    )


def max_epochs_tokens(max_epochs: float | None, train_tokens: int) -> int | None:
    """Tokens after which a run with ``max_epochs`` stops (None: no limit)."""
    if max_epochs is None:
        return None
    return max(1, math.ceil(max_epochs * train_tokens))


class EpochBudget:
    """The epoch estimate and the max-epochs stop of one trainer."""

    def __init__(self, trainer):
        self.spec = trainer.spec
        self.train_tokens = trainer.dataset.train_tokens
        self.data_name = trainer.config.get("data", {}).get("name", trainer.dataset.name)
        self.max_epochs = trainer.t.max_epochs
        self.limit = max_epochs_tokens(self.max_epochs, self.train_tokens)
        self.estimated = False

    def _record(self, trainer, tokens: float, timed: bool) -> None:
        self.estimated = True
        epochs = tokens / self.train_tokens
        trainer.rec.metric(trainer.step, "epochs_estimate", epochs, trainer.clock.seconds)
        if epochs > 1.0:
            trainer.reporter.note(
                epochs_note(
                    epochs,
                    tokens,
                    self.train_tokens,
                    self.data_name,
                    timed=timed,
                    max_epochs=self.max_epochs,
                )
            )

    def start(self, trainer) -> None:
        """Before the first step: a budget in steps is known exactly."""
        if self.spec.steps is not None:
            self._record(trainer, float(self.spec.steps * trainer.tokens_per_step), timed=False)

    def after_step(self, trainer) -> bool:
        """After a step: the --minutes estimate once timed; True when max_epochs is reached."""
        if not self.estimated and trainer.timed_steps >= TIMING_STEPS:
            trainer._sync()
            secs = trainer.clock.seconds
            budget = self.spec.budget_seconds
            if budget is not None and secs > 0:
                rate = trainer.timed_tokens / secs
                self._record(trainer, trainer.tokens + rate * max(0.0, budget - secs), timed=True)
            else:
                self.estimated = True
        if self.limit is not None and trainer.tokens >= self.limit:
            epochs = trainer.tokens / self.train_tokens
            trainer.rec.metric(trainer.step, "max_epochs_stop", epochs, trainer.clock.seconds)
            trainer.reporter.note(stop_note(trainer.step, epochs, self.max_epochs))
            return True
        return False
