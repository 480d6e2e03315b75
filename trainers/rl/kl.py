"""KL penalty to a frozen reference policy, estimated on the sampled actions."""
from __future__ import annotations

import torch

# Beyond this log-ratio exp() is continued linearly: no overflow, and the gradient never vanishes.
_EXP_LINEAR_FROM = 20.0


def kl_penalty(logp_new: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Non-negative estimate of KL(π_new || π_ref) from samples of π_new (Schulman's 'k3'):
    mean of exp(d) - d - 1 with d = log π_ref - log π_new.

    No clamp sits in the graph (a clamp passes zero gradient exactly when the policy has drifted most): for
    d > 20 the exponential is replaced by its tangent at 20, which keeps value and gradient finite and
    pointing back to the reference. Whole PL rankings (log K! nats) and reasoning texts drift that far."""
    d = logp_ref.detach() - logp_new
    c = torch.full_like(d, _EXP_LINEAR_FROM)
    exp_d = torch.where(d <= c, torch.exp(torch.minimum(d, c)), torch.exp(c) * (1.0 + (d - c)))
    return (exp_d - d - 1.0).mean()
