"""Read-side queries: runs (list, details, export) and the history that `ra compare`
and `ra gates` read. Rows come back JSON-ready (dates as text) or as mappings."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from racli.errors import BadInput
from racli.store.chunks import in_chunks
from racli.store.columns import ENV_FIELDS, RUN_FIELDS, RUN_IDENTITY, TIMING_SHOWN
from racli.store.connection import Store
from racli.store.models import Environment, GateValue, Metric, Run, Timing
from racli.store.recorder import display_status


def _plain(v: Any) -> Any:
    """A datetime as 'YYYY-MM-DD HH:MM:SS'; anything else as it is."""
    return v.isoformat(sep=" ", timespec="seconds") if isinstance(v, datetime) else v


def run_dict(run: Run, with_config: bool = False) -> dict:
    d = {c: _plain(getattr(run, c)) for c in RUN_FIELDS}
    d["status"] = display_status(run)
    d["recorded_status"] = run.status
    if with_config:
        d["config"] = run.config
    return d


def with_identity(d: dict, run: Run) -> dict:
    """`d` plus the run's identity and exclusion (revision 0004) and ra's code."""
    d.update({c: getattr(run, c) for c in RUN_IDENTITY})
    code = run.config.get("code") if isinstance(run.config, dict) else None
    d["code"] = code if isinstance(code, dict) else None
    return d


# `ra runs --sort FIELD`: the field names it takes (and their columns); "-FIELD" descends
SORT_FIELDS = {
    "started": Run.started_at,
    "finished": Run.finished_at,
    "id": Run.id,
    "kind": Run.kind,
    "attn": Run.attn,
    "status": Run.status,
    "seed": Run.seed,
    "tag": Run.tag,
    "val_loss": Run.val_loss,
    "tokens_per_s": Run.tokens_per_s,
    "iterations": Run.iterations,
    "tokens": Run.tokens,
    "epochs": Run.epochs,
    "train_seconds": Run.train_seconds,
}
SORT_ALIASES = {"started_at": "started", "finished_at": "finished", "iters": "iterations"}
DEFAULT_SORT = "-started"  # newest first by start time


def parse_sort(text: str | None) -> tuple[str, bool]:
    """`"-val_loss"` -> ("val_loss", True): the field and whether it descends; BadInput for
    a field `ra runs` cannot sort by."""
    text = (text or DEFAULT_SORT).strip()
    descending = text.startswith("-")
    name = text.lstrip("-+").strip().lower()
    name = SORT_ALIASES.get(name, name)
    if name not in SORT_FIELDS:
        raise BadInput(
            f"cannot sort runs by '{text}' (fields: {', '.join(SORT_FIELDS)}; "
            "a leading '-' sorts from the largest or newest)"
        )
    return name, descending


def _ordered(q, sort: str | None):
    """`q` ordered by `sort` (see parse_sort): missing values last in either direction,
    the run id as tie-break in the same direction."""
    name, descending = parse_sort(sort)
    col = SORT_FIELDS[name]
    keys = [col.is_(None), col.desc() if descending else col.asc()]
    if name != "id":
        keys.append(Run.id.desc() if descending else Run.id.asc())
    return q.order_by(*keys)


def list_runs(
    store: Store,
    *,
    kind: str | None = None,
    attn: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    limit: int | None = None,
    sort: str | None = None,
) -> list[Run]:
    """Runs, newest first by start time (or by `sort`: "-val_loss", "attn", ...; see
    parse_sort); `status` is the shown one (`crashed`: running, heartbeat stale)."""
    q = _ordered(select(Run), sort)
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
    shown_status = status in ("crashed", "running")  # decided by the heartbeat, below
    if limit and not shown_status:
        q = q.limit(limit)
    with store.session() as s:
        runs = list(s.scalars(q))
    if shown_status:
        runs = [r for r in runs if display_status(r) == status]
    return runs[:limit] if limit else runs


def run_rows(store: Store, **filters) -> list[dict]:
    """The runs of `list_runs` as `ra runs --json` lists them."""
    return [with_identity(run_dict(r), r) for r in list_runs(store, **filters)]


def export_rows(store: Store, **filters) -> list[dict]:
    """The runs of `list_runs` with their config, environment class (gpu_name, torch),
    identity and ra's code (version, commit): what `ra runs export` writes."""
    runs = list_runs(store, **filters)
    with store.engine.connect() as conn:
        envs = {
            row.id: row
            for row in conn.execute(select(Environment.id, Environment.gpu_name, Environment.torch))
        }
    rows = []
    for r in runs:
        d = run_dict(r, with_config=True)
        env = envs.get(r.env_id)
        d["gpu_name"] = env.gpu_name if env else None
        d["torch"] = env.torch if env else None
        with_identity(d, r)
        d["ra_version"] = (d["code"] or {}).get("version")
        d["ra_commit"] = (d["code"] or {}).get("commit")
        rows.append(d)
    return rows


def get_run(store: Store, run_id: int) -> Run:
    with store.session() as s:
        run = s.get(Run, run_id)
    if run is None:
        raise BadInput(f"no run with id {run_id} in {store.db}")
    return run


def run_details(store: Store, run_id: int) -> dict:
    """Everything about one run, as JSON-ready data: its fields and config, environment,
    timings, metric counts and last values, gate snapshots, identity and code."""
    run = get_run(store, run_id)
    d = run_dict(run, with_config=True)
    with store.session() as s:
        env = s.get(Environment, run.env_id) if run.env_id else None
        d["environment"] = {c: _plain(getattr(env, c)) for c in ENV_FIELDS} if env else None
        d["timings"] = [
            {c: getattr(t, c) for c in TIMING_SHOWN}
            for t in s.scalars(select(Timing).where(Timing.run_id == run_id).order_by(Timing.id))
        ]
        d["metrics"] = _metric_summary(s, run_id)
        gate_steps = s.execute(
            select(func.count(func.distinct(GateValue.step)), func.max(GateValue.step)).where(
                GateValue.run_id == run_id
            )
        ).one()
        d["gate_snapshots"] = gate_steps[0]
        d["gate_last_step"] = gate_steps[1]
    return with_identity(d, run)


def _metric_summary(s, run_id: int) -> dict[str, dict]:
    """metric name -> {"count", "last_step", "last"} of one run."""
    counts = s.execute(
        select(Metric.name, func.count(), func.max(Metric.step))
        .where(Metric.run_id == run_id)
        .group_by(Metric.name)
    ).all()
    out = {}
    for name, n, last_step in counts:
        last = s.scalar(
            select(Metric.value)
            .where(Metric.run_id == run_id, Metric.name == name)
            .order_by(Metric.step.desc(), Metric.id.desc())
            .limit(1)
        )
        out[name] = {"count": n, "last_step": last_step, "last": last}
    return out


def metric_values(store: Store, run_id: int, names: Iterable[str]) -> dict[str, list[float]]:
    """metric name -> every recorded value of one run, for the names given that it has."""
    values: dict[str, list[float]] = {}
    with store.engine.connect() as conn:
        q = select(Metric.name, Metric.value).where(
            Metric.run_id == run_id, Metric.name.in_(list(names))
        )
        for name, value in conn.execute(q):
            values.setdefault(name, []).append(float(value))
    return values


# ---- gate values (`ra gates`) -------------------------------------------------------------

GateRow = tuple[int, int, int, str, float]  # (step, layer, head, name, value)


def gate_rows(store: Store, run_id: int) -> list[GateRow]:
    """The `gate_values` rows of one run as (step, layer, head, name, value), by step then
    recording order (raw gates and reciprocity measures alike)."""
    return gate_rows_by_run(store, [run_id]).get(run_id, [])


def gate_rows_by_run(store: Store, run_ids: list[int]) -> dict[int, list[GateRow]]:
    """run id -> its `gate_values` rows as in `gate_rows`, in one query; runs without rows
    are left out."""
    q = (
        select(
            GateValue.run_id,
            GateValue.step,
            GateValue.layer,
            GateValue.head,
            GateValue.name,
            GateValue.value,
        )
        .where(GateValue.run_id.in_(list(run_ids)))
        .order_by(GateValue.run_id, GateValue.step, GateValue.id)
    )
    out: dict[int, list[GateRow]] = {}
    with store.engine.connect() as conn:
        for r in conn.execute(q):
            out.setdefault(r.run_id, []).append((r.step, r.layer, r.head, r.name, r.value))
    return out


# --------------------------------------------------------------------------
# history reads of `ra compare` (rows as dicts, read by column name)
# --------------------------------------------------------------------------


def finished_train_runs(
    store: Store, *, attns, tag: str | None = None, since: datetime | None = None
) -> list:
    """Finished train runs of `attns` with their environment's identity (one query).

    Mappings (read by name) with keys: id, attn, seed, config_hash, val_loss, tokens_per_s,
    iterations, epochs, gpu_name, torch, hostname, gpu_index, gpu_uuid.
    """
    columns = (
        Run.id,
        Run.attn,
        Run.seed,
        Run.config_hash,
        Run.val_loss,
        Run.tokens_per_s,
        Run.iterations,
        Run.epochs,
        Environment.gpu_name,
        Environment.torch,
        Environment.hostname,
        Environment.gpu_index,
        Environment.gpu_uuid,
    )
    return train_history(
        store, columns, Run.status == "finished", attns=attns, tag=tag, since=since
    )


def train_history(
    store: Store, columns, status, *, attns, tag: str | None, since: datetime | None
) -> list:
    """`columns` (of Run and its Environment) of the non-excluded train runs of `attns`
    whose status matches `status` (a clause), optionally of one tag and started since a
    time, in run order: the history a verdict reads (one query)."""
    q = (
        select(*columns)
        .outerjoin(Environment, Run.env_id == Environment.id)
        .where(
            Run.kind == "train",
            status,
            Run.excluded.is_(False),
            Run.attn.in_(list(attns)),
        )
        .order_by(Run.id)
    )
    if tag is not None:
        q = q.where(Run.tag == tag)
    if since is not None:
        q = q.where(Run.started_at >= since)
    with store.engine.connect() as conn:
        return [row._mapping for row in conn.execute(q)]


def run_configs(store: Store, ids: list[int]) -> dict[int, dict]:
    """run id -> its recorded config."""
    out: dict[int, dict] = {}
    with store.engine.connect() as conn:
        for chunk in in_chunks(ids):
            for row in conn.execute(select(Run.id, Run.config).where(Run.id.in_(chunk))):
                out[row.id] = row.config or {}
    return out


def metric_points(
    store: Store, ids: list[int], name: str, *, last_half: bool = False
) -> dict[int, list[tuple[int, float]]]:
    """run id -> [(step, value)] of metric `name`, in step order; with `last_half`, only the
    points at or after half of each run's last step (what the speed checks fit)."""
    points: dict[int, list[tuple[int, float]]] = {i: [] for i in ids}
    with store.engine.connect() as conn:
        for chunk in in_chunks(ids):
            q = select(Metric.run_id, Metric.step, Metric.value).where(
                Metric.name == name, Metric.run_id.in_(chunk)
            )
            if last_half:
                last = (
                    select(Metric.run_id, func.max(Metric.step).label("last"))
                    .where(Metric.name == name, Metric.run_id.in_(chunk))
                    .group_by(Metric.run_id)
                    .subquery()
                )
                q = q.join(last, last.c.run_id == Metric.run_id).where(
                    Metric.step * 2 >= last.c.last
                )
            q = q.order_by(Metric.run_id, Metric.step, Metric.id)
            result = conn.execute(q)
            try:  # the driver's rows as they are (integers and floats): 3x faster than Rows
                rows = result.cursor.fetchall()
            finally:
                result.close()
            for run_id, step, value in rows:
                points[run_id].append((step, value))
    return points


def ok_bench_timings(
    store: Store, *, attns, tag: str | None = None, since: datetime | None = None
) -> list[dict]:
    """ok timings of finished bench runs of `attns`, with the run's environment class fields.

    Keys: run_id, attn, mode, phase, batch, seq, heads, head_dim, dtype, device, backend,
    median_ms, p10_ms, p90_ms, tflops, samples (every repeat's ms; None before revision
    0008), gpu_name, torch.
    """
    q = (
        select(
            Timing.run_id,
            Timing.attn,
            Timing.mode,
            Timing.phase,
            Timing.batch,
            Timing.seq,
            Timing.heads,
            Timing.head_dim,
            Timing.dtype,
            Timing.device,
            Timing.backend,
            Timing.median_ms,
            Timing.p10_ms,
            Timing.p90_ms,
            Timing.tflops,
            Timing.samples,
            Environment.gpu_name,
            Environment.torch,
        )
        .join(Run, Timing.run_id == Run.id)
        .outerjoin(Environment, Run.env_id == Environment.id)
        .where(
            Run.kind == "bench",
            Run.status == "finished",
            Run.excluded.is_(False),
            Timing.status == "ok",
            Timing.attn.in_(list(attns)),
        )
        .order_by(Timing.run_id, Timing.id)
    )
    if tag is not None:
        q = q.where(Run.tag == tag)
    if since is not None:
        q = q.where(Run.started_at >= since)
    with store.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(q)]
