#!/usr/bin/env bash
# Render a y90opt report page headless to a PNG (for the documentation; not run in CI).
#
#   scripts/screenshot_report.sh results/report.html docs/report.png [WIDTHxHEIGHT]
#
# Needs Chromium (Debian: apt-get install chromium). The page must already exist (y90opt plan ... --out DIR,
# or y90opt report DIR/plan.nc). The default window is 1280 px wide and 3000 px tall; the page below that
# height is cut off, so pass a taller window for a full-page capture.
#
# docs/report.png was made with:
#   y90opt plan configs/examples/multifocal-unilobar.toml --samples 100000 --seed 1 --out /tmp/docs
#   scripts/screenshot_report.sh /tmp/docs/report.html docs/report.png
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 REPORT.html OUT.png [WIDTHxHEIGHT]" >&2
    exit 2
fi
page=$(realpath "$1")
out=$(realpath -m "$2")
size=${3:-1280x3000}
width=${size%x*}
height=${size#*x}
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
echo "$out"
