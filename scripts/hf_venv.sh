#!/usr/bin/env bash
# Installs the Hugging Face peer of the interop test (tests/hf/compare_logits.py: kiln checkpoints
# loaded by transformers must give kiln's logits) into a virtual environment of its own:
#   scripts/hf_venv.sh [DIR]        DIR defaults to build-test/hf-venv
# torch and transformers are test-only peers, never dependencies of kiln. PyPI's Linux torch wheel
# is the CUDA build (about 3 GB with its NVIDIA libraries, 1-2 minutes); it runs on the CPU here.
# Versions are pinned to the pair the check last passed with, so that a new release cannot turn
# CI red overnight; raise them together after running the check.
#
# Writes DIR/status: "ready" (DIR/bin/python has torch, transformers and safetensors), "unreachable"
# (the package index did not answer: the test then skips, saying so) or "failed" (the index
# answered but the install failed: the test fails and shows DIR/install.log).
# scripts/test.sh runs this in the background while it compiles (--no-compile: no bytecode for
# torch's thousands of modules, CPU that the build needs; Python compiles what it imports).
set -uo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-test/hf-venv}
torch_version=2.15.0
transformers_version=5.25.0
mkdir -p "$dir"
log="$dir/install.log"
status() { echo "$1" > "$dir/status"; echo "hf_venv: $1 ($dir)"; }

if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import torch, transformers, safetensors" 2>/dev/null; then
  status ready
  exit 0
fi
index=${PIP_INDEX_URL:-https://pypi.org/simple}
if ! python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/pip/', timeout=15)" "${index%/}" \
     > "$log" 2>&1; then
  status unreachable
  exit 0
fi
{ python3 -m venv "$dir" &&
  "$dir/bin/pip" install --quiet --progress-bar off --disable-pip-version-check --no-compile \
    "torch==$torch_version" "transformers==$transformers_version" safetensors; } >> "$log" 2>&1
if "$dir/bin/python" -c "import torch, transformers, safetensors" >> "$log" 2>&1; then
  status ready
else
  status failed
  tail -20 "$log"
  exit 1
fi
