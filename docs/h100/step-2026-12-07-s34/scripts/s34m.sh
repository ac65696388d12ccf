#!/usr/bin/env bash
# the mutation check: a copy of the tree without the trainer's torch._dynamo.reset()
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
rm -rf /tmp/mut && mkdir -p /tmp/mut && cp -r racli racli_models tests ra.yaml pyproject.toml migrations alembic.ini /tmp/mut/
sed -i 's/^\( *\)torch\._dynamo\.reset()$/\1pass/' /tmp/mut/racli/training/trainer.py
grep -c "_dynamo.reset" /tmp/mut/racli/training/trainer.py
diff <(cat racli/training/trainer.py) /tmp/mut/racli/training/trainer.py
( cd /tmp/mut && PYTHONPATH=/tmp/mut:/tmp/site timeout ${TM:-150} python3 -m pytest -q -m gpu -p no:cacheprovider -n 0 \
    "tests/test_train_gpu.py::test_cuda_runs_one_after_another_in_one_process_each_compile" ) 2>&1 | tee "$OUT/without_reset.log" | tail -n 25
echo "without-reset exit: ${PIPESTATUS[0]}"
