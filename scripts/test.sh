#!/usr/bin/env bash
# The README's test command: sets up and builds whatever is missing (scripts/setup.sh),
# then runs every test but the `slow` ones. Extra arguments go to ctest, e.g.
#   scripts/test.sh -L parity        scripts/test.sh -R Safetensors
#   LISADIFF_TEST_LABELS=slow scripts/test.sh   (only the slow tests)
# A full run (no arguments, no labels) then runs every fuzz target for 60 s on its corpus
# (scripts/fuzz.sh: a clang build with ASan and UBSan in build-fuzz; docs/hardening.md).
# LISADIFF_FUZZ_SECONDS changes the time per target; 0 skips the fuzzing.
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
fuzz_seconds="${LISADIFF_FUZZ_SECONDS:-60}"
if [ $# -eq 0 ] && [ -z "${LISADIFF_TEST_LABELS:-}" ] && [ "$fuzz_seconds" != 0 ]; then
  start=$SECONDS
  "$ROOT/scripts/fuzz.sh" --time "$fuzz_seconds"
  echo "[test] fuzzing: $((SECONDS - start)) s"
fi
