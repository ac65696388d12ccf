#!/usr/bin/env bash
# the fa4 extra's first piece kept in /tmp/fa4; then nanoGPT's and ra's compiled steps
# profiled kernel by kernel (s47_prof.py), each arm also run alone for 100 steps while
# nvidia-smi samples clocks and power every 100 ms; one archive back
set -uo pipefail
FINAL=${OUT:?}; export OUT=/tmp/ra_out; mkdir -p "$OUT" /tmp/fa4
cp .fa4a/part.aa /tmp/fa4/ 2>/dev/null; ls -la /tmp/fa4
git log -1 --format='%H %s' > "$OUT/head.txt" 2>/dev/null
sha256sum racli_models/*.py racli/training/*.py racli/bench/*.py tools/*.py > "$OUT/tree.txt" 2>/dev/null
{ date -u; date +%s; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'
  git log -1 --format='%H %s' 2>/dev/null; } 2>&1 | tee "$OUT/env.txt"
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv -lms 100 > "$OUT/smi.csv" 2>&1 &
SMI=$!
timeout ${T_PROF:-300} python3 gpu_work/s47_prof.py gpu_work/nanoGPT ${ARMS:-nanogpt baseline ra_v5 baseline+graph=false} > "$OUT/prof.log" 2>&1
echo "prof rc $?"
kill $SMI
grep -E "^=====|^SUSTAIN|parameters, warm-up|Error|error" "$OUT/prof.log" | head -40
sed -n '/^===== difference/,$p' "$OUT/prof.log" | head -30
date -u
tar -C "$OUT" -czf "$FINAL/s47a.tar.gz" . && cp "$OUT/prof.log" "$FINAL/prof.log"
