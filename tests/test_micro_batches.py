"""Micro-batches of the PL-PPO update (trainers/rl/micro_batches.py): users grouped by a token budget or a fixed
count, and a loss factor that makes the accumulated gradient the full-batch mean however the users are split,
checked on the trainer's own update against per-user accumulation (fp32, 1e-5)."""
from __future__ import annotations

import pytest
import torch

from tests.fixtures.ppo_train import build_trainer, ppo_assets  # noqa: F401 (session fixture)
from trainers.rl.diagnostics import StepStats
from trainers.rl.micro_batches import (fixed_micro_batches, from_index_groups, micro_batch_loss_factor,
                                       token_budget_micro_batches)


def test_token_budget_groups_consecutive_users_and_a_long_user_goes_alone():
    assert token_budget_micro_batches([3, 3, 3, 3], 6) == [(0, 2), (2, 4)]
    assert token_budget_micro_batches([3, 3, 3, 3], 7) == [(0, 2), (2, 4)]
    assert token_budget_micro_batches([3, 3, 3, 3], 12) == [(0, 4)]
    assert token_budget_micro_batches([2, 9, 2, 2], 5) == [(0, 1), (1, 2), (2, 4)]  # 9 > 5 still runs, alone
    assert token_budget_micro_batches([], 5) == []
    assert fixed_micro_batches(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert from_index_groups([[0, 1], [2], [3, 4]]) == [(0, 2), (2, 3), (3, 5)]
    with pytest.raises(ValueError):
        from_index_groups([[0, 2], [1]])
    with pytest.raises(ValueError):
        token_budget_micro_batches([1], 0)


def test_loss_factor_gives_the_full_batch_mean():
    """accelerate divides each micro-batch's loss by the number of micro-batches; the factor turns the sum of
    (mean_i x factor_i / n_micro) into the mean over all users, and is exactly 1 for equal micro-batches."""
    micro = [(0, 1), (1, 4), (4, 6)]
    means = [2.0, 5.0, 11.0]  # per-user mean loss of each micro-batch
    total = sum(m * micro_batch_loss_factor(mb, 6, len(micro)) / len(micro) for m, mb in zip(means, micro))
    assert total == pytest.approx((2.0 * 1 + 5.0 * 3 + 11.0 * 2) / 6)
    assert {micro_batch_loss_factor(mb, 12, 3) for mb in fixed_micro_batches(12, 4)} == {1.0}
    assert micro_batch_loss_factor((0, 3), 9, 3) == 1.0  # 3 x 3 / 9, not 3 * (3 / 9)


@pytest.fixture(scope="module")
def trainer(ppo_assets, tmp_path_factory):  # noqa: F811
    data, model = ppo_assets
    # every loss term: clipped PL surrogate, clipped value loss (critic) and the KL penalty to a frozen reference
    return build_trainer(data, model, tmp_path_factory.mktemp("mb") / "run", "--max_tokens_per_micro_batch",
                         "1000000", "--kl_coef", "0.1")


def _grads(tr, rollout, micro) -> dict[str, torch.Tensor]:
    tr.model.train()
    tr.optimizer.zero_grad(set_to_none=True)
    tr.accumulate_gradients(rollout, micro, StepStats())
    out = {n: p.grad.detach().clone() for n, p in tr.judge.named_parameters() if p.grad is not None}
    tr.optimizer.zero_grad(set_to_none=True)
    return out


def test_budget_packed_micro_batch_gradient_equals_per_user_accumulation(trainer):
    tr = trainer
    rollout = tr.make_experience(1)
    n = len(rollout.prompts)
    packed = tr.micro_batches(rollout.prompts)
    assert packed == [(0, n)] and n == 4  # the budget packs every user into one forward
    tr.judge.shared_tokens_per_forward = 1  # a budget no two users fit: the same method gives one user each
    try:
        per_user = tr.micro_batches(rollout.prompts)
    finally:
        tr.judge.shared_tokens_per_forward = tr.cfg.max_tokens_per_micro_batch
    assert per_user == [(i, i + 1) for i in range(n)]
    g_packed = _grads(tr, rollout, packed)
    g_user = _grads(tr, rollout, per_user)
    g_uneven = _grads(tr, rollout, [(0, 1), (1, n)])  # unequal: a plain mean of the two would differ
    assert g_packed.keys() == g_user.keys() and len(g_packed) > 10
    assert any("value_head" in k for k in g_packed)  # the critic's loss is in the gradient too
    scale = max(g.abs().max().item() for g in g_packed.values())
    assert scale > 1e-3  # a real gradient, not zeros
    for other in (g_user, g_uneven):
        worst = max((g_packed[k] - other[k]).abs().max().item() for k in g_packed)
        assert worst <= 1e-5, worst
