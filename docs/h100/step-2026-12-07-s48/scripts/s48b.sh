#!/usr/bin/env bash
# the energy counter's update period; then vs_nanogpt four times, each its own process,
# alternating --no-clocks and the default (the sampler thread's effect on the step)
set -uo pipefail
FINAL=${OUT:?}; export OUT=/tmp/ra_out; mkdir -p "$OUT"
timeout 30 python3 gpu_work/s48_energy_period.py 2>&1 | tee "$OUT/energy_period.log"
for i in 1 2 3 4; do
  NC=""; [ $((i % 2)) = 1 ] && NC="--no-clocks"
  timeout ${T_VS:-110} python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 5 $NC \
    --arms nanogpt,baseline,ra_v5 > "$OUT/nc_$i.log" 2>&1
  echo "vs $i ($NC) rc $?"; mv "$OUT/vs_nanogpt.json" "$OUT/nc_$i.json" 2>/dev/null
  grep -vE '^\{|UserWarning|warn|parameters' "$OUT/nc_$i.log" | tail -n 9
  date -u
done
tar -C "$OUT" -czf "$FINAL/s48b.tar.gz" .
