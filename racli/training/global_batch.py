"""How one optimizer step's batch is split over processes and micro-batches.

Design notes: docs/training.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from racli.errors import BadInput


@dataclass(frozen=True)
class BatchLayout:
    global_seqs: int  # sequences per optimizer step, over all processes
    per_rank: int  # sequences per optimizer step on one process
    micro: int  # sequences per forward/backward pass
    accum: int  # micro-batches per optimizer step on one process
    block_size: int

    @property
    def tokens_per_step(self) -> int:
        return self.global_seqs * self.block_size

    def describe(self, world_size: int) -> str:
        """One line for the console: the global batch and how it is split."""
        return (
            f"global batch {self.global_seqs} sequences ({self.tokens_per_step:,} tokens) per "
            f"step: {world_size} process(es) x {self.accum} accumulation step(s) x "
            f"micro-batch {self.micro}"
        )


def largest_divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of `n` (>= 1) that is <= `cap` (>= 1)."""
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def batch_layout(
    *, batch_size: int, batch_tokens: int | None, block_size: int, world_size: int = 1
) -> BatchLayout:
    """The split of one optimizer step's batch; BadInput (one line) for a global batch that
    does not divide into sequences or over the processes."""
    if batch_tokens is None:
        return BatchLayout(batch_size * world_size, batch_size, batch_size, 1, block_size)
    if batch_tokens % block_size:
        raise BadInput(
            f"train.batch_tokens {batch_tokens} is not a multiple of the sequence length "
            f"(model.block_size {block_size})"
        )
    seqs = batch_tokens // block_size
    if seqs % world_size:
        raise BadInput(
            f"train.batch_tokens {batch_tokens} is {seqs} sequences of {block_size} tokens, "
            f"which do not divide over {world_size} processes"
        )
    per_rank = seqs // world_size
    micro = largest_divisor_at_most(per_rank, batch_size)
    return BatchLayout(seqs, per_rank, micro, per_rank // micro, block_size)
