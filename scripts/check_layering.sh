#!/usr/bin/env bash
# The kernel layering rule (docs/architecture.md), checked: files under kernels/ include only core
# types (kiln/core/), the shared scalar math (kiln/math/), other kernel headers (kiln/kernels/:
# their family's args.hpp, kernels/common) and system/CUDA headers — never an op front-end, a
# module, the optimizer, the CPU backend or the CUDA runtime layer above them. Also rejects the old
# unqualified includes ("norm/all.cuh"): kernels are included as <kiln/kernels/...>.
# And: a non-template __global__ function in a header is `static` (each translation unit that
# includes it gets its own copy; a plain one is defined again by every .cu that includes the
# header, and the backend is several .cu files, as a user's project may be).
# Exit 1 with the offending lines; 0 when clean. Run by scripts/test.sh (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(grep -rnE '^\s*#\s*include\s*[<"]' kernels --include='*.cuh' --include='*.hpp' --include='*.h' --include='*.cu' |
  grep -E '#\s*include\s*"' |
  grep -vE '#\s*include\s*"kiln/(core|math|kernels)/' || true)
if [ -n "$bad" ]; then
  echo "kernels/ may include only kiln/core/, kiln/math/ and kiln/kernels/ headers (quoted includes); found:"
  echo "$bad"
  exit 1
fi
bad=$(grep -rnE '^\s*#\s*include\s*<kiln/' kernels | grep -vE '<kiln/(core|math|kernels)/' || true)
if [ -n "$bad" ]; then
  echo "kernels/ may include only kiln/core/, kiln/math/ and kiln/kernels/ headers; found:"
  echo "$bad"
  exit 1
fi
# The shared math layer sits below both sides: it includes only the core and other math headers.
bad=$(grep -rnE '^\s*#\s*include\s*["<]kiln/' include/kiln/math 2>/dev/null | grep -vE 'kiln/(core|math)/' || true)
if [ -n "$bad" ]; then
  echo "include/kiln/math/ may include only kiln/core/ and kiln/math/ headers; found:"
  echo "$bad"
  exit 1
fi
# Every kernel header that registers a launcher is included by the backend header users include.
missing=""
for h in $(grep -rl "register_device_kernel" kernels --include='*.cuh' | sort); do
  grep -q "#include \"kiln/$h\"" include/kiln/backend/cuda.hpp || missing="$missing $h"
done
if [ -n "$missing" ]; then
  echo "include/kiln/backend/cuda.hpp does not include these registering kernel headers:$missing"
  exit 1
fi
# A __global__ function that is neither a template (the line before it starts one) nor static.
bad=$(for f in $(grep -rlE '__global__' kernels); do
  awk -v F="$f" '/__global__/ && prev !~ /template/ && $0 !~ /static/ { print F ":" NR ": " $0 } { prev = $0 }' "$f"
done)
if [ -n "$bad" ]; then
  echo "non-template __global__ functions in kernel headers must be static (one copy per translation unit); found:"
  echo "$bad"
  exit 1
fi
echo "layering: ok"
