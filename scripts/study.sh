#!/usr/bin/env bash
# The study: LISA against LoRA and full fine-tuning on every recipe, on the shapes model
# (scripts/make_shapes_model.sh), with the same data, steps and seeds, judged by
# `lisadiff score` (does the image show the prompted colour and shape?) and measured (held-out
# loss, step time, peak RSS, trainable parameters, all from the runs' metrics.jsonl). The
# tables and pictures of docs/study.md come from its output:
#
#   scripts/study.sh [--out DIR] [--seeds N] [--tasks t2i,ip2p,dpo,lcm] [--no-knobs] [--smoke]
#
# Tasks (each starts from the shapes model, which never saw the colour orange):
#   t2i   text_to_image on orange shapes: a colour the model never saw. Score: orange prompts;
#         retention: prompts in the known colours; held-out loss on unseen orange images
#   ip2p  instruct_pix2pix on recolour edits. Score: 24 held-out edits (asked colour and
#         shape, the source's background kept)
#   dpo   diffusion_dpo on pairs whose preferred image matches the caption. Score: prompts in
#         the known colours; held-out loss
#   lcm   lcm_distill of the shapes model. Score: the student in 4 LCM steps against the
#         teacher in 4 and 25 DDIM steps
# For t2i the LISA knobs run too (active units 2/8/32, re-draw interval 5/20/100, block units,
# no always-on first tensor, frozen weights in bf16), on the first seed.
# Every run is kept under DIR/runs/<task>/<variant>/seed<S>/ (result.json once finished; a
# second invocation skips finished runs); DIR/study.md holds the tables (scripts/study_report.py).
# --smoke: a few steps, one seed, small evaluations, its own shapes model: checks that every
# table cell gets filled (CI runs it), says nothing about quality.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${LISADIFF_BUILD_DIR:-$ROOT/build}"
APPS="$BUILD/apps"
lisadiff="$APPS/lisadiff"
OUT="$BUILD/study"
SEEDS=3
TASKS=t2i,ip2p,dpo,lcm
KNOBS=1
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --seeds) SEEDS="$2"; shift 2 ;;
    --tasks) TASKS="$2"; shift 2 ;;
    --no-knobs) KNOBS=0; shift ;;
    --smoke) SMOKE=1; shift ;;
    *) echo "study.sh: unknown option $1 (see the comment at the top of scripts/study.sh)" >&2; exit 2 ;;
  esac
done
PY="${LISADIFF_PYTHON:-$(grep '^LISADIFF_PYTHON:' "$BUILD/CMakeCache.txt" 2>/dev/null | cut -d= -f2)}"
[ -n "$PY" ] || PY=python3

# Sizes: the study, or the smoke test's minimum.
if [ "$SMOKE" = 1 ]; then
  SEEDS=1
  STEPS=4; DPO_STEPS=4; LCM_STEPS=4; N_TRAIN=32; N_EVAL=4; N_EDITS=2; INTERVAL=2
  export SHAPES_VAE_STEPS=3 SHAPES_UNET_STEPS=3
  SHAPES="$OUT/shapes-model"
else
  STEPS=300; DPO_STEPS=200; LCM_STEPS=200; N_TRAIN=600; N_EVAL=48; N_EDITS=24; INTERVAL=20
  SHAPES="${LISADIFF_CACHE_DIR:-$HOME/.cache/lisadiff}/shapes-model-v1"
fi
mkdir -p "$OUT/data" "$OUT/runs" "$OUT/eval"
"$ROOT/scripts/make_shapes_model.sh" "$SHAPES"

known=red,green,blue,yellow,purple,white,black
data() {  # name, make-dataset arguments...
  local name="$1"; shift
  [ -e "$OUT/data/$name" ] || "$lisadiff" make-dataset "$@" --size 32 --out "$OUT/data/$name"
}
prompts_of() {  # metadata.jsonl -> one caption per line
  sed -e 's/.*"\(text\|caption\)":"\([^"]*\)".*/\2/' "$1"
}
data t2i-orange --kind t2i --format folder --n "$N_TRAIN" --seed 11 --colors orange --backgrounds "$known"
data t2i-orange-heldout --kind t2i --format folder --n "$N_EVAL" --seed 12 --colors orange --backgrounds "$known"
data t2i-known-heldout --kind t2i --format folder --n "$N_EVAL" --seed 13 --colors "$known" --backgrounds "$known"
data ip2p --kind ip2p --format folder --n "$N_TRAIN" --seed 21
data ip2p-heldout --kind ip2p --format folder --n "$N_EDITS" --seed 22
data dpo --kind dpo --format folder --n "$N_TRAIN" --seed 31
data lcm --kind t2i --format wds --shard-size 100 --n "$N_TRAIN" --seed 41 --colors "$known" --backgrounds "$known"
prompts_of "$OUT/data/t2i-orange-heldout/metadata.jsonl" > "$OUT/data/orange_prompts.txt"
prompts_of "$OUT/data/t2i-known-heldout/metadata.jsonl" > "$OUT/data/known_prompts.txt"

# generate + score: DIR, prompts file, generate arguments... -> DIR/score.json
gen_score() {
  local dir="$1" prompts="$2"; shift 2
  "$lisadiff" --log-level warn generate "$@" --prompts "$prompts" --seed 0 --out "$dir" --overwrite
  "$lisadiff" score "$dir" --json "$dir/score.json" > /dev/null
}
# The held-out edits: one generate per source image (its own prompt), scored together.
edit_score() {  # DIR, generate arguments...
  local dir="$1"; shift
  rm -rf "$dir"; mkdir -p "$dir"
  local i=0 index=""
  while IFS= read -r line; do
    local src prompt
    src="$OUT/data/ip2p-heldout/$(echo "$line" | sed -e 's/.*"input_image_file_name":"\([^"]*\)".*/\1/')"
    prompt="$(echo "$line" | sed -e 's/.*"edit_prompt":"\([^"]*\)".*/\1/')"
    "$lisadiff" --log-level warn generate "$@" --image "$src" --prompt "$prompt" --steps 20 --seed "$i" \
      --out "$dir/e$i" --overwrite
    cp "$dir/e$i/0000.png" "$dir/$i.png"
    index+="{\"file\": \"$i.png\", \"prompt\": \"$prompt\", \"image\": \"$src\"}"$'\n'
    i=$((i + 1))
  done < "$OUT/data/ip2p-heldout/metadata.jsonl"
  printf '%s' "$index" > "$dir/images.jsonl"
  "$lisadiff" score "$dir" --json "$dir/score.json" > /dev/null
}
ddim=(--scheduler ddim --steps 25 --guidance_scale 1)

# Scores of the shapes model itself: the "before" of every task.
if [ ! -f "$OUT/eval/base-orange/score.json" ]; then
  gen_score "$OUT/eval/base-orange" "$OUT/data/orange_prompts.txt" "$SHAPES" "${ddim[@]}"
  gen_score "$OUT/eval/base-known" "$OUT/data/known_prompts.txt" "$SHAPES" "${ddim[@]}"
  gen_score "$OUT/eval/base-known-4" "$OUT/data/known_prompts.txt" "$SHAPES" --scheduler ddim --steps 4 --guidance_scale 1
  "$lisadiff" eval-loss "$SHAPES" --data "$OUT/data/t2i-orange-heldout" --json "$OUT/eval/base-orange-loss.json"
  "$lisadiff" eval-loss "$SHAPES" --data "$OUT/data/t2i-known-heldout" --json "$OUT/eval/base-known-loss.json"
fi
# instruct_pix2pix starts from the shapes model with conv_in widened to 8 channels (the new
# ones zero): that model, unchanged, is its "before" (one step at lr 1e-30: a recipe runs >= 1).
if [[ ",$TASKS," == *,ip2p,* ]] && [ ! -f "$OUT/eval/base-ip2p/score.json" ]; then
  "$APPS/instruct_pix2pix" --pretrained_model_name_or_path "$SHAPES" --dataset_name "$OUT/data/ip2p" \
    --resolution 32 --train_batch_size 1 --max_train_steps 1 --learning_rate 1e-30 --method full --seed 0 \
    --output_dir "$OUT/eval/ip2p-start" > "$OUT/eval/ip2p-start.log" 2>&1
  edit_score "$OUT/eval/base-ip2p" "$OUT/eval/ip2p-start"
fi

lr_for() {  # method, lisa/full lr, lora lr
  if [ "$1" = lora ]; then echo "$3"; else echo "$2"; fi
}

# One training run and its evaluation. task, variant, method, seed, recipe arguments...
run() {
  local task="$1" variant="$2" method="$3" seed="$4"; shift 4
  local dir="$OUT/runs/$task/$variant/seed$seed"
  [ -f "$dir/result.json" ] && return 0
  rm -rf "$dir"; mkdir -p "$dir"
  echo "[study] $task $variant seed $seed"
  local start=$SECONDS
  case "$task" in
    t2i)
      "$APPS/text_to_image" --pretrained_model_name_or_path "$SHAPES" --train_data_dir "$OUT/data/t2i-orange" \
        --resolution 32 --train_batch_size 16 --max_train_steps "$STEPS" --lr_scheduler constant \
        --learning_rate "$(lr_for "$method" 3e-4 3e-3)" --method "$method" --seed "$seed" \
        --output_dir "$dir/out" "$@" > "$dir/train.log" 2>&1
      gen_score "$dir/orange" "$OUT/data/orange_prompts.txt" "$dir/out" "${ddim[@]}"
      gen_score "$dir/known" "$OUT/data/known_prompts.txt" "$dir/out" "${ddim[@]}"
      "$lisadiff" eval-loss "$dir/out" --data "$OUT/data/t2i-orange-heldout" --json "$dir/loss.json" > /dev/null
      ;;
    ip2p)
      "$APPS/instruct_pix2pix" --pretrained_model_name_or_path "$SHAPES" --dataset_name "$OUT/data/ip2p" \
        --resolution 32 --train_batch_size 16 --max_train_steps "$STEPS" --lr_scheduler constant \
        --learning_rate "$(lr_for "$method" 3e-4 3e-3)" --conditioning_dropout_prob 0.05 --method "$method" \
        --seed "$seed" --output_dir "$dir/out" "$@" > "$dir/train.log" 2>&1
      edit_score "$dir/edits" "$dir/out"
      ;;
    dpo)
      "$APPS/diffusion_dpo" --pretrained_model_name_or_path "$SHAPES" --dataset_name "$OUT/data/dpo" \
        --resolution 32 --train_batch_size 8 --max_train_steps "$DPO_STEPS" --lr_scheduler constant \
        --learning_rate "$(lr_for "$method" 5e-5 5e-4)" --method "$method" --seed "$seed" \
        --output_dir "$dir/out" "$@" > "$dir/train.log" 2>&1
      local model=("$dir/out")
      [ "$method" = lora ] && model=("$SHAPES" --lora "$dir/out/pytorch_lora_weights.safetensors")
      gen_score "$dir/known" "$OUT/data/known_prompts.txt" "${model[@]}" "${ddim[@]}"
      "$lisadiff" eval-loss "${model[@]}" --data "$OUT/data/t2i-known-heldout" --json "$dir/loss.json" > /dev/null
      ;;
    lcm)
      local shards=$(( (N_TRAIN + 99) / 100 )) spec
      printf -v spec "%s/data/lcm/{00000..%05d}.tar" "$OUT" $((shards - 1))
      [ "$shards" = 1 ] && spec="$OUT/data/lcm/00000.tar"
      "$APPS/lcm_distill" --pretrained_teacher_model "$SHAPES" --train_shards_path_or_url "$spec" \
        --resolution 32 --train_batch_size 16 --max_train_steps "$LCM_STEPS" --lr_scheduler constant \
        --learning_rate "$(lr_for "$method" 1e-4 1e-4)" --validation_steps 100000 --w_min 0 --w_max 0 \
        --method "$method" \
        --seed "$seed" --output_dir "$dir/out" "$@" > "$dir/train.log" 2>&1
      local student=(--unet "$dir/out/unet_target")
      [ "$method" = lora ] && student=(--lora "$dir/out/unet_lora/pytorch_lora_weights.safetensors")
      gen_score "$dir/known" "$OUT/data/known_prompts.txt" "$SHAPES" "${student[@]}" --scheduler lcm --steps 4 \
        --guidance_scale 1
      ;;
  esac
  "$PY" "$ROOT/scripts/study_report.py" result --run "$dir" --task "$task" --variant "$variant" \
    --method "$method" --seed "$seed" --seconds $((SECONDS - start))
}

IFS=, read -r -a tasks <<< "$TASKS"
for task in "${tasks[@]}"; do
  for seed in $(seq 1 "$SEEDS"); do
    for method in lisa lora full; do
      extra=()
      [ "$method" = lisa ] && extra=(--lisa_n_active 8 --lisa_interval "$INTERVAL")
      run "$task" "$method" "$method" "$seed" "${extra[@]}"
    done
  done
  if [ "$task" = t2i ] && [ "$KNOBS" = 1 ]; then
    lisa=(--lisa_n_active 8 --lisa_interval "$INTERVAL")
    run t2i lisa-units2 lisa 1 --lisa_n_active 2 --lisa_interval "$INTERVAL"
    run t2i lisa-units32 lisa 1 --lisa_n_active 32 --lisa_interval "$INTERVAL"
    run t2i lisa-interval5 lisa 1 --lisa_n_active 8 --lisa_interval 5
    run t2i lisa-interval100 lisa 1 --lisa_n_active 8 --lisa_interval 100
    run t2i lisa-block lisa 1 --lisa_unit block --lisa_n_active 8 --lisa_interval "$INTERVAL"
    run t2i lisa-no-first lisa 1 "${lisa[@]}" --lisa_always_on conv_out
    run t2i lisa-bf16-frozen lisa 1 "${lisa[@]}" --mixed_precision bf16 --frozen_dtype bf16
  fi
done

# Pictures: each task's images, one row per method, and its losses overlaid (seed 1).
"$PY" "$ROOT/scripts/study_report.py" grids --out "$OUT"
for task in "${tasks[@]}"; do
  runs=()
  for method in lisa lora full; do runs+=("$OUT/runs/$task/$method/seed1/out"); done
  "$lisadiff" plot "${runs[@]}" --labels LISA,LoRA,full --metrics loss --out "$OUT/figures/$task-loss.png"
done
check=()
[ "$SMOKE" = 1 ] && check=(--check)
"$PY" "$ROOT/scripts/study_report.py" report --out "$OUT" "${check[@]}"
echo "[study] tables: $OUT/study.md"
