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
# The c10d/ATen shims (csrc/) need gloo's headers, which the wheel lacks: the ones the setup
# script fetched into ./libtorch/gloo-include.
scripts/setup-libtorch.sh
# ProcessGroupNCCL's headers need CUDA's crt/ (triton ships it) and CCCL's nv/target (the
# nvidia-cuda-cccl wheel), which the cu13 runtime wheel lacks.
CCCL=.cache/cuda-cccl
if [ ! -d "$CCCL/nvidia/cu13/include/nv" ]; then
  mkdir -p "$CCCL"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$CCCL" 'nvidia-cuda-cccl==13.*'
  python3 -c "import zipfile,glob,sys;z=zipfile.ZipFile(glob.glob(sys.argv[1]+'/*.whl')[0]);z.extractall(sys.argv[1])" "$CCCL"
fi
SITE=$(dirname "$T")
LIBTORCH="$T" MSCLIP_GLOO_INCLUDE="$PWD/libtorch/gloo-include" \
  MSCLIP_CUDA_INCLUDE="$SITE/nvidia/cu13/include:$PWD/$CCCL/nvidia/cu13/include:$SITE/triton/backends/nvidia/include" \
  cargo build --release --features cuda --target-dir target-cuda --bins --examples
mkdir -p .gpu .whl
for b in msclip-train msclip-analyze examples/gpu_check examples/bench_step; do
  cp "target-cuda/release/$b" .gpu/ && strip ".gpu/$(basename "$b")"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth
grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
du -sh .gpu .whl
