#!/usr/bin/env bash
# The shapes model: a small Stable Diffusion pipeline (init-pipeline's "shapes" preset: the
# tiny UNet and CLIP text encoder, a 16/32-channel VAE, 32 px images) trained by lisadiff itself
# from random weights on make-dataset's coloured shapes, so that generated images show the
# prompted shape and colour. It is what the demo fine-tunes and what docs/study.md measures
# LISA, LoRA and full fine-tuning on. About 10 minutes on 2 CPU cores; the result is cached
# and reused:
#
#   scripts/make_shapes_model.sh [OUT]     OUT defaults to $CACHE/shapes-model-v1, where CACHE
#                                          is $LISADIFF_CACHE_DIR or ~/.cache/lisadiff
#
# The steps (each a lisadiff command, printed as it runs):
#   1. make-dataset: 4000 captioned 32 px images in every palette colour but orange (orange is
#      the colour the study teaches later: the model has never seen it), and 48 held-out prompts
#   2. init-pipeline --preset shapes: random weights
#   3. train-vae: the VAE learns to reconstruct the shapes (its random decoder would hide
#      whatever the UNet learns), and its scaling_factor is set from the latents
#   4. text_to_image --method full: the UNet from scratch (checkpointed: an interrupted run
#      continues where it stopped when the script runs again)
#   5. generate + score: images for the held-out prompts and how often they are right
# Environment: LISADIFF_BUILD_DIR (the build folder, default build/), SHAPES_UNET_STEPS,
# SHAPES_VAE_STEPS (shorter runs for smoke tests; the cached result is then not reused).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${LISADIFF_BUILD_DIR:-$ROOT/build}"
lisadiff="$BUILD/apps/lisadiff"
text_to_image="$BUILD/apps/text_to_image"
CACHE="${LISADIFF_CACHE_DIR:-$HOME/.cache/lisadiff}"
OUT="${1:-$CACHE/shapes-model-v1}"
VAE_STEPS="${SHAPES_VAE_STEPS:-1000}"
UNET_STEPS="${SHAPES_UNET_STEPS:-1600}"
for exe in "$lisadiff" "$text_to_image"; do
  [ -x "$exe" ] || { echo "make_shapes_model: $exe is missing; build first (scripts/setup.sh)" >&2; exit 1; }
done

settings="vae_steps=$VAE_STEPS unet_steps=$UNET_STEPS"
if [ -f "$OUT/model_index.json" ] && [ "$(cat "$OUT/shapes_model.txt" 2>/dev/null)" = "$settings" ]; then
  echo "[shapes] reusing $OUT ($settings)"
  exit 0
fi
work="$OUT.work"
mkdir -p "$work"
known=red,green,blue,yellow,purple,white,black
start=$SECONDS

if [ ! -f "$work/data/metadata.jsonl" ]; then
  echo "[shapes] lisadiff make-dataset --kind t2i --n 4000 --size 32 --colors $known --backgrounds $known"
  "$lisadiff" make-dataset --kind t2i --format folder --n 4000 --size 32 --seed 1 --colors "$known" \
    --backgrounds "$known" --out "$work/data" --overwrite
fi
"$lisadiff" make-dataset --kind t2i --format folder --n 48 --size 32 --seed 2 --colors "$known" \
  --backgrounds "$known" --out "$work/heldout" --overwrite
sed -e 's/.*"text":"\([^"]*\)".*/\1/' "$work/heldout/metadata.jsonl" > "$work/heldout_prompts.txt"

if [ ! -f "$work/with-vae/model_index.json" ]; then
  echo "[shapes] lisadiff init-pipeline --preset shapes --seed 0"
  "$lisadiff" init-pipeline --preset shapes --seed 0 --out "$work/init" --overwrite
  echo "[shapes] lisadiff train-vae: $VAE_STEPS steps"
  "$lisadiff" train-vae "$work/init" --train_data_dir "$work/data" --resolution 32 --train_batch_size 32 \
    --max_train_steps "$VAE_STEPS" --learning_rate 2e-3 --seed 0 --out "$work/with-vae" --overwrite
fi

echo "[shapes] text_to_image --method full: $UNET_STEPS steps from random weights"
"$text_to_image" --pretrained_model_name_or_path "$work/with-vae" --train_data_dir "$work/data" \
  --method full --resolution 32 --train_batch_size 32 --learning_rate 1e-3 --lr_scheduler constant \
  --snr_gamma 5 \
  --max_train_steps "$UNET_STEPS" --checkpointing_steps 250 --checkpoints_total_limit 1 \
  --resume_from_checkpoint latest --seed 0 --output_dir "$work/unet-run"

echo "[shapes] lisadiff generate + score: the 48 held-out prompts"
"$lisadiff" generate "$work/unet-run" --prompts "$work/heldout_prompts.txt" --steps 25 --scheduler ddim \
  --guidance_scale 1 --seed 0 --out "$work/heldout-images" --overwrite
"$lisadiff" score "$work/heldout-images" --json "$work/unet-run/heldout_score.json"

rm -rf "$OUT" "$work/unet-run"/checkpoint-*
mv "$work/unet-run" "$OUT"
echo "$settings" > "$OUT/shapes_model.txt"
cp -r "$work/heldout-images" "$OUT/heldout-images"
rm -rf "$work"
echo "[shapes] wrote $OUT in $((SECONDS - start)) s (held-out images: $OUT/heldout-images/grid.png)"
