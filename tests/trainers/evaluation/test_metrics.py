"""trainers/evaluation/metrics.py against independent brute-force references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainers.evaluation.metrics import (
    eval_ks,
    format_metrics_table,
    metrics_from_ranks,
    paired_difference,
    paired_margins,
    per_sample_metric,
    rank_from_ranking,
    ranking_from_scores,
    target_rank,
)


# ---- reference implementation ------------------------------------------------------------------------
def ref_metrics(scores_list, target_idx_list, ks):
    """DCG over a relevance vector sorted by score; among equal scores the target is placed last
    (worst case). Ideal DCG is 1 (one relevant item at position 1)."""
    out = {f"NDCG@{k}": [] for k in ks} | {f"HR@{k}": [] for k in ks} | {"MRR": []}
    for scores, t in zip(scores_list, target_idx_list):
        rel = [1.0 if i == t else 0.0 for i in range(len(scores))]
        # sort key: score descending, then relevance ascending (target after equally scored negatives)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], rel[i]))
        sorted_rel = [rel[i] for i in order]
        for k in ks:
            dcg = sum(r / math.log2(pos + 2) for pos, r in enumerate(sorted_rel[:k]))
            out[f"NDCG@{k}"].append(dcg / 1.0)
            out[f"HR@{k}"].append(float(sum(sorted_rel[:k]) > 0))
        out["MRR"].append(1.0 / (sorted_rel.index(1.0) + 1))
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.mark.parametrize("seed", range(5))
def test_ndcg_matches_sklearn_without_ties(seed):
    """scikit-learn's ndcg_score as a third-party reference (continuous scores: no ties to disagree on)."""
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(100 + seed)
    K = int(rng.integers(2, 30))
    scores = rng.normal(size=(50, K))
    targets = rng.integers(0, K, size=50)
    relevance = np.zeros_like(scores)
    relevance[np.arange(50), targets] = 1.0
    ranks = [target_rank(s.tolist(), int(t)) for s, t in zip(scores, targets)]
    for k in (1, 5, 10, K):
        assert metrics_from_ranks(ranks, (k,))[f"NDCG@{k}"] == pytest.approx(ndcg_score(relevance, scores, k=k), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, K = 40, int(rng.integers(2, 25))
    # integer scores from a small range -> many ties, including ties with the target
    scores_list = [rng.integers(0, 4, size=K).astype(float).tolist() for _ in range(n)]
    t_list = [int(rng.integers(0, K)) for _ in range(n)]
    ks = eval_ks(int(rng.integers(1, K + 1)))
    ranks = [target_rank(s, t) for s, t in zip(scores_list, t_list)]
    got = metrics_from_ranks(ranks, ks)
    want = ref_metrics(scores_list, t_list, ks)
    assert got["n"] == n
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-12), key


def test_constant_scorer_gets_rank_K():
    K = 7
    for t in range(K):
        assert target_rank([0.5] * K, t) == K
    m = metrics_from_ranks([target_rank([1.0] * K, 0)] * 3)
    assert m["HR@5"] == 0.0 and m["NDCG@1"] == 0.0 and m["MRR"] == pytest.approx(1 / K)


def test_nan_target_score_is_last():
    assert target_rank([0.1, float("nan"), 0.3], 1) == 3


def test_target_rank_on_the_device_equals_target_rank():
    """The trainer's greedy NDCG ranks a batch on the device (no read per user): the same ranks, ties against the
    target, NaN target last, NaN elsewhere never ahead."""
    from trainers.evaluation.metrics import target_rank_tensor

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 7), generator=g).float()  # many ties
    scores[3, 2] = float("nan")
    scores[4, 0] = float("nan")
    targets = torch.randint(0, 7, (50,), generator=g)
    targets[3] = 2
    got = target_rank_tensor(scores, targets)
    assert got.tolist() == [target_rank(scores[i].tolist(), int(targets[i])) for i in range(50)]
    assert got[3] == 7


def test_ranking_from_scores_puts_target_last_among_ties():
    cands = [11, 12, 13, 14, 15]
    scores = [0.2, 0.9, 0.9, 0.9, 0.1]
    for target in (12, 13, 14):
        ranking = ranking_from_scores(cands, scores, target)
        tied = [c for c in ranking if c in (12, 13, 14)]
        assert ranking[:3] == tied and tied[-1] == target
        # consistent with target_rank
        assert rank_from_ranking(ranking, target) == target_rank(scores, cands.index(target)) == 3
    assert ranking_from_scores(cands, scores, 15) == [12, 13, 14, 11, 15]


def test_metric_values_by_hand():
    m = metrics_from_ranks([1, 2, 11], ks=(1, 10))
    assert m["NDCG@1"] == pytest.approx(1 / 3)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["MRR"] == pytest.approx((1 + 0.5 + 1 / 11) / 3)
    assert "NDCG@1" in format_metrics_table({"x": m}, (1, 10))


def test_ndcg_reward_equals_eval_metric():
    """The PPO reward (tensor NDCG@k of the target in sampled rankings) equals the evaluation metric."""
    from trainers.evaluation.metrics import ndcg_reward

    g = torch.Generator().manual_seed(0)
    K, k = 12, 5
    rankings = torch.stack([torch.randperm(K, generator=g) for _ in range(64)])
    targets = torch.randint(0, K, (64,), generator=g)
    got = ndcg_reward(rankings, targets, k)
    ranks = [rankings[i].tolist().index(int(targets[i])) + 1 for i in range(64)]
    want = [metrics_from_ranks([r], (k,))[f"NDCG@{k}"] for r in ranks]
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert (got[torch.tensor(ranks) > k] == 0).all()


def test_seed_statistics_by_hand():
    from trainers.evaluation.metrics import mean_and_std, mean_over_seeds, seed_paired_margins

    mean, std = mean_and_std([0.30, 0.34, 0.32])
    assert mean == pytest.approx(0.32) and std == pytest.approx(0.02)  # sample std, ddof 1
    assert np.isnan(mean_and_std([0.3])[1])
    assert mean_over_seeds([{"NDCG@10": 0.2, "n": 4}, {"NDCG@10": 0.4, "n": 4}]) == {"NDCG@10": pytest.approx(0.3),
                                                                                       "n": 4}
    # HR@1 per sample: ours seed 1 (1, 0, 1, 0), seed 2 (1, 1, 1, 0); other's two seeds average to (.5, .5, .5, .5)
    ranks = {"ours": [[1, 2, 1, 3], [1, 1, 1, 2]], "other": [[1, 1, 2, 2], [2, 2, 1, 1]]}
    m = seed_paired_margins(ranks, "ours", "HR@1")
    d1, d2 = np.array([0.5, -0.5, 0.5, -0.5]), np.array([0.5, 0.5, 0.5, -0.5])
    want = [(d.mean(), d.std(ddof=1) / 2) for d in (d1, d2)]
    assert m == {"other": [pytest.approx(w) for w in want]}


def test_paired_margins_hand_computed():
    a, b = [1, 1, 2, 20], [2, 1, 20, 20]  # NDCG@10: a = 1, 1, .631, 0 ; b = .631, 1, 0, 0
    d = per_sample_metric(a) - per_sample_metric(b)
    np.testing.assert_allclose(d, [1 - 1 / np.log2(3), 0, 1 / np.log2(3), 0])
    mean, se = paired_difference(per_sample_metric(a), per_sample_metric(b))
    assert mean == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / 2)
    m = paired_margins({"ours": a, "other": b}, "ours", "HR@1")
    assert m["other"] == pytest.approx((0.25, 0.25))
    with pytest.raises(ValueError):
        per_sample_metric(a, "NDCG@x")
    with pytest.raises(ValueError):
        paired_difference([1.0], [0.0])


def test_margins_beyond_two_se_are_named_in_both_directions():
    """A reference clearly worse than a method is reported as such, not as 'not clear' (the seed sweep's rloo
    beat the critic by 3.7 SE in one seed, which the earlier wording hid)."""
    from trainers.evaluation.metrics import format_paired_margins, format_seed_margins, margin_verdict

    assert [margin_verdict(m, 0.01) for m in (0.03, 0.02, 0.0, -0.02, -0.03)] == \
        ["better", "within 2 SE", "within 2 SE", "within 2 SE", "worse"]
    one = format_paired_margins({"a": (0.05, 0.01), "b": (-0.05, 0.01), "c": (0.01, 0.01)}, "ours")
    assert [ln.split()[-1] for ln in one.splitlines()[1:]] == ["better", "worse", "SE"]
    seeds = format_seed_margins({"a": [(0.05, 0.01), (-0.05, 0.01), (-0.04, 0.01), (0.0, 0.01)]}, "ours")
    assert seeds.splitlines()[1].endswith("| better in 1, worse in 2 of 4")
