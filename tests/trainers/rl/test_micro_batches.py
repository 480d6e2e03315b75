"""trainers/rl/micro_batches.py: users grouped by a token budget or a fixed count, and a loss factor that makes the
accumulated gradient the full-batch mean however the users are split (on the trainer's own update:
tests/test_micro_batches.py)."""
from __future__ import annotations

import pytest

from trainers.rl.micro_batches import (
    fixed_micro_batches,
    from_index_groups,
    micro_batch_loss_factor,
    token_budget_micro_batches,
)


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
