"""Micro-batches of the PL-PPO update on the trainer (the grouping and loss factor by hand:
tests/trainers/rl/test_micro_batches.py): the accumulated gradient is the full-batch mean however the users are
split, checked on the trainer's own update against per-user accumulation (fp32, 1e-5); a token budget is refused
under sharding."""
from __future__ import annotations

import pytest
import torch

from tests.fixtures.ppo_train import build_trainer, ppo_assets  # noqa: F401 (session fixture)
from trainers.rl.diagnostics import StepStats


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
