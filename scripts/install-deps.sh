#!/usr/bin/env bash
# Installs what kiln's build, tests, benchmarks and examples need on Debian/Ubuntu (idempotent:
# apt-get runs only when a package is missing). Run as root, or with sudo available.
set -euo pipefail
# python3-venv: scripts/hf_venv.sh (the Hugging Face interop test's environment).
# clang and libclang-rt-dev: libFuzzer for scripts/fuzz.sh (the runtime is only "recommended" by clang).
packages=(cmake g++ make libeigen3-dev libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libopenmpi-dev openmpi-bin
          python3-matplotlib python3-venv clang libclang-rt-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
