#!/usr/bin/env bash
# The translation demo (issue 16; docs/translation.md): generate a synthetic German-like -> English parallel corpus,
# train a joint SentencePiece vocabulary on both sides, train the original Transformer (post-norm, the paper's
# recipe at a small size) for 1200 steps, average the last 5 checkpoints and score the held-out test split with
# beam 4 and sacreBLEU; the curves go to runs/translate_demo/run/curves.svg. Everything goes to
# runs/translate_demo; a second call continues a run that was stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
out=runs/translate_demo
mkdir -p "$out"
[ -f "$out/corpus/train.de" ] || build/longseq corpus synthetic_translation --out "$out/corpus" --pairs 40000
[ -f "$out/corpus/spm.model" ] ||
  build/longseq tokenizer --input "$out/corpus/train.de" --input "$out/corpus/train.en" --vocab 500 \
    --out "$out/corpus/spm"
if [ -f "$out/run/config.json" ]; then
  build/longseq train --out "$out/run" --resume "$@"
else
  build/longseq train --config configs/translate_demo.json --out "$out/run" "$@"
fi
build/longseq plot "$out/run"
rm -rf "$out/averaged"
build/longseq average "$out/run" --last 5 --out "$out/averaged"
build/longseq eval "$out/averaged" --split test --beam 4 --alpha 0.6 --hypotheses "$out/test.hyp.en"
