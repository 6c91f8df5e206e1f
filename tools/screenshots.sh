#!/usr/bin/env bash
# Regenerates the documentation's screenshots of the web page (docs/img/web-results.png,
# docs/img/web-results-fundus.png) from the archive of a demo run, so that the models
# shown are trained: the demo runs first unless DEMO_DIR already holds its archive, then
# the ignored browser test `screenshots_of_the_demo_archive` serves that archive
# read-only in headless Chromium (Debian's chromium and chromium-driver), uploads a
# held-out phantom of each kind and saves the page.
#
# Usage: tools/screenshots.sh [DEMO_DIR]     (default medret-demo; about 9 minutes with the demo)
set -euo pipefail
cd "$(dirname "$0")/.."
demo=${1:-medret-demo}
[ -f "$demo/archive.db" ] || cargo run -q -- demo --out "$demo"
MEDRET_DEMO_DIR=$(realpath "$demo") MEDRET_SCREENSHOT_DIR=$PWD/docs/img \
    cargo test -q -p medret-cli --test server -- --ignored screenshots_of_the_demo_archive --nocapture
