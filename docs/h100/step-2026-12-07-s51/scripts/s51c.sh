#!/usr/bin/env bash
# on any card: the card and checkout, the GELU kernel beside a copy of its bytes (s49b.sh),
# then the step against nanoGPT N times with --json (s51b.sh)
set -uo pipefail
OUT=${OUT:?}
git log -1 --format='%H %s' > "$OUT/head.txt" 2>&1
git ls-files -s | sha1sum >> "$OUT/head.txt"
nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv >> "$OUT/head.txt"
python3 -c 'import torch, triton, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__, "python", sys.version.split()[0])' >> "$OUT/head.txt" 2>&1
cat "$OUT/head.txt"
s=$(date +%s); OUT=$OUT bash gpu_work/s49b.sh > "$OUT/s49b.log" 2>&1; echo "s49b $(( $(date +%s) - s )) s"; tail -40 "$OUT/s49b.log"
OUT=$OUT N=${N:-2} bash gpu_work/s51b.sh
