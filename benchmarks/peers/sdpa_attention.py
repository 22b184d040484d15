#!/usr/bin/env python3
"""The peer of benchmarks/bench_attention_cuda.cpp: PyTorch's scaled_dot_product_attention, causal,
bf16, forward and forward+backward, per backend (cuDNN, flash, memory-efficient, math), at the same
shapes: B4 H16 S2048 and S4096 with qk 192, v 128, B32 H12 S512 with qk 96, v 64, B8 H12 S2048 with
qk 96, v 64 and B32 H16 S512 with qk 192, v 128.

TFLOP/s count the causal half as kiln's benchmark does: forward B*H*S^2*(Dk + Dv) flops,
forward+backward 3.5 times that. CUDA events, 3 warm-up calls, median of 10 timed calls.
A backend that refuses a shape (flash with qk 192 != v 128) is recorded with its error.

  python3 benchmarks/peers/sdpa_attention.py OUT.json
"""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [(4, 16, 2048, 192, 128), (4, 16, 4096, 192, 128), (32, 12, 512, 96, 64),
          (8, 12, 2048, 96, 64), (32, 16, 512, 192, 128)]
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def median_ms(fn, warmup=3, timed=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(timed):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return (times[(timed - 1) // 2] + times[timed // 2]) / 2


def main(out_path):
    print(torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    results = {}
    for B, H, S, dk, dv in SHAPES:
        name = f"B{B}H{H}S{S}d{dk}/{dv}"
        q = torch.randn(B, H, S, dk, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(B, H, S, dk, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(B, H, S, dv, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dout = torch.randn(B, H, S, dv, device="cuda", dtype=torch.bfloat16)
        flops = B * H * S * S * (dk + dv)
        results[name] = {}
        for backend, which in BACKENDS.items():
            try:
                with sdpa_kernel(which):
                    fwd = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
                    both = median_ms(lambda: torch.autograd.grad(
                        F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), dout))
                r = dict(fwd_ms=fwd, fwdbwd_ms=both, fwd_tflops=flops / fwd / 1e9,
                         fwdbwd_tflops=3.5 * flops / both / 1e9)
                print(f"{name:22s} {backend:9s} {fwd:10.3f} {r['fwd_tflops']:12.1f} {both:14.3f} "
                      f"{r['fwdbwd_tflops']:12.1f}", flush=True)
            except Exception as e:  # a backend that refuses the shape
                r = dict(error=repr(e)[:200])
                print(f"{name:22s} {backend:9s} refused: {repr(e)[:100]}", flush=True)
            results[name][backend] = r
            torch.cuda.empty_cache()
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: sdpa_attention.py OUT.json")
    main(sys.argv[1])
