"""`ra experiment`'s options -> validated Settings: every check that can be made before
any work (bad input: BadInput, nothing recorded)."""

from __future__ import annotations

from pathlib import Path

from racli.errors import BadInput
from racli.experiment import plan
from racli.experiment.jobs import experiment_config
from racli.experiment.report import check_report_path
from racli.experiment.results import Settings, check_settings
from racli.names import ATTENTION_NAMES, MAX_SEED
from racli.text import tensorboard as tb_files
from racli.training import tensorboard as tb

LAUNCHERS = ("local", "slurm", "ray")
MAX_SEEDS = 10_000  # --max-seeds beyond this is a typing mistake (every look is planned ahead)


def settings_from_options(
    cfg,
    *,
    attn: str,
    seeds: str,
    devices: str | None,
    device: str | None,
    report: Path | None,
    max_seeds: int | None,
    overrides: list[str] | None,
    tensorboard: str | None,
    launcher: str,
    **rest,
) -> Settings:
    """The experiment's Settings from the command line's text: arms, seeds and devices
    parsed, the report's folder tried, every --set validated, the TensorBoard folder
    checked, the launcher named. `rest`: Settings fields taken as they are."""
    arms = plan.parse_arms(attn, ATTENTION_NAMES)
    seed_list = plan.parse_seeds(seeds)
    if max_seeds is not None and not 2 <= max_seeds <= MAX_SEEDS:
        raise BadInput(f"--max-seeds must be between 2 and {MAX_SEEDS:,}, got {max_seeds}")
    # --until-settled adds seeds after the largest one: none goes past this
    last_seed = max(seed_list) + (max_seeds or 0)
    if last_seed > MAX_SEED:
        raise BadInput(
            f"--seeds up to {max(seed_list)} with --max-seeds {max_seeds} would add seeds "
            f"past 2^63 - 1, the largest seed"
        )
    plan.check_aa_seeds(arms, seed_list + [last_seed])
    device_list = plan.parse_devices(devices, device)
    check_report_path(report)
    overrides = list(overrides or []) + (
        [tb.override(tensorboard)] if tensorboard is not None else []
    )
    ecfg = experiment_config(cfg, overrides)  # validates --set before any work
    if ecfg.train.tensorboard is not None:
        tb_files.check_available()
        tb_files.check_folder(ecfg.train.tensorboard)
    settings = Settings(
        arms=arms,
        seeds=seed_list,
        devices=device_list,
        overrides=overrides,
        max_seeds=max_seeds,
        launcher=check_launcher(launcher),
        **rest,
    )
    check_settings(settings)
    return settings


def check_launcher(name: str) -> str:
    """`--launcher` as a name of LAUNCHERS (BadInput otherwise)."""
    name = name.strip().lower()
    if name not in LAUNCHERS:
        raise BadInput(f"unknown --launcher '{name}' (valid: {', '.join(LAUNCHERS)})")
    return name
