"""foundation/seeding.py: every random stream is a replayable function of (seed, ...integers)."""
from __future__ import annotations

import itertools

import numpy as np

from foundation.seeding import derived_seed, numpy_rng


def test_derived_seeds_are_replayable_distinct_and_63_bit():
    assert derived_seed(5, 3, 0, 1) == derived_seed(5, 3, 0, 1) == derived_seed(np.int64(5), 3, 0, True)
    parts = list(itertools.product(range(4), range(25), range(2), range(3)))  # (seed, step, rank, stream)
    seeds = [derived_seed(*p) for p in parts]
    assert len(set(seeds)) == len(parts)  # no two (seed, step, rank, stream) share a stream
    assert derived_seed(1, 2) != derived_seed(2, 1)  # the order of the parts counts
    assert all(0 <= s < 2 ** 63 for s in seeds) and max(seeds) > 2 ** 60  # fits an int64 and uses its range


def test_numpy_rng_streams_replay_and_differ_by_their_parts():
    a = numpy_rng(7, 2).integers(0, 10 ** 9, size=8)
    assert np.array_equal(a, numpy_rng(7, 2).integers(0, 10 ** 9, size=8))
    assert not np.array_equal(a, numpy_rng(7, 3).integers(0, 10 ** 9, size=8))
    assert not np.array_equal(a, numpy_rng(2, 7).integers(0, 10 ** 9, size=8))
