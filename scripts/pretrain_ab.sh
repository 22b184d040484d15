#!/usr/bin/env bash
# pretrain --device cuda --config big under two environments, alternating, from one build: tokens/s
# and validation loss side by side (e.g. a kernel chosen by an environment variable against the
# default: KILN_ATTENTION_BACKWARD=single_pass, KILN_ATTENTION_FORWARD=plain, KILN_GROUPED_GEMM=plain).
#
# Usage (on the GPU machine): scripts/pretrain_ab.sh OUT_DIR ENV_A ENV_B [SEEDS] [STEPS]
#   ENV_A, ENV_B  space-separated VAR=value settings of each side ('' for none)
#   SEEDS         the seeds, each run on both sides (default "1 2")
#   STEPS         steps a run (default 600; validation every STEPS/3)
#   DEADLINE      seconds of this script after which no run starts (default 560: one 10-minute call)
# Builds pretrain into /tmp/kb (outside every carried path); logs under OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
[ $# -ge 3 ] || { sed -n 2,11p "$0"; exit 2; }
out=$1 env_a=$2 env_b=$3 seeds=${4:-1 2} steps=${5:-600}
deadline=${DEADLINE:-560}
mkdir -p "$out"
. scripts/carried_deps.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > "$out/device.txt" 2>&1
cmake -S . -B /tmp/kb -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=ON -DKILN_BUILD_EXAMPLES=ON "${deps_prefix[@]}" \
  > "$out/configure.log" 2>&1 || { tail "$out/configure.log"; exit 1; }
ninja -C /tmp/kb pretrain > "$out/build.log" 2>&1 || { grep -m20 -A5 error "$out/build.log"; exit 1; }
echo "built in $SECONDS s"
status=0
for seed in $seeds; do
  for side in a b; do
    settings=$env_a
    [ "$side" = b ] && settings=$env_b
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "deadline: seed $seed side $side not run"
      continue
    fi
    log="$out/pretrain_${side}_$seed.log"
    # shellcheck disable=SC2086  # settings are words for env
    env $settings /tmp/kb/examples/pretrain --device cuda --config big --steps "$steps" --log-every $((steps / 3)) \
      --eval-every $((steps / 3)) --samples 0 --seed "$seed" > "$log" 2>&1 || { echo "run failed: $log"; status=1; }
    echo "seed $seed $side (${settings:-default}): $(grep -E '^(eval step|done)' "$log" | sed 's/(main.*//' | tr '\n' ' ')"
  done
done
exit $status
