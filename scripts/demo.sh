#!/usr/bin/env bash
# The main job: install, build, then train a small byte-level decoder LM
# (context 2048) on the embedded default corpus for a few minutes, and print
# validation bits per byte and a generated sample, and draws the curves into
# runs/demo/curves.svg. A second call continues
# the same run (runs/demo) instead of starting over; a run killed before its
# first checkpoint starts again from step 0.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
if [ -f runs/demo/config.json ]; then
  build/longseq train --out runs/demo --resume "$@"
else
  mkdir -p runs
  build/longseq train --out runs/demo "$@"
fi
build/longseq plot runs/demo  # the curves: runs/demo/curves.svg
