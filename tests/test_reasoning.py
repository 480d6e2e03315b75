"""Reasoning mode's PPO ratio: token log-probs are those of the distribution the text was sampled from
(temperature, top-k, top-p), over exactly the sampled token ids; evaluation samples like training by default."""
from __future__ import annotations

import pytest
import torch

from tests.fixtures.ppo_train import ppo_assets  # noqa: F401 (session fixture)


@pytest.fixture(scope="module")
def judge_and_batch(ppo_assets):
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


def test_evaluation_samples_like_training_by_default():
    from trainers.evaluation.options import JudgeEvalOptions
    from trainers.ppo_trainer import PPOConfig

    cfg = PPOConfig()
    for key in ("gen_temperature", "gen_top_k", "gen_top_p", "max_new_tokens", "max_len_per_item",
                "user_window_size", "dataset_type"):
        assert JudgeEvalOptions.TRAINED_SETTINGS[key] == getattr(cfg, key), key


def test_reasoning_logprobs_follow_the_models_logit_softcapping(ppo_assets):
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


def test_train_py_reasoning_run_decodes_with_the_shared_prefix_kv(ppo_assets, tmp_path):
    """A reasoning-mode training run with shared scoring (auto: prefix_split) generates through SharedPrefixKV in
    the trainer's own loop: two steps, every (user, candidate) reasoning length logged, model FLOPs logged."""
    import json

    from tests.fixtures.ppo_train import run_train, train_cmd

    data, model = ppo_assets
    out = tmp_path / "run"
    r = run_train(train_cmd(data, model, out, "--K", "4", "--K_eval", "3", "--batch_size", "2", "--max_steps", "2",
                            "--max_len_per_item", "4", "--user_window_size", "3", "--max_new_tokens", "6",
                            "--scoring", "shared", "--print_every", "0", "--num_valid_samples", "2",
                            "--eval_every", "100", "--save_every", "100"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "attention: prefix_split" in r.stderr
    logged = [json.loads(x) for x in (out / "token_lengths.jsonl").read_text().splitlines() if x.strip()]
    assert [rec["step"] for rec in logged] == [1, 2]
    lengths = [n for rec in logged for rank in rec["lengths"] for user in rank for n in user]
    assert len(lengths) == 2 * 2 * 4 and max(lengths) > 0 and all(0 <= n <= 6 for n in lengths)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [x["step"] for x in recs if "tflops_per_s" in x] == [1, 2]
    # the KL between rollout and updated policy, whole (what the ratio uses) and split into ranking and reasoning
    for x in recs:
        assert min(x["approx_kl"], x["approx_kl_ranking"], x["approx_kl_reasoning"]) >= 0
