#!/usr/bin/env python3
"""Writes the seed corpus of fuzz/fuzz_targets.cpp into fuzz/corpus/<target>/ (standard library
only; run from anywhere). Seeds are small valid inputs of each format, so the fuzzer starts from
the accepting paths and mutates towards the edges. The kiln tokenizer seed is the one
examples/grpo's base run writes (1,200-step pretrain, 2 cores), minified."""
import json
import os
import struct

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    os.makedirs(os.path.join(root, target), exist_ok=True)
    with open(os.path.join(root, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, raw bytes)] laid out in order."""
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


put("safetensors", "small.safetensors", safetensors([
    ("w", "F32", [2, 3], struct.pack("<6f", 1, 2, 3, 4, 5, 6)),
    ("b", "BF16", [2], b"\x80\x3f\x00\x40"),
    ("ids", "I64", [2], struct.pack("<2q", -1, 7)),
    ("mask", "BOOL", [3], b"\x01\x00\x01"),
    ("e4m3", "F8_E4M3", [2], b"\x38\xc0"),
    ("empty", "F16", [0, 4], b""),
], {"format": "pt"}))
put("safetensors", "scalar.safetensors", safetensors([("s", "F64", [], struct.pack("<d", 0.5)), ("u", "U8", [1], b"\xff")]))

llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512, "hidden_size": 128,
         "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": None, "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
         "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False, "bos_token_id": 0,
         "eos_token_id": [1, 2], "pad_token_id": None, "torch_dtype": "bfloat16"}
put("config", "llama.json", json.dumps(llama, indent=1))
deepseek = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 512,
            "hidden_size": 128, "intermediate_size": 384, "moe_intermediate_size": 64, "num_hidden_layers": 2,
            "num_nextn_predict_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
            "n_shared_experts": 1, "n_routed_experts": 8, "routed_scaling_factor": 2.5, "kv_lora_rank": 32,
            "q_lora_rank": 48, "qk_rope_head_dim": 16, "qk_nope_head_dim": 32, "v_head_dim": 32,
            "topk_method": "noaux_tc", "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2,
            "moe_layer_freq": 1, "first_k_dense_replace": 1, "norm_topk_prob": True, "scoring_func": "sigmoid",
            "hidden_act": "silu", "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "rope_interleave": True, "kiln_aux_loss_free_gamma": 0.001}
put("config", "deepseek_v3.json", json.dumps(deepseek, indent=1))


def byte_level(b):
    """GPT-2's byte-to-character map (printable bytes map to themselves)."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    if b in printable:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in printable].index(b))


vocab = {byte_level(b): i for i, b in enumerate(sorted(range(256), key=lambda b: (byte_level(b) != chr(b), b)))}
vocab.update({"\u0120t": 256, "he": 257, "\u0120the": 258, "<|endoftext|>": 259})
hf = {"version": "1.0",
      "added_tokens": [{"id": 259, "content": "<|endoftext|>", "special": True}, {"id": 260, "content": "<think>", "special": True}],
      "normalizer": None,
      "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
      "decoder": {"type": "ByteLevel"},
      "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                "merges": ["\u0120 t", "h e", "\u0120t he"]}}
put("tokenizer", "huggingface.json", json.dumps(hf, ensure_ascii=False, separators=(",", ":")))

trainer = {"kiln_checkpoint_version": 1, "step": 1000, "rng": {"seed": 1, "offset": 1000}, "data_position": 1000,
           "lr": 0.0003000073816918554,
           "lr_schedule": {"min_lr": 0.0003, "peak_lr": 0.003, "total_steps": 1000, "type": "warmup_cosine", "warmup_steps": 50},
           "extra": {"grad_accum": 1, "max_grad_norm": 1.0, "skipped_steps": 0, "tokens_seen": 2048000}}
put("trainer", "trainer.json", json.dumps(trainer, indent=2))

for name, text in {
    "correct_arithmetic.txt": "<think>12 + 7 = 19</think> <answer>19</answer>",
    "countdown.txt": "<think>try 25 * 4 = 100, then + 3</think> <answer>(25 * 4) + 3</answer>",
    "two_answers.txt": "<think>x</think> <answer>1</answer> <answer> -42 </answer>",
    "unclosed.txt": "<think>no end <answer>7",
    "nested.txt": "<think><think>a</think></think><answer>((1+2)*(3-4))/5</answer>",
}.items():
    put("reward", name, text)
