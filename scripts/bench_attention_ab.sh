#!/usr/bin/env bash
# The attention kernels of another tree against this one's, in one call on one GPU: both trees'
# bench_attention_cuda built side by side, this tree's attention and decode kernel tests, each
# build's benchmark (fused, Hopper forward, Hopper forward + backward) and the per-shape ratio, then
# scripts/bench_attention.sh (this build against PyTorch SDPA in the same call).
#
# Usage (on the GPU machine): scripts/bench_attention_ab.sh OLD_TREE OUT_DIR
#   OLD_TREE  a source tree of the kernels to compare against, e.g. made where the repository is
#             with `mkdir -p build-ab/old && git archive REV | tar -x -C build-ab/old` and carried
#             (build-ab/ is git-ignored)
#   OUT_DIR   logs, JSON and the tables
# Builds go to /tmp/kb and /tmp/kb_old (outside every carried path). About 6 minutes on a fresh
# 16-core H100 machine (builds 3 of them).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
[ $# -eq 2 ] || { echo "usage: $0 OLD_TREE OUT_DIR" >&2; exit 2; }
old_tree=$1 out=$2
mkdir -p "$out"
. scripts/carried_deps.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > "$out/device.txt" 2>&1
configure_release . /tmp/kb "$out/configure_new.log"
configure_release "$old_tree" /tmp/kb_old "$out/configure_old.log"
t0=$SECONDS
failed() { grep -m20 -A5 error "$1"; exit 1; }
ninja -C /tmp/kb -j 12 bench_attention_cuda > "$out/build_new.log" 2>&1 || failed "$out/build_new.log"
ninja -C /tmp/kb_old -j 4 bench_attention_cuda > "$out/build_old.log" 2>&1 &
old_build=$!
ninja -C /tmp/kb -j 12 test_kernels_cuda > "$out/build_tests.log" 2>&1 || failed "$out/build_tests.log"
status=0
timeout 180 /tmp/kb/tests/test_kernels_cuda \
  --gtest_filter='FusedAttentionCuda.*:PagedDecodeAttentionCuda.*:DecodeAttentionCuda.*:LatentFp8CacheCuda.*' \
  > "$out/tests.log" 2>&1 || status=1
grep -E '^\[  (PASSED|FAILED)|Failure' "$out/tests.log" | head -20
wait $old_build || failed "$out/build_old.log"
echo "built in $((SECONDS - t0)) s"
paths=fused,hopper,hopper_bwd
/tmp/kb_old/benchmarks/bench_attention_cuda --json "$out/old.json" --paths $paths > "$out/bench_old.log" 2>&1 ||
  status=1
/tmp/kb/benchmarks/bench_attention_cuda --json "$out/new.json" --paths $paths > "$out/bench_new.log" 2>&1 || status=1
python3 - "$out" << 'PYTHON' || status=1
import json, sys
out = sys.argv[1]
old, new = (json.load(open(f"{out}/{n}.json")) for n in ("old", "new"))
print(f"{'shape':22s} {'pass':14s} {'path':10s} {'old':>7s} {'new':>7s} {'new/old':>8s}  (TFLOP/s)")
for shape in new:
    for key in ("fwd_tflops", "fwdbwd_tflops"):
        for path in new[shape]:
            a, b = old.get(shape, {}).get(path, {}).get(key, 0), new[shape][path][key]
            ratio = f"{b / a:.3f}" if a else "n/a"
            print(f"{shape:22s} {key:14s} {path:10s} {a:7.1f} {b:7.1f} {ratio:>8s}")
PYTHON
bash scripts/bench_attention.sh /tmp/kb/benchmarks/bench_attention_cuda "$out/sdpa" --paths fused,plain,hopper,hopper_bwd \
  > "$out/bench_sdpa.log" 2>&1 || status=1
tail -11 "$out/bench_sdpa.log"
exit $status
