"""Train runs that ended without a result (diverged or failed): what a verdict must count
so that runs missing from one side do not vanish from it."""

from __future__ import annotations

from datetime import datetime

from racli.store.connection import Store
from racli.store.models import Environment, Run
from racli.store.queries import train_history

#: end states of a train run that leave no result behind (interrupted runs are continued)
NO_RESULT = ("diverged", "failed")


def unfinished_train_runs(
    store: Store, *, attns, tag: str | None = None, since: datetime | None = None
) -> list:
    """Diverged or failed, non-excluded train runs of `attns` (one query).

    Mappings with keys: id, attn, seed, status, config_hash, gpu_name, torch."""
    columns = (
        Run.id,
        Run.attn,
        Run.seed,
        Run.status,
        Run.config_hash,
        Environment.gpu_name,
        Environment.torch,
    )
    status = Run.status.in_(NO_RESULT)
    return train_history(store, columns, status, attns=attns, tag=tag, since=since)
