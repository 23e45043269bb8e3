#!/usr/bin/env bash
# The README's demo command: sets up and builds whatever is missing, then writes two Stable
# Diffusion pipelines with random weights with `lisadiff init-pipeline` (the tiny preset and
# the full SD1.5 architecture, 4.3 GB), shows what `lisadiff inspect` reports about them, and
# writes two small synthetic datasets with `lisadiff make-dataset` (DPO pairs as webdataset
# shards, text-to-image as an image folder), and ends with a captioned grid of images that
# `lisadiff generate` makes with the tiny pipeline.
# LISADIFF_DEMO_SD15=0 skips the SD1.5-size pipeline. Later issues grow this into a LISA run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${LISADIFF_BUILD_DIR:-$ROOT/build}"
lisadiff="$BUILD/apps/lisadiff"

"$ROOT/scripts/setup.sh"
out="$BUILD/demo"
echo "[demo] lisadiff init-pipeline --preset tiny --seed 0 --out $out/tiny-sd"
"$lisadiff" init-pipeline --preset tiny --seed 0 --out "$out/tiny-sd" --overwrite
echo "[demo] lisadiff inspect $out/tiny-sd"
"$lisadiff" inspect "$out/tiny-sd"
echo "[demo] lisadiff make-dataset --kind dpo --format wds --n 64 --size 128 --out $out/shapes-dpo"
"$lisadiff" make-dataset --kind dpo --format wds --n 64 --size 128 --seed 0 --out "$out/shapes-dpo" --overwrite
echo "[demo] lisadiff make-dataset --kind t2i --format folder --n 64 --size 128 --out $out/shapes-t2i"
"$lisadiff" make-dataset --kind t2i --format folder --n 64 --size 128 --seed 0 --out "$out/shapes-t2i" --overwrite
head -n 3 "$out/shapes-t2i/metadata.jsonl"

if [ "${LISADIFF_DEMO_SD15:-1}" != 0 ]; then
  if [ ! -f "$out/sd15/model_index.json" ]; then
    echo "[demo] lisadiff init-pipeline --preset sd15 --seed 0 --out $out/sd15 (4.3 GB)"
    start=$SECONDS
    "$lisadiff" init-pipeline --preset sd15 --seed 0 --out "$out/sd15"
    echo "[demo] wrote the SD1.5-size pipeline in $((SECONDS - start)) s"
  fi
  echo "[demo] lisadiff inspect $out/sd15"
  "$lisadiff" inspect "$out/sd15"
fi

# Last: pictures. The tiny pipeline has random weights, so its images are structured noise
# until a recipe trains it; the grid shows the pipeline, the captions and the seeds.
echo "[demo] lisadiff generate $out/tiny-sd --prompt 'a red circle' --prompt 'a blue square' --images_per_prompt 2 --out $out/generated"
"$lisadiff" generate "$out/tiny-sd" --prompt "a red circle" --prompt "a blue square" --images_per_prompt 2 \
  --steps 20 --seed 0 --out "$out/generated" --overwrite
echo "[demo] the grid: $out/generated/grid.png (and one PNG per image with its parameters, images.jsonl)"
