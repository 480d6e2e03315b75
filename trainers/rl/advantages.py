"""Advantages: the PL-PPO estimators (a registry: critic, rloo, grpo), batch normalisation, and per-group
baselines for RecPO (GRPO, RLOO)."""
from __future__ import annotations

from typing import Callable

import torch

from trainers.rl.names import ADVANTAGE_TYPES  # its home is torch-free: the configs offer it as choices


def normalize_advantages(adv: torch.Tensor, eps: float = 1e-8,
                         all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(A - mean) / (std + eps) with the population mean/std over the whole global batch.

    all_reduce_sum sums a float64 tensor over processes (None: this process is the whole batch). Fewer than
    2 samples in the global batch is an error: the result would be exactly 0 and the actor would silently
    stop learning."""
    x = adv.double()
    # Two passes (mean, then squared deviations) so constant advantages give exactly 0, not rounding noise.
    if all_reduce_sum is None:  # the count is known on the host: no read of the device
        total, n = x.sum(), float(x.numel())
    else:
        stats = all_reduce_sum(torch.stack([x.sum(), torch.tensor(float(x.numel()), dtype=torch.float64,
                                                                  device=x.device)]))
        total, n = stats[0], float(stats[1])
    if n < 2:
        raise ValueError(f"advantage normalisation over {int(n)} sample(s) gives 0 for every sample; "
                         "use a larger global batch or --no-normalize_advantage")
    mean = total / n
    sq = ((x - mean) ** 2).sum()
    if all_reduce_sum is not None:
        sq = all_reduce_sum(sq)
    var = sq / n
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


# ---------------------------------------------------------------------------------------------- PL-PPO estimators
# A registry in the manner of verl's core_algos (a name -> function table filled by a decorator), so train.py's
# --advantage_estimator picks one by name and a new estimator is one decorated function. One signature:
#   rewards [B, M] (M = --rankings_per_user rankings of each of B users), values [B] or None
#   -> (advantages [B, M], returns [B]: the critic's regression target, or None)
AdvantageEstimator = Callable[[torch.Tensor, "torch.Tensor | None"], "tuple[torch.Tensor, torch.Tensor | None]"]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}
_USES_CRITIC: set[str] = set()


def register_advantage_estimator(name: str, uses_critic: bool = False) -> Callable[[AdvantageEstimator],
                                                                                    AdvantageEstimator]:
    """Decorator: add an estimator under `name`; uses_critic: it needs the value head's values (else the value
    head is neither run nor trained)."""
    def add(fn: AdvantageEstimator) -> AdvantageEstimator:
        if ADVANTAGE_ESTIMATORS.get(name, fn) is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        if uses_critic:
            _USES_CRITIC.add(name)
        return fn
    return add


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}: must be one of {'|'.join(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name]


def estimator_uses_critic(name: str) -> bool:
    get_advantage_estimator(name)
    return name in _USES_CRITIC


@register_advantage_estimator("critic", uses_critic=True)
def critic_advantages(rewards: torch.Tensor, values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A = R - V(user): the value head's estimate of a user's expected reward is the baseline of each of the
    user's rankings; its regression target is the mean reward of the user's rankings."""
    if values is None:
        raise ValueError("the 'critic' advantage estimator needs the value head's values")
    return rewards.float() - values.float().unsqueeze(1), rewards.float().mean(1)


@register_advantage_estimator("rloo")
def rloo_advantages(rewards: torch.Tensor, values: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
    """REINFORCE leave-one-out: A_i = R_i - mean of the user's other M-1 rewards (needs M >= 2)."""
    return group_advantages(rewards, "rloo"), None


@register_advantage_estimator("grpo")
def grpo_advantages(rewards: torch.Tensor, values: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
    """GRPO: A_i = (R_i - mean) / (std + 1e-8) over the user's M rewards (unbiased std; equal rewards give 0)."""
    if rewards.shape[1] < 2:
        raise ValueError("the 'grpo' advantage estimator needs at least 2 rankings per user")
    return group_advantages(rewards, "gaussian"), None
