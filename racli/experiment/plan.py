"""The plan of a matched-time experiment: arms, seeds, order, devices, step budgets.

Pure functions (no torch, no database), so the design can be checked in
milliseconds:

* **arms**: ``--attn baseline,ra_v5,baseline`` -> arms ``baseline#1``, ``ra_v5``,
  ``baseline#2``. A variant listed once keeps its name as its label; a variant
  listed more than once (an A/A experiment) gets ``#1``, ``#2``... so its arms
  are told apart and compared like any pair. Every arm is compared with the first.
* **seeds**: the arms of one seed train on that seed (shared initialisation and
  batches: the pairs of the verdict), except the second and later arms of a
  repeated variant, which train on their own seed stream (seed + 1,000,000 for
  ``#2``, + 2,000,000 for ``#3``...): an A/A comparison of two arms that start
  equal and see equal batches would be identical by construction.
* **order**: on one device the arms of seed i run in the listed order when i is
  even and in reverse when i is odd (A B, B A, A B, ...: seed pairs run A B B A),
  so slow drifts (a warming GPU, a busy host) fall on both arms alike.
* **devices**: over G devices, arm j of seed i runs on device (i + j) mod G, each
  device working through its own queue in seed order, one run at a time. The
  arms of one seed run at the same time on different devices, and over every G
  consecutive seeds each arm visits each device once.
* **budgets**: the first arm's variant gets ``S = minutes x 60 x steps/s`` (its
  calibrated speed); every other variant ``S x (its speed / the first's)``,
  rounded to whole steps. Arms of the same variant get the same budget.
* **key**: a hash of the settings that make two invocations the same
  experiment (variants, comparable run config, minutes, tag), so running the
  same command again finds its runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from racli.errors import BadInput
from racli.names import check_seed

#: config keys written by an experiment on each of its runs (outside config_hash)
EXPERIMENT_KEY = "experiment"
BUDGET_SOURCE_KEY = "budget_source"


@dataclass(frozen=True)
class Arm:
    label: str  # unique within the experiment: "ra_v5", or "baseline#2" for a repeated variant
    attn: str
    index: int


#: seed offset of each further arm of a repeated variant (an A/A experiment's own stream)
AA_SEED_STRIDE = 1_000_000


@dataclass(frozen=True)
class Job:
    arm: Arm
    seed: int
    device: int  # index into the experiment's device list
    order: int  # position in the whole experiment's order


def parse_arms(text: str | None, valid: tuple[str, ...] | None = None) -> list[Arm]:
    names = [t.strip() for t in (text or "").split(",") if t.strip()]
    if len(names) < 2:
        raise BadInput(
            "--attn needs at least two variants, e.g. --attn baseline,ra_v5 "
            "(the same one twice for an A/A experiment)"
        )
    if valid is not None:
        for n in names:
            if n not in valid:
                raise BadInput(f"unknown attention '{n}' (valid: {', '.join(sorted(valid))})")
    counts = {n: names.count(n) for n in names}
    seen: dict[str, int] = {}
    arms = []
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        label = f"{n}#{seen[n]}" if counts[n] > 1 else n
        arms.append(Arm(label, n, i))
    return arms


_RANGE = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?$")


def parse_seeds(text: str | None) -> list[int]:
    """``1-5`` / ``1,3,5`` / ``1-3,7`` -> the seeds, sorted; BadInput for a seed listed twice."""
    text = text or ""
    if not text.strip():
        raise BadInput("--seeds is empty: give a range like 1-5 or a list like 1,3,5")
    seen: set[int] = set()
    for part in text.split(","):
        if not part.strip():
            raise BadInput(f"bad --seeds '{text}': an empty item (a comma too many)")
        m = _RANGE.match(part)
        if not m:
            raise BadInput(f"bad --seeds '{text}': expected a range like 1-5 or a list like 1,3,5")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise BadInput(f"bad --seeds '{text}': range {lo}-{hi} runs backwards")
        if hi - lo > 10_000:
            raise BadInput(f"bad --seeds '{text}': more than 10,000 seeds")
        for seed in (lo, hi):
            check_seed(seed, "every seed of --seeds")
        twice = seen.intersection(range(lo, hi + 1))
        if twice:
            raise BadInput(
                f"bad --seeds '{text}': seed {min(twice)} is listed twice (a seed is one "
                "replicate of every arm; give each once)"
            )
        seen.update(range(lo, hi + 1))
    return sorted(seen)


def parse_devices(devices: str | None, device: str | None) -> list[str]:
    """``--devices 0,1`` -> ["cuda:0", "cuda:1"]; ``--device X`` -> [X]; neither -> ["auto"]."""
    if devices is not None and device is not None:
        raise BadInput("give either --devices (GPU indices) or --device, not both")
    if devices is None:
        return [(device or "auto").strip().lower()]
    out = []
    for part in devices.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()):
            raise BadInput(f"bad --devices '{devices}': expected GPU indices like 0,1")
        name = f"cuda:{int(part)}"
        if name in out:
            raise BadInput(f"bad --devices '{devices}': GPU {part} is listed twice")
        out.append(name)
    if not out:
        raise BadInput("--devices is empty: give GPU indices like 0,1")
    return out


def arm_order(arms: list[Arm], seed_index: int) -> list[Arm]:
    """The arms of the seed_index-th seed: listed order when even, reversed when odd."""
    return list(arms) if seed_index % 2 == 0 else list(reversed(arms))


def arm_seed(arm: Arm, arms: list[Arm], seed: int) -> int:
    """The seed arm `arm` trains for the experiment's `seed`: the seed itself, or for the
    k-th arm (k >= 2) of a repeated variant ``seed + (k - 1) x AA_SEED_STRIDE``."""
    k = sum(1 for a in arms if a.attn == arm.attn and a.index < arm.index)
    return seed + k * AA_SEED_STRIDE


def check_aa_seeds(arms: list[Arm], seeds: list[int]) -> None:
    """An A/A experiment's seeds stay below the stride, so its streams never meet."""
    repeated = len({a.attn for a in arms}) < len(arms)
    if repeated and seeds and max(seeds) >= AA_SEED_STRIDE:
        raise BadInput(
            f"an experiment with a repeated variant takes seeds below {AA_SEED_STRIDE:,} "
            f"(its further arms train on seed + {AA_SEED_STRIDE:,} x k), got {max(seeds)}"
        )


def schedule(
    arms: list[Arm], seeds: list[int], n_devices: int = 1, first_index: int = 0
) -> list[Job]:
    """Every (arm, seed) job in the experiment's order, each with its device.

    `first_index` is the position of seeds[0] among all the experiment's seeds, so
    seeds added later continue the pattern."""
    if n_devices < 1:
        raise ValueError("need at least one device")
    jobs = []
    for k, seed in enumerate(seeds):
        i = first_index + k
        for arm in arm_order(arms, i) if n_devices == 1 else arms:
            jobs.append(Job(arm, arm_seed(arm, arms, seed), (i + arm.index) % n_devices, len(jobs)))
    return jobs


def queues(jobs: list[Job], n_devices: int) -> list[list[Job]]:
    """Per device, its jobs in order."""
    out: list[list[Job]] = [[] for _ in range(n_devices)]
    for j in jobs:
        out[j.device].append(j)
    return out


@dataclass(frozen=True)
class Budget:
    arm: str
    steps: int
    ratio: float  # this arm's variant's speed / the first arm's variant's speed
    ratio_ci: tuple[float, float] | None
    settled: bool = True  # the calibration behind it settled
    calibration_run: int | None = None  # the calibration run it comes from


def step_budgets(
    arms: list[Arm],
    minutes: float,
    first_steps_per_s: float,
    ratios: dict[str, tuple],
) -> dict[str, Budget]:
    """`ratios`: variant -> (speed ratio to the first arm's variant, its interval[, whether
    the calibration settled]).

    The first arm's variant gets S = minutes x 60 x first_steps_per_s (at least 1);
    every other variant round(S x ratio)."""
    if not (math.isfinite(first_steps_per_s) and first_steps_per_s > 0):
        raise ValueError(f"calibrated speed must be positive, got {first_steps_per_s}")
    s0 = max(1, round(minutes * 60.0 * first_steps_per_s))
    settled = all(len(r) < 3 or bool(r[2]) for r in ratios.values())
    out = {}
    for arm in arms:
        if arm.attn == arms[0].attn:
            ratio, ci = 1.0, None
        else:
            ratio, ci = ratios[arm.attn][0], ratios[arm.attn][1]
        out[arm.label] = Budget(arm.label, max(1, round(s0 * ratio)), ratio, ci, settled)
    return out


def experiment_key(
    *, arms: list[Arm], comparable: dict[str, Any], minutes: float, tag: str | None
) -> str:
    """Stable id of an experiment: what must match for two invocations to share runs.

    Seeds, devices, the report and --until-settled are left out: more seeds or
    other GPUs continue the same experiment."""
    blob = json.dumps(
        {
            "arms": [a.attn for a in arms],
            "config": comparable,
            "minutes": float(minutes),
            "tag": tag,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_tag(tag: str | None, key: str) -> str:
    """The tag of an experiment's runs: the user's, else ``exp-<key>``."""
    return tag if tag else f"exp-{key}"


def extra_config(
    *,
    key: str,
    arm: Arm,
    arms: list[Arm],
    budget: Budget,
    minutes: float,
    calibration_run: int,
    reference_steps: int,
) -> dict[str, Any]:
    """The entries an experiment adds to each run's config (kept out of config_hash)."""
    return {
        EXPERIMENT_KEY: {"key": key, "arm": arm.label, "arms": [a.label for a in arms]},
        BUDGET_SOURCE_KEY: {
            "kind": "matched_time",
            "minutes": float(minutes),
            "calibration_run": calibration_run,
            "reference": arms[0].label,
            "reference_steps": reference_steps,
            "ratio": budget.ratio,
            "ratio_ci": list(budget.ratio_ci) if budget.ratio_ci else None,
            "steps": budget.steps,
            "calibration_settled": budget.settled,
        },
    }


def parse_extra_config(text: str) -> dict[str, Any]:
    """`ra train --extra-config JSON`: only the experiment's own entries are accepted."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadInput(f"--extra-config is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise BadInput("--extra-config must be a JSON object")
    unknown = set(data) - {EXPERIMENT_KEY, BUDGET_SOURCE_KEY}
    if unknown:
        raise BadInput(
            f"--extra-config: unknown key(s) {', '.join(sorted(unknown))} "
            f"(valid: {EXPERIMENT_KEY}, {BUDGET_SOURCE_KEY})"
        )
    return data


def next_seeds(seeds: list[int], count: int) -> list[int]:
    """`count` new seeds after the largest one in use."""
    start = max(seeds) + 1 if seeds else 0
    return list(range(start, start + count))
