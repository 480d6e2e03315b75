"""Training utilities (the original README's trainers/utils.py): the small pieces of a training run that are not
its loop (the loop: trainers/base_trainer.py; its pieces below foundation/: checkpoints, seeding, distributed).

    lr_lambda_factory     the learning-rate multiplier of a step: linear warmup, then constant or cosine to 0
    sample_step_indices   the training examples of one step, for all processes together (each takes a shard)
    step_candidate_seed   the candidate-sampling seed of a step (candidates vary across steps, replay on resume)
    param_checksum        a SHA-256 of a module's weights: equal iff bit-identical (DDP equality checks)

Importable without torch (param_checksum imports it when called), so configs can take SCHEDULERS from here.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable

from foundation.errors import SettingError
from foundation.seeding import derived_seed, numpy_rng

SCHEDULERS = ("constant", "cosine")


def lr_lambda_factory(warmup_steps: int, total_steps: int, kind: str) -> Callable[[int], float]:
    """Multiplier of the base lr at scheduler step t: linear warmup, then constant or cosine to 0."""
    if kind not in SCHEDULERS:
        raise SettingError("lr_scheduler", repr(kind), f"must be one of {'|'.join(SCHEDULERS)}")

    def f(t: int) -> float:
        if warmup_steps > 0 and t < warmup_steps:
            return (t + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (t - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def step_candidate_seed(seed: int, step: int) -> int:
    """The candidate-sampling seed of a training step: candidates vary across steps, replay on resume."""
    return derived_seed(seed, step, 3)


def sample_step_indices(n: int, global_batch: int, seed: int, step: int) -> list[int]:
    """The training-example indices of one step for all processes together (each takes a shard), so the users
    of a step do not depend on how many processes share them."""
    rng = numpy_rng(seed, step, 17)
    return [int(i) for i in rng.choice(n, size=min(global_batch, n), replace=False)]


def param_checksum(module) -> str:
    """SHA-256 over all parameters' bytes in name order: equal iff the weights are bit-identical."""
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters(), key=lambda x: x[0]):
        h.update(name.encode())
        h.update(p.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()
