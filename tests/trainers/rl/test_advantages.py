"""trainers/rl/advantages.py by hand: the PL-PPO advantage estimators (critic, rloo, grpo) and their registry,
advantage normalisation, and RecPO's group advantages (learning with each estimator:
tests/test_advantage_estimators.py)."""
from __future__ import annotations

import math

import pytest
import torch

from foundation.errors import UserInputError
from trainers.recpo_trainer import relabel_mask
from trainers.rl.advantages import (
    ADVANTAGE_ESTIMATORS,
    estimator_uses_critic,
    get_advantage_estimator,
    group_advantages,
    normalize_advantages,
    register_advantage_estimator,
)

REWARDS = torch.tensor([[1.0, 0.0, 0.5, 0.5],
                        [0.2, 0.2, 0.2, 0.2]])  # user 2: every ranking earned the same


def test_critic_advantage_is_reward_minus_value():
    adv, returns = get_advantage_estimator("critic")(REWARDS, torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(adv, torch.tensor([[0.75, -0.25, 0.25, 0.25], [-0.3, -0.3, -0.3, -0.3]]))
    torch.testing.assert_close(returns, torch.tensor([0.5, 0.2]))  # the critic's target: the user's mean reward
    with pytest.raises(ValueError, match="value head"):
        get_advantage_estimator("critic")(REWARDS, None)


def test_rloo_subtracts_the_mean_of_the_other_rankings():
    adv, returns = get_advantage_estimator("rloo")(REWARDS, None)
    # 1 - (0 + .5 + .5)/3, 0 - (1 + .5 + .5)/3, .5 - (1 + 0 + .5)/3 (twice); equal rewards: 0
    torch.testing.assert_close(adv, torch.tensor([[2 / 3, -2 / 3, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert returns is None


def test_grpo_normalises_within_the_user():
    adv, returns = get_advantage_estimator("grpo")(REWARDS, None)
    std = torch.tensor([1.0, 0.0, 0.5, 0.5]).std()  # unbiased, as GRPO
    torch.testing.assert_close(adv[0], torch.tensor([0.5, -0.5, 0.0, 0.0]) / std)
    assert (adv[1] == 0).all() and returns is None
    with pytest.raises(ValueError, match="at least 2"):
        get_advantage_estimator("grpo")(REWARDS[:, :1], None)


def test_registry():
    assert set(ADVANTAGE_ESTIMATORS) >= {"critic", "rloo", "grpo"}
    assert estimator_uses_critic("critic") and not estimator_uses_critic("rloo") and not estimator_uses_critic("grpo")
    with pytest.raises(ValueError, match="critic|rloo|grpo"):
        get_advantage_estimator("gae")
    with pytest.raises(ValueError, match="already registered"):
        register_advantage_estimator("rloo")(lambda r, v: (r, None))


def test_advantage_normalisation():
    adv = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = normalize_advantages(adv)
    std = math.sqrt(1.25)  # population std of 1..4
    assert out.tolist() == pytest.approx([(x - 2.5) / std for x in (1, 2, 3, 4)], abs=1e-6)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-7)
    # constant advantages: centred to 0, no division blow-up
    assert normalize_advantages(torch.full((3,), 0.7)).abs().max().item() < 1e-6


def test_advantage_normalisation_refuses_a_single_sample():
    with pytest.raises(ValueError, match="1 sample"):
        normalize_advantages(torch.tensor([[0.3]]))
    # the trainer's config refuses the setting before any work
    from trainers.ppo_trainer import parse_config

    cfg = parse_config(["--batch_size", "1", "--rankings_per_user", "1"])
    with pytest.raises(UserInputError, match="--normalize_advantage"):
        cfg.validate()
    parse_config(["--batch_size", "1", "--rankings_per_user", "1", "--no-normalize_advantage"]).validate()


def test_advantages_and_relabel_hand_computed():
    r = torch.tensor([[1.0, 0.0, 0.5], [2.0, 2.0, 2.0]])
    g = group_advantages(r)  # gaussian: mean 0.5, unbiased std 0.5, eps 1e-8
    assert g[0].tolist() == pytest.approx([0.5 / (0.5 + 1e-8), -0.5 / (0.5 + 1e-8), 0.0], abs=1e-7)
    assert g[1].tolist() == [0.0, 0.0, 0.0]  # ties: nobody is reinforced
    assert group_advantages(torch.tensor([[0.3], [0.0]])).tolist() == [[1.0], [1.0]]  # G = 1 -> 1 (upstream)
    assert group_advantages(r, "rloo")[0].tolist() == pytest.approx([0.75, -0.75, 0.0])
    up = group_advantages(r, "upstream_leave_one_out")
    assert up[0].tolist() == pytest.approx([1.0 * 4 / 3 - 0.5, -0.5, 0.5 * 4 / 3 - 0.5])
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([[1.0]]), "rloo")
    adv = torch.tensor([[0.1, 0.9, -1.0], [2.0, 0.0, 1.0]])
    assert relabel_mask(adv, 2).tolist() == [[True, True, False], [True, False, True]]
    assert relabel_mask(adv, 5).all()  # k above G: every rollout
