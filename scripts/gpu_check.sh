#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: builds kiln with CUDA (sm_90a by default), runs every GPU test
# and every CUDA benchmark, and writes the logs to $OUT (default build-gpu/logs):
#   gpu-tests.log    ctest -L gpu output
#   benchmarks.log   every bench_*_cuda / bench_*.cu binary, one after another
#   build.log        the compiler output (every target and kiln_standalone_headers: each kernel
#                    header compiled alone)
#   device.txt       nvidia-smi and nvcc versions
# Usage: scripts/gpu_check.sh [ctest regex]     (e.g. scripts/gpu_check.sh Softmax)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build-gpu/logs}
mkdir -p "$OUT"
{ nvidia-smi; nvcc --version; date -u; } > "$OUT/device.txt" 2>&1
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B build-gpu "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_EXAMPLES=ON > "$OUT/build.log" 2>&1
# Everything, plus every kernel header compiled alone (the standalone-header check).
if ! cmake --build build-gpu -j"$(nproc)" --target all kiln_standalone_headers >> "$OUT/build.log" 2>&1; then
  grep -E "error|Error" "$OUT/build.log" | head -40
  echo "BUILD FAILED (see build.log)"
  exit 1
fi
filter=()
[ $# -gt 0 ] && filter=(-R "$1")
ctest --test-dir build-gpu -L gpu --output-on-failure --no-tests=error --timeout 300 "${filter[@]}" > "$OUT/gpu-tests.log" 2>&1
test_rc=$?
: > "$OUT/benchmarks.log"
if [ -z "${KILN_SKIP_BENCH:-}" ]; then
  for b in build-gpu/benchmarks/bench_*; do
    case "$b" in *_cuda|*.cu) ;; *) [ -f "benchmarks/$(basename "$b").cu" ] || continue ;; esac
    echo "==== $(basename "$b")" >> "$OUT/benchmarks.log"
    timeout 300 "$b" >> "$OUT/benchmarks.log" 2>&1 || echo "(exit $?)" >> "$OUT/benchmarks.log"
  done
fi
grep -E "tests passed|tests failed|\(Failed\)|\(SEGFAULT\)|\(Timeout\)|\*\*\*" "$OUT/gpu-tests.log" | head -60
echo "---- benchmarks (tail)"
tail -60 "$OUT/benchmarks.log"
exit $test_rc
