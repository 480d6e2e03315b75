"""trainers/data/sft.py: sampling the SFT prompts (match_ratio within a binomial 4-sigma bound, negatives, the
judge's chat text), filtering the API answers (drop counts, formats), the prompt loss mask and the collator, and the
accuracy report."""
from __future__ import annotations

import math

import pytest

from foundation.errors import UserInputError
from tests.test_sft_pipeline import dataset_dir, tiny  # noqa: F401 (fixtures)
from trainers.data.sft import (
    IGNORE_INDEX,
    SFTCollator,
    accuracy_report,
    encode_sft_example,
    filter_sft_rows,
)


@pytest.fixture(scope="module")
def prompter(tiny, dataset_dir):  # noqa: F811 (fixtures)
    from models.abstract_models import load_tokenizer
    from prompters.binary_prompter import BinaryPrompter
    from trainers.data.dataset import load_processed_dataset

    ds = load_processed_dataset(dataset_dir)
    return ds, BinaryPrompter(load_tokenizer(tiny), ds.item_rows, max_len_per_item=16, user_window_size=4)


def test_match_ratio_and_negatives(prompter):
    from trainers.data.sft import sample_sft_prompts

    ds, pr = prompter
    n, p = 600, 0.3
    rows = sample_sft_prompts(ds, pr, "train", n, p, seed=7, K=10)
    yes = sum(r["label"] == "Yes" for r in rows)
    assert abs(yes - n * p) <= 4 * math.sqrt(n * p * (1 - p)), yes  # binomial 4-sigma bound
    assert [r["id"] for r in rows] == list(range(n))
    train = {int(e["interaction_id"]): e for e in ds.split("train").to_list()}
    for r in rows:
        ex = train[r["interaction_id"]]
        assert r["target_item_id"] == ex["item_id"] and r["user_id"] == ex["user_id"]
        if r["label"] == "Yes":
            assert r["item_id"] == ex["item_id"]
        else:
            assert r["item_id"] != ex["item_id"] and r["item_id"] not in ex["history_item_id"] and r["item_id"] > 0
        assert r["messages"] == [{"role": "user", "content": r["prompt"]}]
        assert r["prompt"] == pr.user_message(ex, r["item_id"])
    # seeded: same call, same rows; extreme ratios are exact
    assert sample_sft_prompts(ds, pr, "train", 20, p, seed=7, K=10) == rows[:20]
    assert {r["label"] for r in sample_sft_prompts(ds, pr, "train", 30, 1.0, seed=1)} == {"Yes"}
    assert {r["label"] for r in sample_sft_prompts(ds, pr, "train", 30, 0.0, seed=1)} == {"No"}
    with pytest.raises(UserInputError):
        sample_sft_prompts(ds, pr, "train", 5, 1.5)


def test_prompt_text_is_judge_chat_text(prompter):
    """The stored chat text is the judge's prompt: chat template of the user message (+ answer prefix)."""
    from prompters.prompts import ANSWER_PREFIX
    from trainers.data.sft import sample_sft_prompts

    ds, pr = prompter
    r = sample_sft_prompts(ds, pr, "train", 3, 0.5, seed=3)[0]
    chat = pr.tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
    assert r["text"] == chat + ANSWER_PREFIX


def test_filter_counts_and_formats():
    rows = [
        {"id": 0, "prompt": "p0", "label": "Yes", "response": "Because X.\nAnswer: Yes", "reasoning_content": "hmm"},
        {"id": 1, "prompt": "p1", "label": "No", "response": "Answer: Yes"},  # wrong
        {"id": 2, "prompt": "p2", "label": "No", "response": "<think>yes</think>No"},
        {"id": 3, "prompt": "p3", "label": "Yes", "response": "I cannot tell."},  # unparseable
        {"id": 4, "prompt": "p4", "label": "Yes", "response": None, "error": "APIStatusError 400"},  # api error
        {"id": 5, "prompt": "p5", "label": "No", "response": "   "},  # empty
        {"id": 6, "prompt": "p6", "label": "no", "response": "no"},
    ]
    rows = [{"id": 6, "prompt": "p6", "label": "no", "response": None, "error": "timeout"}] + rows[3:] + rows[:3]
    # concurrent writers append out of order, a rerun appends a newer answer for the same id: the last wins
    recs, c = filter_sft_rows(rows, "alpaca")
    assert dict(c) == {"kept": 3, "wrong": 1, "unparseable": 1, "api_error": 1, "empty": 1}
    assert [r["instruction"] for r in recs] == ["p0", "p2", "p6"]
    assert recs[1]["output"] == "No" and recs[1]["input"] == ""
    recs, _ = filter_sft_rows(rows, "alpaca", keep_reasoning=True, canonical=True, system="sys")
    assert recs[0]["output"] == "<think>\nhmm\n</think>\n\nBecause X.\nAnswer: Yes"
    assert recs[1]["output"] == "<think>\nyes\n</think>\n\nAnswer: No" and recs[2]["output"] == "Answer: No"
    assert recs[0]["system"] == "sys"
    recs, _ = filter_sft_rows(rows, "sharegpt")
    assert recs[0] == {"conversations": [{"from": "human", "value": "p0"},
                                         {"from": "gpt", "value": "Because X.\nAnswer: Yes"}], "system": ""}
    with pytest.raises(UserInputError):
        filter_sft_rows(rows, "openai")
    with pytest.raises(UserInputError):
        filter_sft_rows([{"id": 9, "label": "maybe", "response": "Yes"}])


def test_loss_mask_exactly_on_prompt(prompter):
    from prompters.prompts import ANSWER_PREFIX
    from trainers.data.sft import sample_sft_prompts

    ds, pr = prompter
    tok = pr.tokenizer
    r = sample_sft_prompts(ds, pr, "train", 2, 0.5, seed=5)[0]
    for rec in ({"instruction": r["prompt"], "input": "", "output": "Likes it.\nAnswer: Yes"},
                {"conversations": [{"from": "human", "value": r["prompt"]}, {"from": "gpt", "value": "Likes it.\nAnswer: Yes"}]}):
        ex = encode_sft_example(tok, rec, max_length=4096)
        n = ex["prompt_len"]
        prompt_ids = tok(tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"]
        assert ex["input_ids"][:n] == prompt_ids
        # what the judge sees before its answer prefix, token for token in text
        assert tok.decode(ex["input_ids"][:n]) + ANSWER_PREFIX == r["text"]
        assert ex["labels"][:n] == [IGNORE_INDEX] * n
        assert ex["labels"][n:] == ex["input_ids"][n:] and all(l != IGNORE_INDEX for l in ex["labels"][n:])
        assert ex["input_ids"][-1] == tok.eos_token_id
        assert tok.decode(ex["input_ids"][n:-1]) == "Likes it.\nAnswer: Yes"
    # truncation keeps the whole response and cuts the prompt from the left
    short = encode_sft_example(tok, rec, max_length=20)
    assert len(short["input_ids"]) == 20 and short["labels"][-1] == tok.eos_token_id
    # collator: right padding, labels -100 and mask 0 on padding
    a, b = encode_sft_example(tok, rec, 4096), short
    batch = SFTCollator(tok.pad_token_id)([a, b])
    L = len(a["input_ids"])
    assert batch["input_ids"].shape == (2, L) and batch["attention_mask"][1].sum().item() == 20
    assert (batch["labels"][1, 20:] == IGNORE_INDEX).all() and (batch["input_ids"][1, 20:] == tok.pad_token_id).all()


def test_accuracy_report_counts():
    rows = [{"label": "Yes", "response": "Answer: Yes"}, {"label": "No", "response": "Answer: Yes"},
            {"label": "No", "response": "no"}, {"label": "Yes", "response": "??"}]
    r = accuracy_report(rows)
    assert (r["n"], r["parsed"], r["unparseable"]) == (4, 3, 1)
    assert r["accuracy"] == 0.5 and r["precision_yes"] == 0.5 and r["recall_yes"] == 0.5
