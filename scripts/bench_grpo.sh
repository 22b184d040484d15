#!/usr/bin/env bash
# kiln's generation throughput and GRPO step time against their peers, measured one after another
# in the same call on the same GPU (DESIGN.md, principle 4), then a table of kiln's figures, the
# peers', the ratios and the targets:
#   $BUILD/benchmarks/bench_grpo_cuda      kiln (benchmarks/bench_grpo_cuda.cpp): infer::generate at
#                                          B=128, 64-token prompts, 256 new tokens; one GRPO step of
#                                          16 prompts x 8 samples, <= 256 new tokens
#   benchmarks/peers/hf_train_generate.py  Hugging Face transformers: generate() on the same work
#                                          (eager and sdpa; it also times training, not used here)
#   benchmarks/peers/trl_grpo.py           TRL GRPOTrainer (transformers generate, no vLLM) on the
#                                          same step
# Ratios: generation = kiln tok/s / HF generate tok/s (the better of eager and sdpa); GRPO step =
# TRL s per step / kiln s per step. Targets: >= GEN_TARGET and >= GRPO_TARGET (10 each).
#
# Usage (on the GPU machine, from anywhere):
#   scripts/bench_grpo.sh          build bench_grpo_cuda, run the three, print the table
#   scripts/bench_grpo.sh build    only configure $BUILD and build bench_grpo_cuda
#   scripts/bench_grpo.sh run      only run the three (bench_grpo_cuda already built) and print the table
#   scripts/bench_grpo.sh table    only print the table from the JSON files already in $OUT
# Environment:
#   OUT          where the results go [build-gpu/logs]: kiln_grpo.json/.log, hf_generate.json/.log,
#                trl_grpo.json/.log, build.log, bench_grpo.json (the table's figures and ratios)
#   BUILD        the CMake build folder [build-gpu] (the one scripts/gpu_check.sh uses)
#   KILN_ARGS    extra flags for bench_grpo_cuda (e.g. "--steps 5 --micro-batch 128")
#   SKIP_KILN=1, SKIP_HF=1, SKIP_TRL=1   leave one out (the table reads what is already in $OUT)
#   KILN_TIMEOUT, HF_TIMEOUT, TRL_TIMEOUT   seconds each program may run [240, 240, 300]
#   GEN_TARGET, GRPO_TARGET   the ratios to reach [10, 10]
#   TRL_BETA     the TRL peer's KL coefficient [0]: kiln's step runs with beta 0
# The peers need python3 with torch and transformers (the GPU machine's has both) and, for TRL,
# trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19, which that machine lacks: put
# their wheels in .whl/ at the repository root (git ignores it), for example
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# and this script installs them into /tmp/site (PYTHONPATH) before the TRL peer runs. A program
# that fails or times out leaves its row "n/a", and the exit status is then 1.
#
# Time: the build takes a few minutes on a fresh machine (the CUDA backend and one large g++
# unit); the three runs about 5 minutes together (kiln one to two, HF about one, TRL two to
# three). Where one call may run 10 minutes at most, run `build` and `run` as two calls on the
# same machine.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
mode=${1:-all}
case "$mode" in all | build | run | table) ;; *) echo "usage: $0 [all|build|run|table]" >&2; exit 2 ;; esac
OUT=${OUT:-build-gpu/logs}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT"
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
export PYTHONUNBUFFERED=1
status=0

if [ "$mode" = all ] || [ "$mode" = build ]; then
  generator=()
  command -v ninja > /dev/null && generator=(-G Ninja)
  echo "== build $BUILD (bench_grpo_cuda)"
  if ! { cmake -S . -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_BENCHMARKS=ON &&
         cmake --build "$BUILD" --target bench_grpo_cuda -j"$(nproc)"; } > "$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -40
    echo "BUILD FAILED (see $OUT/build.log)"
    exit 1
  fi
  [ "$mode" = build ] && exit 0
fi

if [ "$mode" = all ] || [ "$mode" = run ]; then
  { nvidia-smi -L; date -u; } 2>&1 | sed 's/^/   /'
  if [ -z "${SKIP_KILN:-}" ]; then
    echo "== kiln: bench_grpo_cuda ${KILN_ARGS:-}"
    rm -f "$OUT/kiln_grpo.json"
    # shellcheck disable=SC2086  # KILN_ARGS: a list of flags
    timeout "${KILN_TIMEOUT:-240}" "$BUILD/benchmarks/bench_grpo_cuda" --json "$OUT/kiln_grpo.json" ${KILN_ARGS:-} \
      > "$OUT/kiln_grpo.log" 2>&1
    rc=$?
    tail -n 25 "$OUT/kiln_grpo.log"
    [ $rc -eq 0 ] || { echo "bench_grpo_cuda failed (exit $rc; see $OUT/kiln_grpo.log)"; status=1; }
  fi
  if [ -z "${SKIP_HF:-}" ]; then
    echo "== peer: benchmarks/peers/hf_train_generate.py"
    rm -f "$OUT/hf_generate.json"
    timeout "${HF_TIMEOUT:-240}" python3 benchmarks/peers/hf_train_generate.py "$OUT/hf_generate.json" \
      > "$OUT/hf_generate.log" 2>&1
    rc=$?
    tail -n 8 "$OUT/hf_generate.log"
    [ $rc -eq 0 ] || { echo "hf_train_generate.py failed (exit $rc; see $OUT/hf_generate.log)"; status=1; }
  fi
  if [ -z "${SKIP_TRL:-}" ]; then
    if compgen -G ".whl/*.whl" > /dev/null; then
      echo "== installing .whl/*.whl into /tmp/site"
      if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
      else
        echo "pip could not install the wheels in .whl/: the TRL peer will likely fail"
      fi
    elif ! python3 -c "import trl" 2> /dev/null; then
      echo "no .whl/*.whl and no trl in python3: the TRL peer will fail (see this script's header)"
    fi
    echo "== peer: benchmarks/peers/trl_grpo.py (beta ${TRL_BETA:-0})"
    rm -f "$OUT/trl_grpo.json"
    timeout "${TRL_TIMEOUT:-300}" python3 benchmarks/peers/trl_grpo.py "$OUT/trl_grpo.json" "${TRL_BETA:-0}" \
      > "$OUT/trl_grpo.log" 2>&1
    rc=$?
    tail -n 5 "$OUT/trl_grpo.log"
    [ $rc -eq 0 ] || { echo "trl_grpo.py failed (exit $rc; see $OUT/trl_grpo.log)"; status=1; }
  fi
fi

# The table: kiln's figures, the peers', the ratios, the targets; and $OUT/bench_grpo.json.
python3 - "$OUT" "${GEN_TARGET:-10}" "${GRPO_TARGET:-10}" << 'PYTHON' || status=1
import json, math, os, sys

out, gen_target, grpo_target = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])


def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def number(d, key, positive=True):
    """d[key] as a float when it is a finite number (> 0 unless positive is False), else None."""
    v = d.get(key) if isinstance(d, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v) if v > 0 or not positive else None


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def ratio(a, b):
    return None if a is None or b is None else a / b


kiln, hf, trl = load("kiln_grpo.json"), load("hf_generate.json"), load("trl_grpo.json")
hf_gen = {impl: number(hf, f"gen_{impl}_tok_s") for impl in ("eager", "sdpa")}
measured = [(v, impl) for impl, v in hf_gen.items() if v is not None]
hf_best, hf_impl = max(measured) if measured else (None, None)

k_gen, k_step, t_step = number(kiln, "gen_tok_s"), number(kiln, "grpo_step_s"), number(trl, "step_s")
gen_ratio, step_ratio = ratio(k_gen, hf_best), ratio(t_step, k_step)
k_gtok, t_gtok = number(kiln, "grpo_gen_tok_s"), number(trl, "tokens_per_s")
k_ntok, t_ntok = number(kiln, "grpo_gen_tokens"), number(trl, "gen_tokens_per_step")
rows = [  # what, kiln, peer, ratio, target (None: for information), what the ratio is
    ("generation tok/s, B=128, 256 new", fmt(k_gen, ",.0f"), f"{fmt(hf_best, ',.0f')} (HF {hf_impl or 'generate'})",
     gen_ratio, gen_target, "kiln / HF"),
    ("GRPO step s, 16 x 8, <= 256 new", fmt(k_step, ".3f"), f"{fmt(t_step, '.3f')} (TRL)", step_ratio, grpo_target,
     "TRL / kiln"),
    ("  generated tok/s in the step", fmt(k_gtok, ",.0f"), f"{fmt(t_gtok, ',.0f')} (TRL)", ratio(k_gtok, t_gtok), None,
     "kiln / TRL"),
    ("  generated tokens per step", fmt(k_ntok, ",.0f"), f"{fmt(t_ntok, ',.0f')} (TRL)", ratio(k_ntok, t_ntok), None,
     "kiln / TRL"),
]
print()
print(f"{'what':34} {'kiln':>10} {'peer':>22} {'ratio':>8} {'target':>8} {'':5} ratio")
for what, k, p, r, target, meaning in rows:
    r_text = "n/a" if r is None else f"{r:.2f}x"
    t_text = "" if target is None else f">= {target:g}x"
    verdict = "" if target is None else ("n/a" if r is None else ("ok" if r >= target else "MISS"))
    print(f"{what:34} {k:>10} {p:>22} {r_text:>8} {t_text:>8} {verdict:5} {meaning}")
if kiln:
    parts = [(name, number(kiln, key, positive=False)) for name, key in
             (("generation", "grpo_gen_s"), ("scoring", "grpo_scoring_s"), ("log-probs", "grpo_logprobs_s"),
              ("backward", "grpo_backward_s"), ("optimizer", "grpo_optimizer_s"))]
    if any(v is not None for _, v in parts):
        print("kiln GRPO step, medians (s): " + ", ".join(f"{name} {fmt(v, '.3f')}" for name, v in parts))
    if number(kiln, "gen_steps_s") is not None:
        print(f"kiln generate: {kiln['gen_steps_s']:.1f} decode steps/s, "
              f"prefill {fmt(number(kiln, 'gen_prefill_s'), '.4f')} s")
if measured:
    print("HF generate tok/s: " + ", ".join(f"{impl} {fmt(v, ',.0f')}" for impl, v in hf_gen.items()))
missing = [name for name, d in (("kiln_grpo.json", kiln), ("hf_generate.json", hf), ("trl_grpo.json", trl)) if d is None]
if missing:
    print("missing: " + ", ".join(missing) + f" (in {out})")

summary = {
    "device": kiln.get("device") if isinstance(kiln, dict) else None,
    "kiln_gen_tok_s": k_gen, "hf_gen_tok_s": hf_best, "hf_gen_impl": hf_impl, "gen_ratio": gen_ratio,
    "gen_target": gen_target, "gen_ok": gen_ratio is not None and gen_ratio >= gen_target,
    "kiln_grpo_step_s": k_step, "trl_grpo_step_s": t_step, "grpo_ratio": step_ratio,
    "grpo_target": grpo_target, "grpo_ok": step_ratio is not None and step_ratio >= grpo_target,
    "kiln": kiln, "hf": hf, "trl": trl,
}
with open(os.path.join(out, "bench_grpo.json"), "w") as f:
    json.dump(summary, f, indent=1)
print(f"written: {os.path.join(out, 'bench_grpo.json')}")
sys.exit(1 if missing else 0)
PYTHON
exit $status
