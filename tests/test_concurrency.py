"""Four processes recording runs into one SQLite database at the same time."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

from helpers import ENV_INFO, python_env

WORKERS = 4
SECONDS = 3.0

WORKER = r"""
import json, sys, time
db, start_at, seconds, idx, env_info = (sys.argv[1], float(sys.argv[2]), float(sys.argv[3]),
                                        int(sys.argv[4]), json.loads(sys.argv[5]))
from racli.store.engine import open_store
from racli.store.recorder import RunRecorder

while time.time() < start_at:  # all workers open the (fresh) database at once
    time.sleep(0.001)
store = open_store(db)
rec = RunRecorder.start(store, kind="train", attn="ra_v5", config={"worker": idx}, seed=idx,
                        tag="concurrency", env_info=env_info, git_commit="c0ffee",
                        flush_interval=0.05)
errors = []
plain_flush = rec.flush

def flush():  # the writer thread swallows errors: count them here
    try:
        plain_flush()
    except Exception as exc:
        errors.append(repr(exc))
        raise

rec.flush = flush
metrics = gates = flushes = step = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(25):
        rec.metric(step, "train_loss", 1.0 / (step + 1), elapsed_s=step * 0.001)
        metrics += 1
        step += 1
    if step % 100 == 0:
        rec.gates(step, {0: {"w_std": [1.0, 0.9], "w_rec": [0.1, 0.2]}})
        gates += 4
    if step % 250 == 0:
        try:
            rec.flush()
        except Exception:
            pass  # already counted; the rows stay buffered for the next flush
        flushes += 1
    time.sleep(0.002)
rec.metric(step, "val_loss", 2.0)
metrics += 1
rec.finish(iterations=step, val_loss=2.0)
store.close()
if errors:
    sys.stderr.write("flush errors: " + "; ".join(sorted(set(errors))) + "\n")
print(json.dumps({"run_id": rec.run_id, "metrics": metrics, "gates": gates, "flushes": flushes,
                  "errors": len(errors), "write_s": rec.write_seconds}))
sys.exit(1 if errors else 0)
"""


def test_four_processes_record_into_one_database(tmp_path):
    db = tmp_path / "shared.db"  # does not exist yet: the workers race to create it
    start_at = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(db), str(start_at), str(SECONDS),
                               str(i), json.dumps(ENV_INFO)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
             for i in range(WORKERS)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, f"worker failed ({p.returncode}): {err.strip()[-2000:]}"
            assert "locked" not in err and "Traceback" not in err, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(r["errors"] == 0 for r in results)
    assert len({r["run_id"] for r in results}) == WORKERS
    # the runs really overlapped and flushed often
    assert all(r["flushes"] >= 10 for r in results), results

    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        for r in results:
            rid = r["run_id"]
            assert raw.execute("SELECT count(*) FROM metrics WHERE run_id=?", (rid,)).fetchone()[0] \
                == r["metrics"], r
            assert raw.execute("SELECT count(*) FROM gate_values WHERE run_id=?", (rid,)).fetchone()[0] \
                == r["gates"], r
            # no row written twice
            dup = raw.execute("SELECT count(*) FROM (SELECT step, name FROM metrics WHERE run_id=? "
                              "GROUP BY step, name HAVING count(*) > 1)", (rid,)).fetchone()[0]
            assert dup == 0
        assert raw.execute("SELECT count(*) FROM metrics").fetchone()[0] == \
            sum(r["metrics"] for r in results)
        statuses = raw.execute("SELECT status, error, finished_at IS NOT NULL FROM runs").fetchall()
        assert statuses == [("finished", None, 1)] * WORKERS
        assert raw.execute("SELECT count(*) FROM environments").fetchone()[0] == 1
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0005",)]
        started = [r[0] for r in raw.execute("SELECT started_at FROM runs ORDER BY id")]
        finished = [r[0] for r in raw.execute("SELECT finished_at FROM runs ORDER BY id")]
        assert max(started) < min(finished), "the runs did not overlap"
