"""What every launcher works from: the validated settings, the arms' specs, the data,
the experiment key and its run tag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from racli import training
from racli.errors import BadInput
from racli.experiment import plan
from racli.experiment.jobs import arm_spec, experiment_config
from racli.experiment.results import Settings, check_settings
from racli.names import resolve_device
from racli.training.memory import check_fits


def resolve_devices(devices: list[str], processes: bool | None = None) -> list[str]:
    out = [resolve_device(d) for d in devices]
    if len(out) > 1 and any(d == "cpu" for d in out) and not processes:
        raise BadInput("several devices are GPUs: --devices takes CUDA indices")
    return out


def comparable_config(spec, dataset) -> dict[str, Any]:
    """The run config of an arm without what differs between the experiment's runs."""
    config = training.run_config(spec, dataset)
    return {
        k: v
        for k, v in config.items()
        if k
        not in (
            "attn",
            "seed",
            "tag",
            "budget",
            "data_path",  # where the data lives is not what it is: the key stays the same
            plan.EXPERIMENT_KEY,
            plan.BUDGET_SOURCE_KEY,
        )
    }


@dataclass
class Prepared:
    ecfg: Any  # ra.yaml with every --set applied
    devices: list[str]
    specs: list  # one TrainSpec per arm (steps and seed placeholders)
    dataset: Any
    key: str
    tag: str


def prepare(settings: Settings, cfg) -> Prepared:
    """Validate the settings and every arm's config; the experiment's key and tag.
    BadInput before anything is recorded when the settings cannot work."""
    ecfg = experiment_config(cfg, settings.overrides)
    check_settings(settings)
    devices = resolve_devices(settings.devices, settings.processes)
    specs = [
        arm_spec(settings, ecfg, a.attn, device=devices[0], steps=1, seed=0, tag=settings.tag)
        for a in settings.arms
    ]
    dataset = training.load_data(specs[0])
    for spec in specs:
        training.run_config(spec, dataset)  # validates every arm's model config
        check_fits(spec, dataset)
    key = plan.experiment_key(
        arms=settings.arms,
        comparable=comparable_config(specs[0], dataset),
        minutes=settings.minutes,
        tag=settings.tag,
    )
    return Prepared(ecfg, devices, specs, dataset, key, plan.run_tag(settings.tag, key))
