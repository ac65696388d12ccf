#!/usr/bin/env bash
# on an H200: the GELU kernel beside a copy of its bytes, then issue #25's acceptance tools
# (s50a.sh); on any other card the checkout and card (s51_head.sh) and the GELU
# comparison alone (s49b.sh)
set -uo pipefail
OUT=${OUT:?}
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $name"
case "$name" in
  *H200*) OUT=$OUT bash gpu_work/s50a.sh ;;
  *)
    OUT=$OUT bash gpu_work/s51_head.sh
    s=$(date +%s); OUT=$OUT bash gpu_work/s49b.sh; echo "s49b $(( $(date +%s) - s )) s" ;;
esac
