#!/usr/bin/env bash
# Builds everything (CUDA sources too when nvcc is present, for sm_90a) and runs every CPU test,
# then the suite again under AddressSanitizer + UndefinedBehaviorSanitizer. GPU tests run only
# where a GPU is present (ctest -L gpu); without one they skip.
#   scripts/test.sh            full run (as CI)
#   KILN_NO_SANITIZE=1 scripts/test.sh   skip the sanitizer pass
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
jobs=$(nproc)
start=$(date +%s)

echo "== build (Release) =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_BENCHMARKS=ON -DKILN_BUILD_EXAMPLES=ON >/dev/null
cmake --build build -j"$jobs"
echo "== tests (Release) =="
ctest --test-dir build -LE gpu --output-on-failure -j"$jobs"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  ctest --test-dir build -L gpu --output-on-failure
fi

if [ -z "${KILN_NO_SANITIZE:-}" ]; then
  echo "== tests under AddressSanitizer + UBSan =="
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=ON -DKILN_CUDA=OFF \
    -DKILN_BUILD_BENCHMARKS=OFF -DKILN_BUILD_EXAMPLES=OFF -DCMAKE_CXX_FLAGS="-O1" >/dev/null
  cmake --build build-asan -j"$jobs"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan -LE "gpu|package|dist" --output-on-failure -j"$jobs"
  # The multi-rank tests (mpirun) without leak detection: OpenMPI's own allocations show as leaks.
  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan -L dist -LE gpu --output-on-failure -j"$jobs"
fi
echo "== all tests passed in $(( $(date +%s) - start )) s =="
