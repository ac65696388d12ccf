"""What training and bench code record a run through: the `Recorder` protocol, and
`NullRecorder`, which records nothing (ranks other than 0). `RunRecorder`
(racli/store/recorder.py) is the one that writes."""

from __future__ import annotations

from typing import Any, Protocol


class Recorder(Protocol):
    """What training and bench code record a run through (RunRecorder, NullRecorder)."""

    run_id: int | None
    write_seconds: float

    def metric(
        self, step: int, name: str, value: float, elapsed_s: float | None = None
    ) -> None: ...
    def metrics(
        self, step: int, values: dict[str, float], elapsed_s: float | None = None
    ) -> None: ...
    def gates(self, step: int, values: dict[int, dict[str, Any]]) -> None: ...
    def timing(self, **row: Any) -> None: ...
    def flush(self) -> None: ...
    def update(self, **fields: Any) -> None: ...
    def before_checkpoint(self) -> None: ...
    def end(self, status: str, *, error: str | None = None, **figures: Any) -> None: ...
    def finish(self, **figures: Any) -> None: ...
    def fail(self, error: BaseException | str, **figures: Any) -> None: ...


class NullRecorder:
    """Records nothing: stands in for the recorder on ranks other than 0."""

    run_id: int | None = None
    write_seconds = 0.0

    def metric(self, step, name, value, elapsed_s=None) -> None:
        pass

    def metrics(self, step, values, elapsed_s=None) -> None:
        pass

    def gates(self, step, values) -> None:
        pass

    def timing(self, **row) -> None:
        pass

    def flush(self) -> None:
        pass

    def update(self, **fields) -> None:
        pass

    def before_checkpoint(self) -> None:
        pass

    def end(self, status, *, error=None, **figures) -> None:
        pass

    def finish(self, **figures) -> None:
        pass

    def fail(self, error, **figures) -> None:
        pass
