"""PPO loss functions, advantage normalisation and schedule, checked against hand-computed values."""
from __future__ import annotations

import pytest
import torch

from foundation.errors import UserInputError
from foundation.seeding import derived_seed
from trainers.utils import lr_lambda_factory, sample_step_indices, step_candidate_seed


def test_lr_schedule():
    f = lr_lambda_factory(warmup_steps=2, total_steps=10, kind="cosine")
    assert [f(0), f(1)] == pytest.approx([0.5, 1.0])
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.5)
    assert f(10) == pytest.approx(0.0, abs=1e-12)
    c = lr_lambda_factory(0, 10, "constant")
    assert c(0) == c(9) == 1.0
    with pytest.raises(UserInputError):
        lr_lambda_factory(0, 10, "linear")


def test_step_randomness_is_replayable():
    a = sample_step_indices(1000, 8, seed=1, step=5)
    assert a == sample_step_indices(1000, 8, seed=1, step=5) and len(set(a)) == 8
    assert a != sample_step_indices(1000, 8, seed=1, step=6)
    assert a != sample_step_indices(1000, 8, seed=2, step=5)
    assert len(set(a)) == 8
    assert step_candidate_seed(3, 7) != step_candidate_seed(3, 8)
    assert derived_seed(1, 2, 0, 1) != derived_seed(1, 2, 1, 1)


def test_optimizer_state_follows_param_groups_by_name(tmp_path):
    """A checkpoint of a run with a critic resumed without one (and back): the actor's Adam state is kept, the
    critic's dropped (or started afresh), so the optimiser loads."""
    from foundation.checkpoints import check_optimizer_state_fits, select_param_groups

    actor, critic = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    both = torch.optim.AdamW([{"params": list(actor.parameters()), "name": "actor"},
                              {"params": list(critic.parameters()), "name": "critic"}])
    (actor(torch.ones(1, 3)).sum() + critic(torch.ones(1, 2)).sum()).backward()
    both.step()
    saved = both.state_dict()
    only_actor = torch.optim.AdamW([{"params": list(actor.parameters()), "name": "actor"}])
    state = select_param_groups(saved, only_actor, tmp_path)
    check_optimizer_state_fits(state, only_actor, tmp_path)
    only_actor.load_state_dict(state)
    torch.testing.assert_close(only_actor.state[actor.weight]["exp_avg"], both.state[actor.weight]["exp_avg"])
    # and back: the critic group starts without state
    again = torch.optim.AdamW([{"params": list(actor.parameters()), "name": "actor"},
                               {"params": list(critic.parameters()), "name": "critic"}])
    again.load_state_dict(select_param_groups(only_actor.state_dict(), again, tmp_path))
    assert critic.weight not in again.state or not again.state[critic.weight]
    torch.testing.assert_close(again.state[actor.weight]["exp_avg"], both.state[actor.weight]["exp_avg"])
