"""The results store: ORM models, opening with migrations, the run recorder, every query.

The names below are loaded on first use: importing one module of the store
(say racli.store.filters) does not load SQLAlchemy's engine and ORM.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "HEAD_REVISION": "racli.store.engine",
    "Store": "racli.store.engine",
    "database_url": "racli.store.engine",
    "open_store": "racli.store.engine",
    "Base": "racli.store.models",
    "Environment": "racli.store.models",
    "GateValue": "racli.store.models",
    "Metric": "racli.store.models",
    "Run": "racli.store.models",
    "Timing": "racli.store.models",
    "Recorder": "racli.store.recorder",
    "RunRecorder": "racli.store.recorder",
    "config_hash": "racli.store.recorder",
    "display_status": "racli.store.recorder",
    "environment_id": "racli.store.recorder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'racli.store' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
