#!/usr/bin/env bash
# Install what the real-browser test (tests/test_browser.py) needs, and nothing else:
#
#   * Chromium from Debian's `chromium` package (/usr/bin/chromium), only if it is missing.
#     Playwright's own browser download (`playwright install`) is never used: it fetches
#     builds from a CDN, which fails offline and in CI here.
#   * Playwright's Python package, into the project's virtual environment, only if missing.
#
# Usage: scripts/install_browser.sh            (apt-get needs root, or sudo without a password)
# Env:   MI_TUTOR_VENV  the virtual environment (default: .venv next to run.sh)
#        CHROMIUM       the browser binary to look for (default: /usr/bin/chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${MI_TUTOR_VENV:-$ROOT/.venv}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

say() { printf '[install-browser] %s\n' "$*"; }

# --- Chromium ---------------------------------------------------------------------------
if [ -x "$CHROMIUM" ]; then
  say "chromium present: $CHROMIUM ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
else
  if [ "$(id -u)" = 0 ]; then
    APT=(apt-get)
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    APT=(sudo -n apt-get)
  else
    say "ERROR: $CHROMIUM is missing and installing it needs root."
    say "Run as root:  apt-get update && apt-get install -y chromium"
    say "(or point CHROMIUM at an existing Chromium/Chrome binary and re-run)."
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    say "ERROR: $CHROMIUM is missing and this system has no apt-get."
    say "Install Chromium with your package manager, then set CHROMIUM=/path/to/chromium."
    exit 1
  fi
  say "installing Debian's chromium package (apt-get update && apt-get install -y chromium)"
  export DEBIAN_FRONTEND=noninteractive
  "${APT[@]}" update -q
  "${APT[@]}" install -y -q --no-install-recommends chromium
  if [ ! -x "$CHROMIUM" ]; then
    say "ERROR: apt-get finished but $CHROMIUM does not exist."
    exit 1
  fi
  say "chromium installed: $("$CHROMIUM" --version 2>/dev/null || true)"
fi

# --- Playwright (Python package only; never `playwright install`) ------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "ERROR: no virtual environment at $VENV: run ./run.sh setup first."
  exit 1
fi
if "$VENV/bin/python" -c 'import playwright.sync_api' 2>/dev/null; then
  say "playwright present: $("$VENV/bin/python" -m pip show playwright 2>/dev/null | sed -n 's/^Version: //p')"
else
  say "installing the playwright Python package into $VENV (no browser download)"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$VENV/bin/python" -m pip install --quiet "playwright>=1.40"
  say "playwright installed: $("$VENV/bin/python" -m pip show playwright 2>/dev/null | sed -n 's/^Version: //p')"
fi
say "ready: MI_TUTOR_REQUIRE_BROWSER=1 .venv/bin/python -m pytest -m browser tests/test_browser.py"
