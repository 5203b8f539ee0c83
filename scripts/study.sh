#!/usr/bin/env bash
# `make study`: the sharing spectrum and the transfer study at 8 seeds each (not part of CI).
#  1. trains tiny-clip, tiny-msclip-attn, tiny-msclip, tiny-msclip-ln, tiny-clip-msnorm
#     (tiny-clip with MS-CLIP-S's normalisation and LayerNorm ε), tiny-clip-s (MS-CLIP-S with
#     nothing shared) and tiny-msclip-s with seeds 0..7 into $OUT/runs/<model>/seed-<s> (the
#     demo's seed-0 runs are reused; every run resumes from its newest valid checkpoint, a
#     finished one is a no-op): 56 runs of about 2 min each on 2 CPU cores, about 1.8 h
#     (measured 2026-12-07);
#  2. scripts/transfer.sh: the transfer study on the relations world (see there);
#  3. renders the recipes in analyses/study/ (comparison and retrieval tables with per-seed
#     values, t-intervals over seeds, paired t-tests and Holm-adjusted p-values; NMI,
#     separation and gap by layer; training curves across seeds; the transfer analysis) into
#     figures/study/ (FIGURES=DIR to redirect).
# Interrupt it at any point: the next `make study` resumes where it stopped.
# SEEDS=0,1 or STUDY_STEPS=50 for a quicker look (the figures then say so in their provenance).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo-out}"
SEEDS="${SEEDS:-0,1,2,3,4,5,6,7}"
STEPS="${STUDY_STEPS:-}"
BIN=target/release
MODELS="tiny-clip tiny-msclip-attn tiny-msclip tiny-msclip-ln tiny-clip-msnorm tiny-clip-s tiny-msclip-s"
start=$SECONDS
for m in $MODELS; do
  echo "== training $m, seeds $SEEDS =="
  args=(--config "configs/train/$m.toml" --out "$OUT/runs/$m" --seeds "$SEEDS" --progress --resume-or-fresh)
  [ -n "$STEPS" ] && args+=(--steps "$STEPS")
  "$BIN/msclip-train" "${args[@]}" > /dev/null
done
SEEDS="$SEEDS" STUDY_STEPS="$STEPS" scripts/transfer.sh "$OUT"
trained=$SECONDS
if [ "$OUT" != demo-out ]; then
  echo "note: the recipes in analyses/study/ read demo-out/runs; with OUT=$OUT edit them or symlink demo-out" >&2
fi
echo "== study figures (analyses/study → ${FIGURES:-figures/study}) =="
"$BIN/msclip-analyze" figures --recipes analyses/study --out "${FIGURES:-figures/study}"
echo "study: training $((trained - start)) s, figures $((SECONDS - trained)) s on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
