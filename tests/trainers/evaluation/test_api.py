"""trainers/evaluation/api.py: an API answer turned into a ranked sample (end to end: tests/test_deepseek.py)."""
from __future__ import annotations

from trainers.evaluation.api import sample_from_row


def test_sample_from_row_scores_encode_ranking():
    ex = {"interaction_id": 5, "user_id": "u", "item_id": 30}
    cands = [10, 20, 30, 40]
    s = sample_from_row(ex, cands, {"content": "3, 1"}, ["a", "b", "c", "d"])
    assert s["ranking"] == [30, 10, 20, 40] and s["target_rank"] == 1 and s["outputs"]["parse_status"] == "partial"
    s = sample_from_row(ex, cands, {"content": None, "error": "boom"}, ["a", "b", "c", "d"])
    assert s["ranking"][-1] == 30 and s["target_rank"] == 4 and s["outputs"]["parse_status"] == "api_error"
