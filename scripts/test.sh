#!/usr/bin/env bash
# The README's test command: sets up and builds whatever is missing (scripts/setup.sh),
# then runs every test but the `slow` ones. Extra arguments go to ctest, e.g.
#   scripts/test.sh -L parity        scripts/test.sh -R Safetensors
#   LISADIFF_TEST_LABELS=slow scripts/test.sh   (only the slow tests)
# A full run (no arguments, no labels) then fuzzes every target for about a minute, the same
# way on every run (scripts/fuzz.sh --ci: a clang build with ASan and UBSan in build-fuzz, the
# committed corpus and past findings, a fixed seed; docs/hardening.md). LISADIFF_FUZZ=0 skips it.
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
if [ $# -eq 0 ] && [ -z "${LISADIFF_TEST_LABELS:-}" ] && [ "${LISADIFF_FUZZ:-1}" != 0 ]; then
  start=$SECONDS
  "$ROOT/scripts/fuzz.sh" --ci
  echo "[test] fuzzing: $((SECONDS - start)) s"
fi
