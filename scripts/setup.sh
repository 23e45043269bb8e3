#!/usr/bin/env bash
# Installs and builds everything lisadiff needs, on a bare Debian 12 machine or an already
# set-up one (then it only does what is missing). Steps, each timed:
#   1. Debian packages (compiler tools and the C++ libraries; see README.md)
#   2. the Python venv with the pins of requirements.txt (LibTorch comes from its torch
#      wheel), under $LISADIFF_CACHE_DIR (default ~/.cache/lisadiff), keyed by the pins
#   3. the full CLIP vocabulary (SD1.5's tokenizer folder) under $LISADIFF_CACHE_DIR, rebuilt
#      from the merges file of the pinned open_clip_torch wheel
#   4. CMake configure (Ninja, ccache under the same cache dir, precompiled torch header)
#   5. build
# Environment: LISADIFF_CACHE_DIR, LISADIFF_BUILD_DIR (default build), LISADIFF_JOBS
# (default: number of cores), LISADIFF_BUILD_TYPE (default Release).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LISADIFF_CACHE_DIR:-$HOME/.cache/lisadiff}"
BUILD="${LISADIFF_BUILD_DIR:-$ROOT/build}"
JOBS="${LISADIFF_JOBS:-$(nproc)}"
BUILD_TYPE="${LISADIFF_BUILD_TYPE:-Release}"
PYTHON_BASE="${LISADIFF_PYTHON_BASE:-python3}"

# The full CLIP tokenizer vocabulary (49,408 tokens, as in SD1.5's tokenizer folder) is rebuilt
# from OpenAI's BPE merges file that the open_clip_torch wheel ships
# (open_clip/bpe_simple_vocab_16e6.txt.gz; scripts/convert_clip_vocab.py). The wheel is only
# downloaded and read, never installed into the venv. Pinned here and only here, with the
# SHA-256 of that merges file.
OPEN_CLIP_VERSION=3.3.0
OPEN_CLIP_BPE_SHA256=924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a

APT_PACKAGES=(
  g++ cmake ninja-build ccache git pkg-config
  python3 python3-venv
  libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libstb-dev libarchive-dev
  libjpeg62-turbo-dev libwebp-dev libpng-dev
  libcairo2-dev libfreetype-dev fonts-dejavu-core
  libre2-dev libutf8proc-dev libgtest-dev libgmock-dev libbenchmark-dev
  libprotobuf-dev protobuf-compiler libboost-dev libgloo-dev
  clang libclang-rt-14-dev
)

say() { printf '[setup] %s\n' "$*"; }
timed() {  # timed "label" command...: runs the command and reports how long it took
  local label=$1 start=$SECONDS
  shift
  "$@"
  say "$label: $((SECONDS - start)) s"
}

install_apt_packages() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages: all ${#APT_PACKAGES[@]} present"
    return
  fi
  say "Debian packages: installing ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The venv is keyed by the Python version and the pins (comments in requirements.txt do not
# count), so a changed pin gets a fresh venv while CI and fresh clones reuse the old one.
venv_key() {
  { "$PYTHON_BASE" -c 'import sys; print(sys.version_info[:2])'; grep -vE '^\s*(#|$)' "$ROOT/requirements.txt"; } |
    sha256sum | cut -c1-12
}

install_venv() {
  local venv=$1
  if [ -f "$venv/.lisadiff-complete" ]; then
    say "Python venv: present ($venv)"
    return
  fi
  # A venv cannot be moved (its scripts name their own path), so it is built in place and
  # counts only once the stamp exists: an interrupted install is started over.
  say "Python venv: creating $venv (the torch wheel and its CUDA libraries, about 3 GB)"
  rm -rf "$venv"
  "$PYTHON_BASE" -m venv "$venv"
  "$venv/bin/pip" install --quiet --cache-dir "$CACHE/pip" -r "$ROOT/requirements.txt"
  touch "$venv/.lisadiff-complete"
}

make_clip_vocab() {  # make_clip_vocab PYTHON DIR: the folder appears whole (built aside, then renamed)
  local python=$1 out=$2
  if [ -f "$out/vocab.json" ]; then
    say "CLIP vocabulary: present ($out)"
    return
  fi
  say "CLIP vocabulary: building $out from open_clip_torch $OPEN_CLIP_VERSION"
  rm -rf "$CACHE"/.clip-vocab-tmp.*  # left by an interrupted run (setup holds the lock)
  local tmp
  tmp=$(mktemp -d "$CACHE/.clip-vocab-tmp.XXXXXX")
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --cache-dir "$CACHE/pip" -d "$tmp" "open_clip_torch==$OPEN_CLIP_VERSION"
  local wheels=("$tmp"/open_clip_torch-"$OPEN_CLIP_VERSION"-*.whl)
  "$python" "$ROOT/scripts/convert_clip_vocab.py" --wheel "${wheels[0]}" --sha256 "$OPEN_CLIP_BPE_SHA256" --out "$tmp/clip-vocab" --check
  mv -T "$tmp/clip-vocab" "$out"
  rm -rf "$tmp"
}

configure() {
  local python=$1 clip_vocab=$2
  local cache_file="$BUILD/CMakeCache.txt"
  if [ -f "$cache_file" ] && [ -f "$BUILD/build.ninja" ] && grep -qx "LISADIFF_PYTHON:FILEPATH=$python" "$cache_file" &&
     grep -qx "CMAKE_BUILD_TYPE:STRING=$BUILD_TYPE" "$cache_file" &&
     grep -qx "LISADIFF_CACHE_DIR:PATH=$CACHE" "$cache_file" &&
     grep -qx "LISADIFF_CLIP_VOCAB_DIR:PATH=$clip_vocab" "$cache_file"; then
    say "CMake: configured ($BUILD)"
    return
  fi
  say "CMake: configuring $BUILD ($BUILD_TYPE)"
  mkdir -p "$BUILD"
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE" \
    -DLISADIFF_PYTHON="$python" -DLISADIFF_CACHE_DIR="$CACHE" \
    -DLISADIFF_CLIP_VOCAB_DIR="$clip_vocab" >"$BUILD/configure.log" 2>&1 ||
    { cat "$BUILD/configure.log"; exit 1; }
}

build() {
  say "build: $BUILD (-j$JOBS)"
  cmake --build "$BUILD" -j "$JOBS"
}

main() {
  local total=$SECONDS
  mkdir -p "$CACHE"
  timed "Debian packages" install_apt_packages
  exec 9>"$CACHE/setup.lock"
  flock 9  # one setup at a time may touch the shared cache
  local venv="$CACHE/venv-$(venv_key)"
  timed "Python venv" install_venv "$venv"
  local clip_vocab="$CACHE/clip-vocab-$OPEN_CLIP_VERSION"
  timed "CLIP vocabulary" make_clip_vocab "$venv/bin/python" "$clip_vocab"
  # The stable name that `lisadiff init-pipeline --preset sd15` looks for by default.
  ln -sfn "clip-vocab-$OPEN_CLIP_VERSION" "$CACHE/clip-vocab"
  timed "CMake configure" configure "$venv/bin/python" "$clip_vocab"
  timed "build" build
  say "done in $((SECONDS - total)) s: $BUILD/apps/lisadiff"
}

main "$@"
