"""How long `ra compare` takes over a store of N finished runs in one comparable group.

Builds a SQLite store of N train runs (half `baseline`, half `ra_v5`, one config, one
machine, a wall-clock budget) with a val-loss curve of P points each, so the verdict's
speed check reads and fits every curve, then times `ra compare` in a new process
(Python's start and imports included, as a user waits for it) R times and prints the
median and range. The design's target: under 1 s at 10,000 runs.

    python tools/compare_speed.py --runs 10000 --points 20 --repeats 5
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(path: Path, runs: int, points: int) -> None:
    from sqlalchemy import insert, select

    from racli.environment import fingerprint_of
    from racli.store.engine import open_store
    from racli.store.models import Environment, Metric, Run, utcnow
    from racli.store.recorder import config_hash

    env = {"hostname": "bench", "gpu_name": "cpu", "gpu_count": 0, "torch": "x"}
    config = {"model": {"preset": "tiny"}, "train": {"lr": 6e-4}, "data": "builtin"}
    rnd = random.Random(0)
    now = utcnow()
    store = open_store(str(path))
    try:
        with store.writing() as conn:
            conn.execute(insert(Environment), [{"fingerprint": fingerprint_of(env), **env}])
            conn.execute(
                insert(Run),
                [
                    {
                        "kind": "train",
                        "attn": ("baseline", "ra_v5")[i % 2],
                        "status": "finished",
                        "config": {**config, "attn": ("baseline", "ra_v5")[i % 2], "seed": i},
                        "config_hash": config_hash(config),
                        "seed": i,
                        "env_id": 1,
                        "started_at": now,
                        "finished_at": now,
                        "heartbeat_at": now,
                        "iterations": 300,
                        "tokens": 300 * 4096,
                        "epochs": 0.4,
                        "train_seconds": 120.0,
                        "val_loss": 3.0 * (1 + 0.01 * rnd.gauss(0, 1)),
                        "tokens_per_s": 500_000.0 * (1 + 0.01 * rnd.gauss(0, 1)),
                    }
                    for i in range(runs)
                ],
            )
            ids = [i for (i,) in conn.execute(select(Run.id))]
            steps = [300 * (k + 1) // points for k in range(points)]
            conn.execute(
                insert(Metric),
                [
                    {"run_id": i, "step": s, "name": "val_loss", "value": 3 + math.log(300 / s)}
                    for i in ids
                    for s in steps
                ],
            )
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--points", type=int, default=20, help="val-loss points a run")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "speed.db"
        t0 = time.perf_counter()
        build(db, a.runs, a.points)
        print(f"store: {a.runs:,} runs x {a.points} val-loss points, built in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "racli", "compare", "--db", str(db)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            times.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                sys.exit(f"ra compare failed: {proc.stderr.strip()[-500:]}")
        basis = [ln.strip() for ln in proc.stdout.splitlines() if "curve(s)" in ln]
        print(f"ra compare in a new process: median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}, {a.repeats} repeats)")  # fmt: skip
        print(f"speed check: {basis[0] if basis else 'no curve fitted'}")


if __name__ == "__main__":
    main()
