"""A training budget: its checks (`--steps`, `--minutes`), the share of the data it will use
and the `--max-epochs` stop (see docs/training.md, "Budgets and epochs"). No torch."""

from __future__ import annotations

import math

from racli.errors import BadInput

# budgets beyond these are typing mistakes (2^53: still exact as a float)
MAX_STEPS = 2**53
MAX_MINUTES = 2**53 / 60
TIMING_STEPS = 10  # timed steps (after the warm-up step) behind a --minutes estimate
PREPARE_HINT = (
    "ra data prepare SOURCE... --out DIR --tokenizer train:32768 (then ra train --data DIR)"
)


def check_minutes(minutes: float | None) -> None:
    if minutes is None or not (math.isfinite(minutes) and minutes > 0):
        raise BadInput(f"--minutes must be a positive number, got {minutes}")


def check_budget(minutes: float | None, steps: int | None) -> None:
    """Exactly one of a positive `minutes` and a positive `steps`."""
    if minutes is not None and steps is not None:
        raise BadInput("give either --minutes or --steps, not both")
    if minutes is None and steps is None:
        raise BadInput("give a budget: --minutes M (wall-clock training time) or --steps N")
    if minutes is not None:
        check_minutes(minutes)
    if steps is not None and steps <= 0:
        raise BadInput(f"--steps must be a positive integer, got {steps}")


def check_budget_range(minutes: float | None, steps: int | None) -> None:
    """No budget beyond any real one (checked first, --resume included)."""
    if steps is not None and steps > MAX_STEPS:
        raise BadInput(f"--steps {steps} is beyond any budget (at most 2^53 = {MAX_STEPS})")
    if minutes is not None and math.isfinite(minutes) and minutes > MAX_MINUTES:
        raise BadInput(f"--minutes {minutes:g} is beyond any budget (at most {MAX_MINUTES:.3g})")


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
