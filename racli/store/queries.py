"""Read-side queries shared by `ra runs`, `ra compare` and `ra gates`."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from racli.errors import BadInput
from racli.store.engine import Store
from racli.store.models import Environment, GateValue, Metric, Run, Timing
from racli.store.recorder import display_status

RUN_COLUMNS = ("id", "kind", "attn", "status", "config_hash", "seed", "tag", "git_commit",
               "env_id", "started_at", "finished_at", "heartbeat_at", "error", "iterations",
               "tokens", "epochs", "train_seconds", "val_loss", "tokens_per_s")
ENV_COLUMNS = ("id", "fingerprint", "hostname", "os", "python", "torch", "cuda", "cudnn",
               "gpu_name", "gpu_count", "gpu_memory_gb", "driver", "cpu", "cpu_count", "created_at")
TIMING_COLUMNS = ("attn", "mode", "phase", "batch", "seq", "heads", "head_dim", "dtype", "device",
                  "backend", "median_ms", "p10_ms", "p90_ms", "iters", "tflops", "compile_s",
                  "status", "reason")


def _jsonable(v: Any) -> Any:
    return v.isoformat(sep=" ", timespec="seconds") if isinstance(v, datetime) else v


def run_dict(run: Run, with_config: bool = False) -> dict:
    d = {c: _jsonable(getattr(run, c)) for c in RUN_COLUMNS}
    d["status"] = display_status(run)
    d["recorded_status"] = run.status
    if with_config:
        d["config"] = run.config
    return d


def list_runs(store: Store, *, kind: str | None = None, attn: str | None = None,
              status: str | None = None, tag: str | None = None, limit: int | None = None) -> list[Run]:
    q = select(Run).order_by(Run.id.desc())
    if kind:
        q = q.where(Run.kind == kind)
    if attn:
        q = q.where(Run.attn == attn)
    if tag:
        q = q.where(Run.tag == tag)
    if status and status != "crashed":
        q = q.where(Run.status == status)
    elif status == "crashed":
        q = q.where(Run.status == "running")
    with store.session() as s:
        runs = list(s.scalars(q))
    if status == "crashed":
        runs = [r for r in runs if display_status(r) == "crashed"]
    elif status == "running":
        runs = [r for r in runs if display_status(r) == "running"]
    return runs[:limit] if limit else runs


def get_run(store: Store, run_id: int) -> Run:
    with store.session() as s:
        run = s.get(Run, run_id)
    if run is None:
        raise BadInput(f"no run with id {run_id} in {store.db}")
    return run


def run_details(store: Store, run_id: int) -> dict:
    """Everything about one run, as JSON-ready data."""
    run = get_run(store, run_id)
    d = run_dict(run, with_config=True)
    with store.session() as s:
        env = s.get(Environment, run.env_id) if run.env_id else None
        d["environment"] = {c: _jsonable(getattr(env, c)) for c in ENV_COLUMNS} if env else None
        d["timings"] = [{c: getattr(t, c) for c in TIMING_COLUMNS}
                        for t in s.scalars(select(Timing).where(Timing.run_id == run_id).order_by(Timing.id))]
        counts = s.execute(select(Metric.name, func.count(), func.max(Metric.step))
                           .where(Metric.run_id == run_id).group_by(Metric.name)).all()
        d["metrics"] = {}
        for name, n, last_step in counts:
            last = s.scalar(select(Metric.value).where(Metric.run_id == run_id, Metric.name == name)
                            .order_by(Metric.step.desc(), Metric.id.desc()).limit(1))
            d["metrics"][name] = {"count": n, "last_step": last_step, "last": last}
        gate_steps = s.execute(select(func.count(func.distinct(GateValue.step)), func.max(GateValue.step))
                               .where(GateValue.run_id == run_id)).one()
        d["gate_snapshots"] = gate_steps[0]
        d["gate_last_step"] = gate_steps[1]
    return d


# ---- gate values (`ra gates`) -------------------------------------------------------------

GateRow = tuple[int, int, int, str, float]  # (step, layer, head, name, value)


def gate_rows(store: Store, run_id: int) -> list[GateRow]:
    """The `gate_values` rows of one run as (step, layer, head, name, value), by step then
    recording order (raw gates and reciprocity measures alike)."""
    return gate_rows_by_run(store, [run_id]).get(run_id, [])


def gate_rows_by_run(store: Store, run_ids: list[int]) -> dict[int, list[GateRow]]:
    """run id -> its `gate_values` rows as in `gate_rows`, in one query; runs without rows
    are left out."""
    q = (select(GateValue.run_id, GateValue.step, GateValue.layer, GateValue.head,
                GateValue.name, GateValue.value)
         .where(GateValue.run_id.in_(list(run_ids)))
         .order_by(GateValue.run_id, GateValue.step, GateValue.id))
    out: dict[int, list[GateRow]] = {}
    with store.engine.connect() as conn:
        for r in conn.execute(q):
            out.setdefault(r.run_id, []).append((r.step, r.layer, r.head, r.name, r.value))
    return out
