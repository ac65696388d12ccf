"""Training: `ra train`'s spec, trainer, data, checkpoints and schedule.

The public entry points are re-exported lazily (importing this package does
not import torch):

    from racli.training import spec_from_config, load_data, train, resume
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainSpec": "racli.training.loop",
    "TrainResult": "racli.training.loop",
    "StepInfo": "racli.training.loop",
    "spec_from_config": "racli.training.loop",
    "spec_from_run_config": "racli.training.loop",
    "prepare_resume": "racli.training.loop",
    "load_data": "racli.training.loop",
    "run_config": "racli.training.loop",
    "model_config": "racli.training.loop",
    "data_identity": "racli.training.loop",
    "train": "racli.training.loop",
    "resume": "racli.training.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'racli.training' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
