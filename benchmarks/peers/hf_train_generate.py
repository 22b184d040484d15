#!/usr/bin/env python3
# Peer, same work as kiln's `pretrain --device cuda --config big`: HF transformers DeepseekV3 (eager, bf16,
# fused AdamW) at hidden 768, 7 layers, 8 routed experts top-2 (4 groups, 2 kept), MLA 12 heads, vocab 2048,
# B=32 x T=512. Prints training tokens/s, and generate() tokens/s at B=128, 256 new tokens.
# Copied unchanged from the project's shared peers folder (../shared/peers/, its README has the measured figures), 2026-12-03.
import torch, time, json, sys
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
torch.manual_seed(0); dev = "cuda"
cfg = DeepseekV3Config(vocab_size=2048, hidden_size=768, intermediate_size=2048, moe_intermediate_size=512,
    num_hidden_layers=7, num_attention_heads=12, num_key_value_heads=12, n_shared_experts=1, n_routed_experts=8,
    num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=1.0, first_k_dense_replace=1,
    q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
    max_position_embeddings=4096, tie_word_embeddings=False, rope_scaling=None)
res = {}
for impl in ["eager", "sdpa"]:
    try:
        cfg._attn_implementation = impl
        m = DeepseekV3ForCausalLM(cfg).to(dev, dtype=torch.bfloat16); m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
        B, T = 32, 512
        x = torch.randint(0, 2048, (B, T), device=dev)
        for i in range(3):
            m(input_ids=x, labels=x).loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(); t0 = time.time(); n = 15
        for i in range(n):
            m(input_ids=x, labels=x).loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(); dt = (time.time() - t0) / n
        res[f"train_{impl}_tok_s"] = B * T / dt
        print(f"HF {impl} train: {B*T/dt:,.0f} tok/s ({dt*1e3:.1f} ms/step)", flush=True)
        m.eval()
        with torch.no_grad():
            p = torch.randint(0, 2048, (128, 64), device=dev)
            m.generate(p, max_new_tokens=8, min_new_tokens=8, do_sample=True)
            torch.cuda.synchronize(); t0 = time.time()
            m.generate(p, max_new_tokens=256, min_new_tokens=256, do_sample=True, temperature=1.0, top_p=1.0)
            torch.cuda.synchronize(); dt = time.time() - t0
        res[f"gen_{impl}_tok_s"] = 128 * 256 / dt
        print(f"HF {impl} generate B=128 new 256: {128*256/dt:,.0f} tok/s", flush=True)
        del m, opt; torch.cuda.empty_cache()
    except Exception as e:
        print(impl, "failed:", repr(e)[:300], flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
