#!/usr/bin/env bash
# The main job on built-in defaults: builds the examples and trains the tiny character language
# model on the CPU, printing its loss as it falls. Extra arguments go to the program (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_EXAMPLES=ON >/dev/null
cmake --build build --target train_char_lm -j"$(nproc)"
exec build/examples/train_char_lm "$@"
