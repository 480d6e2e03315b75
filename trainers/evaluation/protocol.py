"""The candidate protocol (DESIGN.md sections 3-4): which examples, which K candidates, and the sanity rows.

build_eval_items  -> (example, candidates) pairs: seeded sampling, or copied from a reference result JSON
sanity_rows       -> random and popularity rankings of the same candidates

Every evaluator (trainers/evaluation/judge.py, rrec.py, api.py) ranks exactly these items.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from trainers.data.candidates import sample_candidates
from trainers.evaluation.metrics import DEFAULT_KS, metrics_from_ranks, target_rank
from trainers.foundation.errors import UserInputError
from trainers.foundation.seeding import derived_seed, numpy_rng

Item = tuple[dict, list[int]]


def build_eval_items(dataset, split: str, num_samples: int | None, K: int, seed: int,
                     reference: dict | None = None) -> list[Item]:
    """(example, candidates) pairs to evaluate.

    Without a reference: the split is shuffled with numpy_rng(seed) (so a subset is
    representative, not the earliest users) and the first num_samples examples (None or <= 0 = all) get
    K candidates from sample_candidates. With a reference result JSON: exactly its interaction ids and
    candidate lists, in its order (num_samples, if > 0, keeps the first num_samples of them).
    """
    ds = dataset.split(split)
    if K < 2:
        raise UserInputError(f"--K {K}: must be >= 2 (the target plus at least one negative)")
    if reference is not None:
        return _items_from_reference(ds, split, num_samples, K, reference)
    if K > dataset.n_items:
        raise UserInputError(f"--K {K}: the item catalogue of this dataset has only {dataset.n_items} items; lower --K")
    order = numpy_rng(seed).permutation(len(ds))
    if num_samples is not None and num_samples > 0:
        order = order[:num_samples]
    rows = ds.select([int(i) for i in order]).to_list() if len(order) else []
    items: list[Item] = []
    for ex in rows:
        cands = sample_candidates(int(ex["item_id"]), ex["history_item_id"], dataset.n_items, K, seed,
                                  int(ex["interaction_id"]))
        items.append((ex, cands))
    return items


def _items_from_reference(ds, split: str, num_samples: int | None, K: int, reference: dict) -> list[Item]:
    samples = reference["samples"]
    if num_samples is not None and num_samples > 0:
        samples = samples[:num_samples]
    iid_to_row = {int(i): n for n, i in enumerate(ds["interaction_id"])}
    rows_idx = []
    for s in samples:
        iid = int(s["interaction_id"])
        if iid not in iid_to_row:
            raise UserInputError(f"--reference_json: interaction_id {iid} is not in split {split!r} of this dataset; "
                                 "use the dataset and --split the reference was made with")
        if len(s["candidates"]) != K:
            raise UserInputError(f"--reference_json: interaction_id {iid} has {len(s['candidates'])} candidates but "
                                 f"--K is {K}; pass --K {len(s['candidates'])}")
        rows_idx.append(iid_to_row[iid])
    rows = ds.select(rows_idx).to_list() if rows_idx else []
    items: list[Item] = []
    for s, ex in zip(samples, rows):
        cands = [int(c) for c in s["candidates"]]
        if int(s["target_item_id"]) != int(ex["item_id"]) or int(ex["item_id"]) not in cands:
            raise UserInputError(f"--reference_json: interaction_id {s['interaction_id']} has target "
                                 f"{s['target_item_id']} but the dataset says {ex['item_id']}; different dataset?")
        items.append((ex, cands))
    return items


def sanity_rows(samples: Sequence[dict], dataset, seed: int, ks: Iterable[int] = DEFAULT_KS) -> dict[str, dict]:
    """Metrics of a random order and of train-split popularity on the same candidates (ties against the target)."""
    pop = dataset.popularity
    rand_ranks, pop_ranks = [], []
    for s in samples:
        cands = [int(c) for c in s["candidates"]]
        t_idx = cands.index(int(s["target_item_id"]))
        rng = numpy_rng(derived_seed(seed, int(s["interaction_id"]), 4))
        rand_ranks.append(target_rank(rng.random(len(cands)), t_idx))
        pop_ranks.append(target_rank([pop[c] if c < len(pop) else 0.0 for c in cands], t_idx))
    return {"random": metrics_from_ranks(rand_ranks, ks), "popularity": metrics_from_ranks(pop_ranks, ks)}
