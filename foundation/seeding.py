"""The one way to derive seeds: every random stream is a function of (seed, ...integers) through numpy's
SeedSequence, so streams are independent, replayable on resume and independent of batch composition."""
from __future__ import annotations

import numpy as np


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers, e.g. (seed, step, rank, stream) or (seed, interaction_id, stream)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def numpy_rng(*parts: int) -> np.random.Generator:
    """A numpy Generator seeded from integers (same SeedSequence family as derived_seed)."""
    return np.random.default_rng([int(p) for p in parts])
