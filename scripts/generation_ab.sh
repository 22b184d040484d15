#!/usr/bin/env bash
# Generation throughput of another tree against this one's, and against Hugging Face generate(),
# in one call on one GPU: both trees' bench_grpo_cuda built side by side (with this tree's kernel
# tests named by $TESTS), each build's generation at B = 128 (benchmarks/bench_grpo_cuda.cpp, no
# GRPO steps) alternating new, old, new, old, then benchmarks/peers/hf_train_generate.py through
# scripts/bench_grpo.sh (SKIP_TRL) for the ratio against HF in the same call.
#
# Usage (on the GPU machine): scripts/generation_ab.sh OLD_TREE OUT_DIR
#   OLD_TREE  a source tree to compare against, e.g. made where the repository is with
#             `mkdir -p build-ab/old && git archive REV | tar -x -C build-ab/old` and carried
#             (build-ab/ is git-ignored)
#   OUT_DIR   logs and JSON
# Environment: TESTS (a gtest filter of test_kernels_cuda run first; empty: none), DEADLINE
# (seconds; runs that would start after it are left out, default 540). Builds go to /tmp/kb and
# /tmp/kb_old (outside every carried path).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
[ $# -eq 2 ] || { echo "usage: $0 OLD_TREE OUT_DIR" >&2; exit 2; }
old_tree=$1 out=$2
deadline=${DEADLINE:-540}
mkdir -p "$out"
. scripts/carried_deps.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > "$out/device.txt" 2>&1
configure_release . /tmp/kb "$out/configure_new.log"
configure_release "$old_tree" /tmp/kb_old "$out/configure_old.log"
failed() { grep -m20 -A5 error "$1"; exit 1; }
targets=(bench_grpo_cuda)
[ -n "${TESTS:-}" ] && targets+=(test_kernels_cuda)
ninja -C /tmp/kb_old -j 6 bench_grpo_cuda > "$out/build_old.log" 2>&1 &
old_build=$!
ninja -C /tmp/kb -j 12 "${targets[@]}" > "$out/build_new.log" 2>&1 || failed "$out/build_new.log"
status=0
if [ -n "${TESTS:-}" ]; then
  timeout 180 /tmp/kb/tests/test_kernels_cuda --gtest_filter="$TESTS" > "$out/tests.log" 2>&1 || status=1
  grep -E '^\[  (PASSED|FAILED)|Failure' "$out/tests.log" | head -20
fi
wait $old_build || failed "$out/build_old.log"
echo "built in $SECONDS s"
for round in 1 2; do
  for tree in new old; do
    [ $SECONDS -lt "$deadline" ] || { echo "deadline: $tree round $round not run"; continue; }
    build=/tmp/kb
    [ $tree = old ] && build=/tmp/kb_old
    timeout 120 "$build/benchmarks/bench_grpo_cuda" --gen-runs 3 --steps 0 --json "$out/gen_${tree}_$round.json" \
      > "$out/gen_${tree}_$round.log" 2>&1 || status=1
    echo "$tree round $round: $(grep -E '^median' "$out/gen_${tree}_$round.log")"
  done
done
if [ $SECONDS -lt "$deadline" ]; then
  cp "$out/gen_new_1.json" "$out/kiln_grpo.json" 2>/dev/null
  SKIP_KILN=1 SKIP_TRL=1 OUT=$out BUILD=/tmp/kb HF_TIMEOUT=$((deadline + 50 - SECONDS)) scripts/bench_grpo.sh run ||
    status=1
else
  echo "deadline: the HF peer not run"
fi
exit $status
