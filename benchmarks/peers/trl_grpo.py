#!/usr/bin/env python3
# Peer for the GRPO trainer: TRL GRPOTrainer (transformers generate, no vLLM), bf16, on kiln's big
# DeepSeek-V3-style config (random init), Countdown prompts, a rule reward. Measures seconds per GRPO
# step and generated tokens/s for 16 prompts x 8 samples, up to 256 new tokens.
# Copied unchanged from the project's shared peers folder (../shared/peers/, its README has the measured figures), 2026-12-03.
import time, json, sys, random, torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import PreTrainedTokenizerFast, DeepseekV3Config, DeepseekV3ForCausalLM, TrainerCallback
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer
random.seed(0); torch.manual_seed(0)
def prob():
    n = [random.randint(1, 99) for _ in range(3)]; return f"Countdown: use {' '.join(map(str, n))} to make {random.randint(10, 200)}.\n<think>"
texts = [prob() + " try 3 * 5 = 15, left 7. </think><answer>(3*5)+7</answer>" for _ in range(2000)]
tk = Tokenizer(models.BPE()); tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tk.decoder = decoders.ByteLevel()
tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2048, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
tok.padding_side = "left"
cfg = DeepseekV3Config(vocab_size=2048, hidden_size=768, intermediate_size=2048, moe_intermediate_size=512,
    num_hidden_layers=7, num_attention_heads=12, num_key_value_heads=12, n_shared_experts=1, n_routed_experts=8,
    num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=1.0, first_k_dense_replace=1,
    q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
    max_position_embeddings=4096, tie_word_embeddings=False, rope_scaling=None,
    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
model = DeepseekV3ForCausalLM(cfg).to(torch.bfloat16)
ds = Dataset.from_list([{"prompt": prob()} for _ in range(4096)])
def reward(completions, **kw): return [1.0 if "</answer>" in c else 0.0 for c in completions]
beta = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
args = GRPOConfig(output_dir="/tmp/trl", per_device_train_batch_size=128, num_generations=8, max_completion_length=256,
    max_steps=6, bf16=True, logging_steps=1, report_to=[], save_strategy="no", beta=beta, learning_rate=1e-5,
    temperature=1.0, use_vllm=False, dataloader_num_workers=0)
times = []
class T(TrainerCallback):
    def on_step_begin(self, a, s, c, **k): times.append(time.time())
    def on_step_end(self, a, s, c, **k): times[-1] = time.time() - times[-1]
tr = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok, callbacks=[T()])
tr.train()
logs = [l for l in tr.state.log_history if "completions/mean_length" in l]
ml = [l["completions/mean_length"] for l in logs]
steady = times[2:]
s = sum(steady) / len(steady)
gen_tok = sum(ml[2:]) / len(ml[2:]) * 128
out = dict(beta=beta, step_s=s, step_times=times, mean_len=ml, gen_tokens_per_step=gen_tok, tokens_per_s=gen_tok / s)
print(json.dumps(out), flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
