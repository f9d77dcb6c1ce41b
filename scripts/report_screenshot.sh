#!/usr/bin/env bash
# A screenshot of a sweep's HTML report in headless Chromium (to look at it as a reader will).
#   scripts/report_screenshot.sh outputs/demo/report/report.html docs/img/report.png [HEIGHT]
# Needs Chromium (Debian: apt-get install chromium). Nothing is fetched: the report is one
# self-contained file and the browser runs with networking features off.
set -euo pipefail
html=$(realpath "$1")
out=$(realpath -m "$2")
height=${3:-2400}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "report_screenshot: no Chromium found (apt-get install chromium)" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size=1200,"$height" \
  --screenshot="$out" "file://$html" 2>/dev/null
echo "report_screenshot: $out"
