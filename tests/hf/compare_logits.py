#!/usr/bin/env python3
"""Checks that kiln checkpoints load in Hugging Face transformers and give kiln's logits.

hf_export (tests/hf/export_for_hf.cpp) writes, for LlamaForCausalLM and DeepseekV3ForCausalLM,
a random fp32 model directory (config.json + model.safetensors, written by kiln's own checkpoint
code) and the logits kiln computed for random ids. This script loads each directory with
AutoModelForCausalLM.from_pretrained (fp32, eager attention, on the CPU unless --hf-device says
otherwise), runs the same ids and compares:

  relative error = ||logits_hf - logits_kiln||_F / ||logits_hf||_F  <=  1e-4   (--tolerance)

Any tensor that transformers reports as missing, unexpected or of the wrong shape is a failure,
with one exception: the MTP modules of a DeepSeek-V3 checkpoint (model.layers.{num_hidden_layers
+ k}), which transformers does not implement (it skips them for the published model by a name
pattern for its layer 61); the allowed names are printed.

Exit status: 0 pass, 1 failure, 77 skip (torch, transformers or safetensors not importable, or
hf_export found no CUDA device for --device cuda; the ctest test hf_logits treats 77 as skipped).

Usage:
  compare_logits.py DIR                        compare what `hf_export --out DIR` wrote
  compare_logits.py --exporter PATH/hf_export [--device cpu|cuda] DIR
                                               run the exporter first (kiln on --device)

By hand, with kiln on the CPU (from the repository root; any Python with torch, transformers
and safetensors):
  cmake -S . -B build -DKILN_CUDA=OFF && cmake --build build --target hf_export
  python3 tests/hf/compare_logits.py --exporter build/tests/hf_export --device cpu /tmp/kiln_hf
On a CUDA build, `ctest -R hf_logits` runs the same with --device cuda.
"""

import argparse
import json
import os
import re
import subprocess
import sys

SKIP = 77
MODELS = ("llama", "deepseek_v3")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="directory hf_export writes to / wrote to")
    parser.add_argument("--exporter", help="path of hf_export: run it first")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="kiln's device for --exporter")
    parser.add_argument("--hf-device", default="cpu", help="torch device for the transformers model [cpu]")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative error [1e-4]")
    args = parser.parse_args()

    try:
        import torch
        import transformers
        from safetensors.torch import load_file
    except ImportError as e:
        print(f"SKIP: {e} (the check needs torch, transformers and safetensors)")
        return SKIP

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    if args.exporter:
        os.makedirs(args.dir, exist_ok=True)
        cmd = [args.exporter, "--out", args.dir, "--device", args.device]
        print("running", " ".join(cmd), flush=True)
        rc = subprocess.run(cmd).returncode
        if rc == SKIP:
            print("SKIP: hf_export skipped (no CUDA device)")
            return SKIP
        if rc != 0:
            print(f"FAIL: hf_export failed (exit status {rc})")
            return 1

    torch.backends.cuda.matmul.allow_tf32 = False  # only matters with --hf-device cuda
    torch.backends.cudnn.allow_tf32 = False
    failures = []
    for name in MODELS:
        failures += check_model(name, args, torch, transformers, load_file)
    for f in failures:
        print("FAIL:", f)
    print("hf_logits:", "FAILED" if failures else "passed")
    return 1 if failures else 0


def mtp_pattern(config):
    """Names of the MTP modules of a DeepSeek-V3 config (None when it has none)."""
    if config.get("model_type") != "deepseek_v3":
        return None
    first = config["num_hidden_layers"]
    depth = config.get("num_nextn_predict_layers", 0) or 0
    if depth == 0:
        return None
    indices = "|".join(str(first + k) for k in range(depth))
    return re.compile(rf"^model\.layers\.({indices})\.")


def check_model(name, args, torch, transformers, load_file):
    model_dir = os.path.join(args.dir, name)
    check_file = os.path.join(args.dir, name + ".kiln.safetensors")
    if not (os.path.isdir(model_dir) and os.path.isfile(check_file)):
        return [f"{name}: {model_dir} or {check_file} is missing (run hf_export --out {args.dir})"]
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)

    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    model.to(args.hf_device).eval()
    failures = []
    allowed = mtp_pattern(config)
    unexpected = sorted(info.get("unexpected_keys", []))
    mtp = [k for k in unexpected if allowed and allowed.match(k)]
    unexpected = [k for k in unexpected if k not in mtp]
    for kind, keys in (
        ("missing", sorted(info.get("missing_keys", []))),
        ("unexpected", unexpected),
        ("mismatched", sorted(str(k) for k in info.get("mismatched_keys", []))),
        ("error", [str(e) for e in info.get("error_msgs", [])]),
    ):
        if keys:
            failures.append(f"{name}: {len(keys)} {kind} weight(s): {', '.join(keys[:20])}")
    if mtp:
        print(f"{name}: {len(mtp)} MTP tensors (model.layers.{config['num_hidden_layers']}.*) not used by "
              f"transformers, as expected")
    if type(model).__name__ != config["architectures"][0]:
        failures.append(f"{name}: transformers built {type(model).__name__}, config says {config['architectures'][0]}")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        failures.append(f"{name}: parameters in {dtypes}, expected float32 only")

    data = load_file(check_file)
    ids, kiln_logits = data["input_ids"], data["logits"].double()
    with torch.no_grad():
        hf_logits = model(input_ids=ids.to(args.hf_device)).logits.double().cpu()
    if hf_logits.shape != kiln_logits.shape:
        return failures + [f"{name}: logits of shape {tuple(hf_logits.shape)} (transformers) and "
                           f"{tuple(kiln_logits.shape)} (kiln)"]
    error = ((hf_logits - kiln_logits).norm() / hf_logits.norm()).item()
    worst = (hf_logits - kiln_logits).abs().max().item()
    ok = error <= args.tolerance
    print(f"{name}: relative error {error:.3e} (max abs difference {worst:.3e}, |logits|_max "
          f"{hf_logits.abs().max().item():.3g}, shape {tuple(hf_logits.shape)}) "
          f"{'ok' if ok else 'ABOVE'} tolerance {args.tolerance:g}")
    if not ok:
        failures.append(f"{name}: relative error {error:.3e} > {args.tolerance:g}")
    return failures


if __name__ == "__main__":
    sys.exit(main())
