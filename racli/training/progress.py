"""What a training run shows while it runs, and the summary block at its end.

`ConsoleReporter` draws a Rich progress bar on stderr (step, loss, tokens/s,
time left) when stderr is a terminal, and prints a plain line every
`every_s` seconds otherwise (logs, CI). The trainer calls it at log points
only, so it costs nothing per step. After training, `phase` shows the work
still to do before the run ends (the final evaluation batch by batch, the
checkpoint write), so a stop request (Ctrl-C) never leaves a silent wait. `NullReporter` is silent (tests, ranks
other than 0); both, and the reporters of `ra train` and `ra experiment`, are
`ProgressReporter`s. `summary_text` is the per-run summary printed on stdout.
No torch here.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Protocol, TextIO

from racli.text.numbers import number
from racli.text.terminal import visible

EPOCH_WARNING = "validation loss measures memorisation as much as modelling"


def epoch_warning(epochs: float) -> str:
    return f"WARNING: {epochs:.2f} passes over the training split (past one epoch): {EPOCH_WARNING}"


def fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    s = max(0.0, s)
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class ProgressReporter(Protocol):
    """What a training run reports its progress to."""

    def start(
        self, *, run_id: int | None, attn: str, total: float, unit: str, done: float = 0.0
    ) -> None: ...
    def update(
        self,
        *,
        step: int,
        done: float,
        loss: float | None,
        tokens_per_s: float | None,
        left_s: float | None,
    ) -> None: ...
    def note(self, text: str) -> None: ...
    def phase(self, label: str, done: int, total: int | None, *, end: bool = False) -> None:
        """Progress of a step after training: `done` of `total` (None: not counted), called
        with done=0 at its start, as it goes, and with end=True when it is over."""

    def close(self) -> None: ...


def phase_of(reporter):
    """`reporter.phase`, or a no-op for a reporter that has none (or for None)."""
    return getattr(reporter, "phase", None) or (lambda *a, **kw: None)


def counted_phase(reporter, label: str, total: int) -> Callable[[int], None]:
    """Start showing `label` (`total` items); the returned function takes the count done."""
    phase = phase_of(reporter)
    phase(label, 0, total, end=total == 0)
    return lambda done: phase(label, done, total, end=done >= total)


@contextlib.contextmanager
def uncounted_phase(reporter, label: str) -> Iterator[None]:
    """Show `label` while the block runs."""
    phase = phase_of(reporter)
    phase(label, 0, None)
    try:
        yield
    finally:
        phase(label, 1, None, end=True)


class NullReporter:
    """Shows nothing."""

    def start(
        self, *, run_id: int | None, attn: str, total: float, unit: str, done: float = 0.0
    ) -> None:
        pass

    def update(
        self,
        *,
        step: int,
        done: float,
        loss: float | None,
        tokens_per_s: float | None,
        left_s: float | None,
    ) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def phase(self, label: str, done: int, total: int | None, *, end: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


class ConsoleReporter(NullReporter):
    """A Rich progress bar on a terminal; periodic plain lines otherwise."""

    def __init__(
        self, stream: TextIO | None = None, every_s: float = 10.0, bar: bool | None = None
    ):
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.bar = self.stream.isatty() if bar is None else bar
        self._progress = None
        self._task = None
        self._last_line = -math.inf
        self._label = ""
        self._phases: dict[str, tuple[float, object]] = {}  # label -> (start, rich task)
        self._phase_bar = False  # the phases' progress display has replaced the training bar

    def start(self, *, run_id, attn, total, unit, done=0.0) -> None:
        self._label = f"{attn} run {run_id}" if run_id is not None else attn
        self._unit = unit
        if not self.bar:
            what = f"{total:g} steps" if unit == "steps" else f"{fmt_seconds(total)} of training"
            self._line(f"training {self._label}: {what}")
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("step {task.fields[step]}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("{task.fields[left]} left"),
            console=Console(file=self.stream),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            self._label, total=total, completed=done, step="0", loss="-", tps="-", left="-"
        )

    def update(self, *, step, done, loss, tokens_per_s, left_s) -> None:
        loss_s = number(loss, ".4f")
        tps_s = number(tokens_per_s, ",.0f")
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=done,
                step=str(step),
                loss=loss_s,
                tps=tps_s,
                left=fmt_seconds(left_s),
            )
            return
        now = time.monotonic()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            self._line(f"step {step}  loss {loss_s}  {tps_s} tok/s  {fmt_seconds(left_s)} left")

    def note(self, text: str) -> None:
        text = visible(text)  # notes can quote user input (paths, tags)
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            self._line(text)

    def phase(self, label: str, done: int, total: int | None, *, end: bool = False) -> None:
        now = time.monotonic()
        new = label not in self._phases
        if new:
            self._phases[label] = (now, self._phase_task(label))
        start, task = self._phases[label]
        if new and not self.bar:
            self._line(f"{label}: {total} batches" if total else f"{label} ...")
            self._last_line = now
        if self.bar:
            count = f"{done}/{total}" if total else ""
            full = total or 1  # an uncounted step: a pulsing bar, full at its end
            self._progress.update(
                task, completed=full if end else done, total=full if end else total, count=count
            )
        elif end:
            self._line(f"{label}: done in {fmt_seconds(now - start)}")
        elif total and not new and now - self._last_line >= self.every_s:
            self._last_line = now
            self._line(f"{label}: {done}/{total} batches, {fmt_seconds(now - start)}")
        if end:
            del self._phases[label]

    def _phase_task(self, label: str):
        """A line of its own, below the training bar as it ended (None without a bar)."""
        if not self.bar:
            return None
        if not self._phase_bar:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            if self._progress is not None:
                self._progress.stop()  # one live display at a time; the bar stays printed
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[count]}"),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
            )
            self._progress.start()
            self._phase_bar = True
        return self._progress.add_task(label, total=None, count="")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._phase_bar = False

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def summary_text(r) -> str:
    """The per-run summary block (seed style) of a TrainResult-like object."""
    rule = "=" * 70
    title = f"Training summary: {r.attn} (run {r.run_id if r.run_id is not None else '-'})"
    rows = [
        ("Status", r.status),
        ("Iterations completed", f"{r.iterations}"),
        ("Training loss", number(r.train_loss, ".4f")),
        ("Validation loss", number(r.val_loss, ".4f")),
        ("Throughput (it/s)", number(r.it_per_s, ".2f")),
        ("Throughput (tokens/s)", number(r.tokens_per_s, ",.0f")),
        ("Tokens", f"{r.tokens:,}"),
        ("Epochs", number(r.epochs, ".3g")),
        (
            "Training time",
            fmt_seconds(r.train_seconds) + f" (set-up {fmt_seconds(r.setup_s)},"
            f" compile warm-up {fmt_seconds(r.compile_s)}, evaluation {fmt_seconds(r.eval_s)},"
            f" not charged)",
        ),
        ("Run id", f"{r.run_id if r.run_id is not None else '-'}"),
    ]
    lines = [title, rule]
    lines += [f"{name:<30} {value}" for name, value in rows]
    if r.epochs is not None and r.epochs > 1.0:
        lines.append(epoch_warning(r.epochs))
    if r.error:
        lines.append(f"Note: {r.error}")
    return "\n".join(lines)
