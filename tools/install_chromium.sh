#!/usr/bin/env bash
# Chromium for the results browser's test (tests/e2e/test_browser.py): Debian's package, installed
# once when no Chromium is found. A test tool's own browser download (playwright install) cannot
# reach its servers from every machine; a distribution package comes from the usual mirror.
set -euo pipefail
for exe in chromium chromium-browser google-chrome; do
    if command -v "$exe" >/dev/null 2>&1; then exit 0; fi
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "The browser test needs Chromium: install it with your package manager (Debian/Ubuntu: apt-get install chromium)." >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium
