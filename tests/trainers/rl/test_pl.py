"""trainers/rl/pl.py: Plackett-Luce log-probabilities and Gumbel top-k sampling against brute-force enumeration."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from trainers.rl.pl import gumbel_topk_sample, pl_log_prob


def brute_pl_prob(s, perm, tau):
    """Product over positions of exp(s_j/τ) / Σ_{remaining} exp(s_l/τ)."""
    p, remaining = 1.0, list(range(len(s)))
    for j in perm:
        p *= math.exp(s[j] / tau) / sum(math.exp(s[l] / tau) for l in remaining)
        remaining.remove(j)
    return p


@pytest.mark.parametrize("K", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_pl_log_prob_equals_enumeration(K, tau):
    g = torch.Generator().manual_seed(K)
    s = torch.randn(K, generator=g, dtype=torch.float64) * 2
    perms = list(itertools.permutations(range(K)))
    ranking = torch.tensor(perms)
    lp = pl_log_prob(s.expand(len(perms), K), ranking, temperature=tau)
    want = torch.tensor([math.log(brute_pl_prob(s.tolist(), p, tau)) for p in perms], dtype=torch.float64)
    assert torch.allclose(lp, want, atol=1e-10)
    assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("K,tau", [(3, 1.0), (4, 0.7)])
def test_gumbel_topk_frequencies_match_pl(K, tau):
    s = torch.tensor([1.0, 0.2, -0.5, 0.6][:K], dtype=torch.float64)
    N = 30000
    g = torch.Generator().manual_seed(1234)
    samples = gumbel_topk_sample(s.expand(N, K), temperature=tau, generator=g)
    perms = list(itertools.permutations(range(K)))
    index = {p: i for i, p in enumerate(perms)}
    counts = np.zeros(len(perms))
    for row in samples.tolist():
        counts[index[tuple(row)]] += 1
    probs = pl_log_prob(s.expand(len(perms), K), torch.tensor(perms), temperature=tau).exp().numpy()
    _, pvalue = chisquare(counts, probs * N)
    assert pvalue > 1e-3, (counts, probs * N)
    # and a clearly wrong distribution (τ ignored) is rejected, so the test has power
    wrong = pl_log_prob(s.expand(len(perms), K), torch.tensor(perms), temperature=tau * 3).exp().numpy()
    assert chisquare(counts, wrong * N)[1] < 1e-6


def test_gumbel_sample_is_seeded():
    s = torch.randn(5, 8, dtype=torch.float64)
    a = gumbel_topk_sample(s, generator=torch.Generator().manual_seed(3))
    b = gumbel_topk_sample(s, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert sorted(a[0].tolist()) == list(range(8))


def test_gumbel_rankings_of_several_users_in_one_call_equal_one_call_per_user():
    from trainers.rl.pl import gumbel_topk_from_uniform

    s = torch.randn(6, 3, 9)  # users x rankings x candidates
    one_by_one = torch.stack([gumbel_topk_sample(s[b], 0.7, generator=torch.Generator().manual_seed(b))
                              for b in range(6)])
    u = torch.stack([torch.rand((3, 9), generator=torch.Generator().manual_seed(b), dtype=torch.float64)
                     for b in range(6)])
    assert torch.equal(gumbel_topk_from_uniform(s, u, 0.7), one_by_one)
