#!/usr/bin/env bash
# the fa4 extra's first piece kept in /tmp/fa4; the clock sampler's gpu test; the step against
# nanoGPT's (vs_nanogpt, which now reads each arm's SM clock and power); on an H200 also
# nanoGPT's and ra's steps profiled kernel by kernel with 100 sustained steps each while
# nvidia-smi samples every 100 ms (s47_prof.py); one archive back
set -uo pipefail
FINAL=${OUT:?}; export OUT=/tmp/ra_out; mkdir -p "$OUT" /tmp/fa4
cp .fa4a/part.aa /tmp/fa4/ 2>/dev/null
git log -1 --format='%H %s' > "$OUT/head.txt" 2>/dev/null
sha256sum racli_models/*.py racli/training/*.py racli/bench/*.py tools/*.py > "$OUT/tree.txt" 2>/dev/null
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'
  git log -1 --format='%H %s' 2>/dev/null; } 2>&1 | tee "$OUT/env.txt"
timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider -n 0 "tests/test_experiment_run.py::test_clock_sampler_reads_the_gpu" 2>&1 | tail -n 2 | tee "$OUT/clock_test.log"
H200=0; nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && H200=1
if [ $H200 = 1 ]; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv -lms 100 > "$OUT/smi.csv" 2>&1 &
  SMI=$!
  timeout 300 python3 gpu_work/s47_prof.py gpu_work/nanoGPT nanogpt baseline ra_v5 baseline+graph=false > "$OUT/prof.log" 2>&1
  echo "prof rc $?"; kill $SMI
  grep -E "^=====|^SUSTAIN" "$OUT/prof.log" | head -12
fi
timeout ${T_VS:-200} python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 5 --bench-py \
  --arms nanogpt,baseline,ra_v5 > "$OUT/vs_s1.log" 2>&1
echo "vs rc $?"; mv "$OUT/vs_nanogpt.json" "$OUT/vs_s1.json" 2>/dev/null
grep -vE '^\{|UserWarning|warn' "$OUT/vs_s1.log" | tail -n 10
date -u
tar -C "$OUT" -czf "$FINAL/s47d.tar.gz" .
