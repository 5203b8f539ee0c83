#!/usr/bin/env bash
# Regenerates fixtures/check/: 64 synthetic scenes (32 px) with a manifest, a micro MS-CLIP-S
# trained 150 steps on 2,000 other scenes (model.safetensors + meta.json only; the optimizer
# state is dropped), and the baseline fixtures/gap-baseline.json. Run after a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
F=fixtures/check
rm -rf "$F/data" "$F/ckpt"
"$BIN/msclip-data" synth --n 64 --seed 424242 --size 32 --out "$F/data"
rm -f "$F"/data/images/*.json
TMP=$(mktemp -d)
cat > "$TMP/train.toml" <<TOML
model = "$F/micro-msclip-s.toml"
data_items = 2000
steps = 150
batch_size = 32
lr = 3e-3
min_lr = 1e-5
warmup_steps = 10
grad_clip = 1.0
seed = 7
save_every = 0
keep = 1
eval_every = 0
eval_items = 100
TOML
"$BIN/msclip-train" --config "$TMP/train.toml" --out "$TMP/run" > /dev/null
CK=$(ls -d "$TMP"/run/checkpoints/step-* | tail -n 1)
mkdir -p "$F/ckpt"
cp "$CK/model.safetensors" "$F/ckpt/"
python3 - "$CK/meta.json" "$F/ckpt/meta.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m["sha256"] = {"model.safetensors": m["sha256"]["model.safetensors"]}
json.dump(m, open(sys.argv[2], "w"), indent=2)
PY
rm -rf "$TMP"
"$BIN/msclip-analyze" check --checkpoint "$F/ckpt" --manifest "$F/data/manifest.tsv" --baseline fixtures/gap-baseline.json --update
