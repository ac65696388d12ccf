#!/usr/bin/env bash
# the card and checkout, the GELU kernel beside a copy of its bytes (s49b.sh), then on an
# H200 issue #25's acceptance tools into $OUT/acceptance
set -uo pipefail
OUT=${OUT:?}
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $name"
case "$name" in
  *H200*) OUT=$OUT bash gpu_work/s50a.sh ;;
  *)
    git log -1 --format='%H %s' > "$OUT/head.txt" 2>&1
    git ls-files -s | sha1sum >> "$OUT/head.txt"
    nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv >> "$OUT/head.txt"
    python3 -c 'import torch, triton, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__, "python", sys.version.split()[0])' >> "$OUT/head.txt" 2>&1
    cat "$OUT/head.txt"
    s=$(date +%s); OUT=$OUT bash gpu_work/s49b.sh; echo "s49b $(( $(date +%s) - s )) s" ;;
esac
