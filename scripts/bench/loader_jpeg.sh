#!/usr/bin/env bash
# Loader throughput per core on real JPEG photos: the two that scikit-learn ships
# (china.jpg, flower.jpg: 640×427), taken from the bench venv (scripts/bench/setup-venv.sh)
# or fetched from PyPI into .cache/ when it is missing. Decode + Pillow-exact resize/crop to
# 224 + normalisation, one thread. Prints JSON lines and the cores one GPU needs at RATE
# samples/s (default 6,700: B/32 at 30 % of an H200's dense bf16 peak).
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE="${RATE:-6700}"
IMG=$(ls -d .cache/bench-venv/lib/python3*/site-packages/sklearn/datasets/images 2>/dev/null | head -1 || true)
if [ -z "$IMG" ]; then
  mkdir -p .cache/sklearn-wheel
  python3 -m pip download -q --no-deps --only-binary=:all: -d .cache/sklearn-wheel scikit-learn
  (cd .cache/sklearn-wheel && python3 -c "import zipfile,glob;z=zipfile.ZipFile(glob.glob('*.whl')[0]);[z.extract(n) for n in z.namelist() if n.endswith('.jpg')]")
  IMG=.cache/sklearn-wheel/sklearn/datasets/images
fi
cargo build --release --example bench_jpeg >/dev/null 2>&1
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), one thread"
target/release/examples/bench_jpeg 224 "${SECONDS_PER_FILE:-5}" "$IMG/china.jpg" "$IMG/flower.jpg" | tee /tmp/bench_jpeg.$$
python3 - "$RATE" /tmp/bench_jpeg.$$ <<'PY'
import json, sys
rate = float(sys.argv[1])
rows = [json.loads(l) for l in open(sys.argv[2])]
per_core = rows[-1]["images_per_s_per_core"]
print(f"{per_core:.0f} images/s per core; {rate:.0f} samples/s need {rate / per_core:.1f} cores (decode share {rows[-1]['decode_share']:.0%})")
PY
rm -f /tmp/bench_jpeg.$$
