"""trainers/data/candidates.py: the seeded candidate sampler."""
from __future__ import annotations

import pytest

from foundation.errors import UserInputError
from trainers.data.candidates import sample_candidates


def test_candidates_contain_target_exclude_history_and_are_seeded():
    hist = [1, 2, 3]
    a = sample_candidates(10, hist, n_items=39, K=8, seed=0, interaction_id=5)
    assert len(a) == 8 and len(set(a)) == 8 and 10 in a
    assert not set(a) & {0, 1, 2, 3}
    assert a == sample_candidates(10, hist, n_items=39, K=8, seed=0, interaction_id=5)
    assert a != sample_candidates(10, hist, n_items=39, K=8, seed=1, interaction_id=5)
    # dense case: every eligible item is used exactly once
    full = sample_candidates(10, hist, n_items=39, K=36, seed=0, interaction_id=5)
    assert sorted(full) == [i for i in range(1, 40) if i not in hist]
    with pytest.raises(UserInputError, match="--K 37"):
        sample_candidates(10, hist, n_items=39, K=37, seed=0, interaction_id=5)
