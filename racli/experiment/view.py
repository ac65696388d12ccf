"""What `ra experiment` shows while it works (on stderr).

On a terminal, a Rich live view: the runs done / running / left, each
device's current run with its step, the time left, and the interim state of the
comparison. Elsewhere (logs, CI, tests) one plain line per event. No torch.

The interim lines after each run are labelled "interim, not a verdict": looking
at a 95% interval after every run and stopping at the first decisive one would
call two equal variants different far more often than 5% of the time (README). The verdict is the one
printed at the end (or at a planned look of --until-settled).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from racli.training.progress import fmt_seconds

INTERIM = "interim, not a verdict"


@dataclass
class Slot:
    device: str
    label: str = "-"  # "ra_v5 seed 2 (run 7)"
    step: int | None = None
    total: int | None = None


@dataclass
class ViewState:
    total: int = 0
    done: int = 0
    skipped: int = 0  # finished before this invocation
    failed: int = 0
    slots: dict[str, Slot] = field(default_factory=dict)
    eta_s: float | None = None
    verdict: list[str] = field(default_factory=list)
    phase: str = ""


class PlainView:
    """One line per event on a stream."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.state = ViewState()

    def note(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def phase(self, text: str) -> None:
        self.state.phase = text
        self.note(text)

    def started(self, device: str, label: str, total: int | None) -> None:
        self.state.slots[device] = Slot(device, label, 0, total)
        self.note(
            f"[{device}] {label}: started ({total} steps)"
            if total
            else f"[{device}] {label}: started"
        )

    def named(self, device: str, label: str) -> None:
        """The run on `device` has a label now (its run id, once the store has it): the
        panel shows it; no line of its own (the start was said, the end names it)."""
        slot = self.state.slots.get(device)
        if slot is not None:
            slot.label = label
        self.refresh()

    def step(self, device: str, step: int) -> None:
        slot = self.state.slots.get(device)
        if slot is not None:
            slot.step = step

    def finished(self, device: str, label: str, status: str, extra: str = "") -> None:
        self.state.slots[device] = Slot(device)
        self.note(
            f"[{device}] {label}: {status}{(' ' + extra) if extra else ''}  ({self.counts()})"
        )

    def counts(self) -> str:
        s = self.state
        running = sum(1 for v in s.slots.values() if v.label != "-")
        left = max(0, s.total - s.done - running)
        eta = f", about {fmt_seconds(s.eta_s)} left" if s.eta_s is not None else ""
        return f"{s.done}/{s.total} runs done, {running} running, {left} left{eta}"

    def verdict(self, lines: list[str]) -> None:
        self.state.verdict = list(lines)
        for line in lines:
            self.note(f"{INTERIM}: {line}")

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


class LiveView(PlainView):
    """A Rich live panel, redrawn at most a few times a second."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__(stream)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=self.stream)
        self.live = Live(
            self._render(), console=self.console, refresh_per_second=4, transient=False
        )
        self.live.start()
        self._last = 0.0

    def _render(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        s = self.state
        table = Table(box=None, show_header=True, pad_edge=False)
        table.add_column("device")
        table.add_column("run")
        table.add_column("step", justify="right")
        for slot in s.slots.values():
            step = f"{slot.step}/{slot.total}" if slot.step is not None and slot.total else "-"
            table.add_row(slot.device, slot.label, step)
        parts = [Text(s.phase, style="bold"), Text(self.counts()), table]
        for line in s.verdict:
            parts.append(Text(f"{INTERIM}: {line}"))
        return Group(*parts)

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)
        self.refresh()

    def refresh(self) -> None:
        now = time.monotonic()
        if self.live is not None and now - self._last >= 0.2:
            self._last = now
            self.live.update(self._render())

    def step(self, device: str, step: int) -> None:
        super().step(device, step)
        self.refresh()

    def close(self) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.stop()
            self.live = None


def make_view(stream: TextIO | None = None, live: bool | None = None) -> PlainView:
    stream = stream or sys.stderr
    live = stream.isatty() if live is None else live
    return LiveView(stream) if live else PlainView(stream)
