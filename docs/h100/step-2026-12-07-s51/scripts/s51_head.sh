#!/usr/bin/env bash
# the checkout, the card and the software into $OUT/head.txt
set -uo pipefail
OUT=${OUT:?}
git log -1 --format='%H %s' > "$OUT/head.txt" 2>&1
git ls-files -s | sha1sum >> "$OUT/head.txt"
nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv >> "$OUT/head.txt"
python3 -c 'import torch, triton, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__, "python", sys.version.split()[0])' >> "$OUT/head.txt" 2>&1
cat "$OUT/head.txt"
