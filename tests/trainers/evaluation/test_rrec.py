"""trainers/evaluation/rrec.py: the full-catalogue metrics and ranking of the RRec baseline (upstream R2ec masks a
repeat-purchase target with the history: a miss)."""
from __future__ import annotations

import math

import pytest
import torch


def test_full_catalogue_metrics_count_a_masked_repeat_target_as_a_miss():
    from trainers.evaluation.rrec import rrec_metrics

    samples = [{"target_rank": 1, "full_rank": 1}, {"target_rank": 3, "full_rank": None},
               {"target_rank": 2, "full_rank": 7}]
    full = rrec_metrics(samples, 3, full_ranking=True)["rrec (full catalogue)"]
    assert full["n"] == 3 and full["HR@5"] == pytest.approx(1 / 3) and full["HR@10"] == pytest.approx(2 / 3)
    assert full["NDCG@10"] == pytest.approx((1.0 + 1.0 / math.log2(8)) / 3)
    assert full["MRR"] == pytest.approx((1.0 + 1 / 7) / 3)


def test_rank_with_rrec_masks_a_repeat_target_unless_asked():
    """Full-catalogue ranking: the pad item and the history are masked; a target that is also a history item is
    masked with it (upstream: a miss, full_rank None) unless rank_repeat_targets; candidate ranks never mask."""
    from types import SimpleNamespace

    from models.rrec_models import RRecSettings
    from trainers.evaluation.rrec import rank_with_rrec

    table = torch.tensor([[9.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])  # row = item id, 0 = pad
    user = torch.tensor([[1.0, 0.0]])  # cosine: item 1 > 4 > 3 > 2

    class FakeModel(torch.nn.Module):
        settings = RRecSettings()

        def generate_reasoning(self, prompts, max_new_tokens, **kw):
            return ["because <answer>"] * len(prompts), [2] * len(prompts)

        def embed_sequences(self, seqs, batch_size=None):
            return user.expand(len(seqs), -1)

        def similarity(self, u, v):
            return self.settings.similarity(u, v)

    prompter = SimpleNamespace(user_ids=lambda ex: [1], user_sequence_ids=lambda ex, t, p: ([1, 2], 1),
                               user_prompt=lambda ex: "prompt", complete_reasoning=lambda t: t,
                               stop_token_ids=lambda: [0])
    ex = {"interaction_id": 3, "user_id": "u", "item_id": 1, "history_item_id": [1, 4]}  # bought item 1 before
    items = [(ex, [2, 1, 3])]
    upstream = rank_with_rrec(FakeModel(), prompter, items, table, 4, full_ranking=True, progress=False)
    kept = rank_with_rrec(FakeModel(), prompter, items, table, 4, full_ranking=True, progress=False,
                          rank_repeat_targets=True)
    assert upstream[0]["full_rank"] is None and kept[0]["full_rank"] == 1  # item 4 (history) and the pad masked
    assert upstream[0]["target_rank"] == kept[0]["target_rank"] == 1 and upstream[0]["ranking"] == [1, 3, 2]
