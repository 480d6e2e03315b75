"""Plackett-Luce ranking policy over candidate scores (docs/training.md)."""
from __future__ import annotations

import math

import torch


def gumbel_topk_sample(scores: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample full rankings from PL(scores/temperature) by sorting scores/τ + Gumbel noise.

    scores: [..., K]. Returns indices [..., K], best first.
    """
    u = torch.rand(scores.shape, generator=generator, dtype=torch.float64, device="cpu").to(scores.device)
    return gumbel_topk_from_uniform(scores, u, temperature)


def gumbel_topk_from_uniform(scores: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """gumbel_topk_sample with its uniform draws u (float64, scores' shape) given: several users' draws, each from
    its own seeded generator on the host, then go to the device in one copy and are sorted in one call."""
    # Parenthesised: -log(u) must be clamped, not log(u) (a clamped negative gave NaN noise -> identity order).
    gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
    return torch.argsort(scores.detach().double() / temperature + gumbel, dim=-1, descending=True)


def greedy_ranking(scores: torch.Tensor) -> torch.Tensor:
    """argsort(scores) descending."""
    return torch.argsort(scores, dim=-1, descending=True, stable=True)


def pl_log_prob(scores: torch.Tensor, ranking: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log PL(σ|s) = Σ_j [s_σj/τ - logsumexp_{l≥j} s_σl/τ]. scores, ranking: [..., K] -> [...]."""
    s = torch.gather(scores / temperature, -1, ranking)
    # logsumexp over the suffix l >= j, computed as a reversed cumulative logsumexp.
    suffix_lse = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)
    return (s - suffix_lse).sum(-1)


def log_num_permutations(K: int) -> float:
    return math.lgamma(K + 1)
