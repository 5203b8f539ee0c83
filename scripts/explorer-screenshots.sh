#!/usr/bin/env bash
# Renders the two explorer pages whose screenshots README links (figures/explorer/):
#  - the demo's tiny-msclip-s (`make demo` trains it), on a held-out synthetic scene;
#  - a CLIP ViT-B/32 with random weights that went through the import path: exported in the
#    OpenCLIP layout (`msclip-train export --model clip-b32`) and imported back
#    (`msclip-train import`), on the same scene resized to 224×224.
# Each page goes to $OUT/explorer/<name>/index.html; the screenshots (1280×800, headless
# Chromium from Debian's package, scripts/setup-chromium.sh) and each page's size go to
# figures/explorer/. Usage: scripts/explorer-screenshots.sh [demo-out]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo-out}"
BIN=target/release
CHROMIUM="${MSCLIP_CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] || scripts/setup-chromium.sh
[ -x "$CHROMIUM" ] || { echo "explorer-screenshots: no Chromium at $CHROMIUM" >&2; exit 1; }
run="$OUT/runs/tiny-msclip-s/seed-0"
[ -d "$run/checkpoints" ] || { echo "explorer-screenshots: $run has no checkpoints; run make demo first" >&2; exit 1; }
tiny=$(ls -d "$run"/checkpoints/step-* | sort -V | tail -n 1)
mkdir -p "$OUT/explorer" figures/explorer
"$BIN/msclip-analyze" explore --checkpoint "$tiny" --seed 7 --out "$OUT/explorer/tiny-msclip-s"
"$BIN/msclip-train" export --model clip-b32 --seed 0 --out "$OUT/explorer/clip-b32-random.safetensors" --force
"$BIN/msclip-train" import --from "$OUT/explorer/clip-b32-random.safetensors" --model clip-b32 --out "$OUT/explorer/clip-b32-random" --force
"$BIN/msclip-analyze" explore --checkpoint "$OUT/explorer/clip-b32-random" --seed 7 --out "$OUT/explorer/clip-b32-random-page"
shot() { # page, view (URL fragment), png
  local profile; profile=$(mktemp -d)
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars --window-size=1280,800 \
    --screenshot="$3" "file://$(realpath "$1")#$2" 2>/dev/null
  rm -rf "$profile"
}
# The tiny page on a word's relevancy, with a shared slot's head; B/32 on its last layer.
shot "$OUT/explorer/tiny-msclip-s/index.html" "mode=token&token=3&slot=4&head=1" figures/explorer/tiny-msclip-s.png
shot "$OUT/explorer/clip-b32-random-page/index.html" "mode=token&token=2&slot=11&head=0" figures/explorer/clip-b32-random.png
# The measured sizes: page_sizes.csv (with each page's provenance) and the table README includes.
size_row() { # name, page dir, model label
  local b; b=$(stat -c %s "$2/index.html")
  echo "$1,$3,$b,$(awk -v b="$b" 'BEGIN { printf "%.2f", b / 1e6 }')"
}
{
  for d in "$OUT/explorer/tiny-msclip-s" "$OUT/explorer/clip-b32-random-page"; do
    echo "# $(basename "$d"): tool $(grep -o '"tool_version": "[^"]*"' "$d/explore.json" | cut -d'"' -f4), checkpoint sha256 $(grep -o '"checkpoint_sha256": "[^"]*"' "$d/explore.json" | cut -d'"' -f4), data $(grep -o '"data_sha256": "[^"]*"' "$d/explore.json" | cut -d'"' -f4)"
  done
  echo "page,model,bytes,mb"
  size_row tiny-msclip-s "$OUT/explorer/tiny-msclip-s" "tiny-msclip-s trained by make demo"
  size_row clip-b32-random "$OUT/explorer/clip-b32-random-page" "clip-b32 preset with random weights: exported then imported"
} > figures/explorer/page_sizes.csv
{
  echo "| page (one pair) | model | size |"
  echo "|---|---|---|"
  grep -v '^#' figures/explorer/page_sizes.csv | tail -n +2 | awk -F, '{ printf "| [%s](figures/explorer/%s.png) | %s | %s MB |\n", $1, $1, $2, $4 }'
} > figures/explorer/page_sizes.md
cat figures/explorer/page_sizes.md
