#!/usr/bin/env bash
# Prepare a corpus of >= 100M tokens on a machine without network, from text it holds: the
# Python sources (**/*.py) of the installed packages (every site-packages folder of this
# Python), tokenised with a byte-level BPE of 32,768 tokens trained on them, and print the
# prepare speed and exactly what was used (also saved as DIR.sources.txt beside the output).
#
# Usage (from the project root):  bash tools/gpu_data_run.sh DIR [MAX_TOKENS]
#   MAX_TOKENS  default 120M; the corpus stops there (or when the sources run out)
#   env: TOKENIZER (default train:32768), GLOBS (default '**/*.py', space-separated),
#        WORKERS (default: every core), PYTHON (default python3), EXTRA_ROOTS (more folders)
# Then, on the GPU, five minutes each with the defaults (gpt2 preset on CUDA):
#   python3 -m racli train --attn baseline --minutes 5 --data DIR
#   python3 -m racli train --attn ra_v5    --minutes 5 --data DIR
# Each run says at once when its budget would pass over the training split more than once.
set -euo pipefail
set -f  # the glob patterns are for ra, not for the shell
OUT_DIR=${1:?usage: bash tools/gpu_data_run.sh DIR [MAX_TOKENS]}
MAX_TOKENS=${2:-120M}
TOKENIZER=${TOKENIZER:-train:32768}
GLOBS=${GLOBS:-'**/*.py'}
PY=${PYTHON:-python3}
WORKERS=${WORKERS:-$(nproc)}

# every existing site-packages folder of this Python, once each, none inside another
mapfile -t ROOTS < <("$PY" - <<'PYEOF'
import os, site, sysconfig
paths = list(site.getsitepackages()) + [site.getusersitepackages()]
paths += [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
# EXTRA_ROOTS (space-separated folders) add text beyond the packages, e.g. the standard
# library or /usr/include, when the packages alone hold too little for a run under one epoch
paths += os.environ.get("EXTRA_ROOTS", "").split()
real = sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})
for p in real:
    if not any(p != q and p.startswith(q + os.sep) for q in real):
        print(p)
PYEOF
)
if [ "${#ROOTS[@]}" -eq 0 ]; then echo "no site-packages folder found" >&2; exit 2; fi

GLOB_ARGS=()
for g in $GLOBS; do GLOB_ARGS+=(--glob "$g"); done

REPORT="${OUT_DIR%/}.sources.txt"
mkdir -p "$(dirname "$OUT_DIR")"
{
  echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host:        $(hostname), $(nproc) cores"
  echo "python:      $("$PY" -c 'import sys; print(sys.version.split()[0])')"
  echo "tokenizer:   $TOKENIZER   max tokens: $MAX_TOKENS   workers: $WORKERS"
  echo "globs:       $GLOBS"
  for r in "${ROOTS[@]}"; do
    n=0; bytes=0
    for g in $GLOBS; do
      name=${g##*/}
      read -r c b < <(find "$r" -type f -name "$name" -printf '%s\n' 2>/dev/null \
                      | awk '{n++; s+=$1} END {print n+0, s+0}')
      n=$((n + c)); bytes=$((bytes + b))
    done
    echo "source:      $r  ($n files, $((bytes / 1000000)) MB)"
  done
} | tee "$REPORT"

T0=$(date +%s.%N)
"$PY" -m racli data prepare "${ROOTS[@]}" "${GLOB_ARGS[@]}" --tokenizer "$TOKENIZER" \
    --max-tokens "$MAX_TOKENS" --workers "$WORKERS" --out "$OUT_DIR" --force \
    | tee -a "$REPORT"
T1=$(date +%s.%N)

"$PY" - "$OUT_DIR" "$T0" "$T1" <<'PYEOF' | tee -a "$REPORT"
import json, sys
meta = json.load(open(sys.argv[1] + "/meta.json"))
wall = float(sys.argv[3]) - float(sys.argv[2])
tok = meta["tokens"]; total = tok["train"] + tok["val"]
print(f"prepare:     {total:,} tokens ({tok['train']:,} train, {tok['val']:,} val) from "
      f"{sum(meta['documents'].values()):,} documents, {meta['bytes_read'] / 1e6:,.0f} MB read, "
      f"{meta['skipped']['files']} files skipped")
print(f"speed:       tokenising {meta['tokens_per_s']:,} tokens/s over "
      f"{meta['seconds']['tokenize']:.1f}s; BPE training {meta['seconds']['tokenizer']:.1f}s; "
      f"whole command {wall:.1f}s ({total / wall:,.0f} tokens/s)")
print(f"vocabulary:  {meta['vocab_size']:,} ({meta['dtype']}), content hash {meta['content_hash']}")
rate = 546_000  # GPT-2 124M training on one H200, tokens/s (docs/results.md)
print(f"epochs:      5 minutes at ~{rate:,} tokens/s use ~{rate * 300 / 1e6:.0f}M tokens = "
      f"{rate * 300 / tok['train']:.2f} passes over the training split"
      + (" (over one: prepare more, e.g. MAX_TOKENS=250M GLOBS='**/*.py **/*.pyi **/*.h')"
         if rate * 300 > tok["train"] else ""))
if total < 100_000_000:
    print(f"NOTE: {total:,} tokens is under 100M: add sources (e.g. GLOBS='**/*.py **/*.pyi "
          f"**/*.h') or raise MAX_TOKENS")
PYEOF
