"""The run lifecycle used by `ra bench`, `ra train` and `ra experiment`.

    rec = RunRecorder.start(store, kind="train", attn="ra_v5", config=cfg, seed=1, tag="x")
    rec.metric(step, "train_loss", 2.3, elapsed_s)     # buffered, cheap
    rec.finish(iterations=..., val_loss=...)           # or fail(err) / end("interrupted")

`Recorder` is the interface training and bench code use; `NullRecorder`
stands in on ranks that do not record. Buffering, the writer thread and the
heartbeat: docs/store.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import DataError, IntegrityError

from racli import environment, provenance
from racli.errors import BadInput, Stopped
from racli.names import check_tag
from racli.store import references
from racli.store.columns import TIMING_FIELDS
from racli.store.connection import Store, db_error
from racli.store.models import Environment, GateValue, Metric, Run, Timing, new_uuid, utcnow
from racli.store.outage import (  # noqa: F401 (RunLost, StoreUnavailable: for callers)
    DEFAULT_WAIT_S,
    Outage,
    RunLost,
    StoreUnavailable,
    lost_text,
)
from racli.store.recording import NullRecorder, Recorder  # noqa: F401 (re-exported)
from racli.store.urls import shown

END_STATES = ("finished", "failed", "interrupted", "diverged")
# End states a run can be resumed from (besides `running` with a stale heartbeat).
RESUMABLE = ("interrupted", "failed", "diverged")
# A `running` run whose heartbeat is older than this is shown as crashed.
STALE_AFTER = timedelta(seconds=120)
# `experiment` and `budget_source` (ra experiment) differ per arm of one experiment;
# `data_path` (where a train run read its data) differs between machines, not the data;
# `grad_reduce` (several processes) is how the same gradients are averaged
NON_COMPARABLE_KEYS = (
    "attn",
    "seed",
    "tag",
    "experiment",
    "budget_source",
    "data_path",
    "grad_reduce",
)
# what a global batch in tokens leaves free: the same batches on any number of processes
BATCH_SPLIT_KEYS = ("world_size", "micro_batch_size", "grad_accum_steps")
TIMING_DEFAULTS = {**{name: None for name in TIMING_FIELDS}, "status": "ok"}


def config_hash(config: dict, exclude: tuple[str, ...] = NON_COMPARABLE_KEYS) -> str:
    """Hash of the comparable part of a run's config: everything but attn, seed, tag.
    With a global batch in tokens (`train.batch_tokens`) the process count and the
    micro-batch split are left out too: 1-, 2- and 4-GPU runs of one setup are one group."""
    comparable = {k: v for k, v in config.items() if k not in exclude}
    train = config.get("train")
    if isinstance(train, dict) and train.get("batch_tokens") is not None:
        comparable = {k: v for k, v in comparable.items() if k not in BATCH_SPLIT_KEYS}
    source = config.get("budget_source")
    if isinstance(source, dict) and source.get("kind") == "matched_time":
        # matched-time arms differ in steps by design: what they share is the time budget
        comparable["budget"] = {"matched_minutes": source.get("minutes")}
    blob = json.dumps(comparable, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def environment_id(store: Store, info: dict | None = None) -> int:
    """The id of this machine's environment row, created on first sight."""
    info = info if info is not None else environment.collect()
    fp = environment.fingerprint_of(info)
    for attempt in range(3):
        try:
            with store.write_session() as s, s.begin():
                env = s.scalar(select(Environment).where(Environment.fingerprint == fp))
                if env is None:
                    env = Environment(fingerprint=fp, **info)
                    s.add(env)
                    s.flush()
                return env.id
        except IntegrityError:
            # PostgreSQL: another process inserted the same fingerprint meanwhile
            # (SQLite serialises writers, so only there is this never seen)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _refused(exc: BaseException) -> bool:
    """A write the store refuses for good (a constraint or a value it cannot hold): unlike
    a server restarting, a full disk or a lock, retrying cannot help."""
    return isinstance(exc, (IntegrityError, DataError))


def is_stale(run: Run, now: datetime | None = None) -> bool:
    if run.status != "running":
        return False
    now = now or utcnow()
    last = run.heartbeat_at or run.started_at
    return now - last > STALE_AFTER


def _unclaimable(store: Store, run_id: int) -> str:
    with store.session() as s:
        status = s.scalar(select(Run.status).where(Run.id == run_id))
    if status is None:
        return f"no run {run_id} in the store"
    if status == "running":
        return (
            f"run {run_id} is being resumed by another process (its heartbeat is fresh): "
            f"a run has one owner at a time"
        )
    return f"run {run_id} is {status}: it cannot be resumed"


def display_status(run: Run, now: datetime | None = None) -> str:
    return "crashed" if is_stale(run, now) else run.status


class RunRecorder:
    """Records one run: buffered rows, a heartbeat, and its end state.

    Every write checks that this recorder still owns the run (`runs.owner`): a run
    deleted meanwhile, or taken over by another process's `--resume`, raises `RunLost`
    and nothing more is written. A write that fails keeps its rows for the next one; the
    run stops with `StoreUnavailable` only once the store has stayed unwritable for
    `store.wait_s` (racli/store/outage.py)."""

    def __init__(
        self,
        store: Store,
        run_id: int,
        *,
        owner: str | None = None,
        flush_interval: float = 5.0,
        heartbeat: bool = True,
        wait_s: float | None = None,
    ):
        self.store = store
        self.run_id = run_id
        # this recording session's id, written to runs.owner by start() and resume(); a
        # recorder made directly without one writes without the ownership check
        self.owner = owner
        self.flush_interval = flush_interval
        self._metrics: list[dict] = []
        self._gates: list[dict] = []
        self._timings: list[dict] = []
        self._fields: dict[str, Any] = {}  # run columns set at the next write
        self._buffer_lock = threading.Lock()  # appends vs. the writer's buffer swap
        self.skipped_non_finite = 0  # metric values that were NaN/inf (not storable)
        self.dropped_rows = 0  # rows resume() deleted (steps to be trained again)
        self._lock = threading.Lock()  # one writer at a time (thread vs. main)
        self._stop = threading.Event()
        self._ended = False
        self.outage = Outage(getattr(store, "wait_s", DEFAULT_WAIT_S) if wait_s is None else wait_s)
        self._dead: Stopped | None = None  # why the run cannot go on (raised to the caller)
        # failed writes since the last one that succeeded: (heartbeat stamp, row counts)
        self._unsure: list[tuple[datetime, int, int, int]] = []
        self._thread: threading.Thread | None = None
        self.write_seconds = 0.0  # time spent writing (for overhead measurements)
        if heartbeat:
            self._thread = threading.Thread(
                target=self._writer, name=f"ra-run-{run_id}", daemon=True
            )
            self._thread.start()

    # ---- creation ------------------------------------------------------
    @classmethod
    def start(
        cls,
        store: Store,
        *,
        kind: str,
        config: dict,
        attn: str | None = None,
        seed: int | None = None,
        tag: str | None = None,
        env_info: dict | None = None,
        git_commit: str | None = None,
        flush_interval: float = 5.0,
        heartbeat: bool = True,
    ) -> RunRecorder:
        check_tag(tag, max_len=None, edges=False)  # width and edges: the commands check them
        env_id = environment_id(store, env_info)
        commit = git_commit if git_commit is not None else environment.git_commit()
        # ra's own code is part of the config (and so of its hash): runs from
        # different ra code never pool into one verdict
        config = {**config, "code": config.get("code") or dict(provenance.current())}
        now = utcnow()
        owner = new_uuid()
        with store.writing() as conn:
            run_id = conn.execute(
                insert(Run).values(
                    kind=kind,
                    attn=attn,
                    status="running",
                    config=references.with_uuids(conn, config),
                    config_hash=config_hash(config),
                    seed=seed,
                    tag=tag,
                    git_commit=commit,
                    env_id=env_id,
                    started_at=now,
                    heartbeat_at=now,
                    uuid=new_uuid(),
                    owner=owner,
                )
            ).inserted_primary_key[0]
        return cls(store, run_id, owner=owner, flush_interval=flush_interval, heartbeat=heartbeat)

    @classmethod
    def resume(
        cls, store: Store, run_id: int, *, drop_after_step: int | None = None, **kw
    ) -> RunRecorder:
        """Take up a run again (status back to `running`, error cleared, this session its
        owner). `drop_after_step`: the step of the checkpoint it resumes from; the run's
        metrics and gate values recorded after it (steps that will be trained again) are
        deleted in the same transaction (-1: all of them, for a run trained again from step
        0); how many went is in `dropped_rows`.

        The run is claimed atomically: one UPDATE that succeeds only while the
        run is resumable (an end state other than finished, or `running` with
        a stale heartbeat), so of two processes resuming one run at once
        exactly one becomes its owner; the other gets BadInput and writes
        nothing. (SQLite: the write transaction holds the database lock;
        PostgreSQL: the second UPDATE waits for the first and then re-checks
        the row, which no longer matches.) A process still recording the run
        after its heartbeat went stale finds at its next write that it lost it."""
        now = utcnow()
        owner = new_uuid()
        claimable = or_(
            Run.status.in_(RESUMABLE),
            and_(
                Run.status == "running",
                func.coalesce(Run.heartbeat_at, Run.started_at) < now - STALE_AFTER,
            ),
        )
        with store.writing() as conn:
            claimed = conn.execute(
                update(Run)
                .where(Run.id == run_id, claimable)
                .values(
                    status="running", heartbeat_at=now, finished_at=None, error=None, owner=owner
                )
            ).rowcount
            dropped = 0
            if claimed == 1 and drop_after_step is not None:
                for model in (Metric, GateValue):
                    dropped += conn.execute(
                        delete(model).where(model.run_id == run_id, model.step > drop_after_step)
                    ).rowcount
        if claimed != 1:
            raise BadInput(_unclaimable(store, run_id))
        rec = cls(store, run_id, owner=owner, **kw)
        rec.dropped_rows = dropped
        return rec

    # ---- buffered rows -------------------------------------------------
    def _check(self) -> None:
        """Raise why the run cannot go on (RunLost, StoreUnavailable), if it cannot."""
        if self._dead is not None:
            raise self._dead

    def metric(self, step: int, name: str, value: float, elapsed_s: float | None = None) -> None:
        """Buffer one metric value. NaN/inf cannot be stored (SQLite turns NaN
        into NULL): such values are counted in `skipped_non_finite`, and the
        trainer records the divergence on the run itself."""
        self._check()
        value = float(value)
        if not math.isfinite(value):
            self.skipped_non_finite += 1
            return
        row = {
            "run_id": self.run_id,
            "step": int(step),
            "name": name,
            "value": value,
            "elapsed_s": elapsed_s,
        }
        with self._buffer_lock:
            self._metrics.append(row)

    def metrics(self, step: int, values: dict[str, float], elapsed_s: float | None = None) -> None:
        for name, value in values.items():
            self.metric(step, name, value, elapsed_s)

    def gates(self, step: int, values: dict[int, dict[str, Any]]) -> None:
        """values: layer -> gate name -> per-head values (list, array or tensor)."""
        self._check()
        rows = []
        for layer, named in values.items():
            for name, per_head in named.items():
                seq = per_head.tolist() if hasattr(per_head, "tolist") else list(per_head)
                rows.extend(
                    {
                        "run_id": self.run_id,
                        "step": int(step),
                        "layer": int(layer),
                        "head": head,
                        "name": name,
                        "value": float(v),
                    }
                    for head, v in enumerate(seq)
                    if math.isfinite(float(v))
                )
        with self._buffer_lock:
            self._gates.extend(rows)

    def timing(self, **row: Any) -> None:
        """One timing row; columns left out are NULL (status defaults to ok).

        Every buffered row carries every column, so rows with different keys
        (a skipped mode has no median_ms) insert together in one batch."""
        self._check()
        unknown = set(row) - set(TIMING_FIELDS)
        if unknown:
            raise ValueError(f"unknown timing field(s): {', '.join(sorted(unknown))}")
        with self._buffer_lock:
            self._timings.append({**TIMING_DEFAULTS, **row, "run_id": self.run_id})

    def update(self, **fields: Any) -> None:
        """Set columns of the run row (e.g. running figures): written now when the store
        answers, else kept for the next write (training never waits on the store)."""
        self._check()
        unknown = set(fields) - RUN_COLUMNS
        if unknown:
            raise ValueError(f"unknown run column(s): {', '.join(sorted(unknown))}")
        with self._buffer_lock:
            self._fields.update(fields)
        if self._thread is None or not self.outage.failing:
            try:
                self.flush()
            except Stopped:
                raise
            except Exception:  # kept; the writer thread (or the next flush) retries
                pass

    def before_checkpoint(self) -> None:
        """Called before a checkpoint is written: the rows so far go to the store (when it
        answers), and RunLost is raised when the run is no longer this process's, so that
        no checkpoint is written for a run deleted or taken over meanwhile."""
        self._check()
        if self.outage.failing and self._thread is not None:
            return
        try:
            self.flush()
        except Stopped:
            raise
        except Exception:
            pass

    # ---- writing -------------------------------------------------------
    def flush(self) -> None:
        """Write every buffered row and field now and refresh the heartbeat. Raises the
        store's error when the write fails (the rows are kept for the next one), RunLost
        when the run is no longer this recorder's, StoreUnavailable past the limit."""
        self._check()
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            t0 = time.perf_counter()
            # swap the buffers first: appends from the main thread go to the new lists
            with self._buffer_lock:
                metrics, self._metrics = self._metrics, []
                gates, self._gates = self._gates, []
                timings, self._timings = self._timings, []
                fields, self._fields = self._fields, {}
            try:
                stamp = utcnow()
                self._write(metrics, gates, timings, fields, stamp)
            except _NotOwner:
                self._dead = RunLost(self._lost_text())
                raise self._dead from None
            except BaseException as exc:
                # the transaction rolled back (or, if the connection broke during its
                # commit, perhaps not: see _write): put the rows back, ahead of any
                # appended meanwhile, so that the next flush writes them
                self._unsure.append((stamp, len(metrics), len(gates), len(timings)))
                with self._buffer_lock:
                    self._metrics[:0] = metrics
                    self._gates[:0] = gates
                    self._timings[:0] = timings
                    self._fields = {**fields, **self._fields}
                if isinstance(exc, Exception):
                    self.outage.failed(db_error(exc))
                    if self._dead is None and not self._ended:
                        if _refused(exc):
                            self._dead = self.outage.refused(self.run_id, shown(self.store.db))
                        elif self.outage.over():
                            self._dead = self.outage.unavailable(self.run_id, shown(self.store.db))
                raise
            self._unsure.clear()
            self.outage.ok()
            self.write_seconds += time.perf_counter() - t0

    def _write(self, metrics: list, gates: list, timings: list, fields: dict, stamp) -> None:
        """One transaction: the ownership check (with the row's new fields and the heartbeat
        `stamp`), then the rows. `_NotOwner` when the run is gone or another session's.

        A write whose connection broke during its commit (a server stopped at that moment)
        may have been committed after all. The heartbeat stamp of every failed attempt is
        kept: when the row holds one of them, that attempt's rows (the front of the lists)
        are in the store already and are dropped here, so no row is written twice."""
        values = {**fields, "heartbeat_at": stamp}
        mine = Run.id == self.run_id
        if self.owner is not None:
            mine = and_(mine, Run.owner == self.owner)
        with self.store.writing() as conn:
            if self._unsure:
                now = conn.execute(select(Run.heartbeat_at).where(mine)).scalar()
                for old, n_metrics, n_gates, n_timings in reversed(self._unsure):
                    if old == now:  # committed after all
                        del metrics[:n_metrics], gates[:n_gates], timings[:n_timings]
                        self._unsure.clear()
                        break
            owned = conn.execute(update(Run).where(mine).values(**values)).rowcount
            if owned != 1:
                raise _NotOwner
            if metrics:
                conn.execute(insert(Metric), metrics)
            if gates:
                conn.execute(insert(GateValue), gates)
            if timings:
                conn.execute(insert(Timing), timings)

    def _lost_text(self) -> str:
        try:
            with self.store.session() as s:
                row = s.execute(select(Run.status).where(Run.id == self.run_id)).first()
        except Exception:
            return lost_text(self.run_id, None)
        return lost_text(self.run_id, row is not None)

    def _writer(self) -> None:
        wait = self.flush_interval
        while not self._stop.wait(wait):
            try:
                self._flush()
                wait = self.flush_interval
            except RunLost:
                return  # the main thread raises it at its next call
            except Exception:  # kept for the next attempt, sooner at first
                if self._dead is not None:
                    return  # refused for good: the main thread raises it at its next call
                wait = self.outage.pause(cap=self.flush_interval)

    # ---- ending --------------------------------------------------------
    def end(self, status: str, *, error: str | None = None, **figures: Any) -> None:
        """Write what is buffered and end the run as finished / failed / interrupted /
        diverged, in one transaction. A store that does not answer is retried until
        the limit has passed since its first failure (at least once)."""
        if status not in END_STATES:
            raise ValueError(f"unknown end state {status!r}")
        if self._ended:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._buffer_lock:
            now = utcnow()
            self._fields.update(
                status=status, error=error, finished_at=now, heartbeat_at=now, **figures
            )
        self._ended = True
        if isinstance(self._dead, RunLost):
            raise self._dead
        deadline = max(self.outage.deadline(), time.monotonic())
        while True:
            try:
                self._flush()
                return
            except Stopped:
                raise
            except Exception as exc:
                if _refused(exc):  # no retry can write it
                    raise self.outage.refused(self.run_id, shown(self.store.db)) from exc
                pause = self.outage.pause()
                if time.monotonic() + pause > deadline:
                    raise self.outage.unavailable(self.run_id, shown(self.store.db)) from exc
                time.sleep(pause)

    def finish(self, **figures: Any) -> None:
        self.end("finished", **figures)

    def fail(self, error: BaseException | str, **figures: Any) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.end("failed", error=text, **figures)

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._ended:
            return
        if exc is None:
            self.finish()
        elif isinstance(exc, KeyboardInterrupt):
            self.end("interrupted", error="interrupted")
        else:
            self.fail(exc)


class _NotOwner(Exception):
    """The ownership check of a write matched no row."""


RUN_COLUMNS = frozenset(c.name for c in Run.__table__.columns) - {"id", "uuid", "owner"}
