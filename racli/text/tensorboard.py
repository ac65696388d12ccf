"""TensorBoard event files of a run: which scalars, under which tags, in which folder.

One folder per run, `DIR/run_<id>_<attn>`, written by the tensorboard package's own
event writer (no torch: `ra runs export --tensorboard` writes recorded runs the same
way `ra train --tensorboard` writes them while training). Tags:

- `loss/train`, `loss/val`, `train/lr`, `train/tokens_per_s`: the metrics of those names;
- `metrics/<name>`: every other recorded metric (eval_s, checkpoint_s, epochs, ...);
- `gates/<name>/layer_<L>`: the mean over heads of a gate or measure (w_std, w_rec,
  beta, gate, rec_share, rec_effect, rec_norm_ratio, rec_ablation, ...) of layer L;
- `gates/rec_ratio/layer_<L>`: the mean over heads of |w_rec / w_std| (RA v5 variants),
  `gates/tanh_beta/layer_<L>`: that of |tanh(beta)| (ra_beta).

The step of every scalar is the training step it was recorded at.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from racli.errors import BadInput

INSTALL = "pip install 'ra[tb]'"
METRIC_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "lr": "train/lr",
    "tokens_per_s": "train/tokens_per_s",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def run_folder(root: str | Path, run_id: int, attn: str | None) -> Path:
    """`root/run_<id>_<attn>` (the attention name reduced to safe characters)."""
    label = _UNSAFE.sub("_", attn or "run")
    return Path(root) / f"run_{run_id}_{label}"


def metric_tag(name: str) -> str:
    return METRIC_TAGS.get(name, f"metrics/{name}")


def _mean(values: Iterable[float]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def gate_scalars(values: Mapping[int, Mapping[str, Any]]) -> dict[str, float]:
    """Tag -> value of one gate snapshot: layer -> name -> per-head values (lists, arrays
    or tensors of one step), summarised per layer (module docstring)."""
    out: dict[str, float] = {}
    for layer, named in values.items():
        heads = {
            name: [float(v) for v in (vs.tolist() if hasattr(vs, "tolist") else vs)]
            for name, vs in named.items()
        }
        for name, per_head in heads.items():
            out[f"gates/{name}/layer_{layer}"] = _mean(per_head)
        if "w_std" in heads and "w_rec" in heads:
            pairs = zip(heads["w_rec"], heads["w_std"])
            out[f"gates/rec_ratio/layer_{layer}"] = _mean(abs(r / s) for r, s in pairs if s)
        if "beta" in heads:
            out[f"gates/tanh_beta/layer_{layer}"] = _mean(abs(math.tanh(b)) for b in heads["beta"])
    return {tag: v for tag, v in out.items() if v is not None}


def check_available() -> None:
    """BadInput (one line naming the extra) unless the tensorboard package is installed."""
    import importlib.util

    try:
        found = importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):  # a module entry of None, a broken install
        found = False
    if not found:
        raise BadInput(f"TensorBoard output needs the tensorboard package: {INSTALL}")


def check_folder(root: str | Path) -> Path:
    """`root` as a Path; BadInput when event files could not be written under it (a file
    there or on the way, a folder that cannot be written, an empty name). Nothing is
    created: the folder is made when the first events are written."""
    if not str(root).strip():
        raise BadInput("--tensorboard: give a folder (got an empty name)")
    try:
        root = Path(root).expanduser()
        existing = root
        while not existing.exists():
            if existing.is_symlink():
                raise BadInput(f"--tensorboard {root}: {existing} is a link to nothing")
            existing = existing.parent
        if not existing.is_dir():
            raise BadInput(f"--tensorboard {root}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise BadInput(f"--tensorboard {root}: cannot create it ({existing} is read-only)")
    except (OSError, RuntimeError) as exc:  # a name too long, a ~user with no home
        raise BadInput(f"--tensorboard {root}: {getattr(exc, 'strerror', None) or exc}") from exc
    return root


class EventLog:
    """The event file of one run's folder; each `scalars` call is one event (one record),
    queued and written by the package's writer thread, so a call costs little."""

    def __init__(self, folder: str | Path, flush_secs: float = 10.0):
        check_available()
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self.folder = Path(folder)
        self._writer = EventFileWriter(str(self.folder), flush_secs=flush_secs)

    def restart_at(self, step: int) -> None:
        """Mark a (re)start at `step`: TensorBoard drops what earlier event files of the
        folder hold from that step on (a run resumed from a checkpoint, or trained again
        from step 0), as the store drops those rows."""
        import time

        from tensorboard.compat.proto import event_pb2

        start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self._writer.add_event(
            self._event(wall_time=time.time(), step=int(step), session_log=start)
        )

    def scalars(self, step: int, values: Mapping[str, float], wall_time: float | None = None):
        """Write `values` (tag -> number) at `step`; non-finite values are left out."""
        import time

        items = [
            self._summary.Value(tag=tag, simple_value=float(v))
            for tag, v in values.items()
            if v is not None and math.isfinite(float(v))
        ]
        if not items:
            return
        event = self._event(
            wall_time=time.time() if wall_time is None else wall_time,
            step=int(step),
            summary=self._summary(value=items),
        )
        self._writer.add_event(event)

    def metrics(self, step: int, values: Mapping[str, float], wall_time: float | None = None):
        self.scalars(step, {metric_tag(k): v for k, v in values.items()}, wall_time)

    def gates(self, step: int, values: Mapping[int, Mapping[str, Any]], wall_time=None):
        self.scalars(step, gate_scalars(values), wall_time)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
