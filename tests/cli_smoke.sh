#!/usr/bin/env bash
# Smoke test of every subcommand of the program, and of its bad-input errors.
set -u
L=${LONGSEQ:?set LONGSEQ to the longseq program}
dir=${1:?scratch directory}
rm -rf "$dir" && mkdir -p "$dir"
fail=0
ok()   { if "$@" >"$dir/out" 2>"$dir/err"; then :; else echo "FAILED: $*"; cat "$dir/err"; fail=1; fi; }
bad()  { # bad EXPECTED_TEXT cmd...: must exit 1 (within 5 minutes) and say EXPECTED_TEXT
  local want=$1; shift
  timeout "${BAD_TIMEOUT:-300}" "$@" >"$dir/out" 2>"$dir/err"
  local rc=$?
  if [ $rc -eq 0 ]; then echo "SHOULD HAVE FAILED: ${*:0:300}"; fail=1; return; fi
  [ $rc -eq 1 ] || { echo "EXIT CODE $rc, NOT 1: ${*:0:300}"; fail=1; }
  grep -q -- "$want" "$dir/err" || { echo "MESSAGE LACKS '$want': ${*:0:300}"; head -c 2000 "$dir/err"; fail=1; }
  if grep -Eq '[0-9]{30}' "$dir/err"; then echo "A 30-DIGIT NUMBER IN THE MESSAGE: ${*:0:300}"; fail=1; fi
}
nested() { head -c "$1" /dev/zero | tr '\0' '['; head -c "$1" /dev/zero | tr '\0' ']'; }
le64() { local n=$1 i; for i in 0 1 2 3 4 5 6 7; do printf "\\x$(printf %02x $(( (n >> (8 * i)) & 255 )))"; done; }
safetensors_with_header() { le64 ${#1}; printf '%s' "$1"; }  # header text -> a file without data

python_free_text() { for i in $(seq 1 400); do echo "line $i: the quick brown fox jumps over the lazy dog"; done; }
python_free_text > "$dir/corpus.txt"
common=(--set data.corpus=text --set data.path="$dir/corpus.txt" --set model.block=standard --set model.d_model=32 --set model.n_layers=1
        --set model.d_ff=64 --set train.steps=6 --set train.seq_len=32 --set train.batch_size=2
        --set train.eval_batches=1 --set train.checkpoint_every=3 --set train.warmup=2)

ok "$L" info;            grep -q "## full" "$dir/out" || { echo "info lacks full"; fail=1; }
ok "$L" info --config-keys; grep -q "seq_len" "$dir/out" || { echo "info lacks config keys"; fail=1; }
ok "$L" config;          grep -q '"model"' "$dir/out" || { echo "config prints no config"; fail=1; }
ok "$L" --threads 1 train --out "$dir/run" "${common[@]}" --quiet --sample 20
grep -q "bits per byte" "$dir/out" || { echo "train prints no bpb"; fail=1; }
ok "$L" eval "$dir/run" --split valid --json; grep -q '"bpb"' "$dir/out" || { echo "eval prints no bpb"; fail=1; }
ok "$L" eval "$dir/run" --split valid --stream --json
grep -q '"stateful"' "$dir/out" && grep -q '"stateless"' "$dir/out" || { echo "eval --stream prints no pair"; fail=1; }
ok "$L" generate "$dir/run" --prompt "line 1" --max-new 10 --temperature 0
ok "$L" generate "$dir/run" --prompt "line 1" --max-new 10 --top-k 5 --top-p 0.9 --seed 3
ok "$L" train --out "$dir/run" --resume --quiet --sample 0
ok "$L" plot "$dir/run"; grep -q 'class="series"' "$dir/run/curves.svg" || { echo "plot drew no series"; fail=1; }
bad "has no metrics.jsonl" "$L" plot "$dir"
# A kernelized mixer end to end: train, then generate through its streaming state and by recomputation.
ok "$L" train --out "$dir/prun" "${common[@]}" --set model.mixer=performer --quiet --sample 0
ok "$L" generate "$dir/prun" --prompt "line 1" --max-new 8 --temperature 0; cp "$dir/out" "$dir/gen_cached"
ok "$L" generate "$dir/prun" --prompt "line 1" --max-new 8 --temperature 0 --no-cache
cmp -s "$dir/out" "$dir/gen_cached" || { echo "performer: cached and recomputed generation differ"; fail=1; }
# Sparse QKV over another mechanism's attention core: cached generation equals recomputation; a routing core has no
# streaming state, so generation says so and recomputes; a mixer without a core is refused by name.
ok "$L" train --out "$dir/qrun" "${common[@]}" --quiet --sample 0 \
  --set 'model.mixer={"name":"sparse_qkv","core":{"name":"longformer","window":[4]}}'
ok "$L" generate "$dir/qrun" --prompt "line 1" --max-new 8 --temperature 0; cp "$dir/out" "$dir/gen_cached"
ok "$L" generate "$dir/qrun" --prompt "line 1" --max-new 8 --temperature 0 --no-cache
cmp -s "$dir/out" "$dir/gen_cached" || { echo "sparse_qkv core: cached and recomputed generation differ"; fail=1; }
ok "$L" train --out "$dir/qrrun" "${common[@]}" --quiet --sample 0 \
  --set 'model.mixer={"name":"sparse_qkv","core":{"name":"routing","clusters":2}}'
ok "$L" generate "$dir/qrrun" --prompt "line 1" --max-new 4 --temperature 0
grep -q "recomputing" "$dir/err" || { echo "sparse_qkv routing core: generation did not say it recomputes"; fail=1; }
bad "no attention core" "$L" train --out "$dir/qbad" "${common[@]}" --set 'model.mixer={"name":"sparse_qkv","core":"lsh"}'
# Universal Transformer depth recurrence end to end: generation through every step's caches equals recomputation.
ok "$L" train --out "$dir/urun" "${common[@]}" --set model.recurrence_steps=3 --quiet --sample 0
ok "$L" generate "$dir/urun" --prompt "line 1" --max-new 8 --temperature 0; cp "$dir/out" "$dir/gen_cached"
ok "$L" generate "$dir/urun" --prompt "line 1" --max-new 8 --temperature 0 --no-cache
cmp -s "$dir/out" "$dir/gen_cached" || { echo "recurrence: cached and recomputed generation differ"; fail=1; }
ok "$L" train --out "$dir/arun" "${common[@]}" --set model.recurrence_steps=4 --set model.act=true --quiet --sample 0
grep -q '"ponder"' "$dir/arun/metrics.jsonl" || { echo "act: metrics.jsonl lacks the ponder time"; fail=1; }
ok "$L" generate "$dir/arun" --prompt "line 1" --max-new 8 --temperature 0; cp "$dir/out" "$dir/gen_cached"
ok "$L" generate "$dir/arun" --prompt "line 1" --max-new 8 --temperature 0 --no-cache
cmp -s "$dir/out" "$dir/gen_cached" || { echo "act: cached and recomputed generation differ"; fail=1; }
# Perceiver AR end to end: train on the latents, resume, eval (windows at most `latents` apart), cached generation.
par=(--set model.type=perceiver_ar --set model.latents=8 --set model.positions=rotary --set model.n_layers=2
     --set model.context_dropout=0.25)
ok "$L" train --out "$dir/parun" "${common[@]}" "${par[@]}" --quiet --sample 0
grep -q '"context_tokens_per_s"' "$dir/parun/metrics.jsonl" || { echo "perceiver_ar: no context tokens/s"; fail=1; }
ok "$L" train --out "$dir/parun" --resume --quiet --sample 0
ok "$L" eval "$dir/parun" --split valid --json
grep -q 'the model scores the last 8 positions' "$dir/out" || { echo "perceiver_ar: eval does not say what it scores"; fail=1; }
ok "$L" generate "$dir/parun" --prompt "line 1" --max-new 20 --temperature 0
ok "$L" info; grep -q "## perceiver_ar" "$dir/out" || { echo "info lacks perceiver_ar"; fail=1; }
bad "scores every position" "$L" eval "$dir/parun" --stream
ok "$L" bench --models perceiver_ar,decoder_lm --lengths 256 --heads 2 --head-dim 8 --latents 32 --model-layers 1 \
   --decode-contexts 128 --decode-tokens 2 --repeats 1 --csv "$dir/models.csv"
grep -q 'perceiver_ar (N=32, 1 + 1 layers),causal,decode,128,.*,"ok",' "$dir/models.csv" ||
  { echo "bench CSV lacks perceiver_ar's decode row"; fail=1; }
grep -q 'decoder_lm (2 layers),causal,train,256,.*,"ok",' "$dir/models.csv" || { echo "bench CSV lacks decoder_lm's row"; fail=1; }
bad "not a language model" "$L" bench --models encoder_classifier
bad "does not take rotary positions" "$L" train --out "$dir/x9" "${common[@]}" "${par[@]}" --set model.mixer=linear --quiet
bad "model.act needs model.recurrence_steps" "$L" train --out "$dir/x8" "${common[@]}" --set model.act=true --quiet
bad "model.recurrence_steps needs model.reversible = false" "$L" train --out "$dir/x7" "${common[@]}" \
   --set model.recurrence_steps=2 --set model.reversible=true --quiet
bad "has no causal form" "$L" train --out "$dir/x6" "${common[@]}" --set model.mixer=yoso --quiet
[ -e "$dir/x6" ] && { echo "a refused config left a run directory"; fail=1; }

# Transformer-XL over a stream on the generated memory task: eval with a longer memory than in training, and
# generation through the memory equals recomputation.
xl=(--set data.corpus=recall --set data.path= --set data.recall_bytes=20000 --set data.recall_gap=60 --set model.block=standard
    --set model.d_model=32 --set model.n_layers=1 --set model.d_ff=64 --set model.positions=none
    --set 'model.mixer={"name": "xl", "mem_len": 32}' --set train.steps=4 --set train.seq_len=32
    --set train.batch_size=2 --set train.eval_batches=1 --set train.checkpoint_every=2 --set train.warmup=1
    --set train.stream=true --set train.stream_reset=2)
ok "$L" train --out "$dir/xlrun" "${xl[@]}" --quiet --sample 0
ok "$L" eval "$dir/xlrun" --split valid --stream --mixer-option mem_len=96 --json
grep -q '"recall_loss"' "$dir/out" || { echo "eval --stream on the recall corpus prints no recall loss"; fail=1; }
ok "$L" generate "$dir/xlrun" --prompt "#abcd=1234;" --max-new 8 --temperature 0 --mixer-option mem_len=64
cp "$dir/out" "$dir/xl_cached"
ok "$L" generate "$dir/xlrun" --prompt "#abcd=1234;" --max-new 8 --temperature 0 --mixer-option mem_len=64 --no-cache
cmp -s "$dir/out" "$dir/xl_cached" || { echo "xl: generation through the memory and recomputation differ"; fail=1; }
bad "no layer's mixer has the option \"window\"" "$L" eval "$dir/xlrun" --mixer-option window=4
bad "mem_len" "$L" eval "$dir/xlrun" --mixer-option mem_len=-2
bad "key=value" "$L" eval "$dir/xlrun" --mixer-option mem_len
ok "$L" bench --mixers xl --lengths 64 --heads 2 --head-dim 16 --repeats 1 --passes fwd --option xl.mem_len=128 \
   --decode-contexts 32,64 --decode-tokens 4 --csv "$dir/xl.csv"
grep -q 'options of xl: {"mem_len":128}' "$dir/out" || { echo "bench does not say the options it measured"; fail=1; }
grep -q "xl decode,causal,decode,64,.*,\"ok\"," "$dir/xl.csv" || { echo "bench CSV lacks xl's decode row"; fail=1; }
bad "bench: --option xl" "$L" bench --mixers xl --lengths 64 --option xl.mem_len=-1
bad "mixer.key=value" "$L" bench --mixers xl --lengths 64 --option mem_len=4

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
bad "not both" "$L" bench --mixers full --lengths 64 --quality-steps 5 --quality-time 5
bad "give --quality-time" "$L" bench --mixers full --lengths 64 --quality-steps 5 --quality-svg "$dir/q.svg"

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

# Bad input of every kind: a clear message naming it, exit 1, nothing written.
bad "LONGSEQ_MALLOC must be system" env LONGSEQ_MALLOC=hugepages "$L" info
printf '{"model": {"mixer": %s}}' "$(nested 200000)" > "$dir/deep.json"
bad "deeper than" "$L" train --config "$dir/deep.json" --out "$dir/y1" --quiet
bad "deeper than" "$L" train --out "$dir/y2" "${common[@]}" --set "model.mixer=$(nested 50000)" --quiet
bad "model.vocab_size = 300" "$L" train --out "$dir/y3" "${common[@]}" --set model.vocab_size=300 --quiet
bad "model.mixer.window has 3 entries" "$L" train --out "$dir/y4" "${common[@]}" \
   --set 'model.mixer={"name": "longformer", "window": [2, 4, 8]}' --quiet
printf 'too short\n' > "$dir/tiny.txt"
bad "$dir/tiny.txt" "$L" train --out "$dir/y5" "${common[@]}" --set data.path="$dir/tiny.txt" --quiet
bad "regular file" "$L" train --out "$dir/y6" "${common[@]}" --set data.path=/dev/zero --quiet
bad "out of range" "$L" --threads 5000 info
bad "--sample" "$L" train --out "$dir/y7" "${common[@]}" --sample -1 --quiet
for y in y1 y2 y3 y4 y5 y6 y7; do [ -e "$dir/$y" ] && { echo "a refused train created $y"; fail=1; }; done
bad "--batch-size" "$L" eval "$dir/run" --batch-size -1
bad "--seq-len" "$L" eval "$dir/run" --seq-len -5
bad "--max-batches" "$L" eval "$dir/run" --max-batches -3
bad "excludes" "$L" eval "$dir/run" --stream --stride 4
bad "requires --stream" "$L" eval "$dir/run" --stream-reset 3
bad "$dir/corpus.txt" "$L" eval "$dir/run" --seq-len 100000
bad "--temperature.*finite" "$L" generate "$dir/run" --prompt a --temperature nan
bad "--top-p.*finite" "$L" generate "$dir/run" --prompt a --top-p nan
bad "--temperature.*out of range" "$L" generate "$dir/run" --prompt a --temperature -1
bad "--top-k" "$L" generate "$dir/run" --prompt a --top-k -2
for args in "--lengths 0" "--lengths -5" "--lengths 64,0" "--batch 0" "--repeats 0" "--time-cap nan" \
            "--memory-cap -1" "--budget inf" "--quality-steps -1" "--decode-contexts 0" "--stack-layers 0"; do
  # shellcheck disable=SC2086
  bad "${args%% *}" "$L" bench --mixers full --lengths 64 $args --csv "$dir/z.csv" --svg "$dir/z.svg"
done
# Without --csv/--svg the bench writes no file (the tables go to stdout).
ok env -C "$dir" "$L" bench --mixers full --lengths 64 --heads 2 --head-dim 16 --repeats 1 --passes fwd
[ -e "$dir/bench.csv" ] || [ -e "$dir/bench.svg" ] && { echo "bench wrote files it was not asked for"; fail=1; }
bad "no such directory" "$L" bench --mixers full --lengths 64 --csv "$dir/nodir/z.csv" --svg "$dir/z.svg"
[ -e "$dir/z.csv" ] || [ -e "$dir/z.svg" ] && { echo "a refused bench wrote its output"; fail=1; }
cmp -s "$dir/run/model.safetensors" "$dir/model.bak" || { echo "a refused command changed the run"; fail=1; }

# Learned positions end at model.max_len: generation stops there with a note, after training too.
ok "$L" train --out "$dir/lrun" "${common[@]}" --set model.positions=learned --set model.max_len=32 --quiet --sample 300
grep -q "stopped after 29 of 300" "$dir/err" || { echo "train's sample gave no note at max_len"; cat "$dir/err"; fail=1; }
grep -q "^sample:" "$dir/out" || { echo "train printed no sample"; fail=1; }
ok "$L" generate "$dir/lrun" --prompt "line 1" --max-new 100
grep -q "stopped after 27 of 100" "$dir/err" || { echo "generate gave no note at max_len"; cat "$dir/err"; fail=1; }
bad "model.max_len = 32" "$L" eval "$dir/lrun" --seq-len 64

# Corrupt checkpoints: refused with the file's name, never a crash.
cp -r "$dir/run" "$dir/crun"
safetensors_with_header "{\"w\": {\"dtype\": $(nested 100000), \"shape\": [], \"data_offsets\": [0, 0]}}" \
  > "$dir/crun/model.safetensors"
bad "deeper than" "$L" generate "$dir/crun" --prompt a --max-new 2
bad "deeper than" "$L" eval "$dir/crun"
safetensors_with_header '{"w": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}}' \
  > "$dir/crun/model.safetensors"
bad "crun/model.safetensors.*2^63" "$L" generate "$dir/crun" --prompt a --max-new 2

head -c 100 "$dir/model.bak" > "$dir/run/model.safetensors"
bad "truncated\|not a valid" "$L" generate "$dir/run" --prompt a --max-new 2
# bleu: a score with its signature; misaligned files name both files and both counts; a missing file is named.
printf 'The dog bit the man.\nIt was not unexpected.\n' > "$dir/bleu_ref.txt"
printf 'The dog bit the man.\nIt was not surprising.\n' > "$dir/bleu_hyp.txt"
"$L" bleu "$dir/bleu_hyp.txt" "$dir/bleu_ref.txt" | grep -q "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp" ||
  { echo "bleu printed no signature"; fail=1; }
printf 'one line\n' > "$dir/bleu_short.txt"
bad "bleu_short.txt has 1 lines but .*bleu_hyp.txt has 2" "$L" bleu "$dir/bleu_hyp.txt" "$dir/bleu_short.txt"
bad "cannot read .*missing" "$L" bleu "$dir/missing.txt" "$dir/bleu_ref.txt"
# Translation end to end: a generated corpus, a joint vocabulary, train with kept checkpoints, average, eval, translate.
ok "$L" corpus synthetic_translation --out "$dir/tcorpus" --pairs 300
for f in train valid test; do [ -s "$dir/tcorpus/$f.de" ] && [ -s "$dir/tcorpus/$f.en" ] || { echo "corpus lacks $f"; fail=1; }; done
bad "already exists" "$L" corpus synthetic_translation --out "$dir/tcorpus" --pairs 300
ok "$L" tokenizer --input "$dir/tcorpus/train.de" --input "$dir/tcorpus/train.en" --out "$dir/tsp" --vocab 400
tr=(--set model.type=encoder_decoder --set model.block=standard --set model.vocab_size=403 --set model.d_model=32 --set model.n_layers=1
    --set model.d_ff=64 --set data.corpus=parallel --set data.path="$dir/tcorpus" --set data.tokenizer=sentencepiece
    --set data.spm_model="$dir/tsp.model" --set train.steps=6 --set train.batch_tokens=400 --set train.seq_len=60
    --set train.checkpoint_every=2 --set train.keep_checkpoints=3 --set train.bleu_sentences=5
    --set train.schedule=noam --set train.lr=1 --set train.label_smoothing=0.1)
ok "$L" train --out "$dir/trun" "${tr[@]}" --quiet --sample 1
grep -q "BLEU" "$dir/out" && grep -q "translation:" "$dir/out" || { echo "translation train prints no BLEU or sample"; fail=1; }
grep -q '"valid_bleu"' "$dir/trun/metrics.jsonl" || { echo "translation metrics lack valid_bleu"; fail=1; }
ok "$L" average "$dir/trun" --last 3 --out "$dir/tavg"; grep -q "steps 2,4,6" "$dir/out" || { echo "average: wrong steps"; fail=1; }
ok "$L" eval "$dir/tavg" --split test --beam 2 --json --hypotheses "$dir/thyp.txt"
grep -q '"bleu_signature"' "$dir/out" || { echo "translation eval prints no BLEU"; fail=1; }
[ "$(wc -l < "$dir/thyp.txt")" -eq "$(wc -l < "$dir/tcorpus/test.de")" ] || { echo "eval --hypotheses: line count"; fail=1; }
head -3 "$dir/tcorpus/test.de" > "$dir/tsrc.txt"
ok "$L" translate "$dir/tavg" --input "$dir/tsrc.txt" --output "$dir/tout.txt" --quiet
[ "$(wc -l < "$dir/tout.txt")" -eq 3 ] || { echo "translate: not one line per sentence"; fail=1; }
printf 'Der Hund schläft.\n' | "$L" translate "$dir/tavg" --beam 1 --quiet > "$dir/out" 2>"$dir/err" ||
  { echo "translate from stdin failed"; cat "$dir/err"; fail=1; }
bad "fewer than --last 4" "$L" average "$dir/trun" --last 4 --out "$dir/tavg2"
[ -e "$dir/tavg2" ] && { echo "a failed average left a directory"; fail=1; }
bad "holds a translation model" "$L" generate "$dir/trun" --prompt a --max-new 2
bad "apply to language-model runs" "$L" eval "$dir/trun" --stream
bad "not a translation model" "$L" translate "$dir/run" --input "$dir/tsrc.txt"
bad "model.vocab_size to 259" "$L" train --out "$dir/tx1" "${tr[@]}" --set data.tokenizer=byte --set data.spm_model=
bad "set it to 403" "$L" train --out "$dir/tx2" "${tr[@]}" --set model.vocab_size=300
bad "lacks train.de" "$L" train --out "$dir/tx3" "${tr[@]}" --set data.path="$dir"
for x in tx1 tx2 tx3; do [ -e "$dir/$x" ] && { echo "a failed translation train left $x"; fail=1; }; done

# LRA ListOps end to end: LRA-layout files, a tiny `lra listops` run on them (test scored once), eval, the generated
# corpus in memory, and the errors.
ok "$L" corpus listops --out "$dir/lcorpus" --examples 300 --min-length 10 --max-length 60
for f in train val test; do [ -s "$dir/lcorpus/basic_$f.tsv" ] || { echo "corpus listops lacks basic_$f.tsv"; fail=1; }; done
head -1 "$dir/lcorpus/basic_val.tsv" | grep -q "^Source.Target$" || { echo "listops tsv header"; fail=1; }
bad "already holds basic_train.tsv" "$L" corpus listops --out "$dir/lcorpus" --examples 300
lt=(--quiet --set model.d_model=16 --set model.n_heads=2 --set model.n_layers=1 --set model.d_ff=32
    --set model.classifier_hidden=32 --set train.steps=6 --set train.warmup=2 --set train.eval_every=3
    --set train.checkpoint_every=3 --set train.batch_size=8 --set train.seq_len=59)
ok "$L" lra listops --out "$dir/lra_run" --data "$dir/lcorpus" "${lt[@]}"
grep -q "test: accuracy" "$dir/out" && grep -q "valid accuracy" "$dir/out" || { echo "lra listops prints no accuracy"; fail=1; }
grep -q '"accuracy"' "$dir/lra_run/test.json" || { echo "lra listops wrote no test.json"; fail=1; }
grep -q '"valid_accuracy"' "$dir/lra_run/metrics.jsonl" || { echo "classification metrics lack valid_accuracy"; fail=1; }
ok "$L" eval "$dir/lra_run" --split valid --json
grep -q '"accuracy"' "$dir/out" || { echo "eval on a classifier prints no accuracy"; fail=1; }
ok "$L" eval "$dir/lra_run" --max-batches 1
grep -q "test: accuracy" "$dir/out" || { echo "eval on a classifier prints no test accuracy"; fail=1; }
ok "$L" lra listops --out "$dir/lra_run2" "${lt[@]}" --mixer performer --set data.listops_examples=300 \
    --set data.listops_min_length=10 --set data.listops_max_length=60
# A table of mixers, each trained in its own process (given the program's --threads); called again, it reuses the
# finished runs.
ok "$L" --threads 1 lra listops --mixers full,linear --out "$dir/lra_table" --data "$dir/lcorpus" "${lt[@]}"
[ "$(grep -c -E '^\| (full|linear) \| [0-9]' "$dir/lra_table/table.md")" = 2 ] || { echo "lra table lacks a row"; fail=1; }
grep -q "36.37 (Transformer)" "$dir/lra_table/table.md" || { echo "lra table lacks LRA's figure"; fail=1; }
grep -q '"peak_mib"' "$dir/lra_table/table.json" || { echo "lra table lacks peak memory"; fail=1; }
ok "$L" lra listops --mixers full,linear --out "$dir/lra_table" --data "$dir/lcorpus" "${lt[@]}"
grep -q "training into" "$dir/err" && { echo "a finished lra table trained again"; fail=1; }
bad "has no bidirectional mode" "$L" lra listops --mixers full,xl --out "$dir/lra_table2"
[ -e "$dir/lra_table2" ] && { echo "a refused lra table left its directory"; fail=1; }
bad "apply to one run" "$L" lra listops --mixers full --mixer linear
ok "$L" lra listops --print-config --mixer linear
grep -q '"linear"' "$dir/out" || { echo "lra --print-config lacks the mixer"; fail=1; }
bad "apply to language-model runs" "$L" eval "$dir/lra_run" --stream
bad "set model.vocab_size to 17" "$L" lra listops --out "$dir/lx1" "${lt[@]}" --data "$dir/lcorpus" --set model.vocab_size=18
bad "set model.num_classes to 10" "$L" train --out "$dir/lx2" --config "$dir/lra_run/config.json" --set model.num_classes=2
bad "would truncate" "$L" lra listops --out "$dir/lx3" "${lt[@]}" --set train.seq_len=100
bad "needs model.type = encoder_classifier" "$L" train --out "$dir/lx4" --set data.corpus=listops --quiet
mkdir -p "$dir/lbad" && printf 'Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\tnine\n' > "$dir/lbad/basic_train.tsv"
bad "basic_train.tsv, line 2" "$L" lra listops --out "$dir/lx5" "${lt[@]}" --data "$dir/lbad"
cp "$dir/lcorpus/basic_train.tsv" "$dir/lbad/basic_train.tsv"
bad "basic_val.tsv does not exist" "$L" lra listops --out "$dir/lx6" "${lt[@]}" --data "$dir/lbad"
for x in lx1 lx2 lx3 lx4 lx5 lx6; do [ -e "$dir/$x" ] && { echo "a failed classification train left $x"; fail=1; }; done
# LRA Text, Image and Retrieval end to end on tiny files written here in the real formats (aclImdb/,
# cifar-10-batches-bin/, AAN's tsv_data/): a run of each (test scored once), eval, and the errors.
f="$dir/lra_files"
mkdir -p "$f"/aclImdb/{train,test}/{pos,neg} "$f/cifar" "$f/tsv"
for s in train test; do for c in pos neg; do for i in 1 2 3 4 5 6; do
  printf ' A %s review, number %d of %s: caf\xc3\xa9 <br /> fine.\n' $c $i $s > "$f/aclImdb/$s/$c/${i}_7.txt"
done; done; done
cifar() { local i; for i in $(seq 1 "$1"); do printf "\\x0$((i % 10))"; yes "$i" | head -c 3072; done; }
for b in 1 2 3 4 5; do cifar 4 > "$f/cifar/data_batch_$b.bin"; done
cifar 5 > "$f/cifar/test_batch.bin"
aan() { local i t; for i in $(seq 1 "$1"); do t=$([ $((i % 2)) = 1 ] && echo parsing || echo speech)
  printf '%d\tP%d\tQ%d\tpaper %d on parsing\twe study %s\n' $((i % 2)) "$i" "$i" "$i" "$t"; done; }
aan 24 > "$f/tsv/new_aan_pairs.train.tsv"; aan 6 > "$f/tsv/new_aan_pairs.eval.tsv"; aan 6 > "$f/tsv/new_aan_pairs.test.tsv"
ft=(--quiet --set model.d_model=16 --set model.n_heads=2 --set model.n_layers=1 --set model.d_ff=32
    --set model.classifier_hidden=16 --set train.steps=4 --set train.warmup=2 --set train.eval_every=2
    --set train.checkpoint_every=2 --set train.batch_size=4 --set train.seq_len=48)
for t in text:aclImdb image:cifar retrieval:tsv; do
  ok "$L" lra "${t%%:*}" --out "$dir/lra_${t%%:*}" --data "$f/${t#*:}" "${ft[@]}" --set data.valid_examples=4
  grep -q "test: accuracy" "$dir/out" || { echo "lra ${t%%:*} prints no test accuracy"; fail=1; }
  grep -q '"accuracy"' "$dir/lra_${t%%:*}/test.json" || { echo "lra ${t%%:*} wrote no test.json"; fail=1; }
done
ok "$L" lra text --out "$dir/lra_text2" --data "$f/aclImdb" "${ft[@]}"  # validation = test: scored once
va=$(sed -n 's/.*valid accuracy \([0-9.]*%\) ([0-9]* of 12 examples).*/\1/p' "$dir/out")
te=$(sed -n 's/^test: accuracy \([0-9.]*%\) ([0-9]* of 12).*/\1/p' "$dir/out")
[ -n "$va" ] && [ "$va" = "$te" ] || { echo "lra text: the test is not IMDB's validation ($va, $te)"; fail=1; }
ok "$L" eval "$dir/lra_retrieval" --split valid --json
grep -q '"examples":4' "$dir/out" || { echo "eval on a two-tower run: not the 4 kept pairs"; fail=1; }
ok "$L" lra retrieval --print-config
grep -q '"dual_encoder": true' "$dir/out" || { echo "lra retrieval --print-config lacks dual_encoder"; fail=1; }
bad "needs --data DIR: the aclImdb directory" "$L" lra text --out "$dir/fx1" "${ft[@]}"
bad "set model.dual_encoder to true" "$L" lra retrieval --out "$dir/fx2" --data "$f/tsv" "${ft[@]}" --set model.dual_encoder=false
bad "set model.vocab_size to 256" "$L" lra image --out "$dir/fx3" --data "$f/cifar" "${ft[@]}" --set model.vocab_size=257
mkdir -p "$f/cifar_bad" && cp "$f"/cifar/data_batch_{1,2}.bin "$f/cifar_bad/"
bad "cifar_bad/data_batch_3.bin does not exist" "$L" lra image --out "$dir/fx4" --data "$f/cifar_bad" "${ft[@]}"
head -c 5000 "$f/cifar/data_batch_1.bin" > "$f/cifar_bad/data_batch_3.bin"
bad "data_batch_3.bin holds 5000 bytes" "$L" lra image --out "$dir/fx5" --data "$f/cifar_bad" "${ft[@]}"
mkdir -p "$f/tsv_bad" && printf '1\tP\tQ\tonly four\n' > "$f/tsv_bad/new_aan_pairs.train.tsv"
bad "new_aan_pairs.train.tsv, line 1: 4 tab-separated columns" "$L" lra retrieval --out "$dir/fx6" --data "$f/tsv_bad" "${ft[@]}"
for x in fx1 fx2 fx3 fx4 fx5 fx6; do [ -e "$dir/$x" ] && { echo "a failed LRA file task left $x"; fail=1; }; done

# LRA Pathfinder: the released layout written, a tiny `lra pathfinder` run on it, and the errors.
ok "$L" corpus pathfinder --out "$dir/pcorpus" --examples 60 --difficulty baseline
[ -s "$dir/pcorpus/metadata/0.npy" ] && [ -s "$dir/pcorpus/imgs/0/sample_59.png" ] || { echo "corpus pathfinder lacks files"; fail=1; }
bad "already holds a metadata folder" "$L" corpus pathfinder --out "$dir/pcorpus" --examples 60
pt=(--quiet --set model.d_model=16 --set model.n_heads=2 --set model.n_layers=1 --set model.d_ff=16
    --set model.classifier_hidden=16 --set train.steps=4 --set train.warmup=1 --set train.eval_every=2
    --set train.checkpoint_every=2 --set train.batch_size=4)
ok "$L" lra pathfinder --out "$dir/pf_run" --data "$dir/pcorpus" "${pt[@]}"
grep -q "test: accuracy" "$dir/out" || { echo "lra pathfinder prints no accuracy"; fail=1; }
ok "$L" lra pathfinder --print-config
grep -q '"pathfinder"' "$dir/out" || { echo "lra pathfinder --print-config lacks the corpus"; fail=1; }
bad "set model.num_classes to 2" "$L" lra pathfinder --out "$dir/px1" "${pt[@]}" --set model.num_classes=3
cp -r "$dir/pcorpus" "$dir/pbad" && printf 'not a png' > "$dir/pbad/imgs/0/sample_3.png"
bad "sample_3.png is not a readable PNG" "$L" lra pathfinder --out "$dir/px2" "${pt[@]}" --data "$dir/pbad"
bad "nowhere is not a directory" "$L" lra pathfinder --out "$dir/px3" "${pt[@]}" --set data.path="$dir/nowhere"
for x in px1 px2 px3; do [ -e "$dir/$x" ] && { echo "a failed pathfinder train left $x"; fail=1; }; done
if [ $fail -eq 0 ]; then echo "cli smoke: all passed"; fi
exit $fail
