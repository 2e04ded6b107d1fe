#!/usr/bin/env bash
# `make demo`: the whole pipeline on the built-in example image set, on CPU, in a few minutes.
set -euo pipefail
OUT=${1:-demo_out}
BIN=.venv/bin
mkdir -p "$OUT"
EX="$OUT/example"

echo "== the built-in example image set (4 shapes on textured backgrounds, with true masks)"
[ -d "$EX/train" ] || $BIN/attg-maps make-example "$EX"

echo "== import the true object masks as a map store, verify and show them"
$BIN/attg-maps import "$EX/masks/train" "$OUT/maps/truth.zarr" --images "$EX/train" --resize \
  --method truth --overwrite
$BIN/attg-maps verify "$OUT/maps/truth.zarr" --images "$EX/train"
$BIN/attg-maps show "$OUT/maps/truth.zarr" --images "$EX/train" --tau 0.75 \
  --keys circle/circle_0000.JPEG square/square_0000.JPEG triangle/triangle_0000.JPEG \
  cross/cross_0000.JPEG -o "$OUT/truth_show.png"
echo "demo outputs in $OUT/"
