"""ORM models of the results store (SQLAlchemy 2.0, typed).

Table and column names are a public interface: users query this database
with sqlite3 and pandas. Every schema change is an Alembic revision in
`migrations/versions/`; `tests/test_store.py` checks that the revisions
produce exactly these tables.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_uuid() -> str:
    """A new run's identity across stores (revision 0004)."""
    return str(uuidlib.uuid4())


# Namespace of the identities given to runs recorded before revision 0004.
LEGACY_UUID_NAMESPACE = uuidlib.UUID("6f1d3a52-8c1e-4b8e-9a57-0d2b6c4e7a10")


def legacy_uuid(run_id: int, kind: str, config_hash: str, started_at: datetime) -> str:
    """The identity of a run recorded before revision 0004, derived from what it
    already holds, so that the same old run gets the same identity in every copy
    of its store (an old store merged, upgraded, then merged again adds nothing).
    Frozen: migrations/versions/0004_run_identity.py holds the same function."""
    key = f"{run_id}|{kind}|{config_hash}|{started_at.isoformat()}"
    return str(uuidlib.uuid5(LEGACY_UUID_NAMESPACE, key))


class JSONText(TypeDecorator):
    """JSON kept as TEXT: a list or mapping in Python, its JSON text in the table (the
    same on SQLite and PostgreSQL, and copied as text by `ra db merge`)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect) -> str | None:
        return None if value is None else json.dumps(value)

    def process_result_value(self, value: str | None, dialect) -> Any:
        return None if value is None else json.loads(value)


class Base(DeclarativeBase):
    pass


class Environment(Base):
    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    hostname: Mapped[str | None] = mapped_column(String(255))
    os: Mapped[str | None] = mapped_column(String(255))
    python: Mapped[str | None] = mapped_column(String(64))
    torch: Mapped[str | None] = mapped_column(String(64))
    cuda: Mapped[str | None] = mapped_column(String(64))
    cudnn: Mapped[str | None] = mapped_column(String(64))
    gpu_name: Mapped[str | None] = mapped_column(String(255))
    gpu_index: Mapped[int | None] = mapped_column(Integer)  # the CUDA device the run used
    gpu_uuid: Mapped[str | None] = mapped_column(String(64))
    gpu_count: Mapped[int | None] = mapped_column(Integer)
    gpu_memory_gb: Mapped[float | None] = mapped_column(Float)
    driver: Mapped[str | None] = mapped_column(String(64))
    cpu: Mapped[str | None] = mapped_column(String(255))
    cpu_count: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    runs: Mapped[list[Run]] = relationship(back_populates="environment")


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # bench | train
    attn: Mapped[str | None] = mapped_column(String(64))
    # running | finished | failed | interrupted | diverged
    status: Mapped[str] = mapped_column(String(16), default="running")
    config: Mapped[dict] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int | None] = mapped_column(Integer)
    tag: Mapped[str | None] = mapped_column(String(255))
    git_commit: Mapped[str | None] = mapped_column(String(64))
    env_id: Mapped[int | None] = mapped_column(ForeignKey("environments.id"))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    # final figures of a train run
    iterations: Mapped[int | None] = mapped_column(Integer)
    # 64-bit on PostgreSQL (long runs pass 2^31 tokens); SQLite integers are 64-bit anyway
    tokens: Mapped[int | None] = mapped_column(Integer().with_variant(BigInteger(), "postgresql"))
    epochs: Mapped[float | None] = mapped_column(Float)  # revision 0002
    train_seconds: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    # revision 0004: identity across stores, exclusion from verdicts, where a merged run came from
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid)
    excluded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    exclude_reason: Mapped[str | None] = mapped_column(Text)
    origin: Mapped[str | None] = mapped_column(Text)
    # revision 0006: the recording session that owns the run (a process that lost it stops)
    owner: Mapped[str | None] = mapped_column(String(36))

    environment: Mapped[Environment | None] = relationship(back_populates="runs")

    __table_args__ = (
        Index("ix_runs_kind_status", "kind", "status"),
        Index("ix_runs_config_hash", "config_hash"),
        Index("ix_runs_uuid", "uuid", unique=True),
        # revision 0006: SQLite never gives a deleted run's id to a new run (PostgreSQL's
        # sequence never does anyway)
        {"sqlite_autoincrement": True},
    )


class Timing(Base):
    __tablename__ = "timings"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    attn: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(32))
    phase: Mapped[str] = mapped_column(String(16))
    batch: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    heads: Mapped[int] = mapped_column(Integer)
    head_dim: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    device: Mapped[str] = mapped_column(String(16))
    median_ms: Mapped[float | None] = mapped_column(Float)
    p10_ms: Mapped[float | None] = mapped_column(Float)
    p90_ms: Mapped[float | None] = mapped_column(Float)
    iters: Mapped[int | None] = mapped_column(Integer)
    tflops: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="ok")  # ok | skipped | failed
    reason: Mapped[str | None] = mapped_column(Text)
    backend: Mapped[str | None] = mapped_column(String(32))  # revision 0003: SDPA backend that ran
    compile_s: Mapped[float | None] = mapped_column(Float)  # revision 0003: compile/capture time
    # revision 0008: every repeat's time in ms, in timing order (JSON list; NULL before 0008)
    samples: Mapped[list[float] | None] = mapped_column(JSONText)

    __table_args__ = (Index("ix_timings_run", "run_id"),)


class Metric(Base):
    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    elapsed_s: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_metrics_run_name_step", "run_id", "name", "step"),)


class GateValue(Base):
    __tablename__ = "gate_values"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    layer: Mapped[int] = mapped_column(Integer)
    head: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_gate_values_run_step", "run_id", "step"),)


class ExperimentJob(Base):
    """One unit of work of an `ra experiment` (revision 0007): its calibration, or one arm
    and seed. The row is the claim that makes one process its owner at a time, whatever
    the launcher (local, slurm, ray), and it remembers the scheduler's job that holds it,
    so that the same command run again re-attaches instead of submitting twice."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment: Mapped[str] = mapped_column(String(32))  # the experiment key
    kind: Mapped[str] = mapped_column(String(16))  # calibration | train
    arm: Mapped[str] = mapped_column(String(64))  # the arm's label ("" for the calibration)
    seed: Mapped[int] = mapped_column(Integer)  # the run's seed (0 for the calibration)
    launcher: Mapped[str] = mapped_column(String(16))  # local | slurm | ray
    scheduler_job: Mapped[str | None] = mapped_column(String(128))  # Slurm job id, Ray actor
    scheduler_state: Mapped[str | None] = mapped_column(String(32))  # as last seen
    # queued | running | done | failed | interrupted | cancelled
    state: Mapped[str] = mapped_column(String(16), default="queued")
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    owner: Mapped[str | None] = mapped_column(String(255))  # host:pid:nonce of the holder
    claimed_at: Mapped[datetime | None]  # refreshed while held; stale after STALE_AFTER
    note: Mapped[str | None] = mapped_column(Text)  # why it failed, e.g. bad input
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("experiment", "kind", "arm", "seed", name="uq_jobs_unit"),
        Index("ix_jobs_owner", "owner"),
    )
