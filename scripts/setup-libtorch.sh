#!/usr/bin/env bash
# Installs the CPU part of libtorch 2.11.0 (the version tch 0.24 expects) from the PyPI
# torch==2.11.0 wheel into ./libtorch (gitignored). Idempotent: does nothing when present.
# Recipe and reasons: docs/stack.md. Override the target with LIBTORCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${LIBTORCH_DIR:-libtorch}"
VERSION=2.11.0

# gloo's headers (ProcessGroupGloo.hpp includes them; the wheel lacks them) from Debian's
# libgloo-dev, headers only: gloo's code is inside libtorch_cpu.so. Needs no root.
fetch_gloo() {
  [ -f "$DEST/gloo-include/gloo/algorithm.h" ] && return 0
  echo "setup: fetching gloo headers (Debian libgloo-dev) into $DEST/gloo-include ..." >&2
  local t
  t=$(mktemp -d)
  (cd "$t" && apt-get download libgloo-dev >/dev/null 2>&1) \
    || { echo "setup: 'apt-get download libgloo-dev' failed; put gloo's headers in $DEST/gloo-include/gloo by hand" >&2; rm -rf "$t"; exit 1; }
  dpkg-deb -x "$t"/libgloo-dev_*.deb "$t/x"
  rm -rf "$DEST/gloo-include.partial"
  mkdir -p "$DEST/gloo-include.partial"
  cp -r "$t/x/usr/include/gloo" "$DEST/gloo-include.partial/"
  rm -rf "$DEST/gloo-include"
  mv "$DEST/gloo-include.partial" "$DEST/gloo-include"
  rm -rf "$t"
}

if [ -f "$DEST/build-version" ] && [ "$(cat "$DEST/build-version")" = "$VERSION" ] \
   && [ -f "$DEST/lib/libtorch_cpu.so" ] && [ -d "$DEST/include/torch" ]; then
  fetch_gloo
  exit 0
fi
echo "setup: installing libtorch $VERSION (CPU) into $DEST ..." >&2
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: -d "$TMP/wheels" \
  "torch==$VERSION" 'nvidia-cuda-runtime==13.0.96.*' 'nvidia-cuda-cupti==13.0.85.*'
STAGE="$DEST.partial"
rm -rf "$STAGE"
mkdir -p "$STAGE/lib" "$STAGE/include"
python3 - "$TMP/wheels" "$STAGE" <<'PY'
import sys, zipfile, glob, os, shutil
wheels, stage = sys.argv[1], sys.argv[2]
want_lib = {"libtorch_cpu.so", "libtorch.so", "libc10.so", "libgomp.so.1"}
extra = {"libcudart.so.13", "libcupti.so.13"}
found = set()
for whl in glob.glob(os.path.join(wheels, "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            name = info.filename
            base = os.path.basename(name)
            if name.startswith("torch/include/") and not name.endswith("/"):
                out = os.path.join(stage, "include", name[len("torch/include/"):])
            elif name.startswith("torch/lib/") and base in want_lib:
                out = os.path.join(stage, "lib", base)
            elif base in extra and "/lib/" in name:
                out = os.path.join(stage, "lib", base)
            else:
                continue
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            found.add(base) if "/lib/" in name else None
missing = (want_lib | extra) - found
if missing:
    sys.exit(f"setup: libraries missing from the wheels: {sorted(missing)}")
PY
echo "$VERSION" > "$STAGE/build-version"
rm -rf "$DEST"
mv "$STAGE" "$DEST"
echo "setup: libtorch ready in $DEST ($(du -sh "$DEST" | cut -f1))" >&2
fetch_gloo
