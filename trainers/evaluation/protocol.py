"""The candidate protocol (docs/evaluation.md): which examples, which K candidates, and the sanity rows.

build_eval_items  -> (example, candidates) pairs: seeded sampling, or copied from a reference result JSON
sanity_ranks      -> per-sample target ranks of three non-learned rankings of the same candidates:
                     random, popularity, content-tfidf (SANITY_ROWS)
sanity_rows       -> their metrics; sanity_results -> metrics plus per-sample ranks, for a result JSON

Every evaluator (trainers/evaluation/judge.py, rrec.py, api.py) ranks exactly these items.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from prompters.binary_prompter import item_raw_text
from trainers.data.candidates import sample_candidates
from trainers.evaluation.metrics import DEFAULT_KS, metrics_from_ranks, target_rank
from foundation.errors import UserInputError
from foundation.seeding import derived_seed, numpy_rng

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


SANITY_ROWS = ("random", "popularity", "content-tfidf")


def sanity_ranks(samples: Sequence[dict], dataset, seed: int) -> dict[str, list[int]]:
    """Target ranks (aligned with `samples`) of three rankings that learn nothing from the labels:

    random         a seeded random order;
    popularity     train interactions per item (ProcessedDataset.popularity: each (user, item, time) once);
    content-tfidf  the mean TF-IDF cosine between the candidate's text and the texts of the example's stored
                   history items (item_tfidf: fitted on item texts only).

    Ties (equal counts, no word overlap) are broken by a seeded random order, drawn per sample from (seed,
    interaction_id): the rows then report what their rule achieves on average, where the against-the-target
    rule of model scores (metrics.target_rank) would report its worst case and rank a tied target below random.
    """
    pop = dataset.popularity
    tfidf = item_tfidf(dataset) if samples else None
    histories = dataset.histories_of([int(s["interaction_id"]) for s in samples])
    out: dict[str, list[int]] = {name: [] for name in SANITY_ROWS}
    for s, history in zip(samples, histories):
        cands = [int(c) for c in s["candidates"]]
        t_idx = cands.index(int(s["target_item_id"]))
        iid = int(s["interaction_id"])
        rng = numpy_rng(derived_seed(seed, iid, 4))
        out["random"].append(target_rank(rng.random(len(cands)), t_idx))
        ties = numpy_rng(derived_seed(seed, iid, 5)).random(len(cands))
        counts = [pop[c] if c < len(pop) else 0.0 for c in cands]
        out["popularity"].append(target_rank(counts, t_idx, ties))
        out["content-tfidf"].append(target_rank(content_scores(tfidf, cands, history), t_idx, ties))
    return out


def sanity_rows(samples: Sequence[dict], dataset, seed: int, ks: Iterable[int] = DEFAULT_KS) -> dict[str, dict]:
    """Metrics of the sanity rankings (sanity_ranks) on the same candidates."""
    return sanity_results(samples, dataset, seed, ks)["sanity_rows"]


def sanity_results(samples: Sequence[dict], dataset, seed: int, ks: Iterable[int] = DEFAULT_KS) -> dict[str, dict]:
    """What a result JSON stores besides the model's samples: {"sanity_rows": name -> metrics, "sanity_ranks":
    name -> {interaction_id: target rank}} (per-sample ranks, so a comparison can pair them with a model's)."""
    ranks = sanity_ranks(samples, dataset, seed)
    ids = [str(int(s["interaction_id"])) for s in samples]
    return {"sanity_rows": {name: metrics_from_ranks(r, ks) for name, r in ranks.items()},
            "sanity_ranks": {name: dict(zip(ids, r)) for name, r in ranks.items()}}


def item_text_for_content(row: dict) -> str:
    """The text the content row compares: title, then description and features (what the prompts show of an item)."""
    return " ".join(p for p in (str(row.get("title") or ""), item_raw_text(row)) if p).strip()


def item_tfidf(dataset):
    """L2-normalised TF-IDF vectors (scipy CSR, row i = item id i) of every item's text, fitted on the item table
    alone: no example, split or label enters, so the row cannot leak the target. scikit-learn's defaults otherwise
    (lower-cased words of 2+ letters, smooth idf). Empty texts give zero rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [item_text_for_content(r) for r in dataset.item_rows]
    try:
        return TfidfVectorizer(norm="l2").fit_transform(texts).tocsr()
    except ValueError:  # every text empty: no vocabulary, every score 0
        from scipy.sparse import csr_matrix

        return csr_matrix((len(texts), 1))


def content_scores(vectors, candidates: Sequence[int], history: Sequence[int]) -> np.ndarray:
    """Mean cosine between each candidate's vector and the history items' vectors (0 without a history). The mean
    over items, not the cosine to one concatenated history text, so a long description does not outweigh the
    other history items."""
    n = vectors.shape[0]
    cands = [c if 0 <= c < n else 0 for c in candidates]
    hist = [h for h in history if 0 < h < n]
    if not hist:
        return np.zeros(len(cands))
    return np.asarray((vectors[cands] @ vectors[hist].T).mean(axis=1)).ravel()

