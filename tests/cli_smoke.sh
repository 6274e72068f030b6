#!/usr/bin/env bash
# Smoke test of every subcommand of the program, and of its bad-input errors.
set -u
L=${LONGSEQ:?set LONGSEQ to the longseq program}
dir=${1:?scratch directory}
rm -rf "$dir" && mkdir -p "$dir"
fail=0
ok()   { if "$@" >"$dir/out" 2>"$dir/err"; then :; else echo "FAILED: $*"; cat "$dir/err"; fail=1; fi; }
bad()  { # bad EXPECTED_TEXT cmd...: must exit non-zero and say EXPECTED_TEXT
  local want=$1; shift
  if "$@" >"$dir/out" 2>"$dir/err"; then echo "SHOULD HAVE FAILED: $*"; fail=1; return; fi
  grep -q -- "$want" "$dir/err" || { echo "MESSAGE LACKS '$want': $*"; cat "$dir/err"; fail=1; }
}

python_free_text() { for i in $(seq 1 400); do echo "line $i: the quick brown fox jumps over the lazy dog"; done; }
python_free_text > "$dir/corpus.txt"
common=(--set data.corpus=text --set data.path="$dir/corpus.txt" --set model.d_model=32 --set model.n_layers=1
        --set model.d_ff=64 --set train.steps=6 --set train.seq_len=32 --set train.batch_size=2
        --set train.eval_batches=1 --set train.checkpoint_every=3 --set train.warmup=2)

ok "$L" info;            grep -q "## full" "$dir/out" || { echo "info lacks full"; fail=1; }
ok "$L" info --config-keys; grep -q "seq_len" "$dir/out" || { echo "info lacks config keys"; fail=1; }
ok "$L" config;          grep -q '"model"' "$dir/out" || { echo "config prints no config"; fail=1; }
ok "$L" --threads 1 train --out "$dir/run" "${common[@]}" --quiet --sample 20
grep -q "bits per byte" "$dir/out" || { echo "train prints no bpb"; fail=1; }
ok "$L" eval "$dir/run" --split valid --json; grep -q '"bpb"' "$dir/out" || { echo "eval prints no bpb"; fail=1; }
ok "$L" generate "$dir/run" --prompt "line 1" --max-new 10 --temperature 0
ok "$L" generate "$dir/run" --prompt "line 1" --max-new 10 --top-k 5 --top-p 0.9 --seed 3
ok "$L" train --out "$dir/run" --resume --quiet --sample 0
# A kernelized mixer end to end: train, then generate through its streaming state and by recomputation.
ok "$L" train --out "$dir/prun" "${common[@]}" --set model.mixer=performer --quiet --sample 0
ok "$L" generate "$dir/prun" --prompt "line 1" --max-new 8 --temperature 0; cp "$dir/out" "$dir/gen_cached"
ok "$L" generate "$dir/prun" --prompt "line 1" --max-new 8 --temperature 0 --no-cache
cmp -s "$dir/out" "$dir/gen_cached" || { echo "performer: cached and recomputed generation differ"; fail=1; }
bad "has no causal form" "$L" train --out "$dir/x6" "${common[@]}" --set model.mixer=yoso --quiet
[ -e "$dir/x6" ] && { echo "a refused config left a run directory"; fail=1; }

# A subword run: train a SentencePiece model, train on it, generate through it.
ok "$L" tokenizer --input "$dir/corpus.txt" --out "$dir/sp" --vocab 300
ok "$L" train --out "$dir/sprun" "${common[@]}" --set data.tokenizer=sentencepiece --set data.spm_model="$dir/sp.model" \
   --set model.vocab_size=300 --quiet --sample 0
[ -f "$dir/sprun/tokenizer.model" ] || { echo "the run lacks its tokenizer"; fail=1; }
ok "$L" generate "$dir/sprun" --prompt "line 2" --max-new 5
bad "smaller than the tokenizer" "$L" train --out "$dir/x5" "${common[@]}" --set data.tokenizer=sentencepiece \
   --set data.spm_model="$dir/sp.model" --set model.vocab_size=200 --quiet

ok "$L" bench --mixers full --lengths 64,128 --heads 2 --head-dim 16 --repeats 1 --csv "$dir/b.csv" --svg "$dir/b.svg" --quality-steps 0
grep -q "full core (fused),causal,fwdbwd,128" "$dir/b.csv" || { echo "bench CSV lacks the fused row"; cat "$dir/b.csv"; fail=1; }
grep -q "SGEMM roof" "$dir/out" || { echo "bench prints no roof"; fail=1; }
grep -q "<polyline" "$dir/b.svg" || { echo "bench plot has no lines"; fail=1; }
ok "$L" bench --mixers linear yoso --lengths 64 --heads 2 --head-dim 16 --repeats 1 --passes fwd --decode-contexts 32,64 --decode-tokens 4 --csv "$dir/d.csv" --svg "$dir/d.svg"
grep -q "linear decode,causal,decode,64,.*,\"ok\"," "$dir/d.csv" || { echo "bench CSV lacks the decode row"; cat "$dir/d.csv"; fail=1; }
grep -q "yoso mixer,bidirectional,fwd,64,.*,\"ok\"," "$dir/d.csv" || { echo "bench CSV lacks yoso's bidirectional row"; fail=1; }
grep -q "yoso decode" "$dir/d.csv" && { echo "bench decoded through yoso, which does not stream"; fail=1; }
bad "unknown mixer" "$L" bench --mixers nope --lengths 64

cp "$dir/run/model.safetensors" "$dir/model.bak"
bad "already holds a run" "$L" train --out "$dir/run" "${common[@]}" --quiet
bad "unknown mixer" "$L" train --out "$dir/x1" "${common[@]}" --set model.mixer=nope --quiet
bad "full" "$L" train --out "$dir/x1" "${common[@]}" --set model.mixer=nope --quiet
bad "train.stepz" "$L" train --out "$dir/x2" "${common[@]}" --set train.stepz=3 --quiet
printf '{\n "model": {\n  "d_model": 32,,\n }\n}\n' > "$dir/broken.json"
bad "line 3" "$L" train --config "$dir/broken.json" --out "$dir/x3" --quiet
bad "does not exist" "$L" train --out "$dir/x4" --set data.corpus=text --set data.path="$dir/none.txt" --quiet
bad "not a run directory" "$L" eval "$dir"
bad "unknown split\|split" "$L" eval "$dir/run" --split dev
cmp -s "$dir/run/model.safetensors" "$dir/model.bak" || { echo "a failed command changed the run"; fail=1; }
for x in x1 x2 x3 x4 x5; do [ -e "$dir/$x" ] && { echo "a failed command created $x"; fail=1; }; done

head -c 100 "$dir/model.bak" > "$dir/run/model.safetensors"
bad "truncated\|not a valid" "$L" generate "$dir/run" --prompt a --max-new 2
if [ $fail -eq 0 ]; then echo "cli smoke: all passed"; fi
exit $fail
