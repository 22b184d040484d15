#!/usr/bin/env python3
# Peer, same work as kiln's `pretrain --device cuda --config big`: HF transformers DeepseekV3 (sdpa
# attention, bf16, fused AdamW) trained under torch.compile, what a PyTorch user would reach for, at
# hidden 768, 7 layers, 8 routed experts top-2 (4 groups, 2 kept), MLA 12 heads, vocab 2048,
# B=32 x T=512: training tokens/s over 15 steps after compiling and 3 warm-up steps.
# The training half of the project's shared peer sdpa_and_compile.py (../shared/peers/, whose README
# has the H200 figure: 580,850 tok/s), unchanged but for the output file; run beside kiln in one
# call by scripts/gpu_pending.sh vs-hf. Usage: hf_compile_train.py OUT.json
import json, sys, time
import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
torch.manual_seed(0)
cfg = DeepseekV3Config(vocab_size=2048, hidden_size=768, intermediate_size=2048, moe_intermediate_size=512,
    num_hidden_layers=7, num_attention_heads=12, num_key_value_heads=12, n_shared_experts=1, n_routed_experts=8,
    num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=1.0, first_k_dense_replace=1,
    q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
    max_position_embeddings=4096, tie_word_embeddings=False, rope_scaling=None)
cfg._attn_implementation = "sdpa"
m = DeepseekV3ForCausalLM(cfg).to("cuda", dtype=torch.bfloat16); m.train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
cm = torch.compile(m)
B, T = 32, 512
x = torch.randint(0, 2048, (B, T), device="cuda")
t0 = time.time()
for i in range(3):
    cm(input_ids=x, labels=x).loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
torch.cuda.synchronize(); print(f"compile+3 steps {time.time()-t0:.1f}s", flush=True)
t0 = time.time(); n = 15
for i in range(n):
    cm(input_ids=x, labels=x).loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
torch.cuda.synchronize(); dt = (time.time() - t0) / n
res = {"hf_compile_train_tok_s": B * T / dt, "ms_per_step": dt * 1e3}
print(f"HF sdpa + torch.compile train: {B*T/dt:,.0f} tok/s ({dt*1e3:.1f} ms/step)", flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
