"""Advantages: batch normalisation for PL-PPO (critic baseline) and per-group baselines for RecPO (GRPO, RLOO)."""
from __future__ import annotations

from typing import Callable

import torch

# gaussian: upstream R2ec's default (GRPO); rloo: true leave-one-out; upstream_leave_one_out: what upstream
# calls 'leave-one-out', r(1 + 1/G) - mean, which is not RLOO (kept only to reproduce it).
ADVANTAGE_TYPES = ("gaussian", "rloo", "upstream_leave_one_out")


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


def group_advantages(rewards: torch.Tensor, advantage_type: str = "gaussian", eps: float = 1e-8) -> torch.Tensor:
    """Per-group advantages of rewards [B, G] (one group = one user's G rollouts).

    gaussian (upstream R2ec): (r - mean) / (std + eps) with the unbiased group std and eps 1e-8; a group of
      G = 1 gets advantage 1 (upstream's rule: a single rollout is always reinforced). Equal rewards give 0.
    rloo: r_i - mean of the other G-1 rewards (needs G >= 2).
    upstream_leave_one_out: r (1 + 1/G) - mean(r), upstream's 'leave-one-out' formula."""
    G = rewards.shape[1]
    r = rewards.float()
    if advantage_type == "gaussian":
        if G == 1:
            return torch.ones_like(r)
        return (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)
    if advantage_type == "rloo":
        if G < 2:
            raise ValueError("advantage_type 'rloo' needs at least 2 rollouts per group")
        total = r.sum(1, keepdim=True)
        return r - (total - r) / (G - 1)
    if advantage_type == "upstream_leave_one_out":
        return r * (1.0 + 1.0 / G) - r.mean(1, keepdim=True)
    raise ValueError(f"unknown advantage_type {advantage_type!r}: must be one of {'|'.join(ADVANTAGE_TYPES)}")
