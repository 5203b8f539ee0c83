#!/usr/bin/env bash
# A Python venv with the PyTorch reference (torch 2.11.0, the same libtorch msclip links,
# and open_clip_torch) for side-by-side benchmarks. Cached in .cache/bench-venv (gitignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.cache/bench-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch, open_clip' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'torch==2.11.0' open_clip_torch scikit-learn
fi
echo "$VENV/bin/python"
