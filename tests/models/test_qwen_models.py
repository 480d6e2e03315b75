"""models/qwen_models.py (BinaryJudge). Score precision: the judge's scores and the critic's values are computed in
fp32 whatever the weights' dtype or an enclosing autocast (models/abstract_models.fp32_linear): a bf16 product rounds
scores to ~0.4% of their size, so close candidates tie, and ties count against the target
(trainers/evaluation/metrics.target_rank). Reasoning mode's PPO ratio: token log-probs are those of the distribution
the text was sampled from (temperature, top-k, top-p), over exactly the sampled token ids. Shared-prefix scoring and
--scoring auto: tests/models/test_shared_prefix.py."""
from __future__ import annotations

import random

import pytest
import torch

from models.qwen_models import BinaryJudge
from prompters.binary_prompter import UserPrompt
from tests.fixtures.assets import build_tiny_qwen
from tests.fixtures.ppo_train import ppo_assets  # noqa: F401 (session fixture)
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


# ------------------------------------------------------------------------------ reasoning mode's PPO ratio
@pytest.fixture(scope="module")
def judge_and_batch(ppo_assets):  # noqa: F811 (fixture)
    from models.abstract_models import disable_dropout
    from models.qwen_models import BinaryJudge
    from prompters.binary_prompter import BinaryPrompter
    from trainers.data.dataset import load_processed_dataset
    from trainers.evaluation.protocol import build_eval_items

    data, model = ppo_assets
    judge = BinaryJudge.load(str(model), device="cpu", dtype="fp32", attn_implementation="sdpa")
    disable_dropout(judge)
    ds = load_processed_dataset(data)
    prompter = BinaryPrompter(judge.tokenizer, ds.item_rows, max_len_per_item=4, user_window_size=3, reasoning=True)
    batch = [prompter.build(ex, c) for ex, c in build_eval_items(ds, "train", 3, 4, 0)]
    return judge, batch


@pytest.mark.parametrize("scoring", ["naive", "shared"])
def test_first_epoch_ratio_is_one_with_temperature_and_top_k(judge_and_batch, scoring):
    from models.qwen_models import SamplingSettings

    judge, batch = judge_and_batch
    sampling = SamplingSettings(temperature=0.7, top_k=10, top_p=0.9)
    torch.manual_seed(0)
    prompts = judge.generate_reasoning(batch, 8, do_sample=True, sampling=sampling, scoring=scoring)
    assert any(e > s for p in prompts for s, e in p.reasoning_spans)
    judge.eval()
    with torch.no_grad():
        old = judge(prompts, scoring=scoring, with_token_logprobs=True, sampling=sampling).token_logprobs
    judge.train()
    new = judge(prompts, scoring=scoring, with_token_logprobs=True, sampling=sampling).token_logprobs
    judge.eval()
    torch.testing.assert_close(torch.exp(new - old), torch.ones_like(old), atol=1e-5, rtol=0)
    assert new.requires_grad
    # Every sampled token is inside the top-k/top-p set it was drawn from: finite log-probs, no exclusion penalty.
    assert (old > -1e3).all()
    # The full-vocabulary, temperature-1 log-prob of the same tokens is another number (the biased old ratio).
    with torch.no_grad():
        full = judge(prompts, scoring=scoring, with_token_logprobs=True,
                     sampling=SamplingSettings(1.0, 0, 1.0)).token_logprobs
    assert (full - old).abs().max() > 1e-2


def test_reasoning_span_holds_exactly_the_sampled_ids(judge_and_batch):
    judge, batch = judge_and_batch
    tok = judge.tokenizer
    ids = tok("The user likes strategy games, so this fits.\nAnswer: Yes and more", add_special_tokens=False)["input_ids"]
    kept = judge.reasoning_token_ids(ids + [tok.eos_token_id])
    assert kept == ids[:len(kept)] and 0 < len(kept) < len(ids)  # a prefix of what was sampled, never re-tokenised
    assert "Answer:" not in tok.decode(kept) and "Answer:" in tok.decode(ids[:len(kept) + 3])
    p = judge.attach_reasoning(batch[0], [ids] * batch[0].K)
    for k in range(p.K):
        s, e = p.reasoning_spans[k]
        assert p.suffix_ids[k][s:e] == kept
    # an end token ends the reasoning
    assert judge.reasoning_token_ids(ids[:3] + [tok.eos_token_id] + ids[3:]) == ids[:3]


def test_reasoning_logprobs_follow_the_models_logit_softcapping(ppo_assets):  # noqa: F811 (fixture)
    """A judge over a Gemma-2 model (final logit soft-capping) takes the PPO log-probs of its reasoning tokens from
    the capped logits, as the causal LM's own forward and HF generate do (AbstractRecModel.output_logits)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from models.abstract_models import load_tokenizer
    from models.qwen_models import BinaryJudge

    _, model = ppo_assets
    tok = load_tokenizer(str(model))
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("gemma2", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                               final_logit_softcapping=0.5, pad_token_id=tok.pad_token_id)
    lm = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    judge = BinaryJudge(lm, tok, yes_id=5, no_id=6)
    ids = torch.tensor([tok("I think so. Answer:", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        h = judge.backbone()(input_ids=ids).last_hidden_state[0, :-1]
        got = judge.token_logprob(h, ids[0, 1:])
        want = torch.log_softmax(lm(input_ids=ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
