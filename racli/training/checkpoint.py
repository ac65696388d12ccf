"""Training checkpoints: where they live, what they hold, atomic writes.

A run's checkpoint is `<directory of the SQLite database>/ra_checkpoints/run_<id>.pt`
(`./ra_checkpoints/` for a database given as a non-SQLite URL). It is one
`torch.save` dict, loadable with `torch.load(..., weights_only=True)`:

    version        1
    run_id         the run it belongs to
    config         the run's resolved config (as recorded on the run row)
    model          state_dict of the bare model (not the compiled / DDP wrapper)
    optimizer      AdamW state_dict (param groups carry `name` and `lr_mult`)
    sampler        BatchSampler.state_dict(): the exact position in the batch stream
    step           optimizer steps taken
    tokens         tokens trained on, over all ranks
    timed_tokens   tokens of the steps counted in train_seconds (warm-up steps excluded)
    train_seconds  training time spent so far (what the budget is charged)
    compile_s, eval_s, checkpoint_s   time spent outside the budget so far
    train_loss     the last logged training loss (or None)
    epoch_warned   whether the "past one epoch" warning has been given
    rng            torch, cuda (per device), numpy and python RNG states (rank 0's)

Each write goes to `run_<id>.pt.tmp` and is renamed over the old file, so a
crash mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
DIRNAME = "ra_checkpoints"


def checkpoint_dir(db: str) -> Path:
    """The checkpoint directory that goes with database location `db`."""
    from racli.store.engine import sqlite_path

    path = sqlite_path(db)
    base = path.parent if path is not None else Path.cwd()
    return base / DIRNAME


def checkpoint_path(db: str, run_id: int) -> Path:
    return checkpoint_dir(db) / f"run_{run_id}.pt"


def rng_state() -> dict[str, Any]:
    """Every global RNG state, as weights_only-loadable data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # fewer/more devices now: restore what matches
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save({"version": FORMAT_VERSION, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save` (tensors land on the CPU)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("version") != FORMAT_VERSION:
        version = state.get("version") if isinstance(state, dict) else None
        raise ValueError(f"{path}: unsupported checkpoint format (version {version!r})")
    return state
