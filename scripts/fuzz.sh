#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang with ASan + UBSan, in build-fuzz) and runs them.
#   scripts/fuzz.sh --ci                    what CI runs: the same fuzzing on every run (below)
#   scripts/fuzz.sh                         every target for 60 s, two at a time
#   scripts/fuzz.sh --time 1800 --jobs 2    the long runs of docs/hardening.md
#   scripts/fuzz.sh --time 600 safetensors image
#   scripts/fuzz.sh --build-only
# Each target starts from its committed seeds (fuzz/corpus/<target>) and the inputs of past
# findings (fuzz/regressions/<target>), and keeps what it finds in a working corpus outside the
# clone ($LISADIFF_CACHE_DIR/fuzz-corpus/<target>), which grows run after run. --ci instead
# starts from the committed files only, with a fixed seed and a fixed number of executions per
# target (about a minute each), so that CI's verdict depends on the commit alone. A finding
# (a crash, a sanitizer report, an exception other than lisadiff::Error, a leak, a timeout of
# 30 s, memory over 2 GB) is saved as build-fuzz/runs/<time>/findings/<target>-{crash,leak,timeout,oom}-*;
# the script then exits 1. Inputs slower than 10 s are kept as <target>-slow-unit-* and named.
# Prints one line per target: executions, coverage, corpus size, findings.
# LISADIFF_FUZZ_NICE=N runs the fuzzers at nice N. With the kernel's autogroup scheduling
# (/proc/sys/kernel/sched_autogroup_enabled, on by default) nice only ranks processes of one
# session: a build or CI started from another terminal still takes an equal share of the
# cores (measured: 30-minute runs beside a nice-19 CI in another session got 15.5 CPU-minutes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LISADIFF_CACHE_DIR:-$HOME/.cache/lisadiff}"
FUZZ_BUILD="${LISADIFF_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
ALL_TARGETS=(safetensors config tokenizer wds_tar image metrics training_state)

time_s=60
jobs=2
build_only=0
ci=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --time) time_s=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --build-only) build_only=1; shift ;;
    --ci) ci=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *)
      if [[ " ${ALL_TARGETS[*]} " != *" $1 "* ]]; then
        echo "fuzz.sh: unknown target '$1' (targets: ${ALL_TARGETS[*]})" >&2
        exit 2
      fi
      targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
[[ "$time_s" =~ ^[0-9]+$ && "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --time and --jobs take positive integers" >&2; exit 2; }

say() { printf '[fuzz] %s\n' "$*"; }
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (Debian: clang libclang-rt-14-dev; scripts/setup.sh installs them)" >&2; exit 1; }

# The venv (LibTorch) and the packages come from scripts/setup.sh, which the main build ran.
MAIN_BUILD="${LISADIFF_BUILD_DIR:-$ROOT/build}"
python=$(grep '^LISADIFF_PYTHON:' "$MAIN_BUILD/CMakeCache.txt" 2>/dev/null | cut -d= -f2 || true)
if [ -z "$python" ]; then
  "$ROOT/scripts/setup.sh"
  python=$(grep '^LISADIFF_PYTHON:' "$MAIN_BUILD/CMakeCache.txt" | cut -d= -f2)
fi

start=$SECONDS
if [ ! -f "$FUZZ_BUILD/build.ninja" ]; then
  say "configuring $FUZZ_BUILD (clang, ASan + UBSan + libFuzzer)"
  mkdir -p "$FUZZ_BUILD"
  cmake -S "$ROOT" -B "$FUZZ_BUILD" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DLISADIFF_FUZZ=ON -DLISADIFF_BUILD_APPS=OFF \
    -DLISADIFF_BUILD_TESTS=OFF -DLISADIFF_PCH=OFF -DLISADIFF_PYTHON="$python" -DLISADIFF_CACHE_DIR="$CACHE" \
    >"$FUZZ_BUILD/configure.log" 2>&1 || { cat "$FUZZ_BUILD/configure.log"; exit 1; }
fi
cmake --build "$FUZZ_BUILD" -j "${LISADIFF_JOBS:-$(nproc)}" --target fuzz_all
say "build: $((SECONDS - start)) s"
[ "$build_only" -eq 0 ] || exit 0

# libtorch is not instrumented; its one-definition "violations" against the sanitizer
# runtime are not ours. Leak checks stay on.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0:abort_on_error=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
runs="$FUZZ_BUILD/runs/$(date +%Y%m%d-%H%M%S)"
findings="$runs/findings"  # this run's findings only
mkdir -p "$runs" "$findings"

# --ci: executions per target, about a minute of one core each here (docs/hardening.md).
declare -A ci_runs=([safetensors]=400000 [config]=250000 [tokenizer]=28000 [wds_tar]=500000
                    [image]=300000 [metrics]=180000 [training_state]=400000)

# Where a target's new inputs go: a fresh folder per --ci run, else the growing working corpus.
corpus_of() { if [ "$ci" -eq 1 ]; then echo "$runs/corpus/$1"; else echo "$CACHE/fuzz-corpus/$1"; fi; }

run_one() {
  local t=$1 work limits same=()
  work=$(corpus_of "$t")
  if [ "$ci" -eq 1 ]; then
    # The same inputs on every run: a fresh corpus, a fixed seed and number of executions, no
    # re-reading of the corpus on a timer (-reload), fixed addresses (setarch -R) and a fixed
    # scratch folder instead of one named by the process id: libFuzzer learns from the values
    # the code compares, and some are pointers and paths.
    limits=(-seed=19 -runs="${ci_runs[$t]}" -reload=0 -max_total_time=900)
    same=(env "LISADIFF_FUZZ_SCRATCH=$scratch_base/lisadiff-fuzz-ci-$t" "${fixed_addresses[@]}")
  else
    limits=(-max_total_time="$time_s")
  fi
  mkdir -p "$work"
  local dirs=("$work" "$ROOT/fuzz/corpus/$t")
  [ ! -d "$ROOT/fuzz/regressions/$t" ] || dirs+=("$ROOT/fuzz/regressions/$t")
  # The first folder receives new inputs; the committed ones are read only.
  # CPU seconds go to the log too: a run shares the cores with whatever else runs.
  /usr/bin/time -f "cpu_seconds: %U user, %S sys, %e wall" -a -o "$runs/$t.cpu" \
    nice -n "${LISADIFF_FUZZ_NICE:-0}" "${same[@]}" "$FUZZ_BUILD/fuzz/fuzz_$t" "${limits[@]}" -timeout=30 -rss_limit_mb=2048 -max_len=262144 \
    -print_final_stats=1 -artifact_prefix="$findings/$t-" "${dirs[@]}" >"$runs/$t.log" 2>&1
}

fixed_addresses=()
scratch_base=/dev/shm
[ -d "$scratch_base" ] || scratch_base="${TMPDIR:-/tmp}"
if [ "$ci" -eq 1 ]; then
  if setarch "$(uname -m)" -R true 2>/dev/null; then
    fixed_addresses=(setarch "$(uname -m)" -R)
  else
    say "setarch -R is not permitted here: addresses vary, and so may the inputs tried"
  fi
  say "running ${targets[*]} from the committed corpus, seed 19, a fixed number of executions each, $jobs at a time; logs in $runs"
else
  say "running ${targets[*]} for $time_s s each, $jobs at a time; logs in $runs"
fi
declare -A pid_of
status=0
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  run_one "$t" &
  pid_of[$t]=$!
done
for t in "${targets[@]}"; do
  if ! wait "${pid_of[$t]}"; then status=1; fi
done

# One line per target from libFuzzer's final statistics.
printf '%-16s %12s %10s %8s %8s %8s %s\n' target executions exec/s cov corpus cpu_s findings
for t in "${targets[@]}"; do
  log="$runs/$t.log"
  execs=$(grep -oE 'stat::number_of_executed_units: +[0-9]+' "$log" | awk '{print $2}' | tail -1)
  rate=$(grep -oE 'stat::average_exec_per_sec: +[0-9]+' "$log" | awk '{print $2}' | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
  corpus=$(find "$(corpus_of "$t")" -type f | wc -l)
  # crash-, leak-, timeout-, oom- files are findings; slow-unit- files (over 10 s, under the
  # 30 s timeout) are reported only.
  found=$(find "$findings" -type f \( -name "$t-crash-*" -o -name "$t-leak-*" -o -name "$t-timeout-*" -o -name "$t-oom-*" \) | wc -l)
  slow=$(find "$findings" -type f -name "$t-slow-unit-*" | wc -l)
  [ "$slow" -eq 0 ] || say "$t: $slow input(s) slower than 10 s kept in $findings"
  cpu=$(awk '/cpu_seconds/ {printf "%d", $2 + $4}' "$runs/$t.cpu" 2>/dev/null || true)
  printf '%-16s %12s %10s %8s %8s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$corpus" "${cpu:-?}" "$found"
  if [ "$found" -gt 0 ] || ! grep -q 'stat::number_of_executed_units' "$log"; then
    status=1
    say "$t: see $log"
  fi
done
exit $status
