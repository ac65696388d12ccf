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
from racli.names import device_name, resolve_device
from racli.training.memory import check_fits


def resolve_devices(devices: list[str], processes: bool | None = None) -> list[str]:
    out = [resolve_device(d) for d in devices]
    if len(out) > 1 and any(d == "cpu" for d in out) and not processes:
        raise BadInput("several devices are GPUs: --devices takes CUDA indices")
    return out


def cluster_devices(devices: list[str], launcher: str) -> list[str]:
    """The device of runs that a cluster's scheduler places: ["cpu"] for --device cpu, else
    ["cuda"] (`auto` included: the submitting host's own GPUs, or their absence, say
    nothing of the nodes'). Picking GPUs (--devices, cuda:N) is the scheduler's, so refused."""
    names = [device_name(d) for d in devices]
    if len(names) > 1 or names[0].startswith("cuda:"):
        given = (  # several: --devices' CUDA indices
            f"--devices {','.join(n.split(':')[-1] for n in names)}"
            if len(names) > 1
            else f"--device {names[0]}"
        )
        raise BadInput(
            f"{given}: with --launcher {launcher} "
            f"the scheduler picks the GPUs; give --device cuda (the default) or --device cpu, "
            f"and the GPUs per run with --set {launcher}.gpus_per_run=N"
        )
    return ["cpu" if names[0] == "cpu" else "cuda"]


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


def prepare(settings: Settings, cfg, *, on_this_host: bool | None = None) -> Prepared:
    """Validate the settings and every arm's config; the experiment's key and tag.
    BadInput before anything is recorded when the settings cannot work.

    `on_this_host` (default: the local launcher) says whether the runs train on this
    machine: for a cluster's runs the device is not looked for here, nor is their memory
    checked against this machine's (the node's `ra train` checks it)."""
    ecfg = experiment_config(cfg, settings.overrides)
    check_settings(settings)
    here = settings.launcher == "local" if on_this_host is None else on_this_host
    devices = (
        resolve_devices(settings.devices, settings.processes)
        if here
        else cluster_devices(settings.devices, settings.launcher)
    )
    specs = [
        arm_spec(
            settings,
            ecfg,
            a.attn,
            device=devices[0],
            steps=1,
            seed=0,
            tag=settings.tag,
            on_this_host=here,
        )
        for a in settings.arms
    ]
    dataset = training.load_data(specs[0])
    for spec in specs:
        training.run_config(spec, dataset)  # validates every arm's model config
        check_fits(spec, dataset, on_this_host=here)
    key = plan.experiment_key(
        arms=settings.arms,
        comparable=comparable_config(specs[0], dataset),
        minutes=settings.minutes,
        tag=settings.tag,
    )
    return Prepared(ecfg, devices, specs, dataset, key, plan.run_tag(settings.tag, key))
