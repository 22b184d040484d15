#!/usr/bin/env bash
# The main job on built-in defaults: R1-Zero-style GRPO on the CPU (examples/grpo, docs/grpo.md).
# It pretrains a small DeepSeek-V3-style model on worked arithmetic solutions, measures its held-out
# accuracy, trains it with GRPO from rule rewards (16 problems x 8 samples per step, 150 steps) and
# measures again: about 13 minutes on 2 cores. Progress on the terminal; metrics.jsonl, plots/,
# report.md and checkpoints in runs/grpo. Extra arguments go to the program (--help lists them;
# --resume runs/grpo continues an interrupted run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_EXAMPLES=ON >/dev/null
cmake --build build --target grpo pretrain -j"$(nproc)"
exec build/examples/grpo "$@"
