#!/usr/bin/env bash
# The README's demo command, a tour of the product: sets up and builds whatever is missing, then
#   1. the shapes model: a small pipeline that lisadiff trains from random weights on synthetic
#      coloured shapes (scripts/make_shapes_model.sh; about 10 minutes the first time, then cached)
#   2. a LISA fine-tune of it with text_to_image on a colour it never saw (orange), images for
#      held-out prompts before and after, `lisadiff score` on both, `lisadiff plot` of the run
#   3. the other recipes for a few steps each (InstructPix2Pix, also on 2 processes with
#      lisadiff launch; Diffusion-DPO; LCM distillation sampled in 4 steps), `init-pipeline` and
#      `inspect` of a tiny pipeline, and a generated grid
# and prints where the pictures are. LISADIFF_DEMO_SD15=1 also writes and inspects a pipeline of
# the full SD1.5 architecture (4.3 GB).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${LISADIFF_BUILD_DIR:-$ROOT/build}"
lisadiff="$BUILD/apps/lisadiff"

"$ROOT/scripts/setup.sh"
out="$BUILD/demo"
tour_start=$SECONDS
mkdir -p "$out"

# 1. The shapes model (cached in ~/.cache/lisadiff/shapes-model-v1, or $LISADIFF_CACHE_DIR).
shapes="${LISADIFF_CACHE_DIR:-$HOME/.cache/lisadiff}/shapes-model-v1"
echo "[demo] scripts/make_shapes_model.sh: a pipeline trained from random weights on coloured shapes"
"$ROOT/scripts/make_shapes_model.sh" "$shapes"

# 2. LISA teaches it a colour it never saw. Held-out prompts before and after, scored.
known=red,green,blue,yellow,purple,white,black
"$lisadiff" make-dataset --kind t2i --format folder --n 600 --size 32 --seed 11 --colors orange \
  --backgrounds "$known" --out "$out/orange" --overwrite
"$lisadiff" make-dataset --kind t2i --format folder --n 16 --size 32 --seed 12 --colors orange \
  --backgrounds "$known" --out "$out/orange-heldout" --overwrite
sed -e 's/.*"text":"\([^"]*\)".*/\1/' "$out/orange-heldout/metadata.jsonl" > "$out/orange-prompts.txt"
echo "[demo] lisadiff generate + score: the shapes model on 16 orange prompts (before)"
"$lisadiff" --log-level warn generate "$shapes" --prompts "$out/orange-prompts.txt" --scheduler ddim --steps 25 \
  --guidance_scale 1 --seed 0 --out "$out/orange-before" --overwrite
"$lisadiff" score "$out/orange-before"
echo "[demo] text_to_image --method lisa: 300 steps on 600 orange shapes -> $out/t2i-lisa"
rm -rf "$out/t2i-lisa"
"$BUILD/apps/text_to_image" --pretrained_model_name_or_path "$shapes" --train_data_dir "$out/orange" \
  --resolution 32 --train_batch_size 16 --max_train_steps 300 --learning_rate 3e-4 --lr_scheduler constant \
  --method lisa --lisa_n_active 8 --lisa_interval 20 --seed 1 --output_dir "$out/t2i-lisa"
echo "[demo] lisadiff generate + score: the fine-tuned model on the same prompts and seeds (after)"
"$lisadiff" --log-level warn generate "$out/t2i-lisa" --prompts "$out/orange-prompts.txt" --scheduler ddim \
  --steps 25 --guidance_scale 1 --seed 0 --out "$out/orange-after" --overwrite
"$lisadiff" score "$out/orange-after"
"$lisadiff" plot "$out/t2i-lisa" --out "$out/t2i-lisa/metrics.png"
echo "[demo] before: $out/orange-before/grid.png  after: $out/orange-after/grid.png  the run: $out/t2i-lisa (metrics.png)"
echo "[demo] the tour so far took $((SECONDS - tour_start)) s; the other recipes follow"

# 3. The rest of the product, briefly.
echo "[demo] lisadiff init-pipeline --preset tiny --seed 0 --out $out/tiny-sd"
"$lisadiff" init-pipeline --preset tiny --seed 0 --out "$out/tiny-sd" --overwrite
echo "[demo] lisadiff inspect $out/tiny-sd"
"$lisadiff" inspect "$out/tiny-sd"
echo "[demo] lisadiff make-dataset --kind dpo --format wds --n 64 --size 128 --out $out/shapes-dpo"
"$lisadiff" make-dataset --kind dpo --format wds --n 64 --size 128 --seed 0 --out "$out/shapes-dpo" --overwrite
echo "[demo] lisadiff make-dataset --kind t2i --format folder --n 64 --size 128 --out $out/shapes-t2i"
"$lisadiff" make-dataset --kind t2i --format folder --n 64 --size 128 --seed 0 --out "$out/shapes-t2i" --overwrite
head -n 3 "$out/shapes-t2i/metadata.jsonl"

if [ "${LISADIFF_DEMO_SD15:-0}" != 0 ]; then
  if [ ! -f "$out/sd15/model_index.json" ]; then
    echo "[demo] lisadiff init-pipeline --preset sd15 --seed 0 --out $out/sd15 (4.3 GB)"
    start=$SECONDS
    "$lisadiff" init-pipeline --preset sd15 --seed 0 --out "$out/sd15"
    echo "[demo] wrote the SD1.5-size pipeline in $((SECONDS - start)) s"
  fi
  echo "[demo] lisadiff inspect $out/sd15"
  "$lisadiff" inspect "$out/sd15"
fi

# A recipe: InstructPix2Pix fine-tuning of the tiny pipeline with LISA on synthetic edits
# (a few seconds), then an edit with the trained pipeline.
echo "[demo] lisadiff make-dataset --kind ip2p --format folder --n 32 --size 64 --out $out/shapes-ip2p"
"$lisadiff" make-dataset --kind ip2p --format folder --n 32 --size 64 --seed 0 --out "$out/shapes-ip2p" --overwrite
echo "[demo] instruct_pix2pix --method lisa: 40 steps of the tiny pipeline on it -> $out/ip2p-lisa"
rm -rf "$out/ip2p-lisa"
"$BUILD/apps/instruct_pix2pix" --pretrained_model_name_or_path "$out/tiny-sd" --dataset_name "$out/shapes-ip2p" \
  --resolution 64 --train_batch_size 4 --max_train_steps 40 --checkpointing_steps 20 --learning_rate 1e-3 \
  --conditioning_dropout_prob 0.05 --seed 0 --method lisa --lisa_interval 5 \
  --val_image_url "$out/shapes-ip2p/images/000000000_input.png" --validation_prompt "make the triangle red" \
  --num_validation_images 2 --validation_epochs 2 --output_dir "$out/ip2p-lisa"
echo "[demo] lisadiff generate $out/ip2p-lisa --image .../000000001_input.png --prompt 'make the circle white'"
"$lisadiff" generate "$out/ip2p-lisa" --image "$out/shapes-ip2p/images/000000001_input.png" \
  --prompt "make the circle white" --steps 10 --seed 0 --out "$out/ip2p-edit" --overwrite
"$lisadiff" plot "$out/ip2p-lisa" --out "$out/ip2p-lisa/metrics.png"
echo "[demo] the run: $out/ip2p-lisa (pipeline, checkpoints, validation/, metrics.png); the edit: $out/ip2p-edit"

# The same recipe on 2 processes (data-parallel over Gloo, as accelerate launch): each takes
# half of every global batch, gradients are averaged before each step (docs/distributed.md).
echo "[demo] lisadiff launch --num_processes 2 instruct_pix2pix: 10 steps, 2 examples per process -> $out/ip2p-2proc"
rm -rf "$out/ip2p-2proc"
"$lisadiff" launch --num_processes 2 --main_process_port "$((29500 + $$ % 1000))" instruct_pix2pix \
  --pretrained_model_name_or_path "$out/tiny-sd" --dataset_name "$out/shapes-ip2p" --resolution 64 \
  --train_batch_size 2 --max_train_steps 10 --checkpointing_steps 5 --learning_rate 1e-3 --seed 0 \
  --method lisa --lisa_interval 5 --output_dir "$out/ip2p-2proc"
echo "[demo] the 2-process run: $out/ip2p-2proc (metrics.jsonl: the ranks' mean loss, comm_wait)"

# The second recipe: Diffusion-DPO of the tiny pipeline on the synthetic preference pairs
# (the webdataset shards above), LISA with the pretrained UNet as the reference, then the
# metrics' plot: loss, implicit_acc, raw_model_loss, ref_loss. With random weights implicit
# accuracy stays near 0.5: the models are no denoisers yet (docs/recipes/diffusion_dpo.md).
echo "[demo] diffusion_dpo --method lisa: 30 steps of the tiny pipeline on $out/shapes-dpo -> $out/dpo-lisa"
rm -rf "$out/dpo-lisa"
"$BUILD/apps/diffusion_dpo" --pretrained_model_name_or_path "$out/tiny-sd" --dataset_name "$out/shapes-dpo" \
  --resolution 64 --train_batch_size 4 --max_train_steps 30 --checkpointing_steps 15 --learning_rate 1e-4 \
  --seed 0 --method lisa --lisa_rate 0.25 --lisa_interval 5 --output_dir "$out/dpo-lisa"
"$lisadiff" plot "$out/dpo-lisa" --out "$out/dpo-lisa/metrics.png"
echo "[demo] the run: $out/dpo-lisa (pipeline, checkpoints, metrics.png)"

# The third recipe: latent consistency distillation of the tiny pipeline with LISA on
# text-to-image webdataset shards (the student gets a guidance-scale embedding; the target
# follows it by EMA), then 4-step LCM sampling with the student, and the metrics' plot.
echo "[demo] lisadiff make-dataset --kind t2i --format wds --n 64 --size 128 --out $out/shapes-t2i-wds"
"$lisadiff" make-dataset --kind t2i --format wds --n 64 --size 128 --seed 0 --out "$out/shapes-t2i-wds" --overwrite
echo "[demo] lcm_distill --method lisa: 30 steps of the tiny pipeline on it -> $out/lcm-lisa"
rm -rf "$out/lcm-lisa"
"$BUILD/apps/lcm_distill" --pretrained_teacher_model "$out/tiny-sd" \
  --train_shards_path_or_url "$out/shapes-t2i-wds/00000.tar" --resolution 64 --train_batch_size 4 \
  --max_train_steps 30 --checkpointing_steps 15 --validation_steps 15 --learning_rate 1e-4 --loss_type huber \
  --seed 0 --method lisa --lisa_rate 0.25 --lisa_interval 3 --output_dir "$out/lcm-lisa"
echo "[demo] lisadiff generate $out/tiny-sd --unet $out/lcm-lisa/unet --scheduler lcm --steps 4 --prompt 'a red circle'"
"$lisadiff" generate "$out/tiny-sd" --unet "$out/lcm-lisa/unet" --scheduler lcm --steps 4 --prompt "a red circle" \
  --seed 0 --out "$out/lcm-generated" --overwrite
"$lisadiff" plot "$out/lcm-lisa" --out "$out/lcm-lisa/metrics.png"
echo "[demo] the run: $out/lcm-lisa (unet/, unet_target/, checkpoints, validation/, metrics.png); 4-step images: $out/lcm-generated"

# Last: pictures from the fine-tuned shapes model, the new colour and the old ones.
echo "[demo] lisadiff generate $out/t2i-lisa: four prompts, two seeds each -> $out/generated"
"$lisadiff" generate "$out/t2i-lisa" --prompt "a orange circle on a blue background" \
  --prompt "a orange triangle on a black background" --prompt "a red square on a white background" \
  --prompt "a green triangle on a purple background" --images_per_prompt 2 --scheduler ddim --steps 25 \
  --guidance_scale 1 --seed 0 --out "$out/generated" --overwrite
echo "[demo] done in $((SECONDS - tour_start)) s. Pictures:"
echo "  $out/orange-before/grid.png   the shapes model on orange prompts (it never saw orange)"
echo "  $out/orange-after/grid.png    the same prompts and seeds after 300 LISA steps"
echo "  $out/t2i-lisa/metrics.png     the LISA run's loss and learning rate"
echo "  $out/generated/grid.png       the fine-tuned model on new and old colours"
echo "  $out/ip2p-edit, $out/lcm-generated, $out/dpo-lisa/metrics.png   the other recipes"
