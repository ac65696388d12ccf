"""When a run's store cannot be written: how long the recorder waits, and how it stops.

A PostgreSQL server restarting, a full disk under a SQLite store, or a lock
held past the busy timeout make a write fail. The recorder keeps its rows in
memory and retries with a growing pause (`Outage`); only when the store has
stayed unwritable for `Store.wait_s` (ra.yaml's `db_wait_minutes`) does the run
stop, with `StoreUnavailable`. A run whose row was deleted, or taken over by
another process, stops with `RunLost` at once. Both are `racli.errors.Stopped`:
one line, exit code 1.
"""

from __future__ import annotations

import time

from racli.errors import Stopped

DEFAULT_WAIT_S = 300.0  # ra.yaml's db_wait_minutes: 5
FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 15.0


class RunLost(Stopped):
    """The run's row is gone, or another process owns it now: nothing more is written."""


class StoreUnavailable(Stopped):
    """The store could not be written for longer than its limit."""


def lost_text(run_id: int, exists: bool | None) -> str:
    """Why a recorder lost its run: the row is gone (`exists` False), another process owns it
    (True), or that could not be read (None)."""
    if exists is False:
        return (
            f"run {run_id} was deleted from the store while this process was recording it: "
            f"nothing more is written (no checkpoint either)"
        )
    if exists:
        return (
            f"run {run_id} was taken over by another process (a `--resume` after this "
            f"process's heartbeat went stale): this process stops and leaves the run to it"
        )
    return f"run {run_id} is no longer this process's: nothing more is written"


def minutes_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} minutes"


class Outage:
    """The failed writes in a row: since when, the last error, the next pause."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.since: float | None = None  # time.monotonic() of the first failure in a row
        self.error: str | None = None
        self.failures = 0

    @property
    def failing(self) -> bool:
        return self.since is not None

    def failed(self, error: str) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.error = error
        self.failures += 1

    def ok(self) -> None:
        self.since, self.error, self.failures = None, None, 0

    def over(self) -> bool:
        """Whether the store has been failing for longer than the limit."""
        return self.since is not None and time.monotonic() - self.since >= self.limit_s

    def pause(self, cap: float = MAX_PAUSE_S) -> float:
        """The pause before the next attempt: 0.5 s, doubling, at most `cap`."""
        return min(cap, FIRST_PAUSE_S * 2 ** max(0, self.failures - 1), MAX_PAUSE_S)

    def deadline(self) -> float:
        """When the run gives up (monotonic time): the limit after the first failure."""
        start = self.since if self.since is not None else time.monotonic()
        return start + self.limit_s

    def refused(self, run_id: int, where: str) -> StoreUnavailable:
        """The store refused a row for good (an integrity or data error): no retry can
        write it, so the run stops at once instead of waiting out the limit."""
        return StoreUnavailable(
            f"run {run_id}: its store {where} refused a row ({self.error}), which no retry "
            f"can write. Rows not yet written are lost; the run stays `running` in the "
            f"store (shown as crashed once its heartbeat is stale) and resumes from its "
            f"last checkpoint"
        )

    def unavailable(self, run_id: int, where: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"run {run_id}: its store {where} could not be written for "
            f"{minutes_text(self.limit_s)} (db_wait_minutes in ra.yaml); last error: "
            f"{self.error}. Rows not yet written are lost; the run stays `running` in the "
            f"store (shown as crashed once its heartbeat is stale) and resumes from its "
            f"last checkpoint"
        )
