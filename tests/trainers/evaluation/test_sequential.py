"""trainers/evaluation/sequential.py: rank_with_sequential on a hand-made sequential model whose scores are known,
so every candidate score, ranking, target rank and full-catalogue rank is checked by hand (training and the
script end to end: tests/test_sasrec.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.sequential import SequentialRecommender
from trainers.evaluation.sequential import rank_with_sequential


class NextItemModel(SequentialRecommender):
    """Scores item j after a history whose newest item is i by -|j - (i + 1)|: the user vector is the one-hot of
    the newest item and item j's output vector holds its score after every item."""

    def __init__(self, n_items: int = 6, max_len: int = 3) -> None:
        super().__init__()
        self.n_items, self.max_len = n_items, max_len
        ids = torch.arange(n_items + 1, dtype=torch.float32)
        self.table = nn.Parameter(-(ids[None, :] - ids[:, None] - 1).abs(), requires_grad=False)  # [i, j]

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return F.one_hot(seq, self.n_items + 1).float()

    def output_items(self, items=None):
        return (self.table.T if items is None else self.table.T[items]), None


def _ex(iid: int, history: list[int], target: int) -> dict:
    return {"interaction_id": iid, "user_id": f"u{iid}", "item_id": target, "history_item_id": history}


# (example, K = 3 candidates) -> (candidate scores, ranking, target rank, full rank, full rank keeping a repeat target)
CASES = [
    # newest 2: item 3 scores 0, items 2 and 4 -1, 1 and 5 -2, 6 -3; history 5, 1, 2 masked in the catalogue, so
    # only 3 is ahead of the target 4 there (unmasked, the tied item 2 would be too)
    ((_ex(10, [5, 1, 2], 4), [6, 4, 3]), ([-3.0, -1.0, 0.0], [3, 4, 6], 2, 2, 2)),
    # newest 6: the target 6 is a repeat purchase, masked with the history (a miss) unless kept
    ((_ex(11, [3, 6], 6), [6, 2, 5]), ([-1.0, -5.0, -2.0], [6, 5, 2], 1, None, 1)),
    # newest 2: candidate 2 ties with the target 4 and goes ahead of it, in the ranking and the rank
    ((_ex(12, [2], 4), [4, 2, 5]), ([-1.0, -1.0, -2.0], [2, 4, 5], 2, 2, 2)),
]


def test_rank_with_sequential_scores_the_newest_history_item_and_masks_the_history_in_the_catalogue():
    model = NextItemModel()
    model.train()
    items = [item for item, _ in CASES]
    seen = []
    got = rank_with_sequential(model, items, batch_size=2, on_sample=seen.append)
    assert seen == got and model.training  # every sample reported in order; the model's mode restored
    for sample, ((ex, cands), (scores, ranking, rank, full, _)) in zip(got, CASES):
        assert sample == {"interaction_id": ex["interaction_id"], "user_id": ex["user_id"],
                          "target_item_id": ex["item_id"], "candidates": cands, "scores": scores,
                          "ranking": ranking, "target_rank": rank, "full_rank": full}
    kept = rank_with_sequential(model, items, batch_size=1, rank_repeat_targets=True)
    assert [s["full_rank"] for s in kept] == [kept_rank for _, (*_, kept_rank) in CASES]
    assert [{k: v for k, v in s.items() if k != "full_rank"} for s in kept] == \
        [{k: v for k, v in s.items() if k != "full_rank"} for s in got]  # batching changes nothing else
    assert all("full_rank" not in s for s in rank_with_sequential(model, items, full_ranking=False))
