#!/usr/bin/env bash
# The main job on the embedded synthetic data (run by `make demo` after the build):
# the parameter table of every preset, then a forward pass with attention capture on a
# synthetic scene and its caption for the tiny presets, written as figures + CSV/JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo-out}"
BIN=target/release/msclip-analyze
mkdir -p "$OUT"
echo "== parameter counts (unique; shared tensors counted once) =="
printf '%-14s %14s %14s %14s %14s\n' model total shared vision_only text_only
for m in clip-b32 clip-b16 msclip-b32 msclip-s-b32 msclip-s-b16 tiny-clip tiny-msclip tiny-msclip-s; do
  "$BIN" params --model "$m" | tail -n 1
done | tee "$OUT/params.txt"
echo
echo "== attention capture on a synthetic scene =="
for m in tiny-clip tiny-msclip-s; do
  "$BIN" attention --model "$m" --seed 7 --out "$OUT/attention-$m"
done
echo
echo "demo outputs in $OUT/ (vision_cls_attention.png, text_attention_slot*.png|svg, attention.csv|json)"
