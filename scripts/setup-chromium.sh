#!/usr/bin/env bash
# Installs Debian's Chromium (package `chromium`) for the explorer's browser test
# (tests/explorer_browser.rs) and scripts/explorer-screenshots.sh, when it is missing. `make test`
# runs it. When it cannot be installed (no apt, no root, no network) it records why in
# target/chromium-unavailable.txt: the browser test then skips with that reason and `make test`
# repeats it at the end of the log. Never fails the build itself.
set -u
cd "$(dirname "$0")/.."
CHROMIUM="${MSCLIP_CHROMIUM:-/usr/bin/chromium}"
MARKER=target/chromium-unavailable.txt
mkdir -p target
if [ -x "$CHROMIUM" ]; then
  rm -f "$MARKER"
  exit 0
fi
why=""
if ! command -v apt-get >/dev/null 2>&1; then
  why="apt-get is not available (not a Debian-like system); set MSCLIP_CHROMIUM to a Chromium binary"
else
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else why="installing needs root (sudo without a password is not available)"; fi
  fi
  if [ -z "$why" ]; then
    echo "setup-chromium: installing Debian's chromium package (once; a few minutes)" >&2
    log=target/setup-chromium.log
    if ! { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium >"$log" 2>&1 \
        || { $SUDO apt-get update >>"$log" 2>&1 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium >>"$log" 2>&1; }; }; then
      why="apt-get install chromium failed: $(tail -n 1 "$log")"
    elif [ ! -x "$CHROMIUM" ]; then
      why="the chromium package installed no $CHROMIUM"
    fi
  fi
fi
if [ -n "$why" ]; then
  echo "$why" > "$MARKER"
  echo "setup-chromium: WARNING: $why. The explorer browser test will be SKIPPED." >&2
else
  rm -f "$MARKER"
fi
exit 0
