#!/usr/bin/env bash
# Fused causal attention against its peer, in one call on one GPU: kiln's benchmark
# (benchmarks/bench_attention_cuda.cpp: the fused kernels, automatic choice, the plain and the Hopper
# forward by name with the plain backward, the Hopper forward with the Hopper backward, and kiln's
# composed path) and PyTorch's
# scaled_dot_product_attention per backend (benchmarks/peers/sdpa_attention.py), then a table of
# kiln fused / best SDPA backend, forward and forward+backward, per shape (ratio > 1: kiln faster).
#
# Usage (on the GPU machine): scripts/bench_attention.sh BENCH_BINARY OUT_DIR [BENCH_ARGS...]
#   BENCH_BINARY  a built bench_attention_cuda
#   OUT_DIR       gets kiln_attention.json/.log, sdpa_attention.json/.log
#   BENCH_ARGS    passed to the benchmark (e.g. --paths fused,hopper,hopper_bwd; the table shows 0
#                 for paths not timed)
# The peer needs python3 with torch (the GPU machine has it); without it the table shows kiln only.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
[ $# -ge 2 ] || { echo "usage: $0 BENCH_BINARY OUT_DIR [BENCH_ARGS...]" >&2; exit 2; }
bench=$1 out=$2
shift 2
mkdir -p "$out"
status=0
echo "== kiln: $bench"
"$bench" --json "$out/kiln_attention.json" "$@" 2>&1 | tee "$out/kiln_attention.log" || status=1
echo "== peer: benchmarks/peers/sdpa_attention.py"
python3 benchmarks/peers/sdpa_attention.py "$out/sdpa_attention.json" 2>&1 | tee "$out/sdpa_attention.log" || status=1
python3 - "$out" << 'PYTHON' || status=1
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
kiln, sdpa = load("kiln_attention.json"), load("sdpa_attention.json")
print(f"\n{'shape':22s} {'pass':8s} {'kiln fused':>11s} {'plain':>7s} {'hopper':>7s} {'h+h bwd':>8s} {'composed':>9s} {'best SDPA':>18s} {'kiln/SDPA':>9s}  (TFLOP/s)")
for shape, paths in kiln.items():
    for key, label in (("fwd_tflops", "fwd"), ("fwdbwd_tflops", "fwd+bwd")):
        fused = paths.get("fused", {}).get(key)
        composed = paths.get("composed", {}).get(key)
        plain = paths.get("plain", {}).get(key)
        hop = paths.get("hopper", {}).get(key)
        hbwd = paths.get("hopper_bwd", {}).get(key)
        peers = {b: r[key] for b, r in sdpa.get(shape, {}).items() if key in r}
        best = max(peers.items(), key=lambda kv: kv[1]) if peers else None
        ratio = f"{fused / best[1]:.2f}x" if fused and best else "n/a"
        peer = f"{best[1]:.1f} ({best[0]})" if best else "n/a"
        print(f"{shape:22s} {label:8s} {fused or 0:11.1f} {plain or 0:7.1f} {hop or 0:7.1f} {hbwd or 0:8.1f} {composed or 0:9.1f} {peer:>18s} {ratio:>9s}")
PYTHON
exit $status
