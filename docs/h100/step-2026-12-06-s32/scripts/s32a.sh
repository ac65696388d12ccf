#!/usr/bin/env bash
# the fa4 extra staged as in s30c.sh (/tmp/fa4/part.aa and part.ab from the calls before,
# .fa4b/ now), then every gpu-marked test (s29a.sh) with the extra on PYTHONPATH
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
W=nvidia_cutlass_dsl_libs_cu12-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
cat /tmp/fa4/part.aa /tmp/fa4/part.ab .fa4b/part.ac > /tmp/fa4/$W && sha256sum /tmp/fa4/$W
i=0; for w in /tmp/fa4/$W .fa4b/*.whl; do i=$((i+1))
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/w$i "$w" || exit 3; done
mkdir -p /tmp/site2; for d in /tmp/w[0-9]*; do cp -r "$d"/. /tmp/site2/; done
python3 -c 'import cuda.bindings' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site2 .fa4b/opt/cuda_bindings-*.whl
python3 -c 'import google.protobuf' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site2 .fa4b/opt/protobuf-*.whl
export PYTHONPATH=$PYTHONPATH:/tmp/site2:/tmp/site2/nvidia_cutlass_dsl/dsl_packages
python3 -c 'from importlib.metadata import version as v; from racli_models import flash4; print("flash-attn-4", v("flash-attn-4"), "problem:", flash4.problem())' 2>&1 | tee "$OUT/fa4.txt"
T=${T:-400} bash gpu_work/s29a.sh
echo "recompile_limit lines: $(grep -c recompile_limit "$OUT/gpu_tests.log")"
echo "JitArgument lines: $(grep -c JitArgument "$OUT/gpu_tests.log")"
