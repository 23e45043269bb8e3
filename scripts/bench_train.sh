#!/usr/bin/env bash
# Training-step benchmark, C++ (build/bench/bench_train_step) against the Python reference
# (scripts/bench_train_step.py: diffusers + torch + peft) on the same machine in the same run.
# Every measurement is its own process (so peak RSS is per run); each (regime, side) runs
# --repeats times, interleaved C++/Python, and the table shows the median over the repeats.
#
#   scripts/bench_train.sh [--sd15] [--repeats 2] [--out DIR] [--regimes "full-classic full-fused lora lisa"]
#                          [--tiny-steps 20] [--tiny-warmup 3] [--sd15-steps 3] [--sd15-warmup 1]
#                          [--sd15-regimes "..."] [--sd15-gc] [--latent 32] [--batch 1] [--threads N]
#
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

sd15=0 repeats=2 out="" regimes="full-classic full-fused lora lisa" sd15_regimes="" sd15_gc=0
tiny_steps=20 tiny_warmup=3 sd15_steps=3 sd15_warmup=1 latent=32 batch=1 threads=0
usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --sd15) sd15=1 ;;
    --sd15-gc) sd15_gc=1 ;;
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

mem_available() { awk '/^MemAvailable:/ {print $2 * 1024}' /proc/meminfo; }
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
      echo "[bench] $name $regime C++ run $rep/$repeats (load $(uptime | sed 's/.*load average: //'))" >&2
      "$BENCH" "${common[@]}" "${flags[@]}" --json "$dir/$regime.cpp.$rep.json" > /dev/null 2> "$dir/$regime.cpp.$rep.log" ||
        { tail -20 "$dir/$regime.cpp.$rep.log" >&2; echo "bench_train.sh: bench_train_step failed ($dir/$regime.cpp.$rep.log)" >&2; exit 1; }
      local t
      t=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["threads"])' "$dir/$regime.cpp.$rep.json")
      local pyflags=(--threads "$t")
      [ "$regime" = lisa ] && pyflags+=(--lisa-active "$dir/$regime.cpp.$rep.json")
      echo "[bench] $name $regime Python run $rep/$repeats" >&2
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
    return [json.loads(p.read_text()) for p in sorted(d.glob(f"{regime}.{side}.*.json"))]
med = lambda rs, k: statistics.median(r[k] for r in rs)
mib = lambda b: f"{b / 2**20:,.0f}"
def size(b):
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= k:
            return f"{b / k:,.1f} {unit}"
    return f"{b:.0f} B"
steps = lambda rs: ", ".join(f"{r['step_median_s']:.4g}" for r in rs)
print("| regime | C++ step (s) | Python step (s) | C++/Py | C++ peak RSS (MiB) | Python peak RSS (MiB) | C++/Py "
      "| C++ train overhead (MiB) | Python train overhead (MiB) | optimizer state C++ / Py | trainable params |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
notes = []
for regime in regs:
    c, p = load(regime, "cpp"), load(regime, "python")
    if not c or not p:
        continue
    cs, ps = med(c, "step_median_s"), med(p, "step_median_s")
    cr, pr = med(c, "peak_rss_bytes"), med(p, "peak_rss_bytes")
    co = statistics.median(r["train_peak_rss_bytes"] - r["rss_before_train_bytes"] for r in c)
    po = statistics.median(r["train_peak_rss_bytes"] - r["rss_before_train_bytes"] for r in p)
    tc, tp = c[0]["trainable_params"], p[0]["trainable_params"]
    print(f"| {regime} | {cs:.4g} | {ps:.4g} | {cs / ps:.2f} | {mib(cr)} | {mib(pr)} | {cr / pr:.2f} | {mib(co)} | "
          f"{mib(po)} | {size(med(c, 'optimizer_state_bytes'))} / {size(med(p, 'optimizer_state_bytes'))} | "
          f"{tc:,}" + ("" if tc == tp else f" (Py {tp:,})") + " |")
    dl = max(abs(a["losses"][0] - b["losses"][0]) for a, b in zip(c, p))
    notes.append(f"{regime}: step-0 loss C++ {c[0]['losses'][0]:.6f}, Python {p[0]['losses'][0]:.6f} (max diff {dl:.1e}); "
                 f"repeats {len(c)}/{len(p)}; C++ step medians {steps(c)}; "
                 f"Python {steps(p)}; RSS before training C++ "
                 f"{mib(med(c, 'rss_before_train_bytes'))} MiB, Python {mib(med(p, 'rss_before_train_bytes'))} MiB; "
                 f"load C++ {med(c, 'load_s'):.2f} s, Python {med(p, 'load_s'):.2f} s")
first = next((load(r, "cpp")[0] for r in regs if load(r, "cpp")), None)
if first:
    py = next(load(r, "python")[0] for r in regs if load(r, "python"))
    print(f"\nthreads: C++ {first['threads']} (interop {first['interop_threads']}), Python {py['threads']} "
          f"(interop {py['interop_threads']}); torch {first['torch_version']} / {py['torch_version']}; "
          f"{first['total_params']:,} UNet parameters in {first['param_tensors']} tensors; steps {first['steps']} "
          f"timed after {first['warmup']} warmup; batch {first['batch']}, latents {first['latent']}x{first['latent']}"
          f"{', gradient checkpointing' if first['gradient_checkpointing'] else ''}\n")
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

echo "[bench] machine: $(nproc) cores, $(gib "$(awk '/^MemTotal:/ {print $2 * 1024}' /proc/meminfo)") GiB; load $(uptime | sed 's/.*load average: //')" >&2
tiny="$out/pipelines/tiny"
[ -f "$tiny/unet/diffusion_pytorch_model.safetensors" ] || "$CLI" --log-level warn init-pipeline --preset tiny --seed 0 --out "$tiny" --overwrite
echo "## tiny preset"
run_all tiny "$tiny" "$tiny_steps" "$tiny_warmup" "$regimes" "" 0

if [ "$sd15" = 1 ]; then
  sd="$out/pipelines/sd15"
  if [ ! -f "$sd/unet/diffusion_pytorch_model.safetensors" ]; then
    avail_disk=$(df -B1 --output=avail "$out" | tail -1)
    [ "$avail_disk" -gt $((6 * 1073741824)) ] || { echo "bench_train.sh: the sd15 pipeline needs about 4.3 GB of disk under $out" >&2; exit 1; }
    echo "[bench] writing the sd15 pipeline (random weights, 4.3 GB) to $sd" >&2
    "$CLI" --log-level warn init-pipeline --preset sd15 --seed 0 --out "$sd" --overwrite
  fi
  extra=""
  [ "$sd15_gc" = 1 ] && extra="--gradient-checkpointing"
  echo
  echo "## sd15 architecture"
  run_all sd15 "$sd" "$sd15_steps" "$sd15_warmup" "$sd15_regimes" "$extra" 1
fi
echo "[bench] results in $out" >&2
