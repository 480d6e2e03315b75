"""The non-learned sanity rows (trainers/evaluation/protocol.py): popularity counted once per train interaction,
ties of the sanity rows broken by a seeded random order, and the TF-IDF content row; the evaluation items
(build_eval_items: seeded candidates, or a reference's) on a preprocessed synthetic dataset."""
from __future__ import annotations

import numpy as np
import pytest

from foundation.errors import UserInputError
from tests.test_evaluation import K, data_dir, dataset  # noqa: F401 (session fixtures)
from trainers.evaluation.metrics import (
    metrics_from_ranks,
    target_rank,
)
from trainers.evaluation.protocol import (
    SANITY_ROWS,
    build_eval_items,
    item_tfidf,
    sanity_ranks,
    sanity_results,
    sanity_rows,
)

EXAMPLE_KEYS = ("user_id", "item_id", "timestamp", "history_item_id", "history_timestamp", "history_rating",
                "interaction_id")


def _split(rows: list[tuple]):
    """rows: (user, target item, target time, [(history item, history time)], interaction id)."""
    from datasets import Dataset

    cols = {k: [] for k in EXAMPLE_KEYS}
    for user, item, ts, hist, iid in rows:
        for k, v in zip(EXAMPLE_KEYS, (user, item, ts, [h for h, _ in hist], [t for _, t in hist],
                                       [5.0] * len(hist), iid)):
            cols[k].append(v)
    return Dataset.from_dict(cols)


def _dataset(train: list[tuple], valid: list[tuple] = (), test: list[tuple] = (), texts: list[str] | None = None):
    from datasets import Dataset

    from trainers.data.dataset import ProcessedDataset

    texts = texts or [f"item{i}" for i in range(6)]
    info = Dataset.from_dict({"item_id": list(range(len(texts))), "title": [""] + texts[1:],
                              "description": [[] for _ in texts], "features": [[] for _ in texts]})
    empty = [("u", 1, 0, [], -1)][:0]
    return ProcessedDataset(path="mem", splits={"train": _split(list(train)), "valid": _split(list(valid) or empty),
                                                "test": _split(list(test) or empty)}, item_info=info)


def test_popularity_counts_each_train_interaction_once():
    # user a: 1@10, 2@20, 3@30, 4@40 (4 is a valid target); user b: 2@15, 1@25, 1@35 (a repeat at another time).
    # a's 2@20 is a train target AND in the history of a's next train example: it counts once, not twice.
    train = [("a", 2, 20, [(1, 10)], 0), ("a", 3, 30, [(1, 10), (2, 20)], 2),
             ("b", 1, 25, [(2, 15)], 1), ("b", 1, 35, [(2, 15), (1, 25)], 3)]
    valid = [("a", 4, 40, [(1, 10), (2, 20), (3, 30)], 4)]
    test = [("b", 5, 45, [(2, 15), (1, 25), (1, 35)], 5)]
    pop = _dataset(train, valid, test).popularity
    # by hand: item 1 = a@10, b@25, b@35; item 2 = a@20, b@15; item 3 = a@30; items 4, 5 only after training
    assert pop.tolist() == [0, 3, 2, 1, 0, 0]
    assert pop.sum() == 6  # distinct (user, item, time) among train targets and train histories
    # the same rows stored in two Arrow chunks, or selected out of a longer split, count the same
    from datasets import concatenate_datasets

    chunked = _dataset(train)
    chunked.splits["train"] = concatenate_datasets([_split(train[:2]), _split(train[2:])])
    selected = _dataset(train)
    selected.splits["train"] = _split(train + [("c", 4, 50, [(5, 40)], 9)]).select(range(4))
    assert chunked.popularity.tolist() == selected.popularity.tolist() == pop.tolist()


def test_popularity_ties_are_broken_by_a_seeded_random_order():
    # Every candidate has the same count: against the target, popularity would always rank it last (K).
    ds = _dataset([("a", 1, 10, [], 0)], texts=["x", "alpha", "beta", "gamma", "delta", "omega"])
    ds.popularity[:] = 7.0
    samples = [{"interaction_id": i, "target_item_id": 2, "candidates": [1, 2, 3, 4, 5]} for i in range(200)]
    ranks = sanity_ranks(samples, ds, seed=0)["popularity"]
    assert ranks == sanity_ranks(samples, ds, seed=0)["popularity"]  # seeded: reproducible
    assert ranks != sanity_ranks(samples, ds, seed=1)["popularity"]  # and the seed matters
    assert set(ranks) == {1, 2, 3, 4, 5}
    assert np.mean(ranks) == pytest.approx(3.0, abs=0.3)  # a uniformly random place, mean (K+1)/2
    # Strict order still wins over the tie-break, and model scores keep the against-the-target rule.
    ds.popularity[2] = 8.0
    assert set(sanity_ranks(samples, ds, seed=0)["popularity"]) == {1}
    assert target_rank([7, 7, 7], 1) == 3 and target_rank([7, 7, 7], 1, [0.1, 0.9, 0.5]) == 1
    assert target_rank([7, 8, 7], 0, [0.9, 0.1, 0.5]) == 2


def test_content_row_ranks_word_overlap_with_the_history_first():
    texts = ["", "Racing Turbo Kart", "Racing Kart Deluxe", "Puzzle Garden Farm", "Space Shooter Arena",
             "Kart Racing Pro"]
    ds = _dataset([("a", 2, 20, [(1, 10)], 0), ("b", 5, 20, [(3, 10)], 1), ("c", 3, 20, [], 2)], texts=texts)
    both = [2, 3, 4]  # 2 shares "Racing", "Kart" with history item 1; 3 and 4 share nothing
    samples = [{"interaction_id": 0, "target_item_id": 2, "candidates": both},
               {"interaction_id": 0, "target_item_id": 3, "candidates": both},
               {"interaction_id": 1, "target_item_id": 3, "candidates": [5, 3, 4]},  # history: item 3 itself
               {"interaction_id": 2, "target_item_id": 3, "candidates": [5, 3, 4]}]  # no history: all tied
    for seed in range(5):
        r = sanity_ranks(samples, ds, seed)["content-tfidf"]
        assert r[0] == 1 and r[1] in (2, 3) and r[2] == 1 and 1 <= r[3] <= 3
    assert {sanity_ranks(samples, ds, s)["content-tfidf"][3] for s in range(30)} == {1, 2, 3}  # random ties
    # Fitted on item texts only: the vocabulary is the items' words, whatever the examples or their labels.
    vectors = item_tfidf(ds)
    assert vectors.shape == (6, len({w.lower() for t in texts for w in t.split()}))
    np.testing.assert_allclose(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel()[1:], 1.0)


def test_content_row_reads_descriptions_and_features():
    from datasets import Dataset

    from trainers.data.dataset import ProcessedDataset

    info = Dataset.from_dict({"item_id": [0, 1, 2, 3], "title": ["", "Alpha", "Beta", "Gamma"],
                              "description": [[], ["a farming game"], ["relaxing farming"], []],
                              "features": [[], [], [], ["loud"]]})
    ds = ProcessedDataset(path="mem", splits={s: _split([("a", 2, 20, [(1, 10)], i)]) for i, s in
                                              enumerate(("train", "valid", "test"))}, item_info=info)
    r = sanity_ranks([{"interaction_id": 0, "target_item_id": 2, "candidates": [3, 2]}], ds, 0)["content-tfidf"]
    assert r == [1]


def test_sanity_results_store_per_sample_ranks():
    ds = _dataset([("a", 2, 20, [(1, 10)], 0), ("b", 3, 20, [(1, 10)], 1)])
    samples = [{"interaction_id": 1, "target_item_id": 3, "candidates": [3, 4, 5]},
               {"interaction_id": 0, "target_item_id": 2, "candidates": [4, 2, 5]}]
    res = sanity_results(samples, ds, seed=3, ks=(1, 2))
    assert set(res["sanity_rows"]) == set(SANITY_ROWS) == set(res["sanity_ranks"])
    assert res["sanity_rows"] == sanity_rows(samples, ds, 3, (1, 2))
    for name, by_id in res["sanity_ranks"].items():
        assert set(by_id) == {"0", "1"}  # JSON keys: interaction ids
        assert metrics_from_ranks([by_id["1"], by_id["0"]], (1, 2)) == res["sanity_rows"][name]


def test_eval_items_candidates_valid_and_deterministic(dataset):  # noqa: F811 (fixture)
    items = build_eval_items(dataset, "test", 30, K, seed=7)
    assert len(items) == 30 and len({ex["interaction_id"] for ex, _ in items}) == 30
    for ex, cands in items:
        assert len(cands) == K == len(set(cands))
        assert ex["item_id"] in cands
        assert 0 not in cands and all(1 <= c <= dataset.n_items for c in cands)
        assert not set(ex["history_item_id"]) & (set(cands) - {ex["item_id"]})
    again = build_eval_items(dataset, "test", 30, K, seed=7)
    assert [(e["interaction_id"], c) for e, c in again] == [(e["interaction_id"], c) for e, c in items]
    # a subset is a prefix of the full seeded order, with the same candidates
    full = build_eval_items(dataset, "test", None, K, seed=7)
    assert len(full) == len(dataset.split("test"))
    assert [(e["interaction_id"], c) for e, c in full[:30]] == [(e["interaction_id"], c) for e, c in items]
    # the order is shuffled (not the chronological first rows) and depends on the seed
    other = build_eval_items(dataset, "test", 30, K, seed=8)
    assert [e["interaction_id"] for e, _ in other] != [e["interaction_id"] for e, _ in items]
    assert [e["interaction_id"] for e, _ in items] != list(dataset.split("test")["interaction_id"][:30])


def test_eval_items_from_reference(dataset):  # noqa: F811 (fixture)
    items = build_eval_items(dataset, "test", 10, K, seed=1)
    ref = {"samples": [{"interaction_id": e["interaction_id"], "target_item_id": e["item_id"], "candidates": c}
                       for e, c in reversed(items)]}
    got = build_eval_items(dataset, "test", None, K, seed=999, reference=ref)  # seed is irrelevant with a reference
    assert [(e["interaction_id"], c) for e, c in got] == [(e["interaction_id"], c) for e, c in reversed(items)]
    assert len(build_eval_items(dataset, "test", 3, K, seed=0, reference=ref)) == 3
    with pytest.raises(UserInputError, match="--K"):
        build_eval_items(dataset, "test", None, K + 1, seed=1, reference=ref)
    with pytest.raises(UserInputError, match="not in split"):
        build_eval_items(dataset, "valid", None, K, seed=1, reference=ref)
    with pytest.raises(UserInputError, match="--K"):
        build_eval_items(dataset, "test", 5, dataset.n_items + 5, seed=1)
