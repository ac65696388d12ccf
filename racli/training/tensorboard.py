"""`train.tensorboard` / `--tensorboard DIR`: a run's scalars as TensorBoard events while
it trains (tags: racli/text/tensorboard.py).

`TensorBoardRecorder` wraps the run's recorder: every metric and gate snapshot goes to
the store first, then to the event file, so TensorBoard never changes what is recorded;
a failing event write is noted once and TensorBoard is left off for the rest of the run.
"""

from __future__ import annotations

from typing import Any

from racli.errors import BadInput
from racli.text.tensorboard import EventLog, run_folder


class TensorBoardRecorder:
    """A Recorder that records through `inner` and writes the same values to `log`."""

    def __init__(self, inner, log: EventLog, on_error=None):
        self.inner, self.log, self.on_error = inner, log, on_error

    @property
    def run_id(self) -> int | None:
        return self.inner.run_id

    @property
    def write_seconds(self) -> float:
        return self.inner.write_seconds

    def _write(self, fn, *args) -> None:
        if self.log is None:
            return
        try:
            fn(*args)
        except Exception as exc:  # the run goes on; the store has the values
            self.log = None
            if self.on_error is not None:
                self.on_error(f"TensorBoard output stopped: {type(exc).__name__}: {exc}")

    def metric(self, step: int, name: str, value: float, elapsed_s: float | None = None) -> None:
        self.inner.metric(step, name, value, elapsed_s)
        self._write(lambda: self.log.metrics(step, {name: value}))

    def metrics(self, step: int, values: dict[str, float], elapsed_s: float | None = None) -> None:
        self.inner.metrics(step, values, elapsed_s)
        self._write(lambda: self.log.metrics(step, values))

    def gates(self, step: int, values: dict[int, dict[str, Any]]) -> None:
        self.inner.gates(step, values)
        self._write(lambda: self.log.gates(step, values))

    def timing(self, **row: Any) -> None:
        self.inner.timing(**row)

    def flush(self) -> None:
        self.inner.flush()
        self._write(lambda: self.log.flush())

    def update(self, **fields: Any) -> None:
        self.inner.update(**fields)

    def before_checkpoint(self) -> None:
        self.inner.before_checkpoint()

    def _close(self) -> None:
        self._write(lambda: self.log.close())
        self.log = None

    def end(self, status: str, *, error: str | None = None, **figures: Any) -> None:
        try:
            self.inner.end(status, error=error, **figures)
        finally:
            self._close()

    def finish(self, **figures: Any) -> None:
        self.end("finished", **figures)

    def fail(self, error: BaseException | str, **figures: Any) -> None:
        try:
            self.inner.fail(error, **figures)
        finally:
            self._close()


def with_tensorboard(rec, root: str | None, attn: str, note=None, *, first_step: int = 0):
    """`rec` itself when `root` is None, else `rec` writing to `root/run_<id>_<attn>` too;
    events an earlier attempt of the run wrote from `first_step` on (the step it goes on
    from) are dropped by TensorBoard."""
    if root is None or rec.run_id is None:
        return rec
    try:
        log = EventLog(run_folder(root, rec.run_id, attn))
        log.restart_at(first_step)
    except Exception as exc:  # the run is recorded already: it trains without TensorBoard
        if note is not None:
            note(f"no TensorBoard output: {exc}")
        return rec
    return TensorBoardRecorder(rec, log, on_error=note)


def override(folder: str) -> str:
    """The `--set` item that puts TensorBoard output in `folder`, read back as that very
    text (quoted, and made relative with ./ so that no folder name reads as a number)."""
    import json
    import os

    if not str(folder).strip():
        raise BadInput("--tensorboard: give a folder (got an empty name)")
    text = os.path.expanduser(str(folder))
    if not os.path.isabs(text) and not text.startswith(("./", "../")):
        text = os.path.join(".", text)
    return f"train.tensorboard={json.dumps(text)}"


def folder_in(overrides: list[str]) -> str | None:
    """The TensorBoard folder the last `train.tensorboard=...` item of `overrides` names
    (None where none does, or it names none): a resumed run is not given its --set items,
    so it takes the folder as --tensorboard."""
    from racli.config import parse_value  # the --set items' own reading

    folder = None
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip() == "train.tensorboard":
            folder = parse_value(value)
    return None if folder is None else str(folder)
