#!/usr/bin/env bash
# One GPU call of the real-data measurement: prepare the corpus (tools/gpu_data_run.sh) unless
# it is already there, then train ATTN for MINUTES with the defaults (gpt2 preset on CUDA) on
# it, into the store gpu_work/h200.db; the store, the prepare report and the log are copied to
# $OUT. A second call on a still-warm machine reuses the corpus and the store.
#
# Usage (from the project root):  bash tools/gpu_train_run.sh ATTN [MINUTES] [MAX_TOKENS]
#   env: GLOBS (source patterns, see gpu_data_run.sh), SMOKE=1 (a 30-step ra_v5 run first)
set -euo pipefail
ATTN=${1:?usage: bash tools/gpu_train_run.sh ATTN [MINUTES] [MAX_TOKENS]}
MINUTES=${2:-5}
MAX_TOKENS=${3:-250M}
OUT=${OUT:-/tmp/ra_out}
WORK=gpu_work
DATA=$WORK/pycorpus
DB=$WORK/h200.db
mkdir -p "$WORK" "$OUT"
export PYTHONUNBUFFERED=1
if [ ! -f "$DATA/meta.json" ]; then
  # 485 MB of .py/.pyi/.h/.hpp/.cuh/.rst/.md gave 126.6M training tokens on the H200 machine,
  # 1.29 passes in 5 minutes: C/C++/CUDA sources, text files and the standard library add more
  GLOBS=${GLOBS:-'**/*.py **/*.pyi **/*.h **/*.hpp **/*.cuh **/*.rst **/*.md **/*.c **/*.cc **/*.cpp **/*.cu **/*.txt'} \
    EXTRA_ROOTS=${EXTRA_ROOTS:-"$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])') /usr/include /usr/local/cuda/include"} \
    bash tools/gpu_data_run.sh "$DATA" "$MAX_TOKENS" 2>&1 | tail -n 25
fi
cp "$DATA.sources.txt" "$OUT/" 2>/dev/null || true
cp "$DATA/meta.json" "$OUT/corpus-meta.json"
if [ "${SMOKE:-0}" = 1 ]; then
  python3 -m racli --db "$WORK/smoke.db" train --attn ra_v5 --steps 30 --data "$DATA" \
    --set train.eval_interval=15 --set train.final_eval_batches=4 2>&1 | tail -n 8
fi
python3 -m racli --db "$DB" train --attn "$ATTN" --minutes "$MINUTES" --data "$DATA" \
  2>&1 | tee "$OUT/train-$ATTN.log" | grep -v "^\s*$" | tail -n 30
cp "$DB" "$OUT/h200.db"
