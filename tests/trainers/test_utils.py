"""trainers/utils.py: the learning-rate schedule, the per-step data and candidate seeds, the weight checksum."""
from __future__ import annotations

import math

import pytest

from foundation.errors import UserInputError, cli_message
from foundation.seeding import derived_seed
from trainers.utils import SCHEDULERS, lr_lambda_factory, param_checksum, sample_step_indices, step_candidate_seed


def test_lr_schedule_warms_up_then_holds_or_decays():
    cosine = lr_lambda_factory(warmup_steps=2, total_steps=10, kind="cosine")
    assert [cosine(t) for t in (0, 1)] == [0.5, 1.0]
    assert cosine(2) == pytest.approx(1.0) and cosine(6) == pytest.approx(0.5) and cosine(10) == pytest.approx(0)
    assert all(cosine(t) >= cosine(t + 1) for t in range(2, 12))  # never rises after warmup
    constant = lr_lambda_factory(0, 10, "constant")
    assert {constant(t) for t in range(20)} == {1.0}
    with pytest.raises(UserInputError) as e:
        lr_lambda_factory(0, 10, "linear")
    assert cli_message(e.value) == f"--lr_scheduler 'linear': must be one of {'|'.join(SCHEDULERS)}"


def test_step_indices_and_candidate_seed_replay_and_vary():
    a = sample_step_indices(50, 8, seed=1, step=5)
    assert a == sample_step_indices(50, 8, seed=1, step=5) and len(set(a)) == 8 and max(a) < 50
    assert a != sample_step_indices(50, 8, seed=1, step=6) and a != sample_step_indices(50, 8, seed=2, step=5)
    assert sorted(sample_step_indices(5, 8, seed=1, step=0)) == [0, 1, 2, 3, 4]  # a batch larger than the data
    assert step_candidate_seed(3, 7) == step_candidate_seed(3, 7) != step_candidate_seed(3, 8)


def test_param_checksum_sees_one_changed_bit():
    torch = pytest.importorskip("torch")

    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    assert param_checksum(a) == param_checksum(b) and len(param_checksum(a)) == 64
    with torch.no_grad():
        b.weight[0, 0] = torch.nextafter(b.weight[0, 0], torch.tensor(math.inf))
    assert param_checksum(a) != param_checksum(b)


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
