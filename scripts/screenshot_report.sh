#!/usr/bin/env bash
# Render a y90opt report page headless to a full-page PNG (for the documentation; not run in CI).
#
#   scripts/screenshot_report.sh results/report.html docs/report.png [WIDTH]
#
# Needs Chromium (Debian: apt-get install chromium) and Pillow (installed with matplotlib). The page is
# rendered in a window WIDTH px wide (default 1280) and 20000 px tall, then cropped below its last
# non-white row, so the whole page is captured, never cut.
#
# The screenshots in docs/ were made with:
#   y90opt plan configs/examples/multifocal-unilobar.toml --samples 100000 --seed 1 --out /tmp/docs
#   scripts/screenshot_report.sh /tmp/docs/report.html docs/report.png
#   scripts/screenshot_report.sh /tmp/docs/report.html docs/report-narrow.png 760
#   y90opt plan configs/examples/mvi-pvt.toml --samples 100000 --seed 1 --out /tmp/mvi
#   scripts/screenshot_report.sh /tmp/mvi/report.html docs/report-low-success.png
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 REPORT.html OUT.png [WIDTH]" >&2
    exit 2
fi
page=$(realpath "$1")
out=$(realpath -m "$2")
width=${3:-1280}
height=20000
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z "$browser" ]]; then
    echo "$0: no chromium found (Debian: apt-get install chromium)" >&2
    exit 1
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile" \
    --screenshot="$out" --window-size="$width,$height" "file://$page" >/dev/null 2>&1
python3 - "$out" <<'PY'
import sys

import numpy as np
from PIL import Image

path = sys.argv[1]
img = Image.open(path).convert("RGB")
a = np.asarray(img)
rows = np.nonzero((a < 250).any(axis=(1, 2)))[0]
bottom = int(rows[-1]) + 24 if rows.size else a.shape[0]
if bottom >= a.shape[0]:
    sys.exit(f"{path}: the page is taller than the window; raise its height in the script")
img.crop((0, 0, a.shape[1], min(bottom, a.shape[0]))).quantize(256).save(path, optimize=True)
PY
echo "$out"
