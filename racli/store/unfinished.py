"""Train runs that ended without a result (diverged or failed): what a verdict must count
so that runs missing from one side do not vanish from it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from racli.store.engine import Store
from racli.store.models import Environment, Run

#: end states of a train run that leave no result behind (interrupted runs are continued)
NO_RESULT = ("diverged", "failed")


def unfinished_train_runs(
    store: Store, *, attns, tag: str | None = None, since: datetime | None = None
) -> list:
    """Diverged or failed, non-excluded train runs of `attns` (one query).

    Mappings with keys: id, attn, seed, status, config_hash, gpu_name, torch."""
    q = (
        select(
            Run.id,
            Run.attn,
            Run.seed,
            Run.status,
            Run.config_hash,
            Environment.gpu_name,
            Environment.torch,
        )
        .outerjoin(Environment, Run.env_id == Environment.id)
        .where(
            Run.kind == "train",
            Run.status.in_(NO_RESULT),
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
