"""Model FLOPs and the GPU's peak: the one home of MFU for tools/benchmark.py and the trainers' metrics.jsonl.

Model FLOPs count what the computation must do, not what the kernels execute (HFU adds what they redo: the
forward that gradient checkpointing reruns in the backward): per token 2 FLOPs
per non-embedding weight for a forward and, for a training pass, another 2 per weight for the input gradients and
2 per *trainable* weight for the weight gradients (a LoRA run computes no gradients of its frozen base); per
attended (query, key) pair 4 x layers x heads x head dim for a forward (QK^T and AV), 3x that when trained. The embedding
lookup is free and the LM head is not counted (the judge reads two of its rows; reasoning log-probs use it at the
reasoning positions only), so MFU here is a slight under-count.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Dense bf16 peak TFLOP/s by (substring of) torch.cuda.get_device_name(); first match wins.
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A10G", 70.0), ("L4", 121.0), ("4090", 165.0)]


def peak_tflops(device: torch.device | str, override: float | None = None) -> float | None:
    """The dense bf16 peak of this CUDA device (override wins); None on CPU or an unknown GPU."""
    if override:
        return float(override)
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for key, v in PEAK_TFLOPS if key in name), None)


def param_counts(lm: torch.nn.Module) -> tuple[int, int, int]:
    """(all weights, non-embedding weights, trainable non-embedding weights) of a causal LM (peft-wrapped or not).
    Non-embedding leaves out the input embedding and an untied output embedding (LM head)."""
    emb = {id(lm.get_input_embeddings().weight)}
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if head is not None:
        emb.add(id(head.weight))
    params = list(lm.parameters())  # each tensor once (a tied head is the embedding)
    total = sum(_numel(p) for p in params)
    non_emb = [p for p in params if id(p) not in emb]
    return total, sum(_numel(p) for p in non_emb), sum(_numel(p) for p in non_emb if p.requires_grad)


def _numel(p: torch.Tensor) -> int:
    """A weight's full size, also when DeepSpeed ZeRO-3 partitioned it at load (the local tensor is then empty)."""
    return int(getattr(p, "ds_numel", p.numel()))


@dataclass(frozen=True)
class ModelFlops:
    """FLOPs per token and per attended pair of one causal LM, counted once (before any sharding hides weights)."""

    non_embedding: int
    trainable: int
    layers: int
    attn_dim: int  # query heads x head dim (the hidden size for most models, not for Gemma-2)

    @classmethod
    def of(cls, lm: torch.nn.Module) -> "ModelFlops":
        cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
        _, non_emb, trainable = param_counts(lm)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(non_emb, trainable, int(cfg.num_hidden_layers), int(cfg.num_attention_heads * head_dim))

    def of_pass(self, tokens: int, pairs: int, train: bool = False) -> float:
        """FLOPs one pass over `tokens` tokens with `pairs` attended pairs must do (forward, or forward + backward)."""
        per_token = 2.0 * self.non_embedding + ((2.0 * self.non_embedding + 2.0 * self.trainable) if train else 0.0)
        per_pair = 4.0 * self.layers * self.attn_dim * (3.0 if train else 1.0)
        return per_token * tokens + per_pair * pairs

    def of_step(self, tokens: int, pairs: int, forwards: int, train_passes: int,
                recompute: bool = False) -> tuple[float, float]:
        """(model FLOPs, hardware FLOPs) of a training step that runs `forwards` no-grad passes (rollout scoring, the
        reference, reasoning generation counted as one forward over the final sequences) and `train_passes` training
        passes over the same `tokens` and `pairs`. Model FLOPs (MFU) are the work the step must do; hardware FLOPs
        (HFU) add the forward that gradient checkpointing reruns in every training pass's backward."""
        model = self.of_pass(tokens, pairs) * forwards + self.of_pass(tokens, pairs, train=True) * train_passes
        return model, model + (self.of_pass(tokens, pairs) * train_passes if recompute else 0.0)
