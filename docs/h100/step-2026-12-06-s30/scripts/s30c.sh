#!/usr/bin/env bash
# the fa4 extra staged from two carries (/tmp/fa4/part.aa from the call before, .fa4b/ now),
# then test_flash4's gpu tests and the step with train.sdpa_backend=fa4 against nanoGPT
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
W=nvidia_cutlass_dsl_libs_cu12-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
cat /tmp/fa4/part.aa /tmp/fa4/part.ab .fa4b/part.ac > /tmp/fa4/$W && sha256sum /tmp/fa4/$W
# one target a wheel, then merged: the CuTe DSL's wheels share nvidia_cutlass_dsl/dsl_packages/
i=0; for w in /tmp/fa4/$W .fa4b/*.whl; do i=$((i+1))
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/w$i "$w" || exit 3; done
mkdir -p /tmp/site2; for d in /tmp/w[0-9]*; do cp -r "$d"/. /tmp/site2/; done
# the DSL's own dependencies, only where the image lacks them (PYTHONPATH comes first)
python3 -c 'import cuda.bindings' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site2 .fa4b/opt/cuda_bindings-*.whl
python3 -c 'import google.protobuf' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site2 .fa4b/opt/protobuf-*.whl
ls /tmp/site2/nvidia_cutlass_dsl/dsl_packages/cutlass | head
export PYTHONPATH=$PYTHONPATH:/tmp/site2:/tmp/site2/nvidia_cutlass_dsl/dsl_packages
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; from importlib.metadata import version as v; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__, "flash-attn-4", v("flash-attn-4"), "nvidia-cutlass-dsl", v("nvidia-cutlass-dsl-libs-base"))'
  python3 -c 'from racli_models import flash4; print("problem:", flash4.problem())'; } 2>&1 | tee "$OUT/env.txt"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -n 0 tests/test_flash4.py 2>&1 | tee "$OUT/test_flash4.log" | tail -n 4
timeout 330 python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 3 --steps 15 \
  --arms nanogpt,baseline+sdpa=fa4,ra_v5+sdpa=fa4 2>&1 | tee "$OUT/vs.log" | grep -vE '^\{'
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee -a "$OUT/env.txt"
date -u
