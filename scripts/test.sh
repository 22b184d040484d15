#!/usr/bin/env bash
# Builds everything (CUDA sources too when nvcc is present, for sm_90a) and runs every CPU test:
# the unit tests (the test_<group> executables) under AddressSanitizer + UndefinedBehaviorSanitizer,
# and the checks that run programs (the R1 pipeline at micro size, expert-parallel dist_pretrain on
# 2 MPI ranks, the installed package, hf_logits_cpu: kiln checkpoints in Hugging Face transformers,
# whose torch and transformers scripts/hf_venv.sh installs into build-test/hf-venv meanwhile;
# skipped with a message where PyPI cannot be reached); then fuzzes every reader of untrusted files
# for 20 s each (scripts/fuzz.sh: libFuzzer, ASan + UBSan). GPU tests run only where a GPU is
# present (ctest -L gpu); without one they skip.
#   scripts/test.sh            full run (as CI)
#   KILN_NO_SANITIZE=1 scripts/test.sh   the unit tests without the sanitizers, in build-test (-O1)
#   KILN_NO_FUZZ=1 scripts/test.sh       skip fuzzing
#
# These builds only prove that everything compiles and that the tests pass, so they are quick
# builds in folders of their own (CMakeLists.txt, kiln_build_purpose): build-test compiles the
# programs the checks run at -O1 and what CI never runs (GPU tests, benchmarks, the other examples)
# at -O0; build-asan the CPU unit tests alone at -O0 with the sanitizers (measured on tests/ops:
# 111 s to compile, 43 s to run, against 294 s and 12 s at -O1). The unit tests run once, in the
# sanitizer build: a second, unsanitized build of the same tests cost CI about 290 s
# (KILN_CPU_TESTS=OFF in build-test; test_full_counts keeps the full iteration counts that the
# sanitized run cuts).
# scripts/train.sh and scripts/gpu_check.sh build optimised code for running and timing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
jobs=$(nproc)
start=$(date +%s)
stamp() { echo "   [$(( $(date +%s) - start )) s]"; }

echo "== layering =="
scripts/check_layering.sh

# The Hugging Face peer of the interop test (hf_logits_cpu), installed while the build runs.
mkdir -p build-test
scripts/hf_venv.sh build-test/hf-venv > build-test/hf-venv.out 2>&1 &
hf_venv_pid=$!

echo "== build (Release, quick) =="
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cpu_tests=OFF  # the unit tests build and run in build-asan below
[ -n "${KILN_NO_SANITIZE:-}" ] && cpu_tests=ON
cmake -S . -B build-test "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DKILN_QUICK_BUILD=ON -DKILN_BUILD_BENCHMARKS=ON \
  -DKILN_BUILD_EXAMPLES=ON -DKILN_CPU_TESTS=$cpu_tests >/dev/null
cmake --build build-test -j"$jobs"
stamp
wait "$hf_venv_pid" || true  # a failed install fails hf_logits_cpu, with the log
cat build-test/hf-venv.out
stamp
sanitize=1
[ -n "${KILN_NO_SANITIZE:-}" ] && sanitize=
echo "== tests (Release: the programs' checks; the unit tests too with KILN_NO_SANITIZE) =="
if [ -n "$sanitize" ]; then
  # The R1 pipeline's check is the long pole of these checks (~90 s alone on 2 cores), so they run
  # in the background while the sanitizer build compiles; both slow down, but CI ends ~30 s sooner.
  ctest --test-dir build-test -LE gpu --output-on-failure -j"$jobs" > build-test/checks.log 2>&1 &
  checks_pid=$!
  trap 'kill "$checks_pid" 2>/dev/null || true' EXIT
  echo "   (in the background, while the unit tests' sanitizer build below compiles)"
  echo "== unit tests under AddressSanitizer + UBSan: build =="
  # Debug with empty Debug flags: -O0 and no debug information (which would cost compile time).
  # One translation unit per test executable, as in build-test (tests/CMakeLists.txt).
  cmake -S . -B build-asan "${generator[@]}" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="" -DKILN_SANITIZE=ON \
    -DKILN_UNITY_TESTS=ON -DKILN_CUDA=OFF -DKILN_BUILD_BENCHMARKS=OFF -DKILN_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build build-asan -j"$jobs"
  stamp
  echo "== tests (Release), their output =="
  checks_status=0
  wait "$checks_pid" || checks_status=$?
  trap - EXIT
  cat build-test/checks.log
  [ "$checks_status" = 0 ] || { echo "the Release checks failed (above)"; exit "$checks_status"; }
else
  ctest --test-dir build-test -LE gpu --output-on-failure -j"$jobs"
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  ctest --test-dir build-test -L gpu --output-on-failure --no-tests=error
fi
stamp

if [ -n "$sanitize" ]; then
  echo "== unit tests under AddressSanitizer + UBSan: run =="
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan -LE "gpu|package|dist|hf" --output-on-failure -j"$jobs"
  # The multi-rank tests (mpirun) without leak detection: OpenMPI's own allocations show as leaks.
  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan -L dist -LE gpu --output-on-failure -j"$jobs"
  stamp
fi
if [ -z "${KILN_NO_FUZZ:-}" ]; then
  echo "== fuzzing (libFuzzer, ASan + UBSan) =="
  # 20 s a target here (three rounds of two on 2 cores: about 100 s with the build) keeps CI under
  # 25 minutes; scripts/fuzz.sh alone defaults to 30 s, and longer runs take KILN_FUZZ_SECONDS.
  KILN_FUZZ_SECONDS=${KILN_FUZZ_SECONDS:-20} scripts/fuzz.sh
  stamp
fi
echo "== all tests passed in $(( $(date +%s) - start )) s =="
