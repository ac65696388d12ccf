#!/usr/bin/env bash
# One call: the GELU-GEMM kinds alone and in the half-block, their gpu tests, and (if the
# best runs alone under THRESH ms) the step against nanoGPT with and without it.
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'; } 2>&1 | tee "$OUT/env.txt"
timeout "${T_ALONE:-220}" python3 gpu_work/s25_gelu.py 2>&1 | tee "$OUT/gelu.log" | grep -v "^\[alone\] .*error"
python3 - "$OUT/best_tile.json" <<'PY'
import json, re, sys
best = json.load(open(sys.argv[1]))
p = "racli_models/gelu_mm.py"
s = open(p).read()
t = "TILE = {\n" + "".join(f'    "{k}": {json.dumps(v).replace("false", "False").replace("true", "True")},\n' for k, v in {**{"group_m": 8}, **best["tile"]}.items()) + "}"
s = re.sub(r"TILE = \{\n.*?\n\}", t, s, count=1, flags=re.S)
open(p, "w").write(s)
print("TILE set to", best["tile"], "alone", best["median"], "ms")
PY
timeout "${T_TEST:-150}" python3 -m pytest -q -m gpu -p no:cacheprovider -n0 tests/test_gelu_mm.py 2>&1 | tail -n 25 | tee "$OUT/test_gelu_mm.txt"
ms=$(python3 -c "import json; print(json.load(open('$OUT/best_tile.json'))['median'])")
if python3 -c "import sys; sys.exit(0 if $ms < ${THRESH:-0.37} else 1)"; then
  timeout "${T_VS:-270}" python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 5 \
    --arms "${ARMS:-nanogpt,baseline,baseline+gelumm=true,ra_v5+gelumm=true}" 2>&1 | tee "$OUT/vs.log" | grep -vE '^\{' 
else
  echo "best alone $ms ms: no step run"
fi
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee -a "$OUT/env.txt"
