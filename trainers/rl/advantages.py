"""Advantages: batch normalisation for PL-PPO (critic baseline) and per-group baselines for RecPO (GRPO/RLOO)."""
from __future__ import annotations

from typing import Callable

import torch

ADVANTAGE_TYPES = ("gaussian", "leave-one-out")


def normalize_advantages(adv: torch.Tensor, eps: float = 1e-8,
                         all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(A - mean) / (std + eps) with the population mean/std over the whole global batch.

    all_reduce_sum sums a float64 tensor over processes (None: this process is the whole batch). Fewer than
    2 samples in the global batch is an error: the result would be exactly 0 and the actor would silently
    stop learning."""
    x = adv.double()
    # Two passes (mean, then squared deviations) so constant advantages give exactly 0, not rounding noise.
    stats = torch.stack([x.sum(), torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)])
    if all_reduce_sum is not None:
        stats = all_reduce_sum(stats)
    if stats[1] < 2:
        raise ValueError(f"advantage normalisation over {int(stats[1])} sample(s) gives 0 for every sample; "
                         "use a larger global batch or --no-normalize_advantage")
    mean = stats[0] / stats[1]
    sq = ((x - mean) ** 2).sum()
    if all_reduce_sum is not None:
        sq = all_reduce_sum(sq)
    var = sq / stats[1]
    return ((x - mean) / (var.sqrt() + eps)).to(adv.dtype)


def group_advantages(rewards: torch.Tensor, advantage_type: str = "gaussian", eps: float = 1e-4) -> torch.Tensor:
    """Per-group advantages of rewards [B, G].
    gaussian: (r - mean) / (std + eps) with the unbiased group std (GRPO); 0 for G = 1.
    leave-one-out: r_i - mean of the other G-1 rewards (RLOO); 0 for G = 1."""
    B, G = rewards.shape
    if G == 1:
        return torch.zeros_like(rewards)
    if advantage_type == "gaussian":
        mean = rewards.mean(1, keepdim=True)
        std = rewards.std(1, keepdim=True)
        return (rewards - mean) / (std + eps)
    if advantage_type == "leave-one-out":
        total = rewards.sum(1, keepdim=True)
        return rewards - (total - rewards) / (G - 1)
    raise ValueError(f"unknown advantage_type {advantage_type!r}")
