"""Reproducible training batches (resumable sampler state) and the evaluation batches."""

from __future__ import annotations

import numpy as np
import torch

from racli.training.datasets import DataError, TokenOutOfRange

_STATE_VERSION = 1


def _to_device(
    windows: np.ndarray, device: torch.device, vocab_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) token windows -> contiguous int64 (x, y) on ``device``. With ``vocab_size``,
    a token id outside the vocabulary raises TokenOutOfRange here, on the host, instead of
    an index error in the model (on CUDA, a device-side assert that ends the process)."""
    windows = np.asarray(windows)
    if vocab_size is not None and windows.size and int(windows.max()) >= vocab_size:
        raise TokenOutOfRange(int(windows.max()), vocab_size)
    w = torch.from_numpy(windows.astype(np.int64, copy=False))
    x = w[:, :-1].contiguous()
    y = w[:, 1:].contiguous()
    if device.type == "cuda":
        # a fresh pinned buffer per batch: the caching host allocator keeps it alive until the
        # asynchronous copy has finished, so nothing is overwritten mid-transfer
        x = x.pin_memory().to(device, non_blocking=True)
        y = y.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        x, y = x.to(device), y.to(device)
    return x, y


class BatchSampler:
    """Random windows of ``block_size + 1`` tokens, drawn from a numpy Generator seeded by `seed`.

    Two samplers with the same tokens, seed, batch size, block size and world size produce the
    same batches in the same order, whatever the model. For data parallelism, every rank owns
    an identical generator; each step draws ``world_size * batch_size`` window starts and rank
    ``r`` takes the ``r``-th slice of ``batch_size`` of them, so ranks see distinct windows and
    the global batch equals that of one process with batch ``world_size * batch_size``.

    Batch ``n + 1`` is prepared (and, on CUDA, its copy started) as soon as batch ``n`` is handed
    out. :meth:`state_dict` describes the position *before* that prefetched batch, so after
    :meth:`load_state_dict` the next :meth:`next` returns exactly what the original would have.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        block_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        vocab_size: int | None = None,
    ) -> None:
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be a 1-D array, got shape {tokens.shape}")
        if batch_size < 1 or block_size < 1:
            raise ValueError(
                f"batch_size and block_size must be >= 1, got {batch_size}, {block_size}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        n = int(tokens.shape[0])
        if n < block_size + 1:
            raise DataError(
                f"token array has {n} tokens, fewer than one window of "
                f"block_size + 1 = {block_size + 1}"
            )
        self.tokens = tokens
        self.batch_size = int(batch_size)
        self.block_size = int(block_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.device = torch.device(device)
        self.vocab_size = vocab_size  # ids checked per batch when given
        self._n_starts = n - self.block_size  # valid window starts: 0 .. n - block_size - 1
        self._offsets = np.arange(self.block_size + 1, dtype=np.int64)
        self._rng = np.random.default_rng(self.seed % 2**64)
        self._batches = 0
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending_rng_state: dict | None = None  # generator state before the pending draw

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self._rng.integers(
            0, self._n_starts, size=self.world_size * self.batch_size, dtype=np.int64
        )
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        windows = self.tokens[mine[:, None] + self._offsets]  # one gather for the whole batch
        return _to_device(windows, self.device, self.vocab_size)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) pair: int64 tensors of shape (batch_size, block_size), y = x + 1."""
        if self._pending is None:
            self._pending = self._draw()
        batch = self._pending
        self._batches += 1
        self._pending_rng_state = self._rng.bit_generator.state
        self._pending = self._draw()
        return batch

    def __iter__(self) -> BatchSampler:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next()

    @property
    def batches_drawn(self) -> int:
        """Batches handed out by :meth:`next` (the prefetched one is not counted)."""
        return self._batches

    @property
    def tokens_seen(self) -> int:
        """Tokens handed out on this rank: batches drawn * batch_size * block_size."""
        return self._batches * self.batch_size * self.block_size

    @property
    def global_tokens_seen(self) -> int:
        """Tokens handed out over all ranks: ``tokens_seen * world_size``."""
        return self.tokens_seen * self.world_size

    def state_dict(self) -> dict:
        """Plain-Python state (JSON- and ``torch.load(weights_only=True)``-safe)."""
        if self._pending is not None:
            rng_state = self._pending_rng_state
        else:
            rng_state = self._rng.bit_generator.state
        return {
            "version": _STATE_VERSION,
            "rng": rng_state,
            "batches_drawn": self._batches,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "world_size": self.world_size,
            "n_tokens": int(self.tokens.shape[0]),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`. The batch size, block size, world size and number of
        tokens must match (otherwise the stream could not continue identically): ValueError.
        The state is the same on every rank, so any rank's copy may be loaded."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported sampler state version {state.get('version')!r}")
        for key in ("batch_size", "block_size", "world_size", "n_tokens"):
            mine = int(self.tokens.shape[0]) if key == "n_tokens" else getattr(self, key)
            if int(state[key]) != mine:
                raise ValueError(f"cannot resume sampler: saved {key}={state[key]}, now {mine}")
        rng_state = state["rng"]
        if rng_state.get("bit_generator") != type(self._rng.bit_generator).__name__:
            raise ValueError(
                f"cannot resume sampler: saved generator "
                f"{rng_state.get('bit_generator')!r} is not "
                f"{type(self._rng.bit_generator).__name__}"
            )
        self._rng.bit_generator.state = rng_state
        self._batches = int(state["batches_drawn"])
        self.seed = int(state.get("seed", self.seed))
        self._pending = None
        self._pending_rng_state = None


def eval_batches(
    tokens: np.ndarray,
    batch_size: int,
    block_size: int,
    n_batches: int,
    device: str | torch.device = "cpu",
    vocab_size: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed list of ``n_batches`` validation batches, identical for every run.

    The ``n_batches * batch_size`` windows start at evenly spaced offsets spanning the whole
    split (no randomness), so validation losses of different runs are directly comparable.
    """
    if batch_size < 1 or block_size < 1 or n_batches < 1:
        raise ValueError(
            f"batch_size, block_size and n_batches must be >= 1, got "
            f"{batch_size}, {block_size}, {n_batches}"
        )
    n = int(tokens.shape[0])
    last_start = n - block_size - 1
    if last_start < 0:
        raise DataError(
            f"validation split has {n} tokens, fewer than one window of "
            f"block_size + 1 = {block_size + 1}"
        )
    count = batch_size * n_batches
    starts = np.rint(np.linspace(0, last_start, num=count)).astype(np.int64)
    windows = tokens[starts[:, None] + np.arange(block_size + 1, dtype=np.int64)]
    windows = np.asarray(windows).reshape(n_batches, batch_size, block_size + 1)
    dev = torch.device(device)
    return [_to_device(windows[i], dev, vocab_size) for i in range(n_batches)]


def epochs(tokens_seen: int, train_tokens: int) -> float:
    """Passes over the training split: ``tokens_seen / train_tokens``."""
    if train_tokens <= 0:
        raise ValueError(f"train_tokens must be positive, got {train_tokens}")
    return float(tokens_seen) / float(train_tokens)
