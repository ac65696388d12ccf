#!/usr/bin/env bash
# the fa4 extra's second piece kept in /tmp/fa4; then, on an H200 only, every gpu-marked test
set -uo pipefail
FINAL=${OUT:?}; export OUT=/tmp/ra_out; rm -rf "$OUT"; mkdir -p "$OUT" /tmp/fa4
cp .fa4c/part.ab /tmp/fa4/ 2>/dev/null; ls -la /tmp/fa4
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  T=${T:-420} bash gpu_work/s29a.sh
else echo "not an H200: gpu tests not run"; fi
tar -C "$OUT" -czf "$FINAL/s47b.tar.gz" .
