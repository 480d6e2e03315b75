"""RL diagnostics of a PL-PPO step (docs/training.md lists the metrics.jsonl keys): pure formulas, and an
accumulator that keeps per-micro-batch values on the device and reads them once per step (one host sync)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch


def pl_entropy_mc(logp_sampled: torch.Tensor) -> torch.Tensor:
    """Monte-Carlo estimate of the entropy of the Plackett-Luce ranking distribution, in nats: -mean log π(σ) over
    rankings σ sampled from π itself (unbiased; the exact entropy sums over K! rankings). Between 0 (one ranking
    certain) and log K! (uniform)."""
    return -logp_sampled.detach().float().mean()


def pl_first_position_entropy(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Exact entropy (nats) of the PL policy's first pick, softmax(s / τ) over the K candidates, averaged over
    users: between 0 (one candidate always first) and log K (uniform). scores [..., K]."""
    logp = torch.log_softmax(scores.detach().double() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean().float()


def explained_variance(target: torch.Tensor, prediction: torch.Tensor,
                       all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """1 - Var(target - prediction) / Var(target) over all elements (population variances; prediction broadcast
    to target's shape): 1 = the prediction explains the target, 0 = no better than the target's mean as a
    constant, < 0 = worse than that. NaN when the target is constant. all_reduce_sum sums a float64 tensor over
    processes (None: this process holds everything)."""
    return explained_variance_from_sums(explained_variance_sums(target, prediction, all_reduce_sum))


def explained_variance_sums(target: torch.Tensor, prediction: torch.Tensor,
                            all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The five sums explained_variance needs (of y, y^2, r, r^2 and the count), summed over processes, left on
    the device: a training step reads them with its other numbers instead of stalling before its update."""
    y = target.detach().double()
    r = y - prediction.detach().double().expand_as(y)
    stats = torch.stack([y.sum(), (y * y).sum(), r.sum(), (r * r).sum(),
                         torch.tensor(float(y.numel()), dtype=torch.float64, device=y.device)])
    return all_reduce_sum(stats) if all_reduce_sum is not None else stats


def explained_variance_from_sums(sums: torch.Tensor | Sequence[float]) -> float:
    sy, syy, sr, srr, n = sums.tolist() if isinstance(sums, torch.Tensor) else sums
    if n < 2:
        return math.nan
    var_y = syy / n - (sy / n) ** 2
    var_r = srr / n - (sr / n) ** 2
    if var_y <= 1e-12 * max(1.0, syy / n):
        return math.nan
    return 1.0 - var_r / var_y


class StepStats:
    """Means and maxima of values produced during one update (per micro-batch or per optimiser step), kept as
    device tensors until read() turns them all into floats at once."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, float] = {}
        self._maxes: dict[str, torch.Tensor] = {}

    def mean(self, name: str, value: torch.Tensor, weight: float = 1.0) -> None:
        """Add value to the weighted mean `name` (weight: e.g. the users of a micro-batch, so that unequal
        micro-batches give the mean over users)."""
        v = value.detach().float().reshape(())
        if weight != 1.0:
            v = v * weight
        self._sums[name] = self._sums[name] + v if name in self._sums else v
        self._counts[name] = self._counts.get(name, 0) + weight

    def max(self, name: str, value: torch.Tensor) -> None:
        v = value.detach().float().max().reshape(())
        self._maxes[name] = torch.maximum(self._maxes[name], v) if name in self._maxes else v

    def read(self) -> dict[str, float]:
        """{name: mean or max}, in the order the names were first added (means first)."""
        names = list(self._sums) + list(self._maxes)
        if not names:
            return {}
        vals = [self._sums[k] / self._counts[k] for k in self._sums] + list(self._maxes.values())
        dev = vals[0].device
        return dict(zip(names, torch.stack([v.to(dev) for v in vals]).tolist()))
