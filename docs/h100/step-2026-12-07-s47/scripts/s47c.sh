#!/usr/bin/env bash
# the fa4 extra staged from three carries (/tmp/fa4/part.aa and part.ab from the calls before,
# .fa4b/ now), its gpu tests, then the step against nanoGPT's with fa4 arms beside the defaults
set -uo pipefail
FINAL=${OUT:?}; export OUT=/tmp/ra_out; rm -rf "$OUT"; mkdir -p "$OUT"
W=nvidia_cutlass_dsl_libs_cu12-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
cat /tmp/fa4/part.aa /tmp/fa4/part.ab .fa4b/part.ac > /tmp/fa4/$W && sha256sum /tmp/fa4/$W | tee "$OUT/fa4.txt"
i=0; for w in /tmp/fa4/$W .fa4b/*.whl; do i=$((i+1))
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/w$i "$w" || exit 3; done
mkdir -p /tmp/site2; for d in /tmp/w[0-9]*; do cp -r "$d"/. /tmp/site2/; done
python3 -c 'import cuda.bindings' 2>/dev/null || { echo "cuda.bindings staged"; python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site2 .fa4b/opt/cuda_bindings-*.whl; }
python3 -c 'import google.protobuf' 2>/dev/null || { echo "protobuf staged"; python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site2 .fa4b/opt/protobuf-*.whl; }
export PYTHONPATH=$PYTHONPATH:/tmp/site2:/tmp/site2/nvidia_cutlass_dsl/dsl_packages
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; from importlib.metadata import version as v; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__, "flash-attn-4", v("flash-attn-4"), "nvidia-cutlass-dsl", v("nvidia-cutlass-dsl-libs-base"))'
  python3 -c 'from racli_models import flash4; print("problem:", flash4.problem())'
  git log -1 --format='%H %s' 2>/dev/null; } 2>&1 | tee -a "$OUT/fa4.txt"
timeout ${T_TEST:-120} python3 -m pytest -q -m gpu -p no:cacheprovider -n 0 tests/test_flash4.py 2>&1 | tee "$OUT/test_flash4.log" | tail -n 4
ARMS=nanogpt,baseline,baseline+sdpa=fa4,ra_v5+sdpa=fa4
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && ARMS=nanogpt,baseline,ra_v5,baseline+sdpa=fa4,ra_v5+sdpa=fa4
timeout ${T_VS:-300} python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 5 \
  --arms $ARMS > "$OUT/vs_fa4.log" 2>&1
echo "vs rc $?"; mv "$OUT/vs_nanogpt.json" "$OUT/vs_fa4.json" 2>/dev/null
grep -vE '^\{|UserWarning|warn' "$OUT/vs_fa4.log" | tail -n 12
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv
date -u
tar -C "$OUT" -czf "$FINAL/s47c.tar.gz" .
