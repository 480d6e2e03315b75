"""KL between two policies estimated on sampled actions: the penalty to a frozen reference (differentiable) and
the diagnostic KL between the rollout policy and the updated one (no gradient). Both use Schulman's 'k3'."""
from __future__ import annotations

import torch

# Beyond this log-ratio exp() is continued linearly: no overflow, and the gradient never vanishes.
_EXP_LINEAR_FROM = 20.0


def _k3_terms(d: torch.Tensor) -> torch.Tensor:
    """exp(d) - d - 1 >= 0 elementwise, d = log q - log p on samples of p: each term's mean is KL(p || q), and each
    term is non-negative (k3: unbiased and lower-variance than k1 = -d). For d > 20 the exponential is replaced
    by its tangent at 20, which keeps value and gradient finite."""
    c = torch.full_like(d, _EXP_LINEAR_FROM)
    exp_d = torch.where(d <= c, torch.exp(torch.minimum(d, c)), torch.exp(c) * (1.0 + (d - c)))
    return exp_d - d - 1.0


def kl_penalty(logp_new: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Non-negative estimate of KL(π_new || π_ref) from samples of π_new (Schulman's 'k3'):
    mean of exp(d) - d - 1 with d = log π_ref - log π_new.

    No clamp sits in the graph (a clamp passes zero gradient exactly when the policy has drifted most): for
    d > 20 the exponential is replaced by its tangent at 20, which keeps value and gradient finite and
    pointing back to the reference. Whole PL rankings (log K! nats) and reasoning texts drift that far."""
    return _k3_terms(logp_ref.detach() - logp_new).mean()


def approx_kl_k3(logp_sampler: torch.Tensor, logp_other: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(π_sampler || π_other) from actions sampled by π_sampler, no gradient. For PPO's rollout
    policy vs the policy being updated: logp_sampler = log π_old, logp_other = log π_new, so each term is
    (r - 1) - log r with the importance ratio r = π_new / π_old."""
    return _k3_terms((logp_other - logp_sampler).detach().float()).mean()
