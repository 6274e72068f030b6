#!/usr/bin/env bash
# The memory task of issue 12, one mechanism after another: each model trains
# the same steps on the same generated corpus (data.corpus=recall, the fact
# recall_gap bytes before its question, several segments back), then
# `longseq eval --stream` scores the recalled digits with the state carried
# and without it. Baselines of the same size and budget: full attention
# trained without state on the same segments, and full attention whose window
# covers the gap (the loss a memory could reach). Prints a Markdown table.
#
#   scripts/recall.sh OUT_DIR [STEPS] [MECHANISMS...]
#
# Environment: GAP (default 24), SEQ (segment length, 8), BATCH (rows, 128),
# WIDTH (128), LR (2e-3). At these defaults the fact lies 4-6 segments back,
# a step reads 1024 tokens, and full attention over a window that covers the
# gap learns the recall within the 8000 default steps (about 7 minutes a model
# on 2 cores); at a gap of 200 bytes and 3000 steps nothing, full attention
# included, got below chance.
set -euo pipefail
out=${1:?usage: scripts/recall.sh OUT_DIR [STEPS] [MECHANISMS...]}
steps=${2:-8000}
shift $(($# < 2 ? $# : 2))
mechs=("$@")
[ ${#mechs[@]} -gt 0 ] || mechs=(full_stateless full_window xl block_recurrent infinity_former linear)
L=${LONGSEQ:-$(dirname "$0")/../build/longseq}
gap=${GAP:-24}
seq=${SEQ:-8}
width=${WIDTH:-128}
batch=${BATCH:-128}
reset=8  # segments a training state spans: 64 tokens at the defaults, beyond the gap
mkdir -p "$out"

common=(--set data.corpus=recall --set data.path= --set data.recall_gap="$gap"
        --set model.d_model="$width" --set model.n_layers=2 --set model.n_heads=4 --set model.d_ff=$((4 * width))
        --set train.steps="$steps" --set train.batch_size="$batch" --set train.lr="${LR:-2e-3}" --set train.warmup=100
        --set train.eval_every=0 --set train.eval_batches=4 --set train.checkpoint_every=$((reset * 25))
        --set train.time_limit=0 --set train.seed=7)
stream=(--set train.seq_len="$seq" --set train.stream=true --set train.stream_reset="$reset"
        --set model.positions=none)

config() {  # the settings of one mechanism
  case $1 in
    full_stateless) echo --set train.seq_len="$seq" --set model.mixer=full ;;
    full_window) echo --set train.seq_len=$((2 * gap + 64)) --set model.mixer=full --set train.batch_size=$((batch * seq / (2 * gap + 64) + 1)) ;;
    xl) echo "${stream[@]}" --set "model.mixer={\"name\":\"xl\",\"mem_len\":$((6 * seq))}" ;;
    block_recurrent)
      echo "${stream[@]}" --set "model.layers=[{\"name\":\"block_recurrent\",\"recurrent\":false,\"window\":$seq},{\"name\":\"block_recurrent\",\"window\":$seq,\"states\":$seq}]" ;;
    infinity_former) echo "${stream[@]}" --set "model.mixer={\"name\":\"infinity_former\",\"segment\":$seq,\"basis\":64,\"samples\":64}" ;;
    linear) echo "${stream[@]}" --set model.mixer=linear ;;
    *) echo "unknown mechanism $1" >&2; exit 2 ;;
  esac
}

jget() {  # jget FILE KEY [N]: the N-th (default 1st) number under KEY in a one-line JSON object
  grep -o "\"$2\":[-0-9.e+]*" "$1" | sed -n "${3:-1}p" | cut -d: -f2
}

row() {  # row NAME EVAL_JSON SECONDS: keys print sorted, so stateful comes before stateless
  printf '| %s | %.3f | %.3f | %.3f | %.3f | %s |\n' "$1" "$(jget "$2" recall_loss 1)" "$(jget "$2" recall_loss 2)" \
    "$(jget "$2" bpb 1)" "$(jget "$2" bpb 2)" "$3"
}

printf '| model | recalled digits, with state (nats) | without state (nats) | all bytes, with state (bits/byte) | without state | train s |\n'
printf '|---|---|---|---|---|---|\n'
for m in "${mechs[@]}"; do
  run="$out/$m"
  rm -rf "$run"
  start=$(date +%s)
  # shellcheck disable=SC2046
  "$L" train --out "$run" "${common[@]}" $(config "$m") --quiet > "$run.train.log" 2>&1 ||
    { echo "| $m | train failed: see $run.train.log |"; continue; }
  took=$(( $(date +%s) - start ))
  case $m in
    full_stateless) args=(--seq-len "$seq") ;;  # non-overlapping segments: the stateless column of the others
    full_window) args=(--seq-len $((2 * gap + 64)) --stride "$seq") ;;  # each target sees >= 2 gap tokens
    *) args=(--stream --seq-len "$seq" --stream-reset 0) ;;
  esac
  "$L" eval "$run" --split valid --batch-size 8 "${args[@]}" --json > "$run.eval.json" 2>"$run.eval.log" ||
    { echo "| $m | eval failed: see $run.eval.log |"; continue; }
  if grep -q '"stateful"' "$run.eval.json"; then  # keys print sorted: stateful before stateless
    row "$m" "$run.eval.json" "$took"
    if [ "$m" = xl ]; then  # Transformer-XL's evaluation: a longer memory at test time than in training
      "$L" eval "$run" --split valid --batch-size 8 "${args[@]}" --mixer-option mem_len=$((8 * seq)) --json \
        > "$run.long.json" 2>>"$run.eval.log" && row "xl, test-time mem_len $((8 * seq))" "$run.long.json" "$took"
    fi
  else
    printf '| %s | - | %.3f | - | %.3f | %s |\n' "$m" "$(jget "$run.eval.json" recall_loss)" \
      "$(jget "$run.eval.json" bpb)" "$took"
  fi
done
