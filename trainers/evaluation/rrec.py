"""Evaluating an RRec (R2ec) model on our candidates: the item table, greedy reasoning, ranking, metrics.

Used by compare_model/rrec.py and by the RRec trainer's periodic validation (one code path).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from trainers.evaluation.metrics import eval_ks, metrics_from_ranks, ranking_from_scores, target_rank
from trainers.foundation.errors import UserInputError

FULL_RANKING_KS = (5, 10, 20)  # the paper's full-catalogue cut-offs


@torch.no_grad()
def compute_item_table(model, prompter, n_items: int, batch_size: int = 32, progress: bool = True) -> torch.Tensor:
    """Vectors of every item id 0..n_items ([n_items+1, H], row = item id; row 0 is the pad item and is
    never ranked). Computed in eval mode without gradients."""
    was_training = model.training
    model.eval()
    try:
        table = model.encode_items(list(range(n_items + 1)), prompter, batch_size=batch_size, progress=progress)
    finally:
        if was_training:
            model.train()
    return table.detach()


def full_catalogue_rank(sims_row: torch.Tensor, target_item_id: int) -> int:
    """1-based rank of the target among item ids 1..n (pad excluded), ties against the target."""
    s = sims_row[1:].double().cpu().numpy()
    return target_rank(s, int(target_item_id) - 1)


def rank_with_rrec(model, prompter, items: Sequence[tuple[dict, list[int]]], item_table: torch.Tensor,
                   max_new_tokens: int, batch_size: int = 8, full_ranking: bool = False,
                   on_sample: Callable[[dict], Any] | None = None, progress: bool = True) -> list[dict]:
    """The RRec evaluation path: greedy reasoning per user, user vector after it, inner products with the
    item table; each item's candidates are ranked by those scores (ties against the target). Returns
    result-JSON samples; with full_ranking each also gets "full_rank" (rank among all items)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise UserInputError(f"--batch_size {batch_size}: must be >= 1")
    was_training = model.training
    model.eval()
    stop = prompter.stop_token_ids()
    out: list[dict] = []
    bar = tqdm(total=len(items), desc="rrec eval", unit="user", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            prompts = [prompter.user_ids(ex) for ex, _ in batch]
            roll = model.generate_reasoning(prompts, max_new_tokens, do_sample=False, stop_token_ids=stop,
                                            batch_size=batch_size)
            with torch.no_grad():
                h_u = model.encode_users(roll.prompt_ids, roll.reasoning_ids, batch_size=batch_size)
                sims = model.scores(h_u, item_table.to(h_u.device)).cpu()
            for b, (ex, cands) in enumerate(batch):
                target = int(ex["item_id"])
                cands = [int(c) for c in cands]
                s = [float(x) for x in sims[b, cands].tolist()]
                sample = {
                    "interaction_id": int(ex["interaction_id"]), "user_id": ex["user_id"], "target_item_id": target,
                    "candidates": cands, "scores": s, "ranking": ranking_from_scores(cands, s, target),
                    "target_rank": target_rank(s, cands.index(target)),
                    "outputs": {"reasoning": model.decode_reasoning(roll.reasoning_ids[b]),
                                "reasoning_tokens": len(roll.reasoning_ids[b])},
                }
                if full_ranking:
                    sample["full_rank"] = full_catalogue_rank(sims[b], target)
                out.append(sample)
                if on_sample is not None:
                    on_sample(sample)
                bar.update(1)
            bar.set_postfix(NDCG10=f"{metrics_from_ranks([x['target_rank'] for x in out], (10,))['NDCG@10']:.3f}")
    finally:
        bar.close()
        if was_training:
            model.train()
    return out


def rrec_metrics(samples: Sequence[dict], K_eval: int | None, full_ranking: bool = False) -> dict[str, dict]:
    """Candidate metrics (NDCG/HR@{1,5,10,K_eval}, MRR) and, with full_ranking, full-catalogue ones."""
    rows = {"rrec": metrics_from_ranks([s["target_rank"] for s in samples], eval_ks(K_eval))}
    if full_ranking:
        ks = sorted(set(FULL_RANKING_KS) | set(eval_ks(K_eval)))
        rows["rrec (full catalogue)"] = metrics_from_ranks([s["full_rank"] for s in samples if "full_rank" in s], ks)
    return rows
