#!/usr/bin/env bash
# Prepares scripts/gpu/check.sh's inputs here (x86-64, no GPU needed): a `--features cuda`
# release build linked against the bench venv's torch 2.11.0 (the GPU machines run the same
# 2.11.0+cu130), copied and stripped into .gpu/, and the OpenCLIP wheels into .whl/ (the GPU
# machine has no registry). Both folders are git-ignored locally (.git/info/exclude) and are
# carried to the device by name.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/bench/setup-venv.sh
T=$(.cache/bench-venv/bin/python -c 'import torch,os;print(os.path.dirname(torch.__file__))')
LIBTORCH="$T" cargo build --release --features cuda --target-dir target-cuda --bins --examples
mkdir -p .gpu .whl
for b in msclip-train msclip-analyze examples/gpu_check examples/bench_step; do
  cp "target-cuda/release/$b" .gpu/ && strip ".gpu/$(basename "$b")"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth
grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
du -sh .gpu .whl
