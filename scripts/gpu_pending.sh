#!/usr/bin/env bash
# The GPU runs that CPU-only sessions left pending, in phases that each fit one call of the lent
# machine (10 minutes a call). What each phase measures, and where its figures go:
#   build   every target the phases below use (4-7 minutes cold on 16 cores: a call of its own, so
#           that the tests' call starts warm; $BUILD survives between calls on a warm machine)
#   tests   the decode kernels (CUDA-core, FP8 latent cache, tensor-core), the fused attention, the
#           FP8 quantization and GEMM (with the k-grouped weight gradient), the engine and the FP8
#           training step on the GPU                               -> docs/mla.md, docs/fp8-gemm.md
#   fp8     pretrain --config big, bf16 against FP8 at seeds 1 and 2, and the FP8 gradient probe
#           after one step and at the bf16-trained weights (all products, then each alone)
#   fp8-ablations  FP8 runs with every product unquantized (--fp8-gemms none), dgrad alone, wgrad
#           alone, and the whole recipe with the experts' weight gradients in FP8 (expert-wgrad)
#   fp8-parts  the ablations measured on 2026-12-05 (--fp8-keep parts of the model, --moe composed,
#           other --fp8-gemms subsets), to repeat                 -> docs/fp8-gemm.md
#   bench   bench_paged_decode_cuda (both decode kernels, the FP8 cache, DeepSeek-V3's sizes) and the
#           engine's generation throughput at B = 128               -> docs/mla.md
#   bench-key-groups  the same two with the tensor-core decode kernel's key groups switched off
#           (KILN_DECODE_KEY_GROUPS=off; on by default)               -> docs/mla.md
#   bench-fp8  bench_grouped_fp8_gemm_cuda: the grouped FP8 GEMM and the k-grouped weight gradient
#           against the bf16 grouped GEMMs                          -> docs/fp8-gemm.md
#   quantize  the FP8 quantization's tests (bit for bit against the CPU: every tiling, both at once,
#           the batched expert weights, the training step), bench_fp8_quantize_cuda, and the big
#           config's 600-step FP8 and bf16 runs for the step time    -> docs/fp8-gemm.md
#   quantize-quick  the quantization and elementwise kernel tests, the benchmark, and the 600-step
#           runs at seed 1 while the call is under $DEADLINE seconds (default 540)
#   verify  after CPU-only kernel and autograd edits: builds the targets of verify and steps, runs the
#           quantization, elementwise and reduction kernel tests, bench_fp8_quantize_cuda and
#           bench_elementwise_cuda, then all of test_nn_cuda until $DEADLINE (default 560)
#   steps   the big config's 600-step FP8 and bf16 runs at seed 1 (the step times), then the FP8
#           GEMM tests                                               -> docs/training.md
#   changes the GPU tests and benchmarks of the kernels changed since the last GPU run: the test
#           filter $KERNEL_TESTS of test_kernels_cuda, all of test_nn_cuda (the autograd), the
#           benchmarks in $BENCHES, then the 600-step FP8 and bf16 runs while under $DEADLINE (560);
#           the defaults name this session's changes (2026-12-05: index_add's chunks, the staged
#           quantization, the RMSNorm dw sums, a split's gradient parts copied)
#   fp8-seeds  bf16 against FP8 at the seeds in $SEEDS (default 1 2 3), alternating, until $DEADLINE
#           seconds of the call have passed (default 540), $STEPS steps each (default 600; at 600 the
#           loss still falls by a fifth in the last third, so 2000 is the next comparison: about
#           70 s a run on an H100)                                   -> docs/fp8-gemm.md
#   key-groups-ab  bench_paged_decode_cuda with key groups off, on, off, on: whether a figure repeats
#   decode-step  after the decode step's launches were cut (2026-12-06: routing with dense gates in
#           one kernel, rope reading slices in place, per-head products written in place): the
#           tests of those kernels and ops, the engine's GPU tests, then while under $DEADLINE
#           (default 540) generation at B = 128 (bench_grpo_cuda, no GRPO steps), the engine's
#           other modes (EngineCuda.BigConfigThroughput: speculative, FP8 cache, contiguous cache,
#           CUDA-core decode kernel) and the step's kernels under ncu   -> docs/mla.md
#   profile-decode  the kernels of 8 decode steps of the big config at B = 128 (bench_grpo_cuda
#           --profile-decode): ncu's duration of each (eager), nsys over graph replays when the
#           machine has it, and the generation throughput beside them   -> docs/mla.md
#   decode-fp8  the fused latent cache write (2026-12-06: kernels/decode_attention/latent_write.cuh)
#           and the FP8 GEMMs' turns in one call: their kernel tests (with RoPE's and RMSNorm's, whose
#           arithmetic the fused kernel now shares), the engine's GPU tests, then while under
#           $DEADLINE (default 520) bench_fp8_gemm_cuda with turns on and off, generation at B = 128,
#           the engine's modes (speculative, sparse MoE dispatch, ...)   -> docs/mla.md, docs/fp8-gemm.md
#   latent-recheck  the fused latent write's tests again, then the engine's modes twice (2026-12-06:
#           eager and speculative ran slower in decode-fp8's call than the call before; the same
#           modes twice in one call tell the machine's variance from the change's)
#   profile-fp8-gemm  Nsight Compute's sections (speed of light, warp states, scheduler, memory) on
#           one launch of the Hopper FP8 GEMM at 4096 x 7168 x 16384, turns on and off, to say what
#           limits it (bench_fp8_gemm_cuda --shape)                     -> docs/fp8-gemm.md
#   profile-fp8-gemm-source  the same launch under Nsight Compute's SourceCounters (the sampled
#           stalls per instruction): which barrier the warps wait at      -> docs/fp8-gemm.md
#   fp8-uniform-ab  the FP8 GEMMs with the uniform warpgroup index (2026-12-06, later) against the
#           tree in $OLD_TREE (made with `git archive 0b03c92 | tar -x -C build-ab/old`, carried):
#           the FP8 and bf16 grouped GEMM tests, then both builds' bench_fp8_gemm_cuda alternating new, old, new, old
#           while under $DEADLINE (default 540). The attention kernels' side of the same change:
#           scripts/bench_attention_ab.sh build-ab/old OUT (tests included)  -> docs/fp8-gemm.md, mla.md
#   fp8-multicast  after the 2-CTA clusters of the FP8 GEMM (2026-12-07: 128 × 128 tiles in pairs sharing
#           the B tile by TMA multicast): the FP8 GEMM tests (MulticastGivesTheSameBits), then
#           bench_fp8_gemm_cuda with KILN_FP8_MULTICAST on, off and the tree in $OLD_TREE (optional),
#           twice, while under $DEADLINE (default 540)                 -> docs/fp8-gemm.md
#   multicast-check  the FP8 GEMM's clusters at one shape: on/off timings, then Nsight Compute's
#           launch statistics and warp states of a multicast launch        -> docs/fp8-gemm.md
#   folds-fp8  folds and fp8-multicast in one call (their tests, the FP8 benchmark with multicast on and
#           off, the pretrain A/B against $OLD_TREE, the benchmark again) while under $DEADLINE (500)
#   profile-speculative  the kernels of 4 MTP speculative decode steps (bench_grpo_cuda
#           --profile-decode 4 --profile-speculative) beside 4 plain ones, under ncu   -> docs/mla.md
#   hopper-decode  after the Hopper decode kernel (2026-12-06: its tests passed and --quick measured
#           it at 0057efa / 5051008, but the edits after, the producer's table read moved and the
#           softmax shared with the training forward, ran only in the benchmark): the decode and
#           attention kernel tests, the engine's GPU tests (automatic takes the Hopper kernel now),
#           generation at B = 128 on it and on the mma.sync kernel (KILN_DECODE_KERNEL=mma), the
#           engine's modes, then the full bench_paged_decode_cuda while under $DEADLINE (540)
#                                                                    -> docs/mla.md
#   seesaw  after the seesaw kernel (2026-12-07: the Hopper decode at DeepSeek-V3's (576, 512),
#           decode_attention_seesaw.cuh): the decode and attention kernel tests, then
#           bench_paged_decode_cuda --deepseek (its three DeepSeek-V3 shapes) with the per-chunk
#           barriers on, off, on, off (KILN_DECODE_SEESAW_CHUNKS)   -> docs/mla.md
#   engine-hopper  hopper-decode without the kernel tests (after seesaw in the same call)
#   session-build, combine-tests, combine-bench, swiglu  (2026-12-07, later) for the grouped GEMMs'
#           SwiGLU epilogues and a split combine's rewrite: everything built in one ninja run; the
#           decode, FP8 latent, grouped GEMM, MoE and engine GPU tests; bench_paged_decode_cuda --long
#           (the long-context rows) against $OLD_TREE; the nn GPU tests, bench_moe_cuda and pretrain
#           with the epilogues on and off (KILN_MOE_SWIGLU_EPILOGUE)   -> docs/mla.md, docs/moe.md
#   attention-views  (2026-12-07, later) the attention kernels reading strided q, k, v, out and
#           dout (kernels/attention/args.hpp, HeadLayout): all FusedAttentionCuda tests  -> docs/mla.md
#   one-call  (2026-12-07, later: when one call is all the device time allows) in one ninja run
#           test_kernels_cuda, test_nn_cuda, bench_moe_cuda and pretrain; then the attention tests
#           (strided operands, MLA's parts) and, each while under $DEADLINE (default 540),
#           test_nn_cuda, pretrain --config big 200 steps with MLA's attention reading q and k from
#           their parts and concatenated (KILN_MLA_ATTENTION_PARTS=on, off), the MoE kernel tests
#           and bench_moe_cuda --ops, the decode and grouped GEMM kernel tests
#   folds  (2026-12-07, second session) the gradient sums folded into the kernels that make the
#           second gradient and the forward residuals in the products and the MoE combine: the GPU
#           tests of rms_norm, matmul, the MoE dispatch/combine and the attention kernels, all of
#           test_nn_cuda and TrainerCuda, then pretrain --config big 200 steps against the tree in
#           $OLD_TREE (`git archive 08c6aac | tar -x -C build-ab/old`, carried), alternating twice
#                                                         -> docs/training.md, docs/architecture.md
#   graphs-matmul  (2026-12-07, third session) the engine's graph patience (a shrinking batch replays
#           larger graphs before capturing smaller ones) and Linear's weight gradient made in the
#           weight's layout: the engine's GPU tests and modes, test_nn_cuda, then pretrain --config
#           big against $OLD_TREE: float32 3 steps (grad norms), bf16 200 steps alternating (LEAN=1:
#           without test_nn_cuda)
#                                                         -> docs/mla.md, docs/training.md
#   autograd-tests  all of test_nn_cuda, TrainerCuda.* and EngineCuda.* (after host-side autograd or
#           module changes)
#   step-phases  pretrain --config big --time-phases: where a step's wall time goes on the host
#           (data, forward+backward enqueued, the loss read, clip, optimizer, balance)  -> docs/training.md
#   vs-hf  kiln's pretrain --config big (600 steps, seed 1) and HF transformers under torch.compile on
#           the same model (benchmarks/peers/hf_compile_train.py) in one call: tokens/s and their
#           ratio, kiln's over the run and at its last logged interval (HF's: 15 steps after
#           compiling and 3 warm-up steps)                    -> docs/training.md, docs/moe.md
#   profile-copies  every kernel of 2 steps of pretrain --config big under ncu with its DRAM bytes
#           (no validation: its 8 forward passes at the end filled the "second half" on 2026-12-07):
#           the time and bandwidth per kernel, and the longest elementwise launches (copies) with
#           their GB/s (scripts/ncu_kernel_table.py): whether the copies run at copy speed
#   profile-fp8  the GPU time of each kernel in 30 steps of bf16 and of FP8 training (nsys when the
#           machine has it)                                          -> docs/fp8-gemm.md
#   sync-free-build, sync-free  after a step's waits were cut (2026-12-07, fourth session: uploads
#           of up to 1 MB queued without waiting, copies within a GPU without waiting, the trainer's
#           host check of the token ids and one read point a step). sync-free-build builds this tree's
#           targets and $OLD_TREE's pretrain (optional: `git archive a060103 | tar -x -C build-ab/base`,
#           carried); sync-free runs pretrain --time-phases new, old, new, old (200 steps), then
#           TrainerCuda.* and EngineCuda.*, test_core_optim_cuda (graphs, copies, AdamW) and
#           test_nn_cuda while under $DEADLINE (540)                          -> docs/training.md
#   step-timeline  every kernel of 30 steps of pretrain --config big as the GPU ran them (the CUPTI
#           tracer benchmarks/tools/kernel_trace.cpp, where nsys is missing), then the idle time
#           between kernels per step and the transitions that cost the most (scripts/kernel_gaps.py):
#           where the 4 ms between the kernels' 16.6 ms under ncu and the 20.8 ms step go
#                                                                    -> docs/training.md
#   wgrad-chunks-build, wgrad-chunks  after the fifth session of 2026-12-07: wgrad's chunks (the
#           grouped GEMM's weight gradient summed in chunks handed from CTA to CTA, kernels/
#           grouped_gemm/wgrad_chunks.cuh, opt-in: KILN_GROUPED_WGRAD_CHUNKS=on), the attention delta
#           kernel's 16-byte reads and a copy's gradient passed on without a copy (ops/copy.hpp). The
#           build phase builds this tree's targets and $OLD_TREE's pretrain (`git archive 6c0af79 |
#           tar -x -C build-ab/base`, carried); the run phase: GroupedGemmCuda.* and the attention
#           tests, test_nn_cuda, TrainerCuda.* and EngineCuda.*, pretrain new, new with the chunks,
#           old (200 steps, $ROUNDS times, default 2), the step's kernels traced (new), then
#           bench_grouped_gemm_cuda with the chunks on and off, each started while under $DEADLINE
#           (540). Since the sixth session it covers that session's changes too: the dgrad's SwiGLU
#           backward epilogue (loads ahead of stores, L2 prefetch: since taken back) and RMSNorm
#           training on slices of wider rows in place (RmsNormCuda.*)
#                                                               -> docs/grouped-gemm.md, docs/training.md
#   one-call-6  the sixth session of 2026-12-07 had little device time: everything above in one
#           call, most important first, each step only while under $DEADLINE (default 560): build
#           pretrain, kernel_trace, test_kernels_cuda (and $OLD_TREE's pretrain beside them); the
#           grouped GEMM, attention and RMSNorm tests; pretrain new against old twice (200 steps);
#           the step traced; then test_nn_cuda and the trainer's and engine's GPU tests; the
#           grouped GEMM benchmark with the chunks on and off        -> docs/training.md
#   left-6  what one-call-6 could not run (device time): ElementwiseCuda.* (swiglu's gradients where
#           the halves lay), test_nn_cuda, TrainerCuda.* and EngineCuda.*, the grouped GEMM benchmark
#           with the chunks off and on, then Nsight Compute on the grouped dgrad with the SwiGLU
#           backward epilogue (one launch in pretrain's step 3: speed of light, warp states,
#           memory) and on the same kernel without the epilogue (GEMM1's dgrad) beside it, while
#           under $DEADLINE (560)                        -> docs/grouped-gemm.md, docs/training.md
# Usage: scripts/gpu_pending.sh PHASE [PHASE ...]   (on the lent machine: OUT=$OUT, logs under it)
# The Debian dev packages the build needs (Eigen, GoogleTest, Google Benchmark, nlohmann-json) are
# unpacked from build-deps/*.deb when missing there; fetch them first on a Debian 12 machine with
#   mkdir -p build-deps && (cd build-deps && apt-get download libeigen3-dev libgtest-dev \
#     libgmock-dev googletest libbenchmark-dev libbenchmark1debian nlohmann-json3-dev)
# and carry build-deps (git-ignored) to the lent machine. The
# build folder ($BUILD, default /tmp/kb) lies outside the working tree, so that it survives between
# calls on a warm machine.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build-gpu/logs}
BUILD=${BUILD:-/tmp/kb}
BUILD_LOGS=${BUILD_LOGS:-$OUT}  # configure.log and build.log (elsewhere when $OUT's files are counted)
mkdir -p "$OUT" "$BUILD_LOGS"
phases="build|tests|quantize|quantize-quick|fp8|fp8-ablations|fp8-parts|fp8-seeds|bench|bench-key-groups|bench-fp8"
phases+="|key-groups-ab|verify|steps|changes|profile-decode|decode-step|profile-speculative|decode-fp8|latent-recheck"
phases+="|profile-fp8-gemm|profile-fp8-gemm-source|fp8-uniform-ab|hopper-decode|seesaw|engine-hopper"
phases+="|session-build|combine-tests|combine-bench|swiglu|folds|vs-hf|profile-copies|attention-views|one-call"
phases+="|graphs-matmul|step-phases|autograd-tests|sync-free-build|sync-free|step-timeline"
phases+="|wgrad-chunks-build|wgrad-chunks|one-call-6|left-6"
[ $# -gt 0 ] || { echo "usage: $0 $phases|profile-fp8 ..."; exit 2; }

. scripts/carried_deps.sh
{ nvidia-smi; nvcc --version; date -u; git log -1 --oneline 2>/dev/null; } > "$OUT/device.txt" 2>&1
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=ON -DKILN_BUILD_BENCHMARKS=ON \
  -DKILN_BUILD_EXAMPLES=ON "${deps_prefix[@]}" > "$BUILD_LOGS/configure.log" 2>&1 ||
  { tail -30 "$BUILD_LOGS/configure.log"; exit 1; }

build() {  # targets...
  local t0=$SECONDS
  if ! ninja -C "$BUILD" "$@" >> "$BUILD_LOGS/build.log" 2>&1; then
    grep -E "error" "$BUILD_LOGS/build.log" | head -30
    echo "BUILD FAILED: $* (see build.log)"
    exit 1
  fi
  echo "built $* in $((SECONDS - t0)) s"
}

# The big config's 600-step FP8 and bf16 runs at seed 1 (their tokens/s: the step times), each
# started only while the call is under $DEADLINE seconds (default: the argument).
step_times() {
  local kind
  for kind in fp8 bf16; do
    [ $SECONDS -lt "${DEADLINE:-$1}" ] || { echo "deadline: pretrain $kind not run"; continue; }
    local flags=()
    [ $kind = fp8 ] && flags=(--fp8)
    "$BUILD/examples/pretrain" --device cuda --config big --steps 600 --log-every 200 --eval-every 200 \
      --samples 0 --seed 1 "${flags[@]}" > "$OUT/pretrain_$kind.log" 2>&1 || echo "pretrain $kind failed"
    echo "$kind: $(grep -E '^(eval step 600|done)' "$OUT/pretrain_$kind.log" | tr '\n' ' ')"
  done
}

# fp8_bench LOG COMMAND...: one bench_fp8_gemm_cuda run (COMMAND: the binary, or `env VAR=... binary`)
# into $OUT/LOG, its geometric means against cuBLASLt printed.
fp8_bench() {
  local log=$1
  shift
  timeout 150 "$@" > "$OUT/$log" 2>&1 || rc=1
  echo "$log: $(grep -A1 '^geometric mean' "$OUT/$log" | tr '\n' ' ')"
}

# $OLD_TREE's pretrain built in /tmp/kb_old beside this tree's targets (4 jobs, in the background);
# wait_old_build waits for it and says when it failed.
start_old_build() {
  if [ -d "${OLD_TREE:-}" ] && [ ! -x /tmp/kb_old/examples/pretrain ]; then
    configure_release "$OLD_TREE" /tmp/kb_old "$BUILD_LOGS/configure_old.log"
    ninja -C /tmp/kb_old -j 4 pretrain > "$BUILD_LOGS/build_old.log" 2>&1 &
    old_build=$!
  fi
}
wait_old_build() {
  if [ -n "${old_build:-}" ] && ! wait "$old_build"; then
    echo "old build failed"
    tail -20 "$BUILD_LOGS/build_old.log"
  fi
}

# Whether the call is still under $DEADLINE seconds (default 560); says what is skipped when not.
under() { [ $SECONDS -lt "${DEADLINE:-560}" ] || { echo "deadline: $1 not run"; return 1; }; }

# GoogleTest's verdicts and failures from the logs given.
test_summary() { grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$@" | head -20; }

# All of test_nn_cuda (the modules and models on the GPU) and the trainer's and engine's GPU tests.
model_tests() {
  timeout 150 "$BUILD/tests/test_nn_cuda" > "$OUT/test_nn_cuda.log" 2>&1 || rc=1
  timeout 200 "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter='TrainerCuda.*:EngineCuda.*' \
    > "$OUT/test_train_engine.log" 2>&1 || rc=1
  test_summary "$OUT/test_nn_cuda.log" "$OUT/test_train_engine.log"
}

# The kernels of 30 steps of pretrain --config big as the GPU ran them (the CUPTI tracer), and the
# busy time per kernel per step (scripts/kernel_gaps.py), its first $1 lines printed.
trace_step_kernels() {
  CUDA_INJECTION64_PATH="$BUILD/benchmarks/libkernel_trace.so" KILN_TRACE_OUT="$OUT/step_trace.csv" \
    timeout 120 "$BUILD/examples/pretrain" --device cuda --config big --steps 30 --log-every 10 \
    --eval-every 1000 --eval-batches 0 --samples 0 --seed 1 > "$OUT/pretrain_traced.log" 2>&1 || rc=1
  python3 scripts/kernel_gaps.py "$OUT/step_trace.csv" --skip-steps 5 --top 40 --by-kernel --templates \
    > "$OUT/step_kernels.txt" 2>&1 || rc=1
  head -"$1" "$OUT/step_kernels.txt" | cut -c1-170
}

rc=0
for phase in "$@"; do
  case "$phase" in
    build)
      build test_kernels_cuda test_train_infer_rl_cuda test_nn_cuda pretrain bench_paged_decode_cuda \
        bench_grouped_fp8_gemm_cuda
      ;;
    tests)
      build test_kernels_cuda test_train_infer_rl_cuda test_nn_cuda
      kernel_tests='PagedDecodeAttentionCuda.*:PagedCacheWriteCuda.*:DecodeAttentionCuda.*:LatentFp8CacheCuda.*'
      kernel_tests+=':CacheWriteCuda.*:FusedAttentionCuda.*:KGroupedFp8GemmCuda.*:Fp8QuantizeCuda.*:Fp8GemmCuda.*'
      "$BUILD/tests/test_kernels_cuda" \
        --gtest_filter="$kernel_tests" \
        > "$OUT/test_kernels.log" 2>&1 || rc=1
      "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter='EngineCuda.*:TrainerCuda.*' \
        > "$OUT/test_engine_trainer.log" 2>&1 || rc=1
      [ "$phase" = quantize ] &&
        { "$BUILD/tests/test_nn_cuda" --gtest_filter='Fp8TrainingCuda.*' > "$OUT/test_fp8_training.log" 2>&1 || rc=1; }
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure|error:" "$OUT"/test_*.log | head -60
      ;;
    fp8 | fp8-ablations | fp8-parts)
      build pretrain
      run() {  # name, pretrain flags...
        local name=$1
        shift
        "$BUILD/examples/pretrain" --device cuda --config big --steps 600 --log-every 200 --eval-every 200 \
          --samples 0 "$@" > "$OUT/pretrain_$name.log" 2>&1 || echo "pretrain $name failed"
        echo "$name: $(grep -E '^(eval step|done|final)' "$OUT/pretrain_$name.log" | tr '\n' ' ')"
      }
      if [ "$phase" = fp8 ]; then
        # Seeds 1 and 2, bf16 against FP8. --fp8-probe: one step's gradients in FP8 against bf16 per
        # kind of parameter, after one step and at seed 1's bf16-trained weights, there with all
        # three products in FP8 and with each alone (--fp8-gemms; the checkpoint resumed at its last
        # step trains nothing more).
        run probe_step1 --steps 1 --fp8-probe
        for seed in 1 2; do
          out=()
          [ $seed = 1 ] && out=(--out /tmp/pretrain_bf16_seed1)
          run "bf16_seed$seed" --seed $seed "${out[@]}"
          run "fp8_seed$seed" --seed $seed --fp8
        done
        for gemms in forward,dgrad,wgrad forward dgrad wgrad; do
          run "probe_trained_$gemms" --resume /tmp/pretrain_bf16_seed1 --fp8-probe --fp8-gemms "$gemms"
        done
        grep -H "fp8 probe" "$OUT"/pretrain_probe_*.log | sed 's/^.*pretrain_//'
      elif [ "$phase" = fp8-ablations ]; then
        # Seed 1. Not measured yet, first: none (the FP8 linears' code path with every product
        # unquantized: bit for bit the plain linear's on the CPU), then each backward product alone,
        # then the whole recipe with the experts' weight gradients in FP8 too (the k-grouped GEMM).
        # On 2026-12-05 the backward alone (dgrad,wgrad) opened the whole gap, as did the forward
        # alone (docs/fp8-gemm.md).
        run fp8_no_product --fp8 --fp8-gemms none  # the FP8 linears' plumbing alone: bf16's loss?
        run fp8_dgrad_only --fp8 --fp8-gemms dgrad
        run fp8_wgrad_only --fp8 --fp8-gemms wgrad
        run fp8_expert_wgrad --fp8 --fp8-gemms forward,dgrad,wgrad,expert-wgrad
        run bf16_seed1 --seed 1  # the same call's bf16 loss and tokens/s (deterministic: 0.3743 before)
      else
        # Measured on 2026-12-05 (docs/fp8-gemm.md), kept to repeat: which part of the model, and
        # which products, open the gap (seed 1).
        run fp8_moe_composed --fp8 --moe composed
        run bf16_moe_composed --moe composed
        run fp8_keep_attention --fp8 --fp8-keep self_attn
        run fp8_keep_experts --fp8 --fp8-keep experts
        run fp8_keep_dense_mlp --fp8 --fp8-keep layers.0.mlp
        run fp8_backward_only --fp8 --fp8-gemms dgrad,wgrad
        run fp8_forward_dgrad --fp8 --fp8-gemms forward,dgrad
        run fp8_forward_only --fp8 --fp8-gemms forward
      fi
      ;;
    bench)
      build bench_paged_decode_cuda test_train_infer_rl_cuda
      timeout 300 "$BUILD/benchmarks/bench_paged_decode_cuda" > "$OUT/bench_paged_decode.log" 2>&1 || rc=1
      KILN_ENGINE_BENCH=1 timeout 240 "$BUILD/tests/test_train_infer_rl_cuda" \
        --gtest_filter='EngineCuda.BigConfigThroughput' > "$OUT/engine_throughput.log" 2>&1 || rc=1
      tail -40 "$OUT/bench_paged_decode.log"
      grep -E "tok/s|x HF|FAILED" "$OUT/engine_throughput.log" | head -20
      ;;
    bench-key-groups)  # the same without the decode kernel's key groups (KILN_DECODE_KEY_GROUPS=off)
      build bench_paged_decode_cuda test_train_infer_rl_cuda
      KILN_DECODE_KEY_GROUPS=off timeout 300 "$BUILD/benchmarks/bench_paged_decode_cuda" \
        > "$OUT/bench_paged_decode_key_groups.log" 2>&1 || rc=1
      KILN_DECODE_KEY_GROUPS=off KILN_ENGINE_BENCH=1 timeout 240 "$BUILD/tests/test_train_infer_rl_cuda" \
        --gtest_filter='EngineCuda.BigConfigThroughput' > "$OUT/engine_throughput_key_groups.log" 2>&1 || rc=1
      tail -40 "$OUT/bench_paged_decode_key_groups.log"
      grep -E "tok/s|x HF|FAILED" "$OUT/engine_throughput_key_groups.log" | head -20
      ;;
    bench-fp8)
      build bench_grouped_fp8_gemm_cuda
      timeout 240 "$BUILD/benchmarks/bench_grouped_fp8_gemm_cuda" > "$OUT/bench_grouped_fp8.log" 2>&1 || rc=1
      cat "$OUT/bench_grouped_fp8.log"
      ;;
    quantize | quantize-quick)  # quick: the kernel tests, the benchmark, the step times at seed 1
      if [ "$phase" = quantize ]; then
        build test_kernels_cuda test_nn_cuda pretrain bench_fp8_quantize_cuda
      else
        build test_kernels_cuda bench_fp8_quantize_cuda pretrain
      fi
      "$BUILD/tests/test_kernels_cuda" --gtest_filter='Fp8QuantizeCuda.*:GroupedFp8GemmCuda.QuantizeGrouped*:'\
'PagedDecodeAttentionCuda.TensorCore*:ElementwiseCuda.*:CudaReduce.*' > "$OUT/test_quantize.log" 2>&1 || rc=1
      # quantize: every test of the models and the trainer on the GPU (the autograd changes of
      # 2026-12-05: slices' gradients in place, leaf gradients without a copy, stacked linears).
      [ "$phase" = quantize ] &&
        { timeout 420 "$BUILD/tests/test_nn_cuda" > "$OUT/test_fp8_training.log" 2>&1 || rc=1; }
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_quantize.log \
        "$OUT"/test_fp8_training.log 2>/dev/null | head -30
      timeout 120 "$BUILD/benchmarks/bench_fp8_quantize_cuda" > "$OUT/bench_fp8_quantize.log" 2>&1 || rc=1
      cat "$OUT/bench_fp8_quantize.log"
      step_times 540
      [ "$phase" = quantize ] || continue
      "$BUILD/tests/test_kernels_cuda" --gtest_filter='GroupedFp8GemmCuda.*:KGroupedFp8GemmCuda.*:Fp8GemmCuda.*' \
        > "$OUT/test_fp8_gemm.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_fp8_gemm.log | head -20
      ;;
    verify)
      build test_kernels_cuda test_nn_cuda pretrain bench_fp8_quantize_cuda bench_elementwise_cuda
      "$BUILD/tests/test_kernels_cuda" --gtest_filter='Fp8QuantizeCuda.*:GroupedFp8GemmCuda.QuantizeGrouped*:'\
'PagedDecodeAttentionCuda.TensorCore*:ElementwiseCuda.*:CudaReduce.*' > "$OUT/test_quantize.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_quantize.log | head -20
      timeout 120 "$BUILD/benchmarks/bench_fp8_quantize_cuda" > "$OUT/bench_fp8_quantize.log" 2>&1 || rc=1
      timeout 120 "$BUILD/benchmarks/bench_elementwise_cuda" > "$OUT/bench_elementwise.log" 2>&1 || rc=1
      cat "$OUT/bench_fp8_quantize.log" "$OUT/bench_elementwise.log"
      left=$((${DEADLINE:-560} - SECONDS))
      if [ $left -gt 30 ]; then
        timeout $left "$BUILD/tests/test_nn_cuda" > "$OUT/test_nn_cuda.log" 2>&1 || rc=1
        grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure|^\[       OK|^\[ RUN" "$OUT"/test_nn_cuda.log |
          tail -40
      else
        echo "deadline: test_nn_cuda not run"
      fi
      ;;
    steps)
      build pretrain test_kernels_cuda
      step_times 100000  # no deadline
      left=$((${DEADLINE:-560} - SECONDS))
      [ $left -gt 20 ] && { timeout $left "$BUILD/tests/test_kernels_cuda" \
        --gtest_filter='GroupedFp8GemmCuda.*:KGroupedFp8GemmCuda.*:Fp8GemmCuda.*' > "$OUT/test_fp8_gemm.log" 2>&1 ||
        rc=1; }
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_fp8_gemm.log 2>/dev/null | head -20
      ;;
    changes)
      benches=${BENCHES:-bench_fp8_quantize_cuda bench_gather_cuda bench_rms_norm_cuda}
      # shellcheck disable=SC2086  # the benchmark list splits into targets
      build test_kernels_cuda test_nn_cuda pretrain $benches
      filter='Fp8QuantizeCuda.*:GroupedFp8GemmCuda.*:EmbeddingCuda.*:IndexSelectCuda.*:GatherCuda.*'
      filter+=':RmsNormCuda.*:ElementwiseCuda.*'
      timeout 200 "$BUILD/tests/test_kernels_cuda" --gtest_filter="${KERNEL_TESTS:-$filter}" \
        > "$OUT/test_kernels.log" 2>&1 || rc=1
      timeout 200 "$BUILD/tests/test_nn_cuda" > "$OUT/test_nn_cuda.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_kernels.log "$OUT"/test_nn_cuda.log |
        head -30
      for b in $benches; do
        timeout 120 "$BUILD/benchmarks/$b" > "$OUT/$b.log" 2>&1 || rc=1
        cat "$OUT/$b.log"
      done
      step_times 560
      ;;
    fp8-seeds)
      build pretrain
      steps=${STEPS:-600} every=$(( ${STEPS:-600} / 3 ))
      for seed in ${SEEDS:-1 2 3}; do
        for kind in bf16 fp8; do
          [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: seed $seed $kind not run"; continue; }
          flags=()
          [ $kind = fp8 ] && flags=(--fp8)
          "$BUILD/examples/pretrain" --device cuda --config big --steps "$steps" --log-every "$every" \
            --eval-every "$every" --samples 0 --seed "$seed" "${flags[@]}" > "$OUT/seed${seed}_$kind.log" 2>&1 ||
            echo "seed $seed $kind failed"
          echo "seed $seed $kind: $(grep -E "^(eval step $steps |done)" "$OUT/seed${seed}_$kind.log" | tr '\n' ' ')"
        done
      done
      ;;
    key-groups-ab)
      build bench_paged_decode_cuda
      for round in 1 2; do
        for kg in off on; do
          KILN_DECODE_KEY_GROUPS=$kg timeout 200 "$BUILD/benchmarks/bench_paged_decode_cuda" \
            > "$OUT/key_groups_${kg}_$round.log" 2>&1 || rc=1
        done
      done
      grep -H -E "128, 1, 12|L ?256|32768" "$OUT"/key_groups_*.log | head -40
      ;;
    decode-step)
      build test_kernels_cuda test_nn_cuda test_train_infer_rl_cuda bench_grpo_cuda
      timeout 120 "$BUILD/tests/test_kernels_cuda" --gtest_filter='RopeCuda.*:MatmulCuda.*:MoeRouteCuda.*:RmsNormCuda.*' \
        > "$OUT/test_kernels.log" 2>&1 || rc=1
      timeout 120 "$BUILD/tests/test_nn_cuda" --gtest_filter='NnModulesCuda.MoE*' > "$OUT/test_nn.log" 2>&1 || rc=1
      timeout 200 "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter='EngineCuda.*' > "$OUT/test_engine.log" 2>&1 ||
        rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure|error:" "$OUT"/test_*.log | head -40
      if [ $SECONDS -lt "${DEADLINE:-540}" ]; then
        timeout $((${DEADLINE:-540} + 50 - SECONDS)) "$BUILD/benchmarks/bench_grpo_cuda" --gen-runs 3 --steps 0 \
          --json "$OUT/kiln_grpo.json" > "$OUT/kiln_grpo.log" 2>&1 || rc=1
        grep -E "median|eager:" "$OUT/kiln_grpo.log"
      else
        echo "deadline: generation not measured"
      fi
      if [ $SECONDS -lt "${DEADLINE:-540}" ]; then  # the engine's modes: speculative, FP8 cache, contiguous
        KILN_ENGINE_BENCH=1 timeout $((${DEADLINE:-540} + 50 - SECONDS)) "$BUILD/tests/test_train_infer_rl_cuda" \
          --gtest_filter=EngineCuda.BigConfigThroughput > "$OUT/engine_modes.log" 2>&1 || rc=1
        grep -E "^big config" "$OUT/engine_modes.log"
      fi
      if [ $SECONDS -lt "${DEADLINE:-540}" ]; then  # the step's kernels, as profile-decode
        timeout $((${DEADLINE:-540} + 50 - SECONDS)) ncu --clock-control none --cache-control none \
          --profile-from-start off --metrics gpu__time_duration.sum --csv "$BUILD/benchmarks/bench_grpo_cuda" \
          --profile-decode 4 > "$OUT/profile_decode_ncu.csv" 2> "$OUT/profile_decode_ncu.err"
        echo "profile: $(grep -c '^"' "$OUT/profile_decode_ncu.csv") lines"
      fi
      ;;
    profile-decode)
      build bench_grpo_cuda
      "$BUILD/benchmarks/bench_grpo_cuda" --gen-runs 2 --steps 0 > "$OUT/generation.log" 2>&1 || rc=1
      grep -E "median|eager:" "$OUT/generation.log"
      timeout 300 ncu --clock-control none --cache-control none --profile-from-start off \
        --metrics gpu__time_duration.sum --csv "$BUILD/benchmarks/bench_grpo_cuda" --profile-decode 8 \
        > "$OUT/profile_decode_ncu.csv" 2> "$OUT/profile_decode_ncu.err" || rc=1
      nsys_bin=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null |
        head -1)
      if [ -n "$nsys_bin" ]; then
        timeout 200 "$nsys_bin" profile -o /tmp/prof_decode --force-overwrite true --capture-range=cudaProfilerApi \
          --cuda-graph-trace=node "$BUILD/benchmarks/bench_grpo_cuda" --profile-decode 32 --profile-graphs \
          > "$OUT/profile_decode_nsys.log" 2>&1
        "$nsys_bin" stats --report cuda_gpu_kern_sum,cuda_gpu_trace --format csv -o "$OUT/profile_decode_graphs" \
          /tmp/prof_decode.nsys-rep >> "$OUT/profile_decode_nsys.log" 2>&1
      else
        echo "no nsys"
      fi
      ;;
    decode-fp8)
      build test_kernels_cuda test_train_infer_rl_cuda bench_fp8_gemm_cuda bench_grpo_cuda
      filter='LatentCacheWriteCuda.*:PagedCacheWriteCuda.*:RopeCuda.*:RmsNormCuda.*:Fp8GemmCuda.*:GroupedFp8GemmCuda.*'
      timeout 200 "$BUILD/tests/test_kernels_cuda" --gtest_filter="$filter:KGroupedFp8GemmCuda.*" \
        > "$OUT/test_kernels.log" 2>&1 || rc=1
      timeout 200 "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter='EngineCuda.*' > "$OUT/test_engine.log" 2>&1 ||
        rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_kernels.log "$OUT"/test_engine.log | head -30
      for turns in on off; do
        [ $SECONDS -lt "${DEADLINE:-520}" ] || { echo "deadline: turns $turns not run"; continue; }
        fp8_bench "bench_fp8_gemm_$turns.log" env KILN_FP8_PINGPONG=$turns "$BUILD/benchmarks/bench_fp8_gemm_cuda"
      done
      if [ $SECONDS -lt "${DEADLINE:-520}" ]; then
        timeout 100 "$BUILD/benchmarks/bench_grpo_cuda" --gen-runs 3 --steps 0 > "$OUT/kiln_grpo.log" 2>&1 || rc=1
        grep -E "median|eager:" "$OUT/kiln_grpo.log"
      fi
      if [ $SECONDS -lt "${DEADLINE:-520}" ]; then
        KILN_ENGINE_BENCH=1 timeout $((${DEADLINE:-520} + 60 - SECONDS)) "$BUILD/tests/test_train_infer_rl_cuda" \
          --gtest_filter=EngineCuda.BigConfigThroughput > "$OUT/engine_modes.log" 2>&1 || rc=1
        grep -E "^big config" "$OUT/engine_modes.log"
      fi
      ;;
    latent-recheck)
      build test_kernels_cuda test_train_infer_rl_cuda
      timeout 120 "$BUILD/tests/test_kernels_cuda" --gtest_filter='LatentCacheWriteCuda.*:PagedCacheWriteCuda.*' \
        > "$OUT/test_kernels.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_kernels.log | head -20
      for round in 1 2; do
        [ $SECONDS -lt "${DEADLINE:-400}" ] || { echo "deadline: round $round not run"; continue; }
        KILN_ENGINE_BENCH=1 timeout 60 "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter=EngineCuda.BigConfigThroughput \
          > "$OUT/engine_modes_$round.log" 2>&1 || rc=1
        grep -E "^big config" "$OUT/engine_modes_$round.log"
      done
      ;;
    profile-fp8-gemm)
      build bench_fp8_gemm_cuda
      for turns in on off; do
        KILN_FP8_PINGPONG=$turns timeout 240 ncu --clock-control none -k regex:fp8_gemm_kernel --launch-skip 3 \
          --launch-count 1 --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
          --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
          "$BUILD/benchmarks/bench_fp8_gemm_cuda" --shape 4096,7168,16384 > "$OUT/profile_fp8_gemm_$turns.txt" 2>&1 || rc=1
        grep -E "Duration|Throughput|Issue Slots|Eligible|Stall|Tensor" "$OUT/profile_fp8_gemm_$turns.txt" | head -30
      done
      ;;
    multicast-check)
      # The FP8 GEMM's 2-CTA clusters at 4096 x 7168 x 16384 (2026-12-07: the first version, with
      # cluster-scope release/acquire, ran 1.79x slower than one CTA a tile): the benchmark's one
      # shape with multicast on, off, on, off, then Nsight Compute's launch statistics (the grid:
      # how many clusters were resident), speed of light and warp states of one multicast launch.
      build bench_fp8_gemm_cuda
      for variant in on off on off; do
        KILN_FP8_MULTICAST=$variant timeout 30 "$BUILD/benchmarks/bench_fp8_gemm_cuda" --shape 4096,7168,16384 \
          2>&1 | grep -E "^ +4096" | sed "s/^/multicast $variant: /"
      done
      KILN_FP8_MULTICAST=on timeout 200 ncu --clock-control none -k regex:fp8_gemm_kernel --launch-skip 3 \
        --launch-count 1 --section LaunchStats --section Occupancy --section SpeedOfLight --section WarpStateStats \
        "$BUILD/benchmarks/bench_fp8_gemm_cuda" --shape 4096,7168,16384 > "$OUT/profile_multicast.txt" 2>&1 || rc=1
      grep -E "Grid Size|Cluster|Duration|Throughput|Stall|Tensor" "$OUT/profile_multicast.txt" | head -30
      ;;
    profile-fp8-gemm-source)
      # Where the FP8 GEMM's warps stall, instruction by instruction (2026-12-07's profile: a
      # hardware barrier is the top stall reason with turns on and off): the SourceCounters
      # section's sampled stalls per SASS instruction, the top ones printed.
      build bench_fp8_gemm_cuda
      timeout 240 ncu --clock-control none -k regex:fp8_gemm_kernel --launch-skip 3 --launch-count 1 \
        --section SourceCounters --section WarpStateStats --print-details all \
        "$BUILD/benchmarks/bench_fp8_gemm_cuda" --shape 4096,7168,16384 > "$OUT/profile_fp8_gemm_source.txt" 2>&1 || rc=1
      grep -iE -A12 "Warp Stall Sampling|stall" "$OUT/profile_fp8_gemm_source.txt" | head -60
      ;;
    fp8-uniform-ab)
      [ -d "${OLD_TREE:-}" ] || { echo "fp8-uniform-ab needs OLD_TREE (a source tree to compare against)"; exit 2; }
      configure_release "$OLD_TREE" /tmp/kb_old "$BUILD_LOGS/configure_old.log"
      ninja -C /tmp/kb_old -j 6 bench_fp8_gemm_cuda > "$BUILD_LOGS/build_old.log" 2>&1 &
      old_build=$!
      build test_kernels_cuda bench_fp8_gemm_cuda
      wait $old_build || { echo "old build failed"; tail -20 "$BUILD_LOGS/build_old.log"; }
      timeout 200 "$BUILD/tests/test_kernels_cuda" --gtest_filter='Fp8GemmCuda.*:GroupedFp8GemmCuda.*:KGroupedFp8GemmCuda.*:GroupedGemmCuda.*' \
        > "$OUT/test_fp8_gemm.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_fp8_gemm.log | head -20
      for round in 1 2; do
        for tree in new old; do
          [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: $tree round $round not run"; continue; }
          bin="$BUILD/benchmarks/bench_fp8_gemm_cuda"
          [ $tree = old ] && bin=/tmp/kb_old/benchmarks/bench_fp8_gemm_cuda
          fp8_bench "bench_fp8_gemm_${tree}_$round.log" "$bin"
        done
      done
      ;;
    fp8-multicast)
      # The 2-CTA clusters with the B tile multicast (KILN_FP8_MULTICAST on/off) and, when $OLD_TREE
      # is given (e.g. git archive 0b03c92), the tree before the uniform warpgroup index as well.
      if [ -d "${OLD_TREE:-}" ]; then
        configure_release "$OLD_TREE" /tmp/kb_old "$BUILD_LOGS/configure_old.log"
        ninja -C /tmp/kb_old -j 6 bench_fp8_gemm_cuda > "$BUILD_LOGS/build_old.log" 2>&1 &
        old_build=$!
      fi
      build test_kernels_cuda bench_fp8_gemm_cuda
      if [ -n "${old_build:-}" ]; then
        wait $old_build || { echo "old build failed"; tail -20 "$BUILD_LOGS/build_old.log"; }
      fi
      timeout 200 "$BUILD/tests/test_kernels_cuda" \
        --gtest_filter='Fp8GemmCuda.*:GroupedFp8GemmCuda.*:KGroupedFp8GemmCuda.*' \
        > "$OUT/test_fp8_gemm.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_fp8_gemm.log | head -20
      for round in 1 2; do
        for variant in on off old; do
          [ $variant = old ] && [ ! -x /tmp/kb_old/benchmarks/bench_fp8_gemm_cuda ] && continue
          [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: $variant round $round not run"; continue; }
          bin="$BUILD/benchmarks/bench_fp8_gemm_cuda"
          [ $variant = old ] && bin=/tmp/kb_old/benchmarks/bench_fp8_gemm_cuda
          KILN_FP8_MULTICAST=$variant fp8_bench "bench_fp8_gemm_${variant}_$round.log" "$bin"
        done
      done
      ;;
    hopper-decode | seesaw | engine-hopper)
      if [ "$phase" = seesaw ]; then
        build test_kernels_cuda bench_paged_decode_cuda
      else
        build test_kernels_cuda test_train_infer_rl_cuda bench_paged_decode_cuda bench_grpo_cuda
      fi
      if [ "$phase" != engine-hopper ]; then
        timeout 240 "$BUILD/tests/test_kernels_cuda" --gtest_filter='PagedDecodeAttentionCuda.*:FusedAttentionCuda.*' \
          > "$OUT/test_kernels.log" 2>&1 || rc=1
        grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_kernels.log | head -30
      fi
      if [ "$phase" = seesaw ]; then
        # The seesaw kernel with its per-chunk barriers (on) and waiting for whole tiles (off), twice.
        for chunks in on off on off; do
          [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: chunks $chunks not run"; continue; }
          KILN_DECODE_SEESAW_CHUNKS=$chunks timeout 100 "$BUILD/benchmarks/bench_paged_decode_cuda" --deepseek \
            >> "$OUT/bench_deepseek_$chunks.log" 2>&1 || rc=1
          echo "chunks $chunks: $(grep -A2 'Hopper' "$OUT/bench_deepseek_$chunks.log" | grep -oE '[0-9.]+ TFLOP/s\)|ratio [0-9.]+' | tail -9 | tr '\n' ' ')"
        done
        continue
      fi
      [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: the engine's tests not run"; continue; }
      timeout 150 "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter='EngineCuda.*:-EngineCuda.BigConfigThroughput' \
        > "$OUT/test_engine.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_engine.log | head -30
      for kernel in automatic mma; do
        [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: generation on $kernel not run"; continue; }
        env_kernel=()
        [ $kernel = mma ] && env_kernel=(KILN_DECODE_KERNEL=mma)
        env "${env_kernel[@]}" timeout 60 "$BUILD/benchmarks/bench_grpo_cuda" --gen-runs 3 --steps 0 \
          > "$OUT/generation_$kernel.log" 2>&1 || rc=1
        echo "$kernel: $(grep -E 'median|eager:' "$OUT/generation_$kernel.log" | tr '\n' ' ')"
      done
      if [ $SECONDS -lt "${DEADLINE:-540}" ]; then
        KILN_ENGINE_BENCH=1 timeout 90 "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter=EngineCuda.BigConfigThroughput \
          > "$OUT/engine_modes.log" 2>&1 || rc=1
        grep -E "^big config" "$OUT/engine_modes.log"
      fi
      if [ $SECONDS -lt "${DEADLINE:-540}" ]; then
        timeout $((${DEADLINE:-540} + 50 - SECONDS)) "$BUILD/benchmarks/bench_paged_decode_cuda" \
          > "$OUT/bench_paged_decode.log" 2>&1 || rc=1
        grep -cE "Hopper" "$OUT/bench_paged_decode.log"
      fi
      ;;
    session-build)
      # Everything combine-tests, combine-bench and swiglu use, in one ninja run (and the old tree's
      # decode benchmark beside it when $OLD_TREE is given).
      if [ -d "${OLD_TREE:-}" ]; then
        configure_release "$OLD_TREE" /tmp/kb_old "$BUILD_LOGS/configure_old.log"
        ninja -C /tmp/kb_old -j 4 bench_paged_decode_cuda > "$BUILD_LOGS/build_old.log" 2>&1 &
        old_build=$!
      fi
      build test_kernels_cuda test_train_infer_rl_cuda test_nn_cuda bench_paged_decode_cuda bench_moe_cuda pretrain
      if [ -n "${old_build:-}" ]; then
        wait $old_build || { echo "old build failed"; tail -20 "$BUILD_LOGS/build_old.log"; }
      fi
      ;;
    combine-tests)
      # The decode kernels' tests, the FP8 latent cache's, the grouped GEMMs' (with the SwiGLU
      # epilogues, 2026-12-07) and the MoE kernels', then the engine's while under $DEADLINE.
      build test_kernels_cuda
      timeout 240 "$BUILD/tests/test_kernels_cuda" \
        --gtest_filter='PagedDecodeAttentionCuda.*:LatentFp8CacheCuda.*:LatentCacheWriteCuda.*:Grouped*:Moe*' \
        > "$OUT/test_kernels.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure|Expected|Which is" "$OUT"/test_kernels.log | head -30
      [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: the engine's tests not run"; continue; }
      build test_train_infer_rl_cuda
      timeout 150 "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter='EngineCuda.*:-EngineCuda.BigConfigThroughput' \
        > "$OUT/test_engine.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_engine.log | head -30
      ;;
    combine-bench)
      # The long-context decode rows against the tree in $OLD_TREE (git archive of the commit before,
      # with this tree's bench_paged_decode_cuda.cpp copied in for --long): new, old, new, old.
      build bench_paged_decode_cuda
      for run in new old new old; do
        [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: $run not run"; continue; }
        bin="$BUILD/benchmarks/bench_paged_decode_cuda"
        [ $run = old ] && bin=/tmp/kb_old/benchmarks/bench_paged_decode_cuda
        [ -x "$bin" ] || { echo "$run: no binary"; continue; }
        timeout 100 "$bin" --long >> "$OUT/bench_long_$run.log" 2>&1 || rc=1
        echo "$run: $(grep -A2 -E 'Hopper \(wgmma\)|latent, Hopper' "$OUT/bench_long_$run.log" | grep -oE 'ratio [0-9.]+' |
          tail -6 | tr '\n' ' ')"
      done
      ;;
    swiglu)
      # The grouped GEMMs' SwiGLU epilogues in the MoE layer (ops/grouped_swiglu_mlp.hpp): the
      # modules' and models' GPU tests, bench_moe_cuda's layer rows (the SwiGLU separate and in the
      # epilogues, one process), then pretrain --config big 200 steps with the epilogues on, off
      # (KILN_MOE_SWIGLU_EPILOGUE), on, off.
      build test_nn_cuda bench_moe_cuda pretrain
      timeout 200 "$BUILD/tests/test_nn_cuda" > "$OUT/test_nn.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_nn.log | head -30
      if [ $SECONDS -lt "${DEADLINE:-540}" ]; then  # its layer rows time the SwiGLU both ways in one process
        timeout 120 "$BUILD/benchmarks/bench_moe_cuda" > "$OUT/bench_moe.log" 2>&1 || rc=1
        grep -E 'MoE layer|DeepSeek-V3-style' "$OUT/bench_moe.log" | tail -2
      fi
      for round in 1 2; do
        for epilogue in on off; do
          [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: pretrain $epilogue $round not run"; continue; }
          KILN_MOE_SWIGLU_EPILOGUE=$epilogue timeout 100 "$BUILD/examples/pretrain" --device cuda --config big --steps 200 \
            --log-every 100 --eval-every 1000 --samples 0 --seed 1 > "$OUT/pretrain_${epilogue}_$round.log" 2>&1 || rc=1
          echo "pretrain $epilogue $round: $(grep -E '^(step 200|done)' "$OUT/pretrain_${epilogue}_$round.log" | tr '\n' ' ')"
        done
      done
      ;;
    one-call)
      # In the order of what matters most when the call is cut short: the attention kernels'
      # tests (their strided operands and MLA's parts), the modules' GPU tests, pretrain with the
      # parts on and off, the combine backward's shapes, the decode and grouped GEMM tests.
      build test_kernels_cuda test_nn_cuda bench_moe_cuda pretrain
      timeout 200 "$BUILD/tests/test_kernels_cuda" --gtest_filter='FusedAttentionCuda.*' \
        > "$OUT/test_attention.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure|Expected|Which is" "$OUT"/test_attention.log | head -20
      if [ $SECONDS -lt "${DEADLINE:-540}" ]; then
        timeout 150 "$BUILD/tests/test_nn_cuda" > "$OUT/test_nn.log" 2>&1 || rc=1
        grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_nn.log | head -20
      fi
      for parts in on off; do  # MLA's attention reading q and k from their parts, or concatenated
        [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: pretrain parts $parts not run"; continue; }
        KILN_MLA_ATTENTION_PARTS=$parts timeout 90 "$BUILD/examples/pretrain" --device cuda --config big --steps 200 \
          --log-every 100 --eval-every 1000 --samples 0 --seed 1 > "$OUT/pretrain_parts_$parts.log" 2>&1 || rc=1
        echo "pretrain parts $parts: $(grep -E '^(step 200|done)' "$OUT/pretrain_parts_$parts.log" | tr '\n' ' ')"
      done
      if [ $SECONDS -lt "${DEADLINE:-540}" ]; then
        timeout 60 "$BUILD/tests/test_kernels_cuda" --gtest_filter='Moe*' > "$OUT/test_moe.log" 2>&1 || rc=1
        timeout 60 "$BUILD/benchmarks/bench_moe_cuda" --ops > "$OUT/bench_moe_ops.log" 2>&1 || rc=1
        echo "moe: tests $(grep -hE "^\[  (PASSED|FAILED) " "$OUT/test_moe.log" | tr '\n' ' ')" \
          "combine f+b $(grep -E '^combine forward \+ backward' "$OUT/bench_moe_ops.log" |
          awk '{print $(NF-3) " us, ratio " $NF}' | tr '\n' ' ')"
      fi
      if [ $SECONDS -lt "${DEADLINE:-540}" ]; then
        timeout 150 "$BUILD/tests/test_kernels_cuda" \
          --gtest_filter='PagedDecodeAttentionCuda.*:LatentFp8CacheCuda.*:LatentCacheWriteCuda.*:Grouped*' \
          > "$OUT/test_kernels.log" 2>&1 || rc=1
        grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_kernels.log | head -20
      fi
      ;;
    attention-views)
      build test_kernels_cuda
      timeout 300 "$BUILD/tests/test_kernels_cuda" --gtest_filter='FusedAttentionCuda.*' \
        > "$OUT/test_attention.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure|Expected|Which is" "$OUT"/test_attention.log | head -30
      ;;
    folds)
      [ -d "${OLD_TREE:-}" ] || { echo "folds needs OLD_TREE (a source tree to compare against)"; exit 2; }
      configure_release "$OLD_TREE" /tmp/kb_old "$BUILD_LOGS/configure_old.log"
      ninja -C /tmp/kb_old -j 4 pretrain > "$BUILD_LOGS/build_old.log" 2>&1 &
      old_build=$!
      build test_kernels_cuda test_nn_cuda test_train_infer_rl_cuda pretrain
      wait $old_build || { echo "old build failed"; tail -20 "$BUILD_LOGS/build_old.log"; }
      timeout 200 "$BUILD/tests/test_kernels_cuda" \
        --gtest_filter='RmsNorm*:MatmulCuda.*:MoeDispatchCombineCuda.*:Moe*:FusedAttentionCuda.*' \
        > "$OUT/test_kernels.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_kernels.log | head -20
      timeout 150 "$BUILD/tests/test_nn_cuda" > "$OUT/test_nn.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_nn.log | head -20
      timeout 150 "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter='TrainerCuda.*' > "$OUT/test_train.log" 2>&1 ||
        rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_train.log | head -20
      for round in 1 2; do
        for tree in old new; do
          [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: $tree round $round not run"; continue; }
          bin="$BUILD/examples/pretrain"
          [ $tree = old ] && bin=/tmp/kb_old/examples/pretrain
          timeout 60 "$bin" --device cuda --config big --steps 200 --log-every 100 --eval-every 1000 --samples 0 \
            --seed 1 > "$OUT/pretrain_${tree}_$round.log" 2>&1 || rc=1
          echo "$tree $round: $(grep -E '^(step 200|done)' "$OUT/pretrain_${tree}_$round.log" | tr '\n' ' ')"
        done
      done
      ;;
    folds-fp8)
      # folds and fp8-multicast in one call, for a session whose machine may not come twice: the
      # tests of both first, then bench_fp8_gemm_cuda with multicast on and off, then (with
      # $OLD_TREE) the pretrain A/B of folds, then the benchmark again, while under $DEADLINE (500).
      if [ -d "${OLD_TREE:-}" ]; then
        configure_release "$OLD_TREE" /tmp/kb_old "$BUILD_LOGS/configure_old.log"
        ninja -C /tmp/kb_old -j 3 pretrain > "$BUILD_LOGS/build_old.log" 2>&1 &
        old_build=$!
      fi
      # LEAN=1: without the trainer's tests and the grouped benchmark (their builds take minutes).
      # TESTS_ONLY=1: the kernel and autograd tests alone (no benchmark is built or run);
      # KERNELS_ONLY=1: the kernel tests alone (test_kernels_cuda: the shortest build).
      if [ -n "${KERNELS_ONLY:-}" ]; then
        build test_kernels_cuda
        for filter in 'RmsNorm*:MatmulCuda.*:Moe*' 'Fp8GemmCuda.*:GroupedFp8GemmCuda.*' 'FusedAttentionCuda.*'; do
          timeout 100 "$BUILD/tests/test_kernels_cuda" --gtest_filter="$filter" >> "$OUT/test_kernels.log" 2>&1 || rc=1
        done
        grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_kernels.log | head -20
        continue
      elif [ -n "${TESTS_ONLY:-}" ]; then
        build test_kernels_cuda test_nn_cuda
      elif [ -n "${LEAN:-}" ]; then
        build test_kernels_cuda test_nn_cuda pretrain bench_fp8_gemm_cuda
      else
        build test_kernels_cuda test_nn_cuda test_train_infer_rl_cuda pretrain bench_fp8_gemm_cuda \
          bench_grouped_fp8_gemm_cuda
      fi
      # The folds' tests first, each binary on its own, so that a hang in the new cluster kernels
      # (their tests last) costs only their own timeout.
      timeout 150 "$BUILD/tests/test_kernels_cuda" --gtest_filter='RmsNorm*:MatmulCuda.*:Moe*:FusedAttentionCuda.*' \
        > "$OUT/test_kernels.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_kernels.log | head -20
      timeout 150 "$BUILD/tests/test_nn_cuda" > "$OUT/test_nn.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_nn.log | head -20
      if [ -z "${LEAN:-}" ] && [ -z "${TESTS_ONLY:-}" ]; then
        timeout 120 "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter='TrainerCuda.*' \
          > "$OUT/test_train.log" 2>&1 || rc=1
        grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_train.log | head -20
      fi
      timeout 120 "$BUILD/tests/test_kernels_cuda" \
        --gtest_filter='Fp8GemmCuda.*:GroupedFp8GemmCuda.*:KGroupedFp8GemmCuda.*' > "$OUT/test_fp8.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_fp8.log | head -20
      grep -q "^\[  PASSED" "$OUT"/test_fp8.log ||
        echo "FP8 tests did not finish: $(grep -E '^\[ RUN' "$OUT"/test_fp8.log | tail -1)"
      fp8_round() {
        for variant in on off; do
          [ $SECONDS -lt "${DEADLINE:-500}" ] || { echo "deadline: multicast $variant round $1 not run"; continue; }
          KILN_FP8_MULTICAST=$variant timeout 100 "$BUILD/benchmarks/bench_fp8_gemm_cuda" \
            > "$OUT/bench_fp8_gemm_${variant}_$1.log" 2>&1 || rc=1
          echo "multicast $variant $1: $(grep -A1 '^geometric mean' "$OUT/bench_fp8_gemm_${variant}_$1.log" |
            tr '\n' ' ')"
        done
      }
      [ -n "${TESTS_ONLY:-}" ] && continue
      fp8_round 1
      if [ -n "${old_build:-}" ]; then
        wait $old_build || { echo "old build failed"; tail -20 "$BUILD_LOGS/build_old.log"; }
      fi
      for tree in new old; do
        [ $SECONDS -lt "${DEADLINE:-500}" ] || { echo "deadline: pretrain $tree not run"; continue; }
        bin="$BUILD/examples/pretrain"
        if [ $tree = old ]; then
          bin=/tmp/kb_old/examples/pretrain
          [ -x "$bin" ] || continue
        fi
        timeout 60 "$bin" --device cuda --config big --steps 200 --log-every 100 --eval-every 1000 --samples 0 \
          --seed 1 > "$OUT/pretrain_$tree.log" 2>&1 || rc=1
        echo "$tree: $(grep -E '^(step 200|done)' "$OUT/pretrain_$tree.log" | tr '\n' ' ')"
      done
      for variant in on off; do
        [ -z "${LEAN:-}" ] || continue
        [ $SECONDS -lt "${DEADLINE:-500}" ] || { echo "deadline: grouped multicast $variant not run"; continue; }
        KILN_FP8_MULTICAST=$variant timeout 100 "$BUILD/benchmarks/bench_grouped_fp8_gemm_cuda" \
          > "$OUT/bench_grouped_fp8_$variant.log" 2>&1 || rc=1
        echo "grouped $variant (G rows N K µs): $(awk '/^contiguous/ {print $2, $3, $4, $5, $7 ";"}' \
          "$OUT/bench_grouped_fp8_$variant.log" | tr '\n' ' ')"
      done
      fp8_round 2
      ;;
    graphs-matmul)
      # The engine's graph patience and Linear's weight gradient made in the weight's layout
      # (2026-12-07, third session): the engine's GPU tests and its modes at B = 128 (graphs
      # captured), test_nn_cuda (not with LEAN=1), then pretrain --config big against $OLD_TREE:
      # float32, 3 steps (the changes since change no value beyond float rounding, so the grad
      # norms should agree), bf16 200 steps new, old, new, old while under $DEADLINE (540).
      if [ -d "${OLD_TREE:-}" ]; then
        configure_release "$OLD_TREE" /tmp/kb_old "$BUILD_LOGS/configure_old.log"
        ninja -C /tmp/kb_old -j 4 pretrain > "$BUILD_LOGS/build_old.log" 2>&1 &
        old_build=$!
      fi
      targets=(pretrain test_train_infer_rl_cuda)
      [ -n "${LEAN:-}" ] || targets+=(test_nn_cuda)
      build "${targets[@]}"
      timeout 200 "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter='EngineCuda.*' > "$OUT/test_engine.log" 2>&1 ||
        rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure|graphs captured" "$OUT/test_engine.log" | head -20
      KILN_ENGINE_BENCH=1 timeout 100 "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter='EngineCuda.BigConfig*' \
        > "$OUT/engine_modes.log" 2>&1 || rc=1
      grep -E "^big config" "$OUT/engine_modes.log"
      if [ -z "${LEAN:-}" ]; then
        timeout 150 "$BUILD/tests/test_nn_cuda" > "$OUT/test_nn.log" 2>&1 || rc=1
        grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT/test_nn.log" | head -20
      fi
      if [ -n "${old_build:-}" ]; then
        wait $old_build || { echo "old build failed"; tail -20 "$BUILD_LOGS/build_old.log"; }
      fi
      for tree in new old; do
        bin="$BUILD/examples/pretrain"
        [ $tree = old ] && bin=/tmp/kb_old/examples/pretrain
        [ -x "$bin" ] || continue
        timeout 60 "$bin" --device cuda --config big --dtype float32 --steps 3 --log-every 1 --eval-every 1000 \
          --samples 0 --seed 1 > "$OUT/pretrain_fp32_$tree.log" 2>&1 || rc=1
        echo "float32 $tree: $(grep -oE '^step [0-9]+/3 \| loss [0-9.]+|grad [0-9.]+' "$OUT/pretrain_fp32_$tree.log" |
          tr '\n' ' ')"
      done
      for tree in new old new old; do
        [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: pretrain $tree not run"; continue; }
        bin="$BUILD/examples/pretrain"
        [ $tree = old ] && bin=/tmp/kb_old/examples/pretrain
        [ -x "$bin" ] || continue
        log="$OUT/pretrain_${tree}_$SECONDS.log"
        timeout 60 "$bin" --device cuda --config big --steps 200 --log-every 100 --eval-every 1000 --samples 0 \
          --seed 1 > "$log" 2>&1 || rc=1
        echo "$tree: $(grep -hE '^done' "$log")"
      done
      ;;
    autograd-tests)
      # After host-side autograd or module changes (2026-12-07, third session: Linear's weight
      # gradient made in the weight's layout): all of test_nn_cuda, TrainerCuda.* and EngineCuda.*.
      build test_nn_cuda test_train_infer_rl_cuda
      timeout 150 "$BUILD/tests/test_nn_cuda" > "$OUT/test_nn.log" 2>&1 || rc=1
      timeout 200 "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter='TrainerCuda.*:EngineCuda.*' \
        > "$OUT/test_train_engine.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT/test_nn.log" "$OUT/test_train_engine.log" |
        head -20
      ;;
    step-phases)
      # Where a step's wall time goes on the host (StepPhases): the kernels of a step sum to about
      # 16.6 ms under ncu (profile-copies, 2026-12-07) while a step takes about 22 ms, so whether
      # the gap is the host's launches or the reads between the phases decides what comes next.
      build pretrain
      "$BUILD/examples/pretrain" --device cuda --config big --steps 200 --log-every 50 --eval-every 1000 \
        --samples 0 --seed 1 --time-phases > "$OUT/pretrain_phases.log" 2>&1 || rc=1
      grep -E "^step|host per step|^done" "$OUT/pretrain_phases.log" | cut -c1-260
      ;;
    sync-free-build|sync-free)
      # Without $OLD_TREE: this tree alone, its pretrain runs first, then the tests.
      if [ -d "${OLD_TREE:-}" ] && [ ! -x /tmp/kb_old/examples/pretrain ]; then
        configure_release "$OLD_TREE" /tmp/kb_old "$BUILD_LOGS/configure_old.log"
        ninja -C /tmp/kb_old -j 4 pretrain > "$BUILD_LOGS/build_old.log" 2>&1 &
        old_build=$!
      fi
      build pretrain
      [ -n "${old_build:-}" ] && { wait "$old_build" || { echo "old build failed"; tail -20 "$BUILD_LOGS/build_old.log"; }; }
      [ $phase = sync-free ] || { build test_core_optim_cuda test_nn_cuda test_train_infer_rl_cuda; continue; }
      trees=(new)
      [ -x /tmp/kb_old/examples/pretrain ] && trees=(new old)
      for round in 1 2; do
        for tree in "${trees[@]}"; do
          [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: $tree round $round not run"; continue; }
          bin="$BUILD/examples/pretrain"
          [ $tree = old ] && bin=/tmp/kb_old/examples/pretrain
          log="$OUT/pretrain_${tree}_$round.log"
          timeout 60 "$bin" --device cuda --config big --steps 200 --log-every 100 --eval-every 1000 --samples 0 \
            --seed 1 --time-phases > "$log" 2>&1 || rc=1
          echo "$tree $round: $(grep -E '^done' "$log")"
          grep -A1 -E '^step 200' "$log" | cut -c1-400
        done
      done
      build test_train_infer_rl_cuda
      timeout 200 "$BUILD/tests/test_train_infer_rl_cuda" --gtest_filter='TrainerCuda.*:EngineCuda.*' \
        > "$OUT/test_train_engine.log" 2>&1 || rc=1
      grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT"/test_train_engine.log | head -20
      for t in test_core_optim_cuda test_nn_cuda; do
        [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: $t not run"; continue; }
        build $t
        timeout 150 "$BUILD/tests/$t" > "$OUT/$t.log" 2>&1 || rc=1
        grep -hE "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure" "$OUT/$t.log" | head -20
      done
      ;;
    wgrad-chunks-build|wgrad-chunks)
      start_old_build
      build pretrain kernel_trace
      build test_kernels_cuda bench_grouped_gemm_cuda test_nn_cuda test_train_infer_rl_cuda
      wait_old_build
      [ $phase = wgrad-chunks ] || continue
      timeout 200 "$BUILD/tests/test_kernels_cuda" --gtest_filter='GroupedGemmCuda.*:*Attention*:RmsNormCuda.*' \
        > "$OUT/test_kernels.log" 2>&1 || rc=1
      test_summary "$OUT/test_kernels.log"
      model_tests
      for round in $(seq "${ROUNDS:-2}"); do
        for tree in new chunks-on old; do
          [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: $tree round $round not run"; continue; }
          bin="$BUILD/examples/pretrain" env=()
          [ $tree = chunks-on ] && env=(KILN_GROUPED_WGRAD_CHUNKS=on)
          [ $tree = old ] && { [ -x /tmp/kb_old/examples/pretrain ] || continue; bin=/tmp/kb_old/examples/pretrain; }
          log="$OUT/pretrain_${tree}_$round.log"
          env "${env[@]}" timeout 60 "$bin" --device cuda --config big --steps 200 --log-every 100 --eval-every 1000 \
            --samples 0 --seed 1 --time-phases > "$log" 2>&1 || rc=1
          echo "$tree $round: $(grep -E '^done' "$log" | cut -c1-120) | $(grep -E '^step 200' "$log" | cut -c1-90)"
        done
      done
      [ $SECONDS -lt "${DEADLINE:-540}" ] && trace_step_kernels 24
      for chunks in on off; do
        [ $SECONDS -lt "${DEADLINE:-540}" ] || { echo "deadline: bench chunks $chunks not run"; continue; }
        KILN_GROUPED_WGRAD_CHUNKS=$chunks timeout 120 "$BUILD/benchmarks/bench_grouped_gemm_cuda" \
          > "$OUT/bench_grouped_chunks_$chunks.log" 2>&1 || rc=1
        echo "chunks $chunks:"; grep -E 'wgrad' "$OUT/bench_grouped_chunks_$chunks.log" | head -12
      done
      ;;
    one-call-6)
      start_old_build
      build pretrain kernel_trace test_kernels_cuda
      wait_old_build
      timeout 150 "$BUILD/tests/test_kernels_cuda" --gtest_filter='GroupedGemmCuda.*:*Attention*:RmsNormCuda.*' \
        > "$OUT/test_kernels.log" 2>&1 || rc=1
      test_summary "$OUT/test_kernels.log"
      for round in 1 2; do
        for tree in new old; do
          under "pretrain $tree $round" || continue
          bin="$BUILD/examples/pretrain"
          [ $tree = old ] && { [ -x /tmp/kb_old/examples/pretrain ] || continue; bin=/tmp/kb_old/examples/pretrain; }
          log="$OUT/pretrain_${tree}_$round.log"
          timeout 60 "$bin" --device cuda --config big --steps 200 --log-every 100 --eval-every 1000 \
            --samples 0 --seed 1 --time-phases > "$log" 2>&1 || rc=1
          echo "$tree $round: $(grep -E '^done' "$log" | cut -c1-120) | $(grep -E '^step 200' "$log" | cut -c1-90)"
        done
      done
      under trace && trace_step_kernels 30
      if under "module tests"; then
        build test_nn_cuda test_train_infer_rl_cuda
        model_tests
      fi
      if under "grouped GEMM benchmark"; then
        build bench_grouped_gemm_cuda
        for chunks in off on; do
          under "bench chunks $chunks" || continue
          KILN_GROUPED_WGRAD_CHUNKS=$chunks timeout 90 "$BUILD/benchmarks/bench_grouped_gemm_cuda" \
            > "$OUT/bench_grouped_chunks_$chunks.log" 2>&1 || rc=1
          echo "chunks $chunks:"; grep -E 'wgrad|dgrad' "$OUT/bench_grouped_chunks_$chunks.log" | head -14
        done
      fi
      ;;
    left-6)
      build test_kernels_cuda test_nn_cuda test_train_infer_rl_cuda
      timeout 120 "$BUILD/tests/test_kernels_cuda" --gtest_filter='ElementwiseCuda.*' \
        > "$OUT/test_elementwise.log" 2>&1 || rc=1
      test_summary "$OUT/test_elementwise.log"
      model_tests
      if under "grouped GEMM benchmark"; then
        build bench_grouped_gemm_cuda
        for chunks in off on; do
          KILN_GROUPED_WGRAD_CHUNKS=$chunks timeout 90 "$BUILD/benchmarks/bench_grouped_gemm_cuda" \
            > "$OUT/bench_grouped_chunks_$chunks.log" 2>&1 || rc=1
          echo "chunks $chunks:"; grep -E 'wgrad' "$OUT/bench_grouped_chunks_$chunks.log" | head -12
        done
      fi
      if under "dgrad profile"; then
        build pretrain
        # Epilogue 2 (swiglu_backward) and 0 (none) of the dgrad (Product 1), one launch each.
        for epilogue in 2 0; do
          timeout 150 ncu --clock-control none --kernel-name-base demangled \
            -k "regex:grouped_gemm_hopper_kernel<.*Product\)1, .*GroupedGemmEpilogue\)$epilogue>" \
            --launch-skip 14 --launch-count 1 --section SpeedOfLight --section WarpStateStats \
            --section MemoryWorkloadAnalysis --section LaunchStats "$BUILD/examples/pretrain" --device cuda \
            --config big --steps 3 --log-every 1 --eval-every 1000 --eval-batches 0 --samples 0 --seed 1 \
            > "$OUT/profile_dgrad_epilogue_$epilogue.txt" 2>&1 || rc=1
          grep -E "Duration|Throughput|Eligible|Stall|Registers|Achieved" "$OUT/profile_dgrad_epilogue_$epilogue.txt" |
            head -24
        done
      fi
      ;;
    step-timeline)
      build pretrain kernel_trace
      CUDA_INJECTION64_PATH="$BUILD/benchmarks/libkernel_trace.so" KILN_TRACE_OUT="$OUT/step_trace.csv" \
        timeout 120 "$BUILD/examples/pretrain" --device cuda --config big --steps 30 --log-every 10 \
        --eval-every 1000 --eval-batches 0 --samples 0 --seed 1 --time-phases > "$OUT/pretrain_traced.log" 2>&1 || rc=1
      grep -E "^step 30|host per step|kernel_trace" "$OUT/pretrain_traced.log" | tail -3 | cut -c1-300
      python3 scripts/kernel_gaps.py "$OUT/step_trace.csv" --boundary adamw_kernel --skip-steps 5 --top 25 \
        > "$OUT/step_gaps.txt" 2>&1 || rc=1
      head -40 "$OUT/step_gaps.txt"
      ;;
    vs-hf)
      build pretrain
      "$BUILD/examples/pretrain" --device cuda --config big --steps 600 --log-every 100 --eval-every 600 \
        --samples 0 --seed 1 > "$OUT/pretrain_vs_hf.log" 2>&1 || rc=1
      kiln_run=$(grep -oE '^done: .*\(([0-9]+) tok/s' "$OUT/pretrain_vs_hf.log" | grep -oE '[0-9]+ tok/s' |
        cut -d' ' -f1)
      kiln_last=$(grep -E '^step 600/' "$OUT/pretrain_vs_hf.log" | grep -oE '[0-9]+ tok/s' | cut -d' ' -f1)
      timeout 400 python3 benchmarks/peers/hf_compile_train.py "$OUT/hf_compile.json" > "$OUT/hf_compile.log" 2>&1 ||
        { rc=1; tail -5 "$OUT/hf_compile.log"; }
      hf=$(python3 -c "import json; print(round(json.load(open('$OUT/hf_compile.json'))['hf_compile_train_tok_s']))" \
        2>/dev/null)
      echo "kiln: ${kiln_run:-?} tok/s over 600 steps, ${kiln_last:-?} at step 600; HF torch.compile: ${hf:-?} tok/s"
      [ -n "$hf" ] && [ -n "$kiln_run" ] && [ -n "$kiln_last" ] &&
        python3 -c "print(f'kiln / HF compiled: {$kiln_run / $hf:.3f} over the run,'
                      f' {$kiln_last / $hf:.3f} at step 600')"
      ;;
    profile-copies)
      build pretrain
      timeout 400 ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
        --csv "$BUILD/examples/pretrain" --device cuda --config big --steps 2 --log-every 1 --eval-every 1000 \
        --eval-batches 0 --samples 0 \
        > "$OUT/profile_copies.csv" 2> "$OUT/profile_copies.err" || rc=1
      python3 scripts/ncu_kernel_table.py "$OUT/profile_copies.csv" --second-half --top 40 \
        > "$OUT/profile_copies.txt" 2>&1 || rc=1
      head -30 "$OUT/profile_copies.txt"
      ;;
    profile-speculative)
      build bench_grpo_cuda
      for kind in plain speculative; do
        flags=()
        [ $kind = speculative ] && flags=(--profile-speculative)
        timeout 240 ncu --clock-control none --cache-control none --profile-from-start off \
          --metrics gpu__time_duration.sum --csv "$BUILD/benchmarks/bench_grpo_cuda" --profile-decode 4 "${flags[@]}" \
          > "$OUT/profile_${kind}_ncu.csv" 2> "$OUT/profile_${kind}_ncu.err" || rc=1
        echo "$kind: $(grep -c '^"' "$OUT/profile_${kind}_ncu.csv") lines"
      done
      ;;
    profile-fp8)
      build pretrain
      nsys_bin=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null |
        head -1)
      for kind in bf16 fp8; do
        flags=()
        [ $kind = fp8 ] && flags=(--fp8)
        args=(--device cuda --config big --steps 30 --log-every 10 --eval-every 1000 --samples 0 "${flags[@]}")
        if [ -n "$nsys_bin" ]; then
          "$nsys_bin" profile -o "/tmp/prof_$kind" --force-overwrite true "$BUILD/examples/pretrain" "${args[@]}" \
            > "$OUT/profile_run_$kind.log" 2>&1
          "$nsys_bin" stats --report cuda_gpu_kern_sum --format csv "/tmp/prof_$kind.nsys-rep" \
            > "$OUT/profile_$kind.csv" 2>&1
          head -25 "$OUT/profile_$kind.csv" | cut -c1-200
        else
          echo "no nsys; ncu over step 2"
          timeout 240 ncu --clock-control none --metrics gpu__time_duration.sum --csv \
            "$BUILD/examples/pretrain" "${args[@]/30/2}" > "$OUT/profile_$kind.csv" 2>&1
        fi
      done
      ;;
    *)
      echo "unknown phase $phase (see the usage line)"
      exit 2
      ;;
  esac
done
exit $rc
