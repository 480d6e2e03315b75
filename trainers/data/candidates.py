"""Candidate sampling (docs/evaluation.md): the target plus K-1 uniform negatives.

Negatives are drawn from item ids 1..n_items (pad 0 excluded), excluding the
user's history and the target. The generator is seeded by (seed,
interaction_id), so a sample's candidates do not depend on which other samples
were drawn before it: a resumed or sharded run sees identical candidates.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from foundation.errors import UserInputError
from foundation.seeding import numpy_rng


def sample_candidates(
    target_item_id: int,
    history_item_ids: Sequence[int],
    n_items: int,
    K: int,
    seed: int,
    interaction_id: int,
    shuffle: bool = True,
) -> list[int]:
    """Return K candidate item ids containing the target, in a seeded random order."""
    exclude = {int(i) for i in history_item_ids} | {int(target_item_id), 0}
    n_allowed = n_items - len({e for e in exclude if 1 <= e <= n_items})
    if K - 1 > n_allowed:
        raise UserInputError(
            f"--K {K} needs {K - 1} negatives but only {n_allowed} items are eligible "
            f"(catalogue of {n_items} items minus history and target); lower --K"
        )
    rng = numpy_rng(seed, interaction_id)
    negatives: list[int] = []
    chosen: set[int] = set()
    # Rejection sampling is fast because K << n_items in practice; fall back to an exact draw otherwise.
    if K - 1 <= n_allowed // 2:
        while len(negatives) < K - 1:
            c = int(rng.integers(1, n_items + 1))
            if c not in exclude and c not in chosen:
                chosen.add(c)
                negatives.append(c)
    else:
        pool = np.array([i for i in range(1, n_items + 1) if i not in exclude])
        negatives = [int(x) for x in rng.choice(pool, size=K - 1, replace=False)]
    cands = [int(target_item_id)] + negatives
    if shuffle:
        perm = rng.permutation(K)
        cands = [cands[i] for i in perm]
    return cands
