"""Training checkpoints: where they live, what they hold, atomic writes.

Design notes: docs/training.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from racli.errors import BadInput
from racli.store.checkpoints import (
    _make_folder,
)

FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint could not be written (its message names the checkpoint path)."""


# ---------------------------------------------------------------------------- what


@dataclass
class CheckpointState:
    """Everything a resumed run needs, written and read as one piece."""

    run_id: int | None
    config: dict[str, Any]
    model: dict[str, Any]
    optimizer: dict[str, Any]
    sampler: dict[str, Any]
    rng: dict[str, Any]
    data_path: str | None = None
    step: int = 0
    tokens: int = 0
    timed_tokens: int = 0
    timed_steps: int = 0
    train_seconds: float = 0.0
    compile_s: float = 0.0
    eval_s: float = 0.0
    checkpoint_s: float = 0.0
    train_loss: float | None = None
    epoch_warned: bool = False
    version: int = field(default=FORMAT_VERSION)

    def to_dict(self) -> dict[str, Any]:
        """The dict `torch.save` writes (plain data and tensors: weights_only-loadable)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointState:
        """The state of a saved dict (format 1). ValueError for anything else."""
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise ValueError(f"unsupported checkpoint format (version {version!r})")
        missing = [
            k for k in ("config", "model", "optimizer", "sampler", "rng", "step") if k not in data
        ]
        if missing:
            raise ValueError(f"checkpoint lacks {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        kw.setdefault("run_id", None)
        state = cls(**kw)
        state.step, state.tokens = int(state.step), int(state.tokens)
        state.timed_tokens, state.timed_steps = int(state.timed_tokens), int(state.timed_steps)
        for name in ("train_seconds", "compile_s", "eval_s", "checkpoint_s"):
            setattr(state, name, float(getattr(state, name)))
        state.epoch_warned = bool(state.epoch_warned)
        return state


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


# ---------------------------------------------------------------------------- writing, reading


def save(path: Path, state: CheckpointState) -> None:
    """Write `state` to `path` atomically (temporary file, then rename). On failure the
    temporary file is removed, the previous checkpoint stays, and CheckpointError says why."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        _make_folder(path.parent)
        with open(tmp, "wb") as fh:
            torch.save(state.to_dict(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not isinstance(exc, Exception):  # KeyboardInterrupt and the like go on as they are
            raise
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        raise CheckpointError(f"cannot write checkpoint {path}: {reason}") from exc


def load(path: Path) -> CheckpointState:
    """Read a checkpoint written by `save` (tensors land on the CPU). torch's warnings
    about the file (e.g. its pickle protocol) are not shown: what cannot be read raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = torch.load(path, map_location="cpu", weights_only=True)
    try:
        return CheckpointState.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def read(path: Path) -> CheckpointState:
    """`load`, with what cannot be read (a corrupt file, another format: torch raises many
    kinds) as one line of bad input naming the file."""
    from racli.training.load_errors import describe_load_error

    try:
        return load(path)
    except Exception as exc:
        raise BadInput(f"cannot read checkpoint {path}: {describe_load_error(exc)}") from exc
