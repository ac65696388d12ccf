"""The results store: ORM models, opening with migrations, the run recorder."""

from racli.store.engine import HEAD_REVISION, Store, database_url, open_store
from racli.store.models import Base, Environment, GateValue, Metric, Run, Timing
from racli.store.recorder import RunRecorder, config_hash, display_status, environment_id

__all__ = [
    "HEAD_REVISION",
    "Store",
    "database_url",
    "open_store",
    "Base",
    "Environment",
    "GateValue",
    "Metric",
    "Run",
    "Timing",
    "RunRecorder",
    "config_hash",
    "display_status",
    "environment_id",
]
