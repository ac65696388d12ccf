#!/usr/bin/env bash
# 60e9382 (TorchFunctionMode) and the working tree (routing by name), alternately.
set -u
OUT=${OUT:-/tmp/ra_out}
for i in 1 2; do
  for v in old new; do
    if [ $v = old ]; then dir=gpu_work/old; else dir=.; fi
    echo "=== $v ($i)"
    (cd $dir && PYTHONPATH=$PWD:/tmp/site timeout 140 python3 tools/reciprocity_cost.py --device cuda \
      --repeats 9 --separate-ablation 2>&1 | grep -v Warning | tail -3)
  done
done
