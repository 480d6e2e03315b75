"""The judge's scores and the critic's values are computed in fp32 whatever the weights' dtype or an enclosing
autocast (models/abstract_models.fp32_linear): a bf16 product rounds scores to ~0.4% of their size, so close
candidates tie, and ties count against the target (trainers/evaluation/metrics.target_rank)."""
from __future__ import annotations

import random

import pytest
import torch

from models.qwen_models import BinaryJudge
from prompters.binary_prompter import UserPrompt
from tests.fixtures.assets import build_tiny_qwen
from trainers.evaluation.metrics import ranking_from_scores

N_USERS, K = 64, 20


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    """The same tiny judge with fp32 weights and with bf16 weights (bf16 compute in the backbone)."""
    d = build_tiny_qwen(tmp_path_factory.mktemp("tiny_precision"))
    out = {}
    for dtype in ("fp32", "bf16"):
        torch.manual_seed(0)  # the same value head in both
        out[dtype] = BinaryJudge.load(str(d), device="cpu", dtype=dtype, attn_implementation="sdpa").eval()
    return out


def _users(vocab: int, reasoning: bool) -> list[UserPrompt]:
    """N_USERS users whose K candidates differ in one token only (as item titles do): their scores
    are close, which is where bf16 rounding ties them."""
    rng = random.Random(1)
    users = []
    for _ in range(N_USERS):
        prefix = [rng.randrange(3, vocab) for _ in range(rng.randint(10, 30))]
        stem = [rng.randrange(3, vocab) for _ in range(4)]
        # distinct middle tokens: two identical candidates tie in any precision (that is not rounding)
        suffixes = [stem + [t] + stem[:1] for t in rng.sample(range(3, vocab), K)]
        spans = [(4, 5)] * K if reasoning else None  # the differing token stands for a reasoning text
        users.append(UserPrompt(prefix_ids=prefix, suffix_ids=suffixes, candidates=list(range(K)),
                                reasoning_spans=spans))
    return users


def _target_ties(scores: torch.Tensor) -> int:
    """Users whose target (candidate 0) has exactly the score of another candidate."""
    return int(((scores[:, 1:] == scores[:, :1]).any(1)).sum())


@pytest.mark.parametrize("scoring,reasoning", [("naive", False), ("shared", False), ("shared", True)])
def test_bf16_weights_give_no_more_target_ties_than_fp32(judges, scoring, reasoning):
    users = _users(judges["fp32"].lm.config.vocab_size, reasoning)
    ties = {}
    for dtype, judge in judges.items():
        with torch.no_grad():
            out = judge(users, scoring=scoring, with_values=True, with_token_logprobs=reasoning)
        assert out.scores.dtype == torch.float32 and out.values.dtype == torch.float32
        ties[dtype] = _target_ties(out.scores)
    print(f"\n{scoring}{' reasoning' if reasoning else ''}: target ties over {N_USERS} users x K={K}: "
          f"bf16 weights {ties['bf16']}, fp32 weights {ties['fp32']}")
    assert ties["bf16"] <= ties["fp32"]


def _close_scores_case(judge: BinaryJudge, dtype: torch.dtype) -> torch.Tensor:
    """Hidden states whose fp32 scores are distinct but closer together than bf16's spacing near 10 (0.0625)."""
    w = judge.output_head().weight.detach().float()
    diff = w[judge.yes_id] - w[judge.no_id]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(K, diff.numel(), generator=g) * 0.01
    h = (10.0 + 0.003 * torch.arange(K, dtype=torch.float32))[:, None] * diff / diff.dot(diff) + noise
    return h.to(dtype)


def _reference_scores(judge: BinaryJudge, h: torch.Tensor) -> torch.Tensor:
    w = judge.output_head().weight.detach().double()
    return (h.double() @ (w[judge.yes_id] - w[judge.no_id])).float()


def test_bf16_weights_rank_like_fp32_when_fp32_has_no_ties(judges):
    judge = judges["bf16"]
    h = _close_scores_case(judge, torch.bfloat16)
    ref = _reference_scores(judge, h)
    assert len(set(ref.tolist())) == K, "the case must have no ties in fp32"
    with torch.no_grad():
        got = judge.yes_minus_no(h)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)
    cands = list(range(K))
    for target in (0, K // 2, K - 1):
        assert ranking_from_scores(cands, got.tolist(), target) == ranking_from_scores(cands, ref.tolist(), target)


def test_scores_and_values_stay_fp32_under_bf16_autocast(judges):
    """Mixed precision in training (fp32 master weights, bf16 autocast): the score product and the value head run
    outside the autocast."""
    judge = judges["fp32"]
    h = _close_scores_case(judge, torch.float32)
    ref = _reference_scores(judge, h)
    vh = judge.value_head.net
    ref_v = (torch.tanh(h.double() @ vh[0].weight.double().T + vh[0].bias.double()) @ vh[2].weight.double().T
             + vh[2].bias.double()).squeeze(-1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, v = judge.yes_minus_no(h), judge.value_head(h)
    assert got.dtype == v.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)
    assert len(set(got.tolist())) == K
    torch.testing.assert_close(v.double(), ref_v, rtol=1e-5, atol=1e-6)


def test_scores_keep_their_gradient(judges):
    """The fp32 product stays in the graph: PPO's gradient reaches the hidden states and the head rows."""
    judge = judges["fp32"]
    h = _close_scores_case(judge, torch.float32).requires_grad_(True)
    judge.yes_minus_no(h).sum().backward()
    w = judge.output_head().weight.detach()
    torch.testing.assert_close(h.grad, (w[judge.yes_id] - w[judge.no_id]).expand_as(h))
