"""Ranking with an ID-based sequential model (SASRec, GRU4Rec: models/sequential.py) under the candidate protocol.

The model reads each example's stored history (history_item_id, the window every other method is shown), right-
aligned and cut to the model's max_len; its user vector scores the example's K candidates (result-JSON samples,
ties against the target as everywhere) and, with full_ranking, every item with the pad and the history masked as
compare_model/rrec.py's --full_ranking does (trainers/evaluation/rrec.py: masked_scores, catalogue_ranks; a
target that is itself a history item is a miss unless rank_repeat_targets).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from trainers.data.sequences import left_padded
from trainers.evaluation.metrics import ranking_from_scores, target_rank
from trainers.evaluation.rrec import FullCatalogueRanker, catalogue_ranks, masked_scores


@torch.no_grad()
def rank_with_sequential(model, items: Sequence[tuple[dict, list[int]]], batch_size: int = 256,
                         full_ranking: bool = True, rank_repeat_targets: bool = False,
                         on_sample: Callable[[dict], Any] | None = None, progress: bool = False,
                         desc: str = "ranking") -> list[dict]:
    """Result-JSON samples for (example, candidates) items, in their order; with full_ranking each also gets
    "full_rank" (1-based among all items, pad and history masked; None for a target that is itself masked)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[dict] = []
    bar = tqdm(total=len(items), desc=desc, unit="example", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            histories = [ex["history_item_id"] for ex, _ in batch]
            seq = model.clip(torch.from_numpy(left_padded(histories, model.max_len)).long().to(device))
            h = model.user_vectors(seq)
            cands = torch.tensor([[int(c) for c in cs] for _, cs in batch], device=device)
            cand_scores = model.pair_scores(h, cands).float().cpu()
            full = None
            if full_ranking:
                targets = [int(ex["item_id"]) for ex, _ in batch]
                full = catalogue_ranks(masked_scores(model.logits(h), histories,
                                                     keep=targets if rank_repeat_targets else None), targets)
            for b, (ex, cs) in enumerate(batch):
                target, cs = int(ex["item_id"]), [int(c) for c in cs]
                s = [float(x) for x in cand_scores[b].tolist()]
                sample = {"interaction_id": int(ex["interaction_id"]), "user_id": ex["user_id"],
                          "target_item_id": target, "candidates": cs, "scores": s,
                          "ranking": ranking_from_scores(cs, s, target),
                          "target_rank": target_rank(s, cs.index(target))}
                if full is not None:
                    sample["full_rank"] = full[b]
                out.append(sample)
                if on_sample is not None:
                    on_sample(sample)
            bar.update(len(batch))
    finally:
        bar.close()
        if was_training:
            model.train()
    return out



class SequentialRanker(FullCatalogueRanker):
    """A trained SASRec/GRU4Rec model as trainers/evaluation/runner.py's ranker (compare_model/sasrec.py, after
    training): it ranks the examples' stored histories, and with full_ranking the whole catalogue too. `cfg`:
    the run's settings (model, eval_batch_size, full_ranking, rank_repeat_targets, no_progress, split, K,
    reference_json); `meta`: the result JSON's meta, with the training's record and the cold-target count."""

    def __init__(self, model, cfg, dataset, meta: dict) -> None:
        self.model, self.cfg, self.dataset, self.meta = model, cfg, dataset, meta
        self.name, self.full_ranking = cfg.model, cfg.full_ranking

    def load(self, mine, state):
        return self.model  # trained before the runner starts

    def rank(self, model, mine, on_sample, state) -> None:
        c = self.cfg
        rank_with_sequential(model, mine, batch_size=c.eval_batch_size, full_ranking=c.full_ranking,
                             rank_repeat_targets=c.rank_repeat_targets, on_sample=on_sample,
                             progress=not c.no_progress, desc=f"{c.model} {c.split}")

    def describe(self, job, samples) -> str:
        c, t = self.cfg, self.meta["training"]
        return (f"{c.split}: {len(samples)} samples, K={c.K}, candidates from {c.reference_json or 'seeded sampling'}; "
                f"{c.model} from {t['checkpoint']} (epoch {t['best_epoch']} of {t['epochs']})")

    def report(self, job, rows: dict[str, dict], samples) -> list[str]:
        lines = self.full_catalogue_table(job, rows, f"full catalogue ({self.dataset.n_items} items, pad and "
                                                     "history masked):")
        cold = self.meta.get("cold_targets")
        if cold:
            lines.append(f"{cold} of {len(samples)} targets never occur in the train split: their item vectors are "
                         "untrained")
        return lines
