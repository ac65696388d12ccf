"""Who works on which unit of an experiment: claims in the store's `jobs` table, kept
fresh by a thread while this process holds them (racli/store/jobs.py has the rules)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading

from racli.store import jobs as store_jobs
from racli.store.jobs import Unit

REFRESH_S = 20.0  # well inside STALE_AFTER (120 s)


def owner_name(prefix: str = "") -> str:
    """`<prefix>host:pid:nonce`: names this process, unique even across pid reuse."""
    return f"{prefix}{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def holder_died(owner: str) -> bool:
    """Whether the process `owner` names (see owner_name) ran on this host and no longer
    exists. Anything else (another host, a live or unknown process) is not known dead: its
    claim is left until it goes stale."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()):
        return False
    head, pid = parts[0], int(parts[1])
    host = socket.gethostname()
    if not (head == host or head.endswith(":" + host)) or pid in (0, os.getpid()):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False
    return False


class Claims:
    """The units this process holds. `take` claims one (False: another process holds
    it); `done` lets go of it with its end state; `close` lets go of the rest."""

    def __init__(
        self,
        store,
        *,
        launcher: str,
        owner: str | None = None,
        takeover: str | None = None,
        refresh_s: float = REFRESH_S,
    ):
        self.store, self.launcher = store, launcher
        self.owner = owner or owner_name()
        self.takeover = takeover
        self.held: set[Unit] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._keep, args=(refresh_s,), name="ra-claims", daemon=True
        )
        self._thread.start()

    def _keep(self, every: float) -> None:
        while not self._stop.wait(every):
            if self.held:
                with contextlib.suppress(Exception):  # a busy store: the next round retries
                    store_jobs.refresh(self.store, self.owner)

    def take(self, unit: Unit) -> bool:
        got = store_jobs.claim(
            self.store, unit, owner=self.owner, launcher=self.launcher, takeover=self.takeover
        )
        if not got:  # held: by a process of this host that died (kill -9), taken at once
            row = store_jobs.get(self.store, unit)
            holder = row.owner if row is not None else None
            if holder and holder_died(holder):
                got = store_jobs.claim(
                    self.store, unit, owner=self.owner, launcher=self.launcher, dead=holder
                )
        if got:
            self.held.add(unit)
        return got

    def set_run(self, unit: Unit, run_id: int) -> None:
        if unit in self.held:
            store_jobs.set_run(self.store, unit, self.owner, run_id)

    def done(self, unit: Unit, state: str, run_id: int | None = None, note: str | None = None):
        if unit in self.held:
            store_jobs.release(self.store, unit, self.owner, state=state, run_id=run_id, note=note)
            self.held.discard(unit)

    def close(self, state: str = "interrupted") -> None:
        self._stop.set()
        if self.held:
            with contextlib.suppress(Exception):
                store_jobs.release_all(self.store, self.owner, state)
            self.held.clear()


def train_unit(key: str, arm: str, seed: int) -> Unit:
    return Unit(key, store_jobs.TRAIN, arm, seed)


def calibration_unit(key: str) -> Unit:
    return Unit(key, store_jobs.CALIBRATION)
