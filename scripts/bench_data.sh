#!/usr/bin/env bash
# Data loader throughput, lisadiff vs the Python reference (torch DataLoader + PIL +
# torchvision), on the same make-dataset folder of JPEGs, in the same run. Needs
# scripts/setup.sh first; prints a Markdown table for docs/benchmarks.md.
#
#   scripts/bench_data.sh [--n 480] [--images 320] [--resolutions "512 256"] [--workers "1 2"]
#                         [--out /tmp/bench-data]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${LISADIFF_BUILD_DIR:-$ROOT/build}"
N=480 IMAGES=320 RESOLUTIONS="512 256" WORKERS="1 2" OUT=/tmp/bench-data
while [ $# -gt 0 ]; do
  case "$1" in
    --n) N=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --resolutions) RESOLUTIONS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "bench_data.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
for f in "$BUILD/apps/lisadiff" "$BUILD/bench/bench_data_loader"; do
  [ -x "$f" ] || { echo "bench_data.sh: $f is missing: build first (scripts/setup.sh)" >&2; exit 1; }
done
PY="$(grep '^LISADIFF_PYTHON:' "$BUILD/CMakeCache.txt" | cut -d= -f2)"
[ -x "$PY" ] || { echo "bench_data.sh: no LISADIFF_PYTHON in $BUILD/CMakeCache.txt" >&2; exit 1; }
mkdir -p "$OUT"
DATA="$OUT/shapes-512-jpg"
# JPEG images of 512 to 768 pixels a side: every example is decoded, resized and cropped.
[ -f "$DATA/metadata.jsonl" ] || "$BUILD/apps/lisadiff" make-dataset --kind t2i --format folder --n "$N" \
  --size 512 --vary-size --image-format jpg --seed 1 --out "$DATA"
: > "$OUT/results.jsonl"
for r in $RESOLUTIONS; do
  for w in $WORKERS; do
    "$BUILD/bench/bench_data_loader" --data "$DATA" --resolution "$r" --workers "$w" --images "$IMAGES" | tee -a "$OUT/results.jsonl"
    "$PY" "$ROOT/scripts/bench_data.py" --data "$DATA" --resolution "$r" --workers "$w" --images "$IMAGES" | tee -a "$OUT/results.jsonl"
  done
done
"$PY" - "$OUT/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\n| resolution | workers | lisadiff images/s | Python images/s | ratio |")
print("| --- | --- | --- | --- | --- |")
for r in rows:
    if r["impl"] != "lisadiff":
        continue
    py = next(p for p in rows if p["impl"] == "python" and p["resolution"] == r["resolution"] and p["workers"] == r["workers"])
    print(f"| {r['resolution']} | {r['workers']} | {r['images_per_s']:.1f} | {py['images_per_s']:.1f} | "
          f"{r['images_per_s'] / py['images_per_s']:.2f} |")
EOF
