"""PPO loss functions, advantage normalisation and schedule, checked against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from foundation.errors import UserInputError
from trainers.rl.advantages import normalize_advantages
from trainers.rl.kl import kl_penalty
from trainers.rl.losses import clipped_surrogate, clipped_value_loss


def test_clipped_surrogate_value_and_gradient_by_hand():
    # ratios r = [1, 1.5, 0.5, 1.5], advantages A = [1, 1, -1, -1], eps = 0.2
    #   i=0: min(1*1, 1*1)          = 1     (unclipped, d/dlogp = r*A = 1)
    #   i=1: min(1.5*1, 1.2*1)      = 1.2   (clipped -> no gradient)
    #   i=2: min(0.5*-1, 0.8*-1)    = -0.8  (clipped -> no gradient)
    #   i=3: min(1.5*-1, 1.2*-1)    = -1.5  (unclipped: a bad action made likelier is always penalised)
    # loss = -(1 + 1.2 - 0.8 - 1.5) / 4 = 0.025; grad = -r*A/4 where unclipped.
    logp_new = torch.tensor([0.0, math.log(1.5), math.log(0.5), math.log(1.5)], requires_grad=True)
    logp_old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, clipfrac = clipped_surrogate(logp_new, logp_old, adv, 0.2)
    assert loss.item() == pytest.approx(0.025, abs=1e-6)
    # one clip-fraction definition for every trainer: the share whose gradient the clip removes (i=1, i=2)
    assert clipfrac.item() == pytest.approx(0.5)
    loss.backward()
    assert logp_new.grad.tolist() == pytest.approx([-0.25, 0.0, 0.0, 0.375], abs=1e-6)


def test_surrogate_at_ratio_one_is_policy_gradient():
    # First PPO epoch: new == old, so the loss is -mean(A) and its gradient -A/n (REINFORCE with baseline).
    logp = torch.tensor([-3.0, -1.0, -2.0], requires_grad=True)
    adv = torch.tensor([0.5, -2.0, 1.0])
    loss, clipfrac = clipped_surrogate(logp, logp.detach().clone(), adv, 0.1)
    assert loss.item() == pytest.approx(-(-0.5) / 3)
    assert clipfrac.item() == 0.0
    loss.backward()
    assert logp.grad.tolist() == pytest.approx([-0.5 / 3, 2.0 / 3, -1.0 / 3])


def test_clipped_value_loss_by_hand():
    # v=[0.5, 0.9], v_old=[0.4, 0.4], R=[1, 0], eps=0.2
    #   i=0: (0.5-1)^2=0.25 ; clipped v=0.5 -> 0.25            -> 0.25
    #   i=1: (0.9-0)^2=0.81 ; clipped v=0.6 -> 0.36            -> 0.81 (unclipped is larger)
    v = torch.tensor([0.5, 0.9], requires_grad=True)
    loss = clipped_value_loss(v, torch.tensor([0.4, 0.4]), torch.tensor([1.0, 0.0]), clip_eps=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.81) / 2)
    loss.backward()
    # d/dv 0.5*mean((v-R)^2) = (v-R)/n
    assert v.grad.tolist() == pytest.approx([(0.5 - 1.0) / 2, 0.9 / 2])


def test_value_loss_clipping_binds():
    # v=0.9 moved 0.5 above v_old=0.4 toward R=1: unclipped 0.01, clipped (0.6-1)^2=0.16 is larger,
    # so the loss is 0.08 and the gradient vanishes (the value cannot move further than eps in one update).
    v = torch.tensor([0.9], requires_grad=True)
    loss = clipped_value_loss(v, torch.tensor([0.4]), torch.tensor([1.0]), clip_eps=0.2)
    assert loss.item() == pytest.approx(0.08)
    loss.backward()
    assert v.grad.item() == 0.0


def test_advantage_normalisation():
    adv = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = normalize_advantages(adv)
    std = math.sqrt(1.25)  # population std of 1..4
    assert out.tolist() == pytest.approx([(x - 2.5) / std for x in (1, 2, 3, 4)], abs=1e-6)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-7)
    # constant advantages: centred to 0, no division blow-up
    assert normalize_advantages(torch.full((3,), 0.7)).abs().max().item() < 1e-6


def test_kl_penalty_zero_at_reference_and_positive_elsewhere():
    lp = torch.tensor([-2.0, -1.0])
    assert kl_penalty(lp, lp).item() == pytest.approx(0.0)
    # d = ref - new = [-1, 1]: e^-1 + 1 - 1 = 0.3679 ; e^1 - 1 - 1 = 0.7183
    assert kl_penalty(lp, lp + torch.tensor([-1.0, 1.0])).item() == pytest.approx(
        ((math.exp(-1) + 1 - 1) + (math.exp(1) - 1 - 1)) / 2, abs=1e-6)


@pytest.mark.parametrize("log_ratio", [1.0, 25.0, 60.0])
def test_kl_gradient_survives_large_drift(log_ratio):
    # k3 = exp(d) - d - 1 with d = ref - new; d/d(new) = 1 - exp(d). A clamp on d used to zero this beyond 20 nats,
    # exactly when a PL ranking (log K! nats) or a reasoning text had drifted most.
    new = torch.tensor([log_ratio], requires_grad=True)
    kl = kl_penalty(new, torch.zeros(1))
    kl.backward()
    assert kl.item() == pytest.approx(math.exp(-log_ratio) + log_ratio - 1.0, rel=1e-6)
    assert new.grad.item() == pytest.approx(1.0 - math.exp(-log_ratio), rel=1e-6)
    # and the other way round (the policy made the sampled action far less likely): finite, pulling back up
    below = torch.tensor([-log_ratio], requires_grad=True)
    kl = kl_penalty(below, torch.zeros(1))
    kl.backward()
    assert math.isfinite(kl.item()) and kl.item() > 0
    assert below.grad.item() < 0 and math.isfinite(below.grad.item())
    assert below.grad.item() == pytest.approx(1.0 - math.exp(min(log_ratio, 20.0)), rel=1e-5)


def test_advantage_normalisation_refuses_a_single_sample():
    with pytest.raises(ValueError, match="1 sample"):
        normalize_advantages(torch.tensor([[0.3]]))
    # the trainer's config refuses the setting before any work
    from trainers.ppo_trainer import parse_config

    cfg = parse_config(["--batch_size", "1", "--rankings_per_user", "1"])
    with pytest.raises(UserInputError, match="--normalize_advantage"):
        cfg.validate()
    parse_config(["--batch_size", "1", "--rankings_per_user", "1", "--no-normalize_advantage"]).validate()


# ---- RL diagnostics (trainers/rl/diagnostics.py, trainers/rl/kl.approx_kl_k3) -------------------------------
def test_approx_kl_rollout_to_updated_policy_by_hand():
    from trainers.rl.kl import approx_kl_k3

    old = torch.tensor([-1.0, -2.0, -3.0])
    assert approx_kl_k3(old, old).item() == 0.0
    # ratios r = e^0.5, e^-0.5, 1: terms (r - 1) - log r
    new = old + torch.tensor([0.5, -0.5, 0.0])
    want = ((math.exp(0.5) - 1 - 0.5) + (math.exp(-0.5) - 1 + 0.5) + 0.0) / 3
    assert approx_kl_k3(old, new).item() == pytest.approx(want, rel=1e-6)
    # the estimate of KL(p || q) on samples of p converges to the true KL (two-outcome distributions)
    p, q = torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.5])
    draws = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    est = approx_kl_k3(p.log()[draws], q.log()[draws]).item()
    assert est == pytest.approx(float((p * (p / q).log()).sum()), abs=3e-3)


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
