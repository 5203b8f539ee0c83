#!/usr/bin/env bash
# The README's "first result in seconds": two commands on the shipped checkpoint
# (fixtures/check/ckpt, a micro MS-CLIP-S), their output captured into
# docs/generated/first-result.md (tests/docs_numbers.rs reruns them and compares).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
out=docs/generated/first-result.md
{
  echo '```console'
  for cmd in "params --checkpoint fixtures/check/ckpt" "eval --checkpoint fixtures/check/ckpt --items 200"; do
    echo "\$ msclip-analyze $cmd"
    # shellcheck disable=SC2086
    "$BIN/msclip-analyze" $cmd
  done
  echo '```'
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
