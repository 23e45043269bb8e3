#!/usr/bin/env bash
# The README's demo command: sets up and builds whatever is missing, makes a tiny Stable
# Diffusion pipeline with random weights (the real SD architecture at toy size) and shows
# what `lisadiff inspect` reports about it. Later issues grow this into a short LISA run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${LISADIFF_BUILD_DIR:-$ROOT/build}"

"$ROOT/scripts/setup.sh"
python=$(grep '^LISADIFF_PYTHON:FILEPATH=' "$BUILD/CMakeCache.txt" | cut -d= -f2)
out="$BUILD/demo/tiny-sd"
echo "[demo] making the tiny-sd pipeline in $out (diffusers, seed 0)"
"$python" "$ROOT/scripts/make_fixtures.py" --pipeline tiny-sd --out "$out" >/dev/null
echo "[demo] lisadiff inspect $out"
"$BUILD/apps/lisadiff" inspect "$out"
