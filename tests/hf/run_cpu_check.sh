#!/usr/bin/env bash
# The ctest test hf_logits_cpu: compare_logits.py with kiln on the CPU, in the Python environment
# that scripts/hf_venv.sh prepares (KILN_HF_PYTHON overrides it with any Python that has torch,
# transformers and safetensors).
#   run_cpu_check.sh HF_EXPORT VENV_DIR WORK_DIR
# Exit 0 pass, 1 fail, 77 skip (no environment prepared, or the package index was unreachable when
# it was prepared: the reason is printed).
set -uo pipefail
exporter=$1 venv=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
python=${KILN_HF_PYTHON:-}
if [ -z "$python" ]; then
  state=$(cat "$venv/status" 2>/dev/null || echo missing)
  case "$state" in
    ready) python="$venv/bin/python" ;;
    unreachable)
      echo "SKIP: the Python package index could not be reached when $venv was prepared (see $venv/install.log);"
      echo "      torch and transformers are needed for this check"
      exit 77 ;;
    failed)
      echo "FAIL: installing torch and transformers into $venv failed:"
      tail -20 "$venv/install.log"
      exit 1 ;;
    *)
      echo "SKIP: no Python environment with torch and transformers at $venv: run scripts/hf_venv.sh $venv"
      echo "      (scripts/test.sh does), or set KILN_HF_PYTHON"
      exit 77 ;;
  esac
fi
exec "$python" "$here/compare_logits.py" --exporter "$exporter" --device cpu "$work"
