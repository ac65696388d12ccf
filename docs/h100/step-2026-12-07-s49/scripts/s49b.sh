#!/usr/bin/env bash
# the GELU forward kernel with shared_erf on and off beside a copy of the same bytes
# and F.gelu alone (s48_erf_ptx.py), twice each, each its own process
set -uo pipefail
OUT=${OUT:?}
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader
  git ls-files -s | sha1sum
  for v in on off on off; do timeout 60 python3 gpu_work/s48_erf_ptx.py $v 2>&1 | grep -vE "warn"; done
  date -u; } 2>&1 | tee "$OUT/erf_ptx.log"
