#!/usr/bin/env bash
# The README's test command: sets up and builds whatever is missing (scripts/setup.sh),
# then runs every test but the `slow` ones. Extra arguments go to ctest, e.g.
#   scripts/test.sh -L parity        scripts/test.sh -R Safetensors
#   LISADIFF_TEST_LABELS=slow scripts/test.sh   (only the slow tests)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${LISADIFF_BUILD_DIR:-$ROOT/build}"

"$ROOT/scripts/setup.sh"
start=$SECONDS
if [ -n "${LISADIFF_TEST_LABELS:-}" ]; then
  filter=(-L "$LISADIFF_TEST_LABELS")
else
  filter=(-LE slow)
fi
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)" "${filter[@]}" "$@"
echo "[test] tests: $((SECONDS - start)) s"
