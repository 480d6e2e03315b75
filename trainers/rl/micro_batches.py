"""How an optimiser step's users are split into micro-batches (one forward + backward each), and the loss factor
that keeps the step's gradient the full-batch mean however they are split.

Gradient accumulation keeps Hugging Face's meaning: an optimiser step sees all the users of the step on this
process (--batch_size x --gradient_accumulation_steps); the split only bounds what one forward holds. Every loss
term of the PL-PPO update is a mean over the users' elements with the same number of elements per user (M rankings,
one value), so the full-batch mean is the sum over micro-batches of (micro-batch mean) x users / all users.
accelerate's backward divides each loss by its accumulation count, which the update sets to the number of
micro-batches; micro_batch_loss_factor undoes that division.
"""
from __future__ import annotations

from typing import Sequence

MicroBatch = tuple[int, int]  # users [start, end) of the step's list


def fixed_micro_batches(n_users: int, users_per_micro_batch: int) -> list[MicroBatch]:
    """Consecutive groups of users_per_micro_batch users (the last may be smaller)."""
    if users_per_micro_batch < 1:
        raise ValueError(f"users_per_micro_batch {users_per_micro_batch}: must be >= 1")
    return [(a, min(a + users_per_micro_batch, n_users)) for a in range(0, n_users, users_per_micro_batch)]


def token_budget_micro_batches(tokens: Sequence[int], budget: int) -> list[MicroBatch]:
    """Consecutive groups of users whose tokens sum to at most `budget` (greedy, in order); a user longer than the
    budget goes alone (one user always fits)."""
    if budget < 1:
        raise ValueError(f"budget {budget}: must be >= 1")
    out: list[MicroBatch] = []
    start, used = 0, 0
    for i, n in enumerate(tokens):
        if i > start and used + n > budget:
            out.append((start, i))
            start, used = i, 0
        used += n
    if len(tokens) > start:
        out.append((start, len(tokens)))
    return out


def from_index_groups(groups: Sequence[Sequence[int]]) -> list[MicroBatch]:
    """Groups of consecutive user indices (e.g. models.shared_prefix.user_chunks) as [start, end) ranges."""
    out: list[MicroBatch] = []
    expected = 0
    for g in groups:
        if list(g) != list(range(expected, expected + len(g))) or not g:
            raise ValueError(f"user groups must be consecutive and cover 0..n-1 in order, got {list(map(list, groups))}")
        out.append((expected, expected + len(g)))
        expected += len(g)
    return out


def micro_batch_loss_factor(micro_batch: MicroBatch, n_users: int, n_micro_batches: int) -> float:
    """What a micro-batch's mean loss is multiplied by before accelerate's backward (which divides it by
    n_micro_batches) so that the accumulated gradient is the mean over all n_users: users x n_micro_batches /
    n_users. Exactly 1.0 when the micro-batches have equal size (an integer product divided by its factor)."""
    a, b = micro_batch
    return (b - a) * n_micro_batches / n_users
