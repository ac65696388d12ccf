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
from typing import Any, Protocol

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from racli import environment, provenance
from racli.errors import BadInput
from racli.store.columns import TIMING_FIELDS
from racli.store.engine import Store
from racli.store.models import Environment, GateValue, Metric, Run, Timing, new_uuid, utcnow

END_STATES = ("finished", "failed", "interrupted", "diverged")
# End states a run can be resumed from (besides `running` with a stale heartbeat).
RESUMABLE = ("interrupted", "failed", "diverged")
# A `running` run whose heartbeat is older than this is shown as crashed.
STALE_AFTER = timedelta(seconds=120)
# `experiment` and `budget_source` (ra experiment) differ per arm of one experiment;
# `data_path` (where a train run read its data) differs between machines, not the data
NON_COMPARABLE_KEYS = ("attn", "seed", "tag", "experiment", "budget_source", "data_path")
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

    def end(self, status, *, error=None, **figures) -> None:
        pass

    def finish(self, **figures) -> None:
        pass

    def fail(self, error, **figures) -> None:
        pass


class RunRecorder:
    """Records one run: buffered rows, a heartbeat, and its end state."""

    def __init__(
        self, store: Store, run_id: int, *, flush_interval: float = 5.0, heartbeat: bool = True
    ):
        self.store = store
        self.run_id = run_id
        self.flush_interval = flush_interval
        self._metrics: list[dict] = []
        self._gates: list[dict] = []
        self._timings: list[dict] = []
        self._buffer_lock = threading.Lock()  # appends vs. the writer's buffer swap
        self.skipped_non_finite = 0  # metric values that were NaN/inf (not storable)
        self._lock = threading.Lock()  # one writer at a time (thread vs. main)
        self._stop = threading.Event()
        self._ended = False
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
        env_id = environment_id(store, env_info)
        commit = git_commit if git_commit is not None else environment.git_commit()
        # ra's own code is part of the config (and so of its hash): runs from
        # different ra code never pool into one verdict
        config = {**config, "code": config.get("code") or dict(provenance.current())}
        now = utcnow()
        with store.writing() as conn:
            run_id = conn.execute(
                insert(Run).values(
                    kind=kind,
                    attn=attn,
                    status="running",
                    config=config,
                    config_hash=config_hash(config),
                    seed=seed,
                    tag=tag,
                    git_commit=commit,
                    env_id=env_id,
                    started_at=now,
                    heartbeat_at=now,
                    uuid=new_uuid(),
                )
            ).inserted_primary_key[0]
        return cls(store, run_id, flush_interval=flush_interval, heartbeat=heartbeat)

    @classmethod
    def resume(cls, store: Store, run_id: int, **kw) -> RunRecorder:
        """Take up a run again (status back to `running`, error cleared).

        The run is claimed atomically: one UPDATE that succeeds only while the
        run is resumable (an end state other than finished, or `running` with
        a stale heartbeat), so of two processes resuming one run at once
        exactly one becomes its owner; the other gets BadInput and writes
        nothing. (SQLite: the write transaction holds the database lock;
        PostgreSQL: the second UPDATE waits for the first and then re-checks
        the row, which no longer matches.)"""
        now = utcnow()
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
                .values(status="running", heartbeat_at=now, finished_at=None, error=None)
            ).rowcount
        if claimed != 1:
            raise BadInput(_unclaimable(store, run_id))
        return cls(store, run_id, **kw)

    # ---- buffered rows -------------------------------------------------
    def metric(self, step: int, name: str, value: float, elapsed_s: float | None = None) -> None:
        """Buffer one metric value. NaN/inf cannot be stored (SQLite turns NaN
        into NULL): such values are counted in `skipped_non_finite`, and the
        trainer records the divergence on the run itself."""
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
        unknown = set(row) - set(TIMING_FIELDS)
        if unknown:
            raise ValueError(f"unknown timing field(s): {', '.join(sorted(unknown))}")
        with self._buffer_lock:
            self._timings.append({**TIMING_DEFAULTS, **row, "run_id": self.run_id})

    # ---- writing -------------------------------------------------------
    def flush(self) -> None:
        """Write every buffered row now and refresh the heartbeat."""
        with self._lock:
            t0 = time.perf_counter()
            # swap the buffers first: appends from the main thread go to the new lists
            with self._buffer_lock:
                metrics, self._metrics = self._metrics, []
                gates, self._gates = self._gates, []
                timings, self._timings = self._timings, []
            try:
                with self.store.writing() as conn:
                    if metrics:
                        conn.execute(insert(Metric), metrics)
                    if gates:
                        conn.execute(insert(GateValue), gates)
                    if timings:
                        conn.execute(insert(Timing), timings)
                    if not self._ended:
                        conn.execute(
                            update(Run).where(Run.id == self.run_id).values(heartbeat_at=utcnow())
                        )
            except BaseException:
                # the transaction rolled back: put the rows back, ahead of any
                # appended meanwhile, so that the next flush writes them
                with self._buffer_lock:
                    self._metrics[:0] = metrics
                    self._gates[:0] = gates
                    self._timings[:0] = timings
                raise
            self.write_seconds += time.perf_counter() - t0

    def _writer(self) -> None:
        while not self._stop.wait(self.flush_interval):
            try:
                self.flush()
            except Exception:  # a busy database must not kill the run; the next flush retries
                pass

    def update(self, **fields: Any) -> None:
        """Set columns of the run row now (e.g. running figures)."""
        with self._lock, self.store.writing() as conn:
            conn.execute(update(Run).where(Run.id == self.run_id).values(**fields))

    # ---- ending --------------------------------------------------------
    def end(self, status: str, *, error: str | None = None, **figures: Any) -> None:
        """Flush and end the run as finished / failed / interrupted / diverged."""
        if status not in END_STATES:
            raise ValueError(f"unknown end state {status!r}")
        if self._ended:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()
        self._ended = True
        with self._lock, self.store.writing() as conn:
            conn.execute(
                update(Run)
                .where(Run.id == self.run_id)
                .values(
                    status=status,
                    error=error,
                    finished_at=utcnow(),
                    heartbeat_at=utcnow(),
                    **figures,
                )
            )

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
