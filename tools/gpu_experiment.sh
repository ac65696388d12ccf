#!/usr/bin/env bash
# The matched-time experiments of docs/results.md: baseline vs ra_v5 (part "ab") and the A/A
# check baseline vs baseline (part "aa"), GPT-2 124M on a prepared corpus (tools/gpu_data_run.sh,
# made in $WORK/pycorpus when absent). Reports, curves, the store and the logs land in $OUT
# (ab.md, ab-*.png, aa.md, aa-*.png, ra.db, logs.tgz: 8 files, the most a device call returns;
# while a part runs its output goes to $OUT/console.log too, so that a call stopped at its
# limit still returns it).
#
# Usage (from the project root on the GPU machine):
#   bash tools/gpu_experiment.sh ab     # DEVICES=0,1 SEEDS=1-4 MINUTES=2: ~11 minutes on 2 GPUs
#   bash tools/gpu_experiment.sh aa
#   bash tools/gpu_experiment.sh        # both
# env: DEVICES (default 0,1; 0 on one GPU), SEEDS (default 1-4), MINUTES (default 2),
#      STOP_AFTER=S (send the experiment SIGTERM S seconds after this script started,
#      building the corpus included: it stops gracefully, the running run checkpointed, so
#      a part longer than one 10-minute call spreads over several; leave a minute of the
#      call for that stop and the copy of the store: STOP_AFTER=520 in a 600 s call),
#      RA_DATA=DIR (a corpus of your own instead of $WORK/pycorpus).
# Each part is resumable: the same call again (machine still warm) skips finished runs and
# resumes interrupted ones; the store lives in $RA_EXPERIMENT_WORK (default ./.gpu_experiment,
# ignored by git).
# On a fresh machine, an experiment of an earlier session goes on from its returned store:
#   AT_COMMIT=C STORE_FROM=F bash tools/gpu_experiment.sh aa
# runs the script and ra of commit C (the experiment's key holds ra's commit) from a git
# worktree in /tmp/ra-at-C, starting from a copy of the store F (copied once; the same call
# again goes on from the worktree's store). Runs that were interrupted there start again
# from step 0 (their checkpoints stayed on the other machine).
set -uo pipefail
if [ -n "${AT_COMMIT:-}" ]; then
  at=/tmp/ra-at-$AT_COMMIT
  from=${STORE_FROM:+$(realpath "$STORE_FROM")}
  if [ ! -d "$at" ]; then
    git worktree add --detach -f "$at" "$AT_COMMIT" >/dev/null \
      || { echo "gpu_experiment: cannot check out $AT_COMMIT" >&2; exit 2; }
  fi
  mkdir -p "$at/.gpu_experiment"
  # a resumed run reads the corpus where it was first recorded, this checkout's work folder
  # (the earlier session ran from here): that path leads to the corpus built in the worktree
  mkdir -p .gpu_experiment
  [ -e .gpu_experiment/pycorpus ] || ln -sfn "$at/.gpu_experiment/pycorpus" .gpu_experiment/pycorpus
  if [ -n "$from" ] && [ ! -f "$at/.gpu_experiment/ra.db" ]; then
    cp "$from" "$at/.gpu_experiment/ra.db" || exit 2
  fi
  cd "$at" || exit 2
  echo "gpu_experiment: ra at $(git rev-parse --short HEAD) in $at"
  export PYTHONPATH="$at${PYTHONPATH:+:$PYTHONPATH}"
  AT_COMMIT='' STORE_FROM='' RA_EXPERIMENT_WORK="$at/.gpu_experiment" exec bash tools/gpu_experiment.sh "$@"
fi
PART=${1:-all}
OUT=${OUT:-/tmp/ra_out}
WORK=${RA_EXPERIMENT_WORK:-$PWD/.gpu_experiment}
DATA=${RA_DATA:-$WORK/pycorpus}
mkdir -p "$OUT" "$WORK"
START=$(date +%s)  # STOP_AFTER counts from here
export RA_DB="$WORK/ra.db" PYTHONUNBUFFERED=1
if [ ! -f "$DATA/meta.json" ]; then
  GLOBS=${GLOBS:-'**/*.py **/*.pyi **/*.h **/*.hpp **/*.cuh **/*.rst **/*.md **/*.c **/*.cc **/*.cpp **/*.cu **/*.txt'} \
    EXTRA_ROOTS=${EXTRA_ROOTS:-"$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])') /usr/include /usr/local/cuda/include"} \
    bash tools/gpu_data_run.sh "$DATA" "${MAX_TOKENS:-250M}" 2>&1 | tail -n 12 | tee -a "$WORK/prepare.log"
fi
cp "$DATA/meta.json" "$WORK/corpus-meta.json" 2>/dev/null
SETTINGS=(--seeds "${SEEDS:-1-4}" --minutes "${MINUTES:-2}" --model gpt2 --data "$DATA"
          --devices "${DEVICES:-0,1}")

{ nvidia-smi --query-gpu=index,name,driver_version,clocks.max.sm,power.limit --format=csv
  python3 -c "import pynvml" 2>/dev/null || echo "note: nvidia-ml-py is missing: no clock metrics"
} > "$WORK/gpus.txt" 2>&1
cat "$WORK/gpus.txt"

part() {  # name, attn list
  local left=""
  if [ -n "${STOP_AFTER:-}" ]; then
    left=$(( STOP_AFTER - ($(date +%s) - START) ))
    if [ "$left" -le 30 ]; then echo "$1: no time left in this call"; return 1; fi
  fi
  if [ -n "$left" ]; then
    timeout -s TERM -k 45 "$left" python3 -m racli experiment --attn "$2" "${SETTINGS[@]}" \
      --report "$OUT/$1.md" 2>&1 | tee -a "$WORK/$1.log" "$OUT/console.log"
  else
    python3 -m racli experiment --attn "$2" "${SETTINGS[@]}" --report "$OUT/$1.md" \
      2>&1 | tee -a "$WORK/$1.log" "$OUT/console.log"
  fi
}
rc=0
if [ "$PART" = ab ] || [ "$PART" = all ]; then part ab baseline,ra_v5 || rc=1; fi
if [ "$PART" = aa ] || [ "$PART" = all ]; then part aa baseline,baseline || rc=1; fi
# one consistent file (WAL included) and the logs
python3 - "$RA_DB" "$OUT/ra.db" <<'PY'
import sqlite3, sys
src, dst = sqlite3.connect(sys.argv[1]), sqlite3.connect(sys.argv[2])
src.backup(dst)
dst.execute("PRAGMA journal_mode=DELETE")  # one file: no -wal / -shm beside it in $OUT
dst.close(); src.close()
PY
tar czf "$OUT/logs.tgz" -C "$WORK" --ignore-failed-read gpus.txt prepare.log corpus-meta.json \
  ab.log aa.log ra_experiment_logs 2>/dev/null
python3 -m racli runs --db "$RA_DB" --limit 20
# $OUT/console.log is for a call stopped at its limit (what came back then); the same
# lines are in logs.tgz, and a device call returns at most 8 files
rm -f "$OUT/console.log"
exit $rc
