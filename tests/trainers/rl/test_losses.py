"""trainers/rl/losses.py by hand: the clipped PPO surrogate (value, gradient, clip fraction) and the clipped value
loss."""
from __future__ import annotations

import math

import pytest
import torch

from trainers.rl.losses import clipped_surrogate, clipped_value_loss


def test_clipped_surrogate_value_and_gradient_by_hand():
    # ratios r = [1, 1.5, 0.5, 1.5], advantages A = [1, 1, -1, -1], eps = 0.2
    #   i=0: min(1*1, 1*1)          = 1     (unclipped, d/dlogp = r*A = 1)
    #   i=1: min(1.5*1, 1.2*1)      = 1.2   (clipped -> no gradient)
    #   i=2: min(0.5*-1, 0.8*-1)    = -0.8  (clipped -> no gradient)
    #   i=3: min(1.5*-1, 1.2*-1)    = -1.5  (unclipped: a bad action made likelier is always penalised)
    # loss = -(1 + 1.2 - 0.8 - 1.5) / 4 = 0.025; grad = -r*A/4 where unclipped.
    logp_new = torch.tensor([0.0, math.log(1.5), math.log(0.5), math.log(1.5)], requires_grad=True)
    logp_old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, clipfrac = clipped_surrogate(logp_new, logp_old, adv, 0.2)
    assert loss.item() == pytest.approx(0.025, abs=1e-6)
    # one clip-fraction definition for every trainer: the share whose gradient the clip removes (i=1, i=2)
    assert clipfrac.item() == pytest.approx(0.5)
    loss.backward()
    assert logp_new.grad.tolist() == pytest.approx([-0.25, 0.0, 0.0, 0.375], abs=1e-6)


def test_surrogate_at_ratio_one_is_policy_gradient():
    # First PPO epoch: new == old, so the loss is -mean(A) and its gradient -A/n (REINFORCE with baseline).
    logp = torch.tensor([-3.0, -1.0, -2.0], requires_grad=True)
    adv = torch.tensor([0.5, -2.0, 1.0])
    loss, clipfrac = clipped_surrogate(logp, logp.detach().clone(), adv, 0.1)
    assert loss.item() == pytest.approx(-(-0.5) / 3)
    assert clipfrac.item() == 0.0
    loss.backward()
    assert logp.grad.tolist() == pytest.approx([-0.5 / 3, 2.0 / 3, -1.0 / 3])


def test_clipped_value_loss_by_hand():
    # v=[0.5, 0.9], v_old=[0.4, 0.4], R=[1, 0], eps=0.2
    #   i=0: (0.5-1)^2=0.25 ; clipped v=0.5 -> 0.25            -> 0.25
    #   i=1: (0.9-0)^2=0.81 ; clipped v=0.6 -> 0.36            -> 0.81 (unclipped is larger)
    v = torch.tensor([0.5, 0.9], requires_grad=True)
    loss = clipped_value_loss(v, torch.tensor([0.4, 0.4]), torch.tensor([1.0, 0.0]), clip_eps=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.81) / 2)
    loss.backward()
    # d/dv 0.5*mean((v-R)^2) = (v-R)/n
    assert v.grad.tolist() == pytest.approx([(0.5 - 1.0) / 2, 0.9 / 2])


def test_value_loss_clipping_binds():
    # v=0.9 moved 0.5 above v_old=0.4 toward R=1: unclipped 0.01, clipped (0.6-1)^2=0.16 is larger,
    # so the loss is 0.08 and the gradient vanishes (the value cannot move further than eps in one update).
    v = torch.tensor([0.9], requires_grad=True)
    loss = clipped_value_loss(v, torch.tensor([0.4]), torch.tensor([1.0]), clip_eps=0.2)
    assert loss.item() == pytest.approx(0.08)
    loss.backward()
    assert v.grad.item() == 0.0
