#!/usr/bin/env bash
# the measures' cost at three code versions, one after the other on one warm GPU
for v in new old mid new; do
  if [ $v = new ]; then d=$PWD; x=--split-ops; else d=$PWD/gpu_work/$v; x=; fi
  echo "===== $v"
  (cd "$d" && PYTHONPATH=$d:/tmp/site timeout 100 python3 tools/reciprocity_cost.py --device cuda --repeats 9 $x 2>&1 | grep -E "evaluation of|measure_batches|split TF32|p10")
done
