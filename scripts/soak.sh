#!/usr/bin/env bash
# Kill-and-resume soak (docs/hardening.md). For each recipe (the test fixtures' micro
# pipelines, LISA, CPU): one uninterrupted run, then KILLS runs that are each killed with
# SIGKILL at a random moment and resumed with --resume_from_checkpoint latest until they end.
# Every finished run's final weights must equal the uninterrupted run's bit for bit, and no
# run may ever find a half-written checkpoint: after each kill, every checkpoint-N folder must
# be complete (its checkpoint.json marker lists files that are all there). The moments:
# a random time in the run, the instant a checkpoint starts being written (its hidden
# .checkpoint-N.tmp-PID folder appears), and inside a validation pass (after its
# "[validation] ... running" line).
#   scripts/soak.sh                    20 kills per recipe (docs/hardening.md's counts)
#   scripts/soak.sh --kills 3          what CI runs
#   scripts/soak.sh --recipes "text_to_image lcm_distill" --kills 5 --seed 7
# Needs the build (scripts/setup.sh). Exit status 1 when any run differs or a checkpoint was
# half-written.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${LISADIFF_BUILD_DIR:-$ROOT/build}"
kills=20
recipes="text_to_image instruct_pix2pix diffusion_dpo lcm_distill"
seed=1
work=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kills) kills=$2; shift 2 ;;
    --recipes) recipes=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$kills" =~ ^[0-9]+$ && "$seed" =~ ^[0-9]+$ ]] || { echo "soak.sh: --kills and --seed take integers" >&2; exit 2; }
APPS="$BUILD/apps"
[ -x "$APPS/text_to_image" ] || { echo "soak.sh: $APPS/text_to_image not built (run scripts/setup.sh)" >&2; exit 1; }
FIX="$ROOT/tests/fixtures"
[ -n "$work" ] || work=$(mktemp -d "${TMPDIR:-/tmp}/lisadiff-soak.XXXXXX")
mkdir -p "$work"
RANDOM=$seed
say() { printf '[soak] %s\n' "$*"; }

# Datasets, made once.
data="$work/data"
if [ ! -f "$data/.done" ]; then
  rm -rf "$data"
  "$APPS/lisadiff" make-dataset --kind t2i --format folder --n 12 --size 40 --out "$data/t2i" >/dev/null
  "$APPS/lisadiff" make-dataset --kind ip2p --format folder --n 10 --size 40 --out "$data/ip2p" >/dev/null
  "$APPS/lisadiff" make-dataset --kind dpo --format folder --n 12 --size 40 --out "$data/dpo" >/dev/null
  "$APPS/lisadiff" make-dataset --kind t2i --format wds --n 12 --size 40 --shard-size 4 --out "$data/wds" >/dev/null
  touch "$data/.done"
fi

# The command of a recipe's run into OUT: frequent checkpoints and validation passes, so that
# random kills land in them too. The files whose bytes must match the uninterrupted run's.
command_of() {
  local recipe=$1 out=$2
  local common="--resolution 32 --train_batch_size 2 --gradient_accumulation_steps 2 --max_train_steps 12 \
--checkpointing_steps 2 --seed 3 --learning_rate 1e-3 --lisa_interval 3 --lr_scheduler cosine --lr_warmup_steps 2 \
--method lisa --output_dir $out"
  case "$recipe" in
    text_to_image)
      echo "$APPS/text_to_image --pretrained_model_name_or_path $FIX/pipelines/micro-sd --train_data_dir $data/t2i \
$common --random_flip --validation_prompts 'a red circle' --validation_epochs 1" ;;
    instruct_pix2pix)
      echo "$APPS/instruct_pix2pix --pretrained_model_name_or_path $FIX/pipelines/micro-sd --train_data_dir $data/ip2p \
$common --conditioning_dropout_prob 0.1 --val_image_url $FIX/inference/source.png --validation_prompt 'make it blue' \
--num_validation_images 1 --validation_epochs 1" ;;
    diffusion_dpo)
      echo "$APPS/diffusion_dpo --pretrained_model_name_or_path $FIX/pipelines/micro-sd --dataset_name $data/dpo \
$common --random_crop --ref_update_rate 0.01 --run_validation --validation_steps 3" ;;
    lcm_distill)
      echo "$APPS/lcm_distill --pretrained_teacher_model $FIX/pipelines/micro-sd \
--train_shards_path_or_url '$data/wds/{00000..00002}.tar' $common --loss_type huber --validation_steps 3" ;;
  esac
}
final_files() {
  case "$1" in
    lcm_distill) echo "unet/diffusion_pytorch_model.safetensors unet_target/diffusion_pytorch_model.safetensors" ;;
    *) echo "unet/diffusion_pytorch_model.safetensors" ;;
  esac
}

# Every checkpoint-N folder of OUT complete: the marker exists and lists files that are all
# there. Prints the problem and returns 1 otherwise.
check_checkpoints() {
  local out=$1 dir
  for dir in "$out"/checkpoint-*; do
    [ -d "$dir" ] || continue
    if [ ! -f "$dir/checkpoint.json" ]; then
      echo "$dir has no checkpoint.json"
      return 1
    fi
    local missing
    missing=$(grep -o '"[^"]*"' "$dir/checkpoint.json" | tr -d '"' | grep -v -e '^files$' -e '^global_step$' \
      -e '^saved_at_unix$' | while read -r f; do [ -f "$dir/$f" ] || echo "$f"; done)
    if [ -n "$missing" ]; then
      echo "$dir lacks $missing"
      return 1
    fi
  done
}

# Starts CMD in the background writing LOG; kills it with SIGKILL at the chosen moment.
# Prints what the kill hit. Returns 0 when it was killed, 1 when it ended first.
run_and_kill() {
  local cmd=$1 out=$2 log=$3 mode=$4 delay=$5
  bash -c "exec $cmd" >"$log" 2>&1 &
  local pid=$! start=$SECONDS hit="time ${delay}s"
  case "$mode" in
    time) sleep "$delay" ;;
    checkpoint)  # the Nth checkpoint write (delay = N), the instant its temporary folder appears
      local seen=0 last=""
      while kill -0 "$pid" 2>/dev/null; do
        local tmps tmp  # a glob, not find: this loop polls every 5 ms beside the run it watches
        shopt -s nullglob; tmps=("$out"/.checkpoint-*.tmp-*); shopt -u nullglob
        tmp=${tmps[0]:-}
        if [ -n "$tmp" ] && [ "$tmp" != "$last" ]; then
          seen=$((seen + 1)); last=$tmp
          if [ "$seen" -ge "$delay" ]; then hit="writing $(basename "$tmp")"; break; fi
        fi
        sleep 0.005
      done ;;
    validation)  # inside the Nth validation pass: its "running" line, then a random 0-90 ms
      while kill -0 "$pid" 2>/dev/null; do
        local passes  # empty while the log does not exist yet
        passes=$(grep -c '\[validation\] .*: running' "$log" 2>/dev/null || true)
        if [ "${passes:-0}" -ge "$delay" ]; then
          sleep "0.0$((RANDOM % 10))"
          hit="in validation pass $delay"
          break
        fi
        sleep 0.005
      done ;;
  esac
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    echo "$hit"
    return 0
  fi
  wait "$pid" 2>/dev/null || true
  echo "ended before the kill ($hit)"
  return 1
}

status=0
report="$work/soak-report.txt"
: >"$report"
for recipe in $recipes; do
  dir="$work/$recipe"
  rm -rf "$dir"
  mkdir -p "$dir"
  start=$SECONDS
  if ! eval "$(command_of "$recipe" "$dir/straight")" >"$dir/straight.log" 2>&1; then
    say "$recipe: the uninterrupted run failed; see $dir/straight.log"
    status=1
    continue
  fi
  straight_s=$((SECONDS - start))
  [ "$straight_s" -ge 1 ] || straight_s=1
  say "$recipe: uninterrupted run $straight_s s; $kills kills"
  killed=0 resumed=0 equal=0 half=0 ended=0
  for i in $(seq 1 "$kills"); do
    out="$dir/run-$i"
    # A run that ends before its kill is drawn again (another moment), up to 5 times.
    for attempt in 1 2 3 4 5; do
      case $((i % 3)) in
        1) mode=time; delay="$((RANDOM % straight_s)).$((RANDOM % 10))" ;;
        2) mode=checkpoint; delay=$((1 + RANDOM % 6)) ;;
        0) mode=validation; delay=$((1 + RANDOM % 3)) ;;
      esac
      if hit=$(run_and_kill "$(command_of "$recipe" "$out")" "$out" "$out.kill.log" "$mode" "$delay"); then
        killed=$((killed + 1))
        break
      fi
      ended=$((ended + 1))
      rm -rf "$out"
    done
    if ! problem=$(check_checkpoints "$out"); then
      say "$recipe run $i: half-written checkpoint after the kill ($hit): $problem"
      half=$((half + 1)); status=1
      continue
    fi
    # Resume until the run ends (a resume is never killed here).
    if ! eval "$(command_of "$recipe" "$out") --resume_from_checkpoint latest" >"$out.resume.log" 2>&1; then
      say "$recipe run $i: the resume failed ($hit); see $out.resume.log"
      status=1
      continue
    fi
    resumed=$((resumed + 1))
    same=1
    for f in $(final_files "$recipe"); do
      cmp -s "$dir/straight/$f" "$out/$f" || { same=0; say "$recipe run $i: $f differs from the uninterrupted run's ($hit)"; }
    done
    if [ "$same" -eq 1 ]; then equal=$((equal + 1)); else status=1; fi
    from=$(grep -o 'resumed from [^ ]*' "$out.resume.log" | head -1 | sed 's|.*/||' || true)
    printf '%s run %d: %s; resumed from %s; %s\n' "$recipe" "$i" "$hit" "${from:-the start}" \
      "$([ "$same" -eq 1 ] && echo "equal" || echo "DIFFERENT")" >>"$report"
    rm -rf "$out"
  done
  line="$recipe: $kills runs, $killed killed ($ended draws ended before their kill and were drawn again), $resumed resumed to the end, $equal equal bit for bit, $half half-written checkpoints; $((SECONDS - start)) s"
  say "$line"
  echo "$line" >>"$report"
done
say "report: $report"
exit $status
