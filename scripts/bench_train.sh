#!/usr/bin/env bash
# Training-step benchmark, C++ (build/bench/bench_train_step) against the Python reference
# (scripts/bench_train_step.py: diffusers + torch + peft) on the same machine in the same run.
# Every measurement is its own process (so peak RSS is per run); each (regime, side) runs
# --repeats times, interleaved C++/Python, and the table shows the median over the repeats.
#
#   scripts/bench_train.sh [--sd15] [--repeats 2] [--out DIR] [--regimes "full-classic full-fused lora lisa"]
#                          [--tiny-steps 20] [--tiny-warmup 3] [--sd15-steps 3] [--sd15-warmup 1]
#                          [--sd15-regimes "..."] [--sd15-gc] [--latent 32] [--batch 1] [--threads N]
#                          [--wait-idle SECONDS] [--bf16-frozen]
#
# The machine may be shared: --wait-idle S waits (at most S seconds) before each run until the
# --bf16-frozen runs both sides under bfloat16 autocast with the frozen weights stored in
# bfloat16 (LISA's precision switch, LoRA's frozen base; regimes lora and lisa only).
# CPUs are at least 90 % idle over 2 s. Each result records the 1-minute load average, and the
# process's CPU time per step next to the wall-clock time.
# LISA runs with one active set (the C++ draw, replayed by the Python side) for the whole run.
#   (a) the tiny preset (lisadiff init-pipeline --preset tiny --seed 0), every regime;
#   (b) with --sd15: the full SD1.5 architecture (--preset sd15, random weights, 4.3 GB on disk),
#       each regime only when MemAvailable covers its estimate (see need_bytes below); a
#       regime that does not fit is reported, not run. --sd15-gc adds --gradient-checkpointing.
#
# Writes DIR/{tiny,sd15}/<regime>.<side>.<repeat>.json, DIR/{tiny,sd15}.md (the tables) and keeps
# the pipelines in DIR/pipelines (reused by a later run with the same --out). Default DIR: a new
# folder under ${TMPDIR:-/tmp}. Needs the build (scripts/setup.sh) and the project venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${LISADIFF_BUILD_DIR:-$ROOT/build}"

bf16=0 sd15=0 repeats=2 out="" regimes="full-classic full-fused lora lisa" sd15_regimes="" sd15_gc=0
tiny_steps=20 tiny_warmup=3 sd15_steps=3 sd15_warmup=1 latent=32 batch=1 threads=0 wait_idle=0
usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "${BASH_SOURCE[0]}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --sd15) sd15=1 ;;
    --sd15-gc) sd15_gc=1 ;;
    --bf16-frozen) bf16=1 ;;
    --repeats) repeats="$2"; shift ;;
    --out) out="$2"; shift ;;
    --regimes) regimes="$2"; shift ;;
    --sd15-regimes) sd15_regimes="$2"; shift ;;
    --tiny-steps) tiny_steps="$2"; shift ;;
    --tiny-warmup) tiny_warmup="$2"; shift ;;
    --sd15-steps) sd15_steps="$2"; shift ;;
    --sd15-warmup) sd15_warmup="$2"; shift ;;
    --latent) latent="$2"; shift ;;
    --batch) batch="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    --wait-idle) wait_idle="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench_train.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$sd15_regimes" ] || sd15_regimes="$regimes"
for r in $regimes $sd15_regimes; do
  case "$r" in full-classic|full-fused|lora|lisa) ;; *) echo "bench_train.sh: unknown regime '$r'" >&2; exit 2 ;; esac
done

CLI="$BUILD/apps/lisadiff"
BENCH="$BUILD/bench/bench_train_step"
for f in "$CLI" "$BENCH"; do
  [ -x "$f" ] || { echo "bench_train.sh: $f is missing: build first (scripts/setup.sh, or ninja -C $BUILD bench_train_step lisadiff)" >&2; exit 1; }
done
PY="$(grep '^LISADIFF_PYTHON:' "$BUILD/CMakeCache.txt" | cut -d= -f2)"
[ -x "$PY" ] || { echo "bench_train.sh: no LISADIFF_PYTHON in $BUILD/CMakeCache.txt" >&2; exit 1; }
[ -n "$out" ] || out="$(mktemp -d "${TMPDIR:-/tmp}/lisadiff-bench.XXXXXX")"
mkdir -p "$out/pipelines"

mem_available() { awk '/^MemAvailable:/ {printf "%.0f\n", $2 * 1024}' /proc/meminfo; }
# Share of idle CPU time (percent) over 2 s, all CPUs.
idle_percent() {
  local a b
  a=($(head -1 /proc/stat)); sleep 2; b=($(head -1 /proc/stat))
  local total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  echo $(( total > 0 ? 100 * (b[4] + b[5] - a[4] - a[5]) / total : 100 ))
}
wait_for_idle() {
  [ "$wait_idle" -gt 0 ] || return 0
  local until=$((SECONDS + wait_idle)) idle
  while idle=$(idle_percent); [ "$idle" -lt 90 ] && [ "$SECONDS" -lt "$until" ]; do sleep 3; done
  echo "[bench]   CPU idle ${idle} % before the run" >&2
}
gib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1073741824}'; }

# Estimated peak bytes of one process (lisa.md section 5): W = the UNet's fp32 weight bytes;
# full-classic 4W (weights, grads, two moments), full-fused 3W (weights, two moments; one
# gradient at a time), lora and lisa W; plus activations and the runtime (3 GiB at 32x32 latents,
# batch 1; scaled with batch * latent^2).
need_bytes() {
  local regime="$1" w="$2" k
  case "$regime" in full-classic) k=4 ;; full-fused) k=3 ;; *) k=1 ;; esac
  awk -v k="$k" -v w="$w" -v b="$batch" -v l="$latent" 'BEGIN {printf "%.0f", k * w + 3 * 1073741824 * b * (l / 32) ^ 2}'
}

# run_all NAME PIPELINE STEPS WARMUP "REGIMES" EXTRA_FLAGS CHECK_MEMORY
run_all() {
  local name="$1" pipe="$2" steps="$3" warmup="$4" regs="$5" extra="$6" check="$7"
  local dir="$out/$name" w need avail
  mkdir -p "$dir"
  w=$(stat -c %s "$pipe/unet/diffusion_pytorch_model.safetensors")
  : > "$dir/skipped.txt"
  for regime in $regs; do
    if [ "$check" = 1 ]; then
      need=$(need_bytes "$regime" "$w")
      avail=$(mem_available)
      if [ "$avail" -lt "$need" ]; then
        echo "$regime: needs about $(gib "$need") GiB, $(gib "$avail") GiB available: not run" | tee -a "$dir/skipped.txt" >&2
        continue
      fi
    fi
    for rep in $(seq 1 "$repeats"); do
      local common=(--pipeline "$pipe" --regime "$regime" --steps "$steps" --warmup "$warmup" --batch "$batch"
                    --latent "$latent" --seed 0)
      # shellcheck disable=SC2206
      local flags=($extra)
      [ "$threads" -gt 0 ] && common+=(--threads "$threads")
      # One active set for the whole run: the Python side replays the C++ draw, and it cannot
      # replay later re-draws (a re-draw is one freeze/activate pass, not what is measured here).
      [ "$regime" = lisa ] && common+=(--lisa-interval 1000000)
      wait_for_idle
      echo "[bench] $name $regime C++ run $rep/$repeats (load $(uptime | sed 's/.*load average: //'))" >&2
      "$BENCH" "${common[@]}" "${flags[@]}" --json "$dir/$regime.cpp.$rep.json" > /dev/null 2> "$dir/$regime.cpp.$rep.log" ||
        { tail -20 "$dir/$regime.cpp.$rep.log" >&2; echo "bench_train.sh: bench_train_step failed ($dir/$regime.cpp.$rep.log)" >&2; exit 1; }
      local t
      t=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["threads"])' "$dir/$regime.cpp.$rep.json")
      local pyflags=(--threads "$t")
      [ "$regime" = lisa ] && pyflags+=(--lisa-active "$dir/$regime.cpp.$rep.json")
      wait_for_idle
      echo "[bench] $name $regime Python run $rep/$repeats (load $(uptime | sed 's/.*load average: //'))" >&2
      "$PY" "$ROOT/scripts/bench_train_step.py" "${common[@]}" "${flags[@]}" "${pyflags[@]}" \
        --json "$dir/$regime.python.$rep.json" > /dev/null 2> "$dir/$regime.python.$rep.log" ||
        { tail -20 "$dir/$regime.python.$rep.log" >&2; echo "bench_train.sh: bench_train_step.py failed ($dir/$regime.python.$rep.log)" >&2; exit 1; }
    done
  done
  "$PY" - "$dir" "$regs" > "$out/$name.md" <<'EOF'
import json, statistics, sys
from pathlib import Path
d, regs = Path(sys.argv[1]), sys.argv[2].split()
def load(regime, side):
    rs = [json.loads(p.read_text()) for p in sorted(d.glob(f"{regime}.{side}.*.json"))]
    for r in rs:  # peak over the training steps minus the runtime (RSS at start) and the weights
        r["train_memory"] = r["train_peak_rss_bytes"] - r["rss_start_bytes"] - r["param_bytes"]
    return rs
med = lambda rs, k: statistics.median(r[k] for r in rs)
mib = lambda b: f"{b / 2**20:,.0f}"
def size(b):
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= k:
            return f"{b / k:,.1f} {unit}"
    return f"{b:.0f} B"
loads = lambda rs: [x for r in rs for x in (r["loadavg_start"], r["loadavg_end"])]
steps = lambda rs: ", ".join(f"{r['step_median_s']:.4g}" for r in rs)
print("| regime | C++ step (s) | Python step (s) | C++/Py | C++ CPU s/step | Python CPU s/step | C++/Py "
      "| C++ peak RSS (MiB) | Python peak RSS (MiB) | C++/Py | C++ training memory (MiB) | Python training memory (MiB) "
      "| optimizer state C++ / Py | trainable params |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
notes = []
for regime in regs:
    c, p = load(regime, "cpp"), load(regime, "python")
    if not c or not p:
        continue
    cs, ps = med(c, "step_median_s"), med(p, "step_median_s")
    cr, pr = med(c, "peak_rss_bytes"), med(p, "peak_rss_bytes")
    cc, pc = med(c, "step_cpu_median_s"), med(p, "step_cpu_median_s")
    co, po = med(c, "train_memory"), med(p, "train_memory")
    tc, tp = c[0]["trainable_params"], p[0]["trainable_params"]
    print(f"| {regime} | {cs:.4g} | {ps:.4g} | {cs / ps:.2f} | {cc:.4g} | {pc:.4g} | {cc / pc:.2f} "
          f"| {mib(cr)} | {mib(pr)} | {cr / pr:.2f} | {mib(co)} | "
          f"{mib(po)} | {size(med(c, 'optimizer_state_bytes'))} / {size(med(p, 'optimizer_state_bytes'))} | "
          f"{tc:,}" + ("" if tc == tp else f" (Py {tp:,})") + " |")
    dl = max(abs(a["losses"][0] - b["losses"][0]) for a, b in zip(c, p))
    notes.append(f"{regime}: step-0 loss C++ {c[0]['losses'][0]:.6f}, Python {p[0]['losses'][0]:.6f} (max diff {dl:.1e}); "
                 f"repeats {len(c)}/{len(p)}; C++ step medians {steps(c)}; "
                 f"Python {steps(p)}; RSS at start C++ {mib(med(c, 'rss_start_bytes'))} MiB, Python "
                 f"{mib(med(p, 'rss_start_bytes'))} MiB; before training C++ {mib(med(c, 'rss_before_train_bytes'))} "
                 f"MiB (file pages {mib(med(c, 'rss_file_before_train_bytes'))}), Python "
                 f"{mib(med(p, 'rss_before_train_bytes'))} MiB (file pages {mib(med(p, 'rss_file_before_train_bytes'))}); "
                 f"load C++ {med(c, 'load_s'):.2f} s, Python {med(p, 'load_s'):.2f} s; 1-min load average during "
                 f"the runs {min(loads(c + p)):.2f} to {max(loads(c + p)):.2f}")
first = next((load(r, "cpp")[0] for r in regs if load(r, "cpp")), None)
if first:
    py = next(load(r, "python")[0] for r in regs if load(r, "python"))
    print(f"\nthreads: C++ {first['threads']} (interop {first['interop_threads']}), Python {py['threads']} "
          f"(interop {py['interop_threads']}); torch {first['torch_version']} / {py['torch_version']}; "
          f"{first['total_params']:,} UNet parameters in {first['param_tensors']} tensors; steps {first['steps']} "
          f"timed after {first['warmup']} warmup; batch {first['batch']}, latents {first['latent']}x{first['latent']}"
          f"{', gradient checkpointing' if first['gradient_checkpointing'] else ''}"
          f"{', bfloat16 autocast with bfloat16 frozen weights' if first.get('bf16_frozen') else ''}. Medians over the repeats of each "
          "run's median step; training memory = peak RSS over the training steps - RSS at start (runtime) - "
          f"parameter bytes ({mib(first['param_bytes'])} MiB)\n")
for n in notes:
    print(f"- {n}")
skipped = (d / "skipped.txt").read_text().strip()
if skipped:
    print("\nNot run:\n" + "\n".join(f"- {s}" for s in skipped.splitlines()))
EOF
  echo >&2
  echo "## $name" >&2
  cat "$out/$name.md"
}

echo "[bench] machine: $(nproc) cores, $(gib "$(awk '/^MemTotal:/ {printf "%.0f", $2 * 1024}' /proc/meminfo)") GiB; load $(uptime | sed 's/.*load average: //')" >&2
tiny="$out/pipelines/tiny"
[ -f "$tiny/unet/diffusion_pytorch_model.safetensors" ] || "$CLI" --log-level warn init-pipeline --preset tiny --seed 0 --out "$tiny" --overwrite
echo "## tiny preset"
common_extra=""
[ "$bf16" = 1 ] && common_extra="--bf16-frozen"
run_all tiny "$tiny" "$tiny_steps" "$tiny_warmup" "$regimes" "$common_extra" 0

if [ "$sd15" = 1 ]; then
  sd="$out/pipelines/sd15"
  if [ ! -f "$sd/unet/diffusion_pytorch_model.safetensors" ]; then
    avail_disk=$(df -B1 --output=avail "$out" | tail -1)
    [ "$avail_disk" -gt $((6 * 1073741824)) ] || { echo "bench_train.sh: the sd15 pipeline needs about 4.3 GB of disk under $out" >&2; exit 1; }
    echo "[bench] writing the sd15 pipeline (random weights, 4.3 GB) to $sd" >&2
    "$CLI" --log-level warn init-pipeline --preset sd15 --seed 0 --out "$sd" --overwrite
  fi
  extra="$common_extra"
  [ "$sd15_gc" = 1 ] && extra="$extra --gradient-checkpointing"
  echo
  echo "## sd15 architecture"
  run_all sd15 "$sd" "$sd15_steps" "$sd15_warmup" "$sd15_regimes" "$extra" 1
fi
echo "[bench] results in $out" >&2
