#!/usr/bin/env bash
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'; } 2>&1 | tee "$OUT/env.txt"
timeout 170 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gelu_mm.py 2>&1 | tee "$OUT/tests.log" | tail -n 8
N_LAYER=2 TORCH_LOGS=output_code timeout 120 python3 gpu_work/s26_prof.py baseline > "$OUT/code2.out" 2> "$OUT/code2.log"; echo "code rc $?"; grep -c "def triton" "$OUT/code2.log"
timeout 240 python3 gpu_work/s26_prof.py baseline baseline+gelumm=false 2>&1 | tee "$OUT/prof.log" | cut -c1-170
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee -a "$OUT/env.txt"
