#!/usr/bin/env bash
# The main job on the embedded synthetic data (run by `make demo` after the build):
#  1. the parameter table of every preset;
#  2. train the sharing spectrum for the same budget on the synthetic world: tiny-clip (nothing
#     shared), tiny-msclip-attn (attention), tiny-msclip (attention + FFN), tiny-msclip-ln
#     (everything, LayerNorms too) and tiny-msclip-s (early specialization + parallel branch);
#  3. a comparison table on held-out data (zero-shot, retrieval R@1, modality gap, params);
#  4. every figure of analyses/*.toml (attention gallery, head statistics, NMI and gap by
#     layer, training curves, comparison table) into $OUT/figures/ (FIGURES=DIR to redirect;
#     `make figures` updates the committed figures/ from these runs).
# DEMO_STEPS overrides the step budget (e.g. DEMO_STEPS=50 for a quick look).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo-out}"
STEPS="${DEMO_STEPS:-}"
BIN=target/release
mkdir -p "$OUT"
echo "== parameter counts (unique; shared tensors counted once) =="
printf '%-14s %14s %14s %14s %14s\n' model total shared vision_only text_only
for m in clip-b32 clip-b16 msclip-b32 msclip-s-b32 msclip-s-b16 tiny-clip tiny-msclip-attn tiny-msclip tiny-msclip-ln tiny-msclip-s; do
  "$BIN/msclip-analyze" params --model "$m" | tail -n 1
done | tee "$OUT/params.txt"

MODELS="tiny-clip tiny-msclip-attn tiny-msclip tiny-msclip-ln tiny-msclip-s"
for m in $MODELS; do
  echo
  echo "== training $m on the synthetic world =="
  # Resume when a previous demo left a run behind (finished runs resume as a no-op).
  args=(--config "configs/train/$m.toml" --out "$OUT/runs/$m" --seeds 0 --progress --resume-or-fresh)
  [ -n "$STEPS" ] && args+=(--steps "$STEPS")
  "$BIN/msclip-train" "${args[@]}" > /dev/null
done

latest() { ls -d "$OUT/runs/$1/seed-0/checkpoints"/step-* | sort -V | tail -n 1; }
echo
echo "== held-out comparison (1,000 single-object images for zero-shot over 48 classes; 1,000 pairs for R@1 and gap) =="
{
  for m in $MODELS; do
    ck=$(latest "$m")
    e=$("$BIN/msclip-analyze" eval --checkpoint "$ck" --items 1000)
    p=$("$BIN/msclip-analyze" params --model "$m" | tail -n 1)
    echo "$e | params $(echo "$p" | awk '{print $2}') shared $(echo "$p" | awk '{print $3}')"
  done
} | tee "$OUT/comparison.txt"

echo
FIGURES="${FIGURES:-$OUT/figures}"
echo "== figures (recipes in analyses/ → $FIGURES/) =="
"$BIN/msclip-analyze" figures --recipes analyses --out "$FIGURES"
echo
echo "demo outputs: $OUT/ (params.txt, comparison.txt, runs/*/metrics.jsonl, checkpoints) and $FIGURES/README.md"
echo "(make figures copies them into the committed figures/ and refreshes the docs' tables)"
