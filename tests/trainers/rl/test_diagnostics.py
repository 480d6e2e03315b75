"""trainers/rl/diagnostics.py by hand: Plackett-Luce entropies, explained variance (one process or all-reduced
sums) and the per-step statistics."""
from __future__ import annotations

import math

import pytest
import torch


def test_pl_entropies_by_hand():
    from trainers.rl.diagnostics import pl_entropy_mc, pl_first_position_entropy
    from trainers.rl.pl import gumbel_topk_sample, pl_log_prob

    K = 4
    flat = torch.zeros(K)
    # uniform scores: every ranking has probability 1/K!, the first pick 1/K
    rankings = gumbel_topk_sample(flat.expand(50, K), generator=torch.Generator().manual_seed(0))
    assert pl_entropy_mc(pl_log_prob(flat.expand(50, K), rankings)).item() == pytest.approx(math.log(24), rel=1e-6)
    assert pl_first_position_entropy(flat[None]).item() == pytest.approx(math.log(K), rel=1e-6)
    # two candidates, scores (log 3, 0): first pick 3/4 vs 1/4; the temperature divides the scores
    s = torch.tensor([[math.log(3.0), 0.0]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert pl_first_position_entropy(s).item() == pytest.approx(h, rel=1e-6)
    assert pl_first_position_entropy(s * 2, temperature=2.0).item() == pytest.approx(h, rel=1e-6)
    # K = 2: a ranking is its first pick, so the Monte-Carlo estimate converges to the same entropy
    draws = gumbel_topk_sample(s.expand(40_000, 2), generator=torch.Generator().manual_seed(1))
    assert pl_entropy_mc(pl_log_prob(s.expand(40_000, 2), draws)).item() == pytest.approx(h, abs=0.01)


def test_explained_variance_by_hand():
    from trainers.rl.diagnostics import explained_variance

    y = torch.tensor([[1.0, 0.8], [0.0, 0.2]])  # 2 users x 2 rankings
    assert explained_variance(y, y) == pytest.approx(1.0)
    assert explained_variance(y, torch.full((2, 1), float(y.mean()))) == pytest.approx(0.0, abs=1e-12)  # a constant
    # V = each user's mean: residuals (.1, -.1, -.1, .1), Var 0.01; Var(y) = 0.17
    assert explained_variance(y, torch.tensor([[0.9], [0.1]])) == pytest.approx(1 - 0.01 / 0.17)
    # V the wrong way round: residuals (.9, .7, -.9, -.7), Var 0.65: worse than a constant
    assert explained_variance(y, torch.tensor([[0.1], [0.9]])) == pytest.approx(1 - 0.65 / 0.17)
    assert math.isnan(explained_variance(torch.full((2, 2), 0.3), torch.zeros(2, 1)))
    # the batch split over two processes (sums all-reduced): the same number as one process holding it all
    other = {}
    explained_variance(y[1:], torch.tensor([[0.1]]), all_reduce_sum=lambda t: other.setdefault("stats", t.clone()))
    got = explained_variance(y[:1], torch.tensor([[0.9]]), all_reduce_sum=lambda t: t + other["stats"])
    assert got == pytest.approx(1 - 0.01 / 0.17)


def test_step_stats_means_maxima_and_one_read():
    from trainers.rl.diagnostics import StepStats

    s = StepStats()
    for v in (1.0, 2.0, 6.0):
        s.mean("clipfrac", torch.tensor(v))
    s.max("ratio_max", torch.tensor([1.0, 3.0]))
    s.max("ratio_max", torch.tensor([2.5]))
    assert s.read() == {"clipfrac": 3.0, "ratio_max": 3.0}
    assert StepStats().read() == {}
