#!/usr/bin/env bash
# The transfer study (part of `make study`; every run resumes, a finished one is a no-op).
#  1. tiny-msclip-s and tiny-clip on the relations world (two objects whose arrangement the
#     caption names), seeds $SEEDS, 1,000 steps, a checkpoint every 50 steps, all kept (the
#     over-training analysis reads them): $OUT/runs/<model>-relations/seed-<s>;
#  2. the causal transplant: fresh models (seed s + 100) trained for 300 steps on the relations
#     world with an evaluation every 25 steps, their attention initialised from the converged
#     tiny-clip of seed s (msclip-train --init with a stated mapping):
#       msclip-s-random      tiny-msclip-s, nothing transplanted
#       msclip-s-text-attn   its shared attention (slots 1-5) ← CLIP's text attention
#       msclip-s-vision-attn its shared attention (slots 1-5) ← CLIP's vision attention
#       clip-random          tiny-clip, nothing transplanted
#       clip-text-attn       its vision attention (slots 1-5) ← CLIP's text attention
#     into $OUT/runs/transplant/<condition>/seed-<s>.
# The recipes analyses/study/transfer.toml and transplant.toml render them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo-out}"
SEEDS="${SEEDS:-0,1,2,3,4,5,6,7}"
STEPS="${STUDY_STEPS:-}"
BIN=target/release
for m in tiny-msclip-s tiny-clip; do
  echo "== transfer study: training $m on the relations world, seeds $SEEDS =="
  args=(--config "configs/train/$m-relations.toml" --out "$OUT/runs/$m-relations" --seeds "$SEEDS" --progress --resume-or-fresh)
  [ -n "$STEPS" ] && args+=(--steps "$STEPS")
  "$BIN/msclip-train" "${args[@]}" > /dev/null
done
latest() { ls -d "$1"/checkpoints/step-* | sort -V | tail -n 1; }
IFS=, read -r -a seeds <<< "$SEEDS"
for s in "${seeds[@]}"; do
  src=$(latest "$OUT/runs/tiny-clip-relations/seed-$s")
  for cond in msclip-s-random msclip-s-text-attn msclip-s-vision-attn clip-random clip-text-attn; do
    case $cond in
      msclip-s-*) cfg=configs/train/tiny-msclip-s-transplant.toml ;;
      clip-*) cfg=configs/train/tiny-clip-transplant.toml ;;
    esac
    init=()
    case $cond in
      msclip-s-text-attn) init=(--init "$src" --init-select 'shared.attn:1-5=text.attn:1-5') ;;
      msclip-s-vision-attn) init=(--init "$src" --init-select 'shared.attn:1-5=vision.attn:1-5') ;;
      clip-text-attn) init=(--init "$src" --init-select 'vision.attn:1-5=text.attn:1-5') ;;
    esac
    echo "== transplant: $cond, seed $s =="
    args=(--config "$cfg" --out "$OUT/runs/transplant/$cond/seed-$s" --seed $((s + 100)) --resume-or-fresh "${init[@]}")
    [ -n "$STEPS" ] && args+=(--steps "$STEPS")
    "$BIN/msclip-train" "${args[@]}" > /dev/null
  done
done
