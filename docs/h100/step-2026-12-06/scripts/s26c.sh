#!/usr/bin/env bash
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'; } 2>&1 | tee "$OUT/env.txt"
timeout 200 python3 gpu_work/s26_prof.py baseline baseline+inductor.realize_acc_reads_threshold=1 2>&1 | tee "$OUT/prof.log" | grep -E "^=====|^ *[-+][0-9]" | cut -c1-170 | head -36
timeout 300 python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 5 \
  --arms "${ARMS:-nanogpt,baseline,baseline+inductor.realize_acc_reads_threshold=1,baseline+inductor.realize_acc_reads_threshold=2}" 2>&1 | tee "$OUT/vs.log" | grep -vE '^\{'
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee -a "$OUT/env.txt"
