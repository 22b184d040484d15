#!/usr/bin/env bash
# Fuzzes every reader of untrusted input (fuzz/fuzz_targets.cpp) with clang's libFuzzer under
# AddressSanitizer + UndefinedBehaviorSanitizer, each target for KILN_FUZZ_SECONDS (default 30),
# starting from the seed corpus in fuzz/corpus/<target>. A crash, a sanitizer report, a timeout or
# an exception other than kiln::Error fails the script; the input that did it is kept as
# build-fuzz/crashes/<target>-crash-<hash> (reproduce: KILN_FUZZ_TARGET=<target>
# build-fuzz/fuzz_targets <that file>). What the fuzzer learns goes to build-fuzz/corpus/<target>,
# never into the repository's seeds.
#   scripts/fuzz.sh                          every target, 30 s each, as many at once as cores
#   KILN_FUZZ_SECONDS=600 KILN_FUZZ_TARGETS="safetensors config" scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${KILN_FUZZ_SECONDS:-30}
read -r -a targets <<< "${KILN_FUZZ_TARGETS:-safetensors config tokenizer trainer reward}"
out=build-fuzz
mkdir -p "$out/crashes"
cxx=${KILN_FUZZ_CXX:-clang++}
command -v "$cxx" >/dev/null || { echo "fuzz.sh: $cxx not found (scripts/install-deps.sh installs clang)"; exit 1; }

# One translation unit, rebuilt when it or a header changed. No OpenMP: single-threaded runs are
# reproducible. -O1 keeps the sanitizers' reports exact and the build short.
binary=$out/fuzz_targets
if [ ! -x "$binary" ] || [ -n "$(find fuzz include -newer "$binary" -name '*.?pp' -print -quit)" ]; then
  echo "building $binary"
  "$cxx" -std=c++20 -O1 -g1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Iinclude -I/usr/include/eigen3 -Wno-unknown-pragmas fuzz/fuzz_targets.cpp -o "$binary"
fi

jobs=$(nproc)
failed=()
run() {
  local t=$1
  mkdir -p "$out/corpus/$t"
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: a header that makes a reader
  # allocate gigabytes is a finding too.
  KILN_FUZZ_TARGET=$t ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$out/crashes/$t-" "$out/corpus/$t" "fuzz/corpus/$t" > "$out/$t.log" 2>&1
}
pids=() names=()
for t in "${targets[@]}"; do
  [ -d "fuzz/corpus/$t" ] || { echo "fuzz.sh: no seed corpus fuzz/corpus/$t"; exit 1; }
  run "$t" & pids+=($!) names+=("$t")
  if (( ${#pids[@]} >= jobs )); then
    wait "${pids[0]}" || failed+=("${names[0]}")
    pids=("${pids[@]:1}") names=("${names[@]:1}")
  fi
done
for i in "${!pids[@]}"; do wait "${pids[$i]}" || failed+=("${names[$i]}"); done

for t in "${targets[@]}"; do
  runs=$(grep -m1 -o "stat::number_of_executed_units: *[0-9]*" "$out/$t.log" | grep -o "[0-9]*$" || echo "?")
  cov=$(grep -o "cov: [0-9]*" "$out/$t.log" | tail -1 || true)
  echo "fuzz $t: ${runs} inputs in ${seconds} s, ${cov:-cov: ?}"
done
if ((${#failed[@]})); then
  for t in "${failed[@]}"; do
    echo "== fuzz target $t FAILED; the end of $out/$t.log:"
    tail -n 40 "$out/$t.log"
  done
  exit 1
fi
