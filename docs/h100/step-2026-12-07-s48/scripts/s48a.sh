#!/usr/bin/env bash
# the clock sampler's and gelu_mm's gpu tests, then vs_nanogpt three times, each in its own
# process, with the MLP's forward as it is (erf once) and as it was (+sharederf=false);
# each run reads clocks, power and energy a step; one archive back
set -uo pipefail
FINAL=${OUT:?}; export OUT=/tmp/ra_out; mkdir -p "$OUT"
git log -1 --format='%H %s' > "$OUT/head.txt" 2>/dev/null
sha256sum racli_models/*.py racli/training/*.py racli/bench/*.py tools/*.py > "$OUT/tree.txt" 2>/dev/null
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'
  } 2>&1 | tee "$OUT/env.txt"
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider -n 0 "tests/test_experiment_run.py::test_clock_sampler_reads_the_gpu" tests/test_gelu_mm.py 2>&1 | tail -n 3 | tee "$OUT/tests.log"
for i in 1 2 3; do
  BP=""; [ $i = 1 ] && BP="--bench-py"
  timeout ${T_VS:-150} python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 5 $BP \
    --arms nanogpt,baseline,baseline+sharederf=false,ra_v5 > "$OUT/vs_$i.log" 2>&1
  echo "vs $i rc $?"; mv "$OUT/vs_nanogpt.json" "$OUT/vs_$i.json" 2>/dev/null
  grep -vE '^\{|UserWarning|warn' "$OUT/vs_$i.log" | tail -n 14
  date -u
done
tar -C "$OUT" -czf "$FINAL/s48a.tar.gz" .
