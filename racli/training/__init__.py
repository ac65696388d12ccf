"""Training: `ra train`'s spec, trainer, data, checkpoints and schedule.

One job per module: spec.py (what a run is, its recorded config, resume
checks), trainer.py (the Trainer: step, log point, stop decision,
evaluation), run.py (set-up, the recorded run and its end), result.py,
checkpoint.py, datasets.py (token streams), batches.py (sampling), schedule.py, progress.py, distributed.py, budget.py (budget checks,
epochs), launch.py (`ra train`'s work behind the command), stopping.py (the SIGINT/SIGTERM
policy shared with `ra experiment`).

The public entry points are re-exported lazily (importing this package does
not import torch):

    from racli.training import spec_from_config, load_data, train, resume
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainSpec": "racli.training.spec",
    "spec_from_config": "racli.training.spec",
    "spec_from_run_config": "racli.training.spec",
    "prepare_resume": "racli.training.spec",
    "load_data": "racli.training.spec",
    "run_config": "racli.training.spec",
    "model_config": "racli.training.spec",
    "data_identity": "racli.training.spec",
    "TrainResult": "racli.training.result",
    "StepInfo": "racli.training.result",
    "Trainer": "racli.training.trainer",
    "CheckpointState": "racli.training.checkpoint",
    "train": "racli.training.run",
    "resume": "racli.training.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'racli.training' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
