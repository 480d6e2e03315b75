"""trainers/rl/kl.py by hand: the k3 KL penalty to the reference policy (zero at the reference, its gradient under
large drift) and the approximate KL from the rollout policy to the updated one."""
from __future__ import annotations

import math

import pytest
import torch

from trainers.rl.kl import kl_penalty


def test_kl_penalty_zero_at_reference_and_positive_elsewhere():
    lp = torch.tensor([-2.0, -1.0])
    assert kl_penalty(lp, lp).item() == pytest.approx(0.0)
    # d = ref - new = [-1, 1]: e^-1 + 1 - 1 = 0.3679 ; e^1 - 1 - 1 = 0.7183
    assert kl_penalty(lp, lp + torch.tensor([-1.0, 1.0])).item() == pytest.approx(
        ((math.exp(-1) + 1 - 1) + (math.exp(1) - 1 - 1)) / 2, abs=1e-6)


@pytest.mark.parametrize("log_ratio", [1.0, 25.0, 60.0])
def test_kl_gradient_survives_large_drift(log_ratio):
    # k3 = exp(d) - d - 1 with d = ref - new; d/d(new) = 1 - exp(d). A clamp on d used to zero this beyond 20 nats,
    # exactly when a PL ranking (log K! nats) or a reasoning text had drifted most.
    new = torch.tensor([log_ratio], requires_grad=True)
    kl = kl_penalty(new, torch.zeros(1))
    kl.backward()
    assert kl.item() == pytest.approx(math.exp(-log_ratio) + log_ratio - 1.0, rel=1e-6)
    assert new.grad.item() == pytest.approx(1.0 - math.exp(-log_ratio), rel=1e-6)
    # and the other way round (the policy made the sampled action far less likely): finite, pulling back up
    below = torch.tensor([-log_ratio], requires_grad=True)
    kl = kl_penalty(below, torch.zeros(1))
    kl.backward()
    assert math.isfinite(kl.item()) and kl.item() > 0
    assert below.grad.item() < 0 and math.isfinite(below.grad.item())
    assert below.grad.item() == pytest.approx(1.0 - math.exp(min(log_ratio, 20.0)), rel=1e-5)


def test_approx_kl_rollout_to_updated_policy_by_hand():
    from trainers.rl.kl import approx_kl_k3

    old = torch.tensor([-1.0, -2.0, -3.0])
    assert approx_kl_k3(old, old).item() == 0.0
    # ratios r = e^0.5, e^-0.5, 1: terms (r - 1) - log r
    new = old + torch.tensor([0.5, -0.5, 0.0])
    want = ((math.exp(0.5) - 1 - 0.5) + (math.exp(-0.5) - 1 + 0.5) + 0.0) / 3
    assert approx_kl_k3(old, new).item() == pytest.approx(want, rel=1e-6)
    # the estimate of KL(p || q) on samples of p converges to the true KL (two-outcome distributions)
    p, q = torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.5])
    draws = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    est = approx_kl_k3(p.log()[draws], q.log()[draws]).item()
    assert est == pytest.approx(float((p * (p / q).log()).sum()), abs=3e-3)
