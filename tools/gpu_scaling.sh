#!/usr/bin/env bash
# Training throughput on one GPU against N GPUs of one host at the same global batch
# (train.batch_tokens): tokens/s, scaling efficiency, and `ra compare` grouping the runs
# (issues #28 with NGPU=2 and #29 with NGPU=4). Each size trains ATTNS for STEPS
# optimizer steps from the same seed; tokens/s leaves out the compile warm-up.
#
# Usage (from the project root on the GPU machine):
#   NGPU=2 bash tools/gpu_scaling.sh
# env: NGPU (default: every GPU), ATTNS (default baseline,ra_v5), STEPS (default 60),
#      REDUCES (train.grad_reduce settings timed on NGPU processes; default "ddp step"),
#      BATCH_TOKENS (default 524288: 16 x 32 sequences of 1024 on one GPU), MODEL (gpt2),
#      RA_DATA (a prepared corpus; default: made as tools/gpu_experiment.sh makes it),
#      TRAIN_ARGS (more `ra train` arguments, e.g. "--device cpu --no-compile" and
#      --set overrides for a CPU smoke run with NGPU processes on gloo).
# The store ($WORK/scaling.db), the logs and scaling.json land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}
WORK=${RA_EXPERIMENT_WORK:-$PWD/.gpu_experiment}
DATA=${RA_DATA:-$WORK/pycorpus}
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
ATTNS=${ATTNS:-baseline,ra_v5}
STEPS=${STEPS:-60}
BATCH_TOKENS=${BATCH_TOKENS:-524288}
MODEL=${MODEL:-gpt2}
DB=$WORK/scaling.db
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
if [ "${NGPU:-0}" -lt 2 ]; then echo "NGPU must be 2 or more (got '${NGPU}')" >&2; exit 2; fi
if [ ! -f "$DATA/meta.json" ] && [ -z "${RA_DATA:-}" ]; then
  GLOBS=${GLOBS:-'**/*.py **/*.pyi **/*.h **/*.hpp **/*.cuh **/*.rst **/*.md **/*.c **/*.cc **/*.cpp **/*.cu **/*.txt'} \
    EXTRA_ROOTS=${EXTRA_ROOTS:-"$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])') /usr/include /usr/local/cuda/include"} \
    bash tools/gpu_data_run.sh "$DATA" "${MAX_TOKENS:-250M}" 2>&1 | tail -n 6
fi
TAG=scaling-$(date +%Y%m%d-%H%M%S)
read -r -a EXTRA <<< "${TRAIN_ARGS:-}"
REDUCES=${REDUCES:-ddp step}
SIZES="1"
for r in $REDUCES; do SIZES="$SIZES $NGPU:$r"; done
for attn in ${ATTNS//,/ }; do
  for size in $SIZES; do
    n=${size%%:*}
    reduce=${size#*:}; [ "$n" = 1 ] && reduce=
    label=$n${reduce:+-$reduce}
    args=(train --attn "$attn" --steps "$STEPS" --model "$MODEL" --data "$DATA"
          --set "train.batch_tokens=$BATCH_TOKENS" --tag "$TAG-$label" "${EXTRA[@]}")
    [ -n "$reduce" ] && args+=(--set "train.grad_reduce=$reduce")
    log="$WORK/$attn-$label.log"
    echo "== $attn on $n process(es)${reduce:+, grad_reduce $reduce}"
    if [ "$n" = 1 ]; then
      CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} python3 -m racli --db "$DB" "${args[@]}" \
        > "$log" 2>&1
    else
      NCCL_NVLS_ENABLE=0 python3 -m torch.distributed.run --standalone --nproc_per_node "$n" \
        -m racli --db "$DB" "${args[@]}" > "$log" 2>&1
    fi
    echo "   exit $?; $(grep -E 'Throughput \(tokens/s\)|micro' "$log" | tr -s ' ' | head -n 2 | tr '\n' ';')"
  done
done
python3 - "$DB" "$TAG" "$NGPU" "$OUT/scaling.json" <<'PY'
import json, sqlite3, sys
db, tag, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
con = sqlite3.connect(db)
rows = con.execute(
    "SELECT id, attn, tag, status, tokens_per_s, config_hash, config FROM runs "
    "WHERE tag LIKE ? ORDER BY id", (f"{tag}-%",)).fetchall()
by = {}
for rid, attn, t, status, tps, chash, config in rows:
    c = json.loads(config)
    by[(attn, t[len(tag) + 1:])] = dict(
        run=rid, status=status, tokens_per_s=tps, config_hash=chash,
        world_size=c.get("world_size"),
        # the setting this script gave (the config records grad_reduce only when not ddp)
        grad_reduce=(t[len(tag) + 1:].partition("-")[2] or None),
        micro_batch_size=c.get("micro_batch_size"), grad_accum_steps=c.get("grad_accum_steps"))
result = {"tag": tag, "processes": n, "arms": {}}
for attn in sorted({a for a, _ in by}):
    one = by.get((attn, "1"))
    entry = {"1": one}
    for label in sorted(k for a, k in by if a == attn and k != "1"):
        many = by[(attn, label)]
        entry[label] = many
        if one and many and one["tokens_per_s"] and many["tokens_per_s"]:
            speedup = many["tokens_per_s"] / one["tokens_per_s"]
            entry[label] |= {"speedup": speedup, "efficiency": speedup / n,
                             "one_group": one["config_hash"] == many["config_hash"]}
            print(f"{attn}: {one['tokens_per_s']:,.0f} tokens/s on 1, "
                  f"{many['tokens_per_s']:,.0f} on {n} (grad_reduce {many['grad_reduce']}): "
                  f"{speedup:.2f}x = {100 * speedup / n:.1f}% of linear; micro-batch x "
                  f"accumulation {one['micro_batch_size']} x {one['grad_accum_steps']} and "
                  f"{many['micro_batch_size']} x {many['grad_accum_steps']}; one config_hash: "
                  f"{entry[label]['one_group']}")
    result["arms"][attn] = entry
json.dump(result, open(out, "w"), indent=2)
PY
if [ "$(echo "$ATTNS" | tr ',' '\n' | sort -u | wc -l)" -ge 2 ]; then
  python3 -m racli --db "$DB" compare 2>&1 | tee "$OUT/compare.txt" | grep -E "^(Group|Comparing|  [a-z_0-9#]+: [0-9]+ run)" | head -n 12
fi
cp "$DB" "$OUT/scaling.db"
tar -czf "$OUT/scaling-logs.tgz" -C "$WORK" $(cd "$WORK" && ls ./*-*.log 2>/dev/null | sed 's|^\./||')
