"""Model FLOPs (models/flops.py), the count behind MFU in tools/benchmark.py and the trainers' metrics.jsonl."""
from __future__ import annotations

import pytest
import torch

from models.flops import ModelFlops, param_counts, peak_tflops


def _qwen2(tie: bool):
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, tie_word_embeddings=tie)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg)


def _qwen2_non_embedding(h=64, i=96, L=3, kv=32) -> int:
    """By hand: q/k/v with biases, o without, the gated MLP, two RMSNorms per layer, the final norm."""
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    return L * per_layer + h


@pytest.mark.parametrize("tie", [True, False])
def test_non_embedding_count_by_hand(tie):
    lm = _qwen2(tie)
    total, non_emb, trainable = param_counts(lm)
    assert non_emb == _qwen2_non_embedding()  # neither the embedding nor an untied head
    assert total == non_emb + 300 * 64 * (1 if tie else 2)
    assert trainable == non_emb


def test_pass_flops_forward_training_and_lora():
    lm = _qwen2(True)
    fl = ModelFlops.of(lm)
    N = _qwen2_non_embedding()
    assert fl.of_pass(10, 0) == 2 * N * 10
    assert fl.of_pass(0, 7) == 4 * 3 * 64 * 7  # QK^T and AV per attended pair, every layer
    assert fl.of_pass(10, 7, train=True) == 3 * fl.of_pass(10, 7)  # full fine-tune: forward + 2x backward

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    fl_lora = ModelFlops.of(lora)
    adapters = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    assert fl_lora.trainable == adapters and fl_lora.non_embedding == N + adapters
    # frozen base: no weight gradients, so a training token costs 4 FLOPs per weight + 2 per adapter weight
    assert fl_lora.of_pass(1, 0, train=True) == 4 * (N + adapters) + 2 * adapters


def test_peak_is_known_only_for_gpus():
    assert peak_tflops("cpu") is None
    assert peak_tflops("cpu", override=100.0) == 100.0


def test_attention_flops_use_heads_times_head_dim():
    """Gemma-2's attention width (heads x head_dim) is not its hidden size: the per-pair count follows the former,
    as torch's own FLOP counter of the attention products does."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("gemma2", vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=64)
    lm = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    fl = ModelFlops.of(lm)
    assert fl.attn_dim == 128 and fl.of_pass(0, 1) == 4 * 2 * 128
    # measured: two prompt lengths differ only in attention pairs and tokens
    counted = []
    for n in (8, 16):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            lm.model(input_ids=torch.randint(0, 100, (1, n)))
        counted.append(fc.get_total_flops())
    # FLOPs(n) = a n + b n^2 (eager computes the full n x n score matrix: b per (query, key) entry, masked or not)
    b = (counted[1] - 2 * counted[0]) / (16 ** 2 - 2 * 8 ** 2)
    assert b == fl.of_pass(0, 1)


def test_zero3_partitioned_weights_count_in_full():
    """Under DeepSpeed ZeRO-3 (zero3_init_flag) a loaded weight is an empty local shard with ds_numel = its size."""
    lm = _qwen2(True)
    before = param_counts(lm)
    for p in lm.parameters():
        n = p.numel()
        p.data = torch.empty(0)
        p.ds_numel = n
    assert param_counts(lm) == before


def test_step_flops_model_and_hardware():
    """A step of 2 forwards and 3 training passes: model FLOPs 2 x forward + 3 x training pass; checkpointing
    reruns each training pass's forward, which only the hardware count (HFU) includes."""
    fl = ModelFlops.of(_qwen2(True))
    fwd, train = fl.of_pass(100, 40), fl.of_pass(100, 40, train=True)
    assert fl.of_step(100, 40, forwards=2, train_passes=3) == (2 * fwd + 3 * train, 2 * fwd + 3 * train)
    model, hw = fl.of_step(100, 40, forwards=2, train_passes=3, recompute=True)
    assert model == 2 * fwd + 3 * train and hw == model + 3 * fwd
