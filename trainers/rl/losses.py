"""Policy and value losses shared by the PL-PPO trainer and RRec's RecPO trainer (one clipped surrogate)."""
from __future__ import annotations

import torch


def clipped_surrogate(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                      clip_low: float, clip_high: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, averaged over elements: mean of -min(r·A, clip(r, 1-clip_low, 1+clip_high)·A),
    r = exp(logp_new - logp_old). clip_high defaults to clip_low (symmetric PPO; RecPO uses clip-higher).

    Returns (loss, clip fraction). The clip fraction is the share of elements whose gradient the clip removes
    (the clipped term is the smaller one), the definition TRL and OpenRLHF log."""
    if logp_new.numel() == 0:
        return logp_new.sum() * 0.0, torch.zeros((), device=logp_new.device)
    high = clip_low if clip_high is None else clip_high
    ratio = torch.exp(logp_new - logp_old.detach())
    adv = advantages.detach()
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + high) * adv
    loss = -torch.minimum(unclipped, clipped).mean()
    clipfrac = (clipped < unclipped).float().mean().detach()
    return loss, clipfrac


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip_eps: float) -> torch.Tensor:
    """PPO value loss: 0.5 · mean max((V - R)², (V_old + clip(V - V_old, -ε, ε) - R)²)."""
    old = old_values.detach()
    ret = returns.detach()
    v_clipped = old + torch.clamp(values - old, -clip_eps, clip_eps)
    return 0.5 * torch.maximum((values - ret) ** 2, (v_clipped - ret) ** 2).mean()
