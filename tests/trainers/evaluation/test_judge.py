"""trainers/evaluation/judge.py on the tiny model and synthetic data: greedy and rollout ranking, reasoning
outputs, evaluate_split (one process and a DDP shard) with the sanity rows."""
from __future__ import annotations

import numpy as np
import pytest

from foundation.errors import UserInputError, cli_message
from tests.test_evaluation import K, data_dir, dataset, judge, tiny_model  # noqa: F401 (session fixtures)
from trainers.evaluation.judge import JudgeRankSettings as S
from trainers.evaluation.judge import evaluate_split, rank_examples
from trainers.evaluation.metrics import metrics_from_ranks, rank_from_ranking, target_rank
from trainers.evaluation.protocol import SANITY_ROWS, build_eval_items, sanity_rows


def _prompter(judge, dataset, reasoning=False):  # noqa: F811 (the fixtures, passed on)
    from prompters.binary_prompter import BinaryPrompter

    return BinaryPrompter(judge.tokenizer, dataset.item_rows, "other", max_len_per_item=16, user_window_size=5,
                          reasoning=reasoning)


def test_rank_examples_greedy_and_rollout(judge, dataset):  # noqa: F811 (fixtures)
    items = build_eval_items(dataset, "test", 4, K, seed=3)
    prompter = _prompter(judge, dataset)
    seen = []
    greedy = rank_examples(judge, prompter, items, S(mode="greedy", batch_size=4, progress=False),
                           on_sample=seen.append)
    assert seen == greedy and len(greedy) == 4
    for s, (ex, cands) in zip(greedy, items):
        assert s["interaction_id"] == ex["interaction_id"] and s["candidates"] == cands and s["outputs"] == {}
        assert sorted(s["ranking"]) == sorted(cands)
        by_item = dict(zip(s["candidates"], s["scores"]))
        assert all(by_item[a] >= by_item[b] for a, b in zip(s["ranking"], s["ranking"][1:]))
        assert s["target_rank"] == target_rank(s["scores"], cands.index(ex["item_id"]))
        assert s["target_rank"] == rank_from_ranking(s["ranking"], ex["item_id"])
    # batch size does not change scores (beyond float noise)
    one = rank_examples(judge, prompter, items[:2], S(mode="greedy", batch_size=1, progress=False))
    np.testing.assert_allclose([s["scores"] for s in one], [s["scores"] for s in greedy[:2]], atol=1e-4)

    # rollout: seeded per interaction id, so it repeats and does not depend on batching or on the other items
    r1 = rank_examples(judge, prompter, items, S(mode="rollout", temperature=0.01, seed=5, batch_size=4,
                                                 progress=False))
    r2 = rank_examples(judge, prompter, items[2:], S(mode="rollout", temperature=0.01, seed=5, batch_size=1,
                                                     progress=False))
    assert [s["ranking"] for s in r1[2:]] == [s["ranking"] for s in r2]
    for s in r1:
        assert s["target_rank"] == rank_from_ranking(s["ranking"], s["target_item_id"])
    # at τ = 1000 the PL sample is (nearly) uniform: rankings must differ from greedy somewhere
    hot = rank_examples(judge, prompter, items, S(mode="rollout", temperature=1000.0, seed=5, progress=False))
    assert any(h["ranking"] != g["ranking"] for h, g in zip(hot, greedy))
    with pytest.raises(UserInputError, match="^mode 'beam': must be one of greedy|rollout") as e:
        rank_examples(judge, prompter, items, S(mode="beam", progress=False))
    assert cli_message(e.value).startswith("--mode 'beam'")  # the script names the flag


def test_rank_examples_reasoning_outputs(judge, dataset, capsys):  # noqa: F811 (fixtures)
    items = build_eval_items(dataset, "test", 2, 3, seed=3)
    prompter = _prompter(judge, dataset, reasoning=True)
    all_ = rank_examples(judge, prompter, items, S(max_new_tokens=3, gen_mode="all", progress=True, print_every_text=1))
    for s in all_:
        assert [r["item_id"] for r in s["outputs"]["reasoning"]] == s["candidates"]
        assert all(0 <= r["n_tokens"] <= 3 and isinstance(r["text"], str) for r in s["outputs"]["reasoning"])
    top = rank_examples(judge, prompter, items, S(max_new_tokens=3, gen_mode="top1", progress=False))
    for s in top:
        assert [r["item_id"] for r in s["outputs"]["reasoning"]] == [s["ranking"][0]]
    # greedy decoding in greedy mode: the same texts and scores again
    np.testing.assert_allclose([s["scores"] for s in top], [s["scores"] for s in all_], atol=1e-5)
    assert "reasoning for" in capsys.readouterr().out  # print_every_text=1 shows every sample
    with pytest.raises(ValueError, match="reasoning"):
        rank_examples(judge, _prompter(judge, dataset), items, S(max_new_tokens=3, progress=False))


def test_sanity_rows_and_evaluate_split(judge, dataset):  # noqa: F811 (fixtures)
    prompter = _prompter(judge, dataset)
    samples, metrics = evaluate_split(judge, prompter, dataset, "valid", 5, K, 3, seed=2,
                                      settings=S(progress=False, batch_size=5))
    assert metrics["n"] == 5 and "NDCG@3" in metrics and "NDCG@10" in metrics
    assert metrics == metrics_from_ranks([s["target_rank"] for s in samples], (1, 3, 5, 10))
    rows = sanity_rows(samples, dataset, seed=2)
    assert rows == sanity_rows(samples, dataset, seed=2)
    assert set(rows) == set(SANITY_ROWS) and all(m["n"] == 5 for m in rows.values())
    # DDP validation: rank 1 of 2 takes every second item of the same seeded list
    shard, m = evaluate_split(judge, prompter, dataset, "valid", 4, K, 3, seed=2, settings=S(progress=False),
                              rank=1, world_size=2)
    assert [s["interaction_id"] for s in shard] == [s["interaction_id"] for s in samples[1:4:2]] and m["n"] == 2
