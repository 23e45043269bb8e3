#!/usr/bin/env bash
# CPU seconds to compile one folder of the core library cold, file by file and as one unity
# translation unit (docs/building.md, "The unity build"). Needs two configured and built trees:
#   PER_FILE: configured with -DLISADIFF_UNITY=OFF     UNITY: configured with the default (ON)
# Usage: scripts/bench_unity.sh PER_FILE_BUILD_DIR UNITY_BUILD_DIR FOLDER   (e.g. schedulers)
set -euo pipefail
if [[ $# -ne 3 ]]; then
  echo "usage: scripts/bench_unity.sh PER_FILE_BUILD_DIR UNITY_BUILD_DIR FOLDER" >&2
  exit 2
fi
per_file=$(cd "$1" && pwd) unity=$(cd "$2" && pwd) folder=$3
export CCACHE_DISABLE=1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cpu_of() {  # cpu_of BUILD_DIR OBJECT: compile OBJECT's source again, print user+sys seconds
  local cmd
  cmd=$(cd "$1" && ninja -t commands "$2" | tail -1 |
        sed -e "s| -o [^ ]*\.o | -o $out/x.o |" -e 's| -MD -MT [^ ]* -MF [^ ]*||')
  (cd "$1" && /usr/bin/time -f "%U %S" -o "$out/t" bash -c "$cmd")
  awk '{print $1 + $2}' "$out/t"
}

total=0
for obj in $(cd "$per_file" && ninja -t targets all | grep -o "^src/CMakeFiles/lisadiff_core.dir/$folder/[^:]*\.cpp\.o" | sort -u); do
  t=$(cpu_of "$per_file" "$obj")
  echo "$obj: $t CPU-s"
  total=$(awk -v a="$total" -v b="$t" 'BEGIN{print a + b}')
done
echo "file by file: $total CPU-s"
echo "unity: $(cpu_of "$unity" "src/CMakeFiles/lisadiff_core.dir/unity/lisadiff_core_$folder.cpp.o") CPU-s"
