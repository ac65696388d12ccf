#!/usr/bin/env bash
# What a run costs beyond its budget, with cold and then warm compile caches: short
# `ra train` runs back to back in fresh processes on one GPU, each one's own account of its
# set-up, compile warm-up and evaluation ("Training time" line), its process's wall time,
# and the size of the compile caches after it.
# Usage (from the project root on the GPU machine):  bash tools/gpu_overhead.sh DATA_DIR
#   env: ARMS (default "baseline baseline baseline ra_v5 ra_v5"), MINUTES (default 0.25),
#        OUT (default /tmp/ra_out): logs and the store (overhead.db) go there.
# The first run of each variant meets the caches as the machine has them (empty on a fresh
# machine); the later ones meet what the earlier ones left.
set -uo pipefail
DATA=${1:?usage: bash tools/gpu_overhead.sh DATA_DIR}
OUT=${OUT:-/tmp/ra_out}
ARMS=${ARMS:-baseline baseline baseline ra_v5 ra_v5}
MINUTES=${MINUTES:-0.25}
mkdir -p "$OUT"
i=0
for attn in $ARMS; do
  i=$((i + 1))
  log="$OUT/overhead-$i-$attn.log"
  t0=$(date +%s.%N)
  python3 -m racli train --attn "$attn" --model gpt2 --minutes "$MINUTES" --seed "$i" \
    --data "$DATA" --db "$OUT/overhead.db" >"$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  wall=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
  caches=$(du -sh /tmp/torchinductor_"$(id -un)" ~/.triton/cache 2>/dev/null | awk '{print $1}' | paste -sd/)
  echo "run $i $attn: exit $rc, process wall ${wall}s, caches (inductor/triton) $caches"
  grep -E "Training time" "$log" || tail -n 5 "$log"
done
