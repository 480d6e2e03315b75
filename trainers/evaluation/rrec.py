"""Evaluating an RRec (R2ec) model: the item table, greedy reasoning, user vectors, ranking, metrics.

One code path for compare_model/rrec.py and the RRec trainer's validation. Per user: greedy reasoning from the
user prompt until <answer> (prompters/rrec_prompter.py), the user vector at <answer>, scores against every
item's vector (models/rrec_models.RRecSettings.similarity). The K candidates of an example are ranked by those
scores; the full-catalogue rank (the paper's protocol) ranks the target among all items with the pad item and
the user's history items masked. As upstream, a target that is itself a history item (a repeat purchase, kept
by upstream's preprocess.py) is masked too and counts as a miss (full_rank None); rank_repeat_targets keeps it
rankable instead. Ties count against the target everywhere (trainers/evaluation/metrics.py).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from foundation.errors import UserInputError
from trainers.evaluation.metrics import eval_ks, metrics_from_ranks, ranking_from_scores, target_rank
from trainers.evaluation.runner import Ranker

FULL_RANKING_KS = (5, 10, 20)  # the paper's full-catalogue cut-offs


def masked_scores(scores: torch.Tensor, histories: Sequence[Sequence[int]],
                  keep: Sequence[int] | None = None) -> torch.Tensor:
    """scores [B, N+1] (column = item id) with column 0 (the pad item) and each row's history items set to -inf.
    keep[b], if given, stays unmasked (--rank_repeat_targets keeps a repeat-purchase target rankable; upstream
    masks it like any history item, in the reward and in evaluation)."""
    out = scores.float().clone()
    out[:, 0] = float("-inf")
    for b, hist in enumerate(histories):
        cols = [int(i) for i in hist if 0 <= int(i) < out.shape[1]]
        if keep is not None:
            cols = [c for c in cols if c != int(keep[b])]
        if cols:
            out[b, torch.tensor(cols, device=out.device)] = float("-inf")
    return out


def catalogue_ranks(masked: torch.Tensor, targets: Sequence[int]) -> list[int | None]:
    """1-based rank of each row's target among all columns of masked scores, ties against the target; None for
    a target that is itself masked (never retrieved)."""
    t = torch.as_tensor([int(x) for x in targets], device=masked.device)
    ts = masked.gather(1, t.unsqueeze(1))
    ranks = (masked >= ts).sum(1)  # counts the target itself once
    out: list[int | None] = []
    for v, r in zip(ts.squeeze(1).tolist(), ranks.tolist()):
        if math.isnan(v):  # a NaN score is the worst rank, as trainers/evaluation/metrics.target_rank has it
            out.append(int(masked.shape[1]))
        else:
            out.append(None if v == float("-inf") else int(r))
    return out


@torch.no_grad()
def compute_item_table(model, prompter, n_items: int, batch_size: int = 128, progress: bool = True,
                       rank: int = 0, world: int = 1, gather: Callable[[Any], list] | None = None) -> torch.Tensor:
    """Vectors of every item id 0..n_items ([n_items+1, H] float32, row = item id; row 0 is the pad item and
    never ranked), computed in eval mode. With world > 1 each process encodes ids rank::world and `gather`
    (foundation.distributed.gather_objects bound to the accelerator) assembles the table everywhere."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    mine = list(range(rank, n_items + 1, world))
    parts = []
    try:
        for i in tqdm(range(0, len(mine), batch_size), desc="item embeddings", unit="batch", disable=not progress,
                      dynamic_ncols=True):
            seqs = [prompter.item_ids(j) for j in mine[i:i + batch_size]]
            parts.append(model.embed_sequences(seqs, batch_size=batch_size).cpu())
    finally:
        if was_training:
            model.train()
    local = torch.cat(parts) if parts else torch.zeros((0, model.base_lm().config.hidden_size))
    if world == 1:
        return local.to(model.device)
    shards = gather(local)
    table = torch.zeros((n_items + 1, local.shape[1]), dtype=local.dtype)
    for r, shard in enumerate(shards):
        table[r::world] = shard
    return table.to(model.device)


@torch.no_grad()
def user_vectors(model, prompter, examples: Sequence[dict], max_new_tokens: int, batch_size: int = 8
                 ) -> tuple[torch.Tensor, list[str], list[str], list[int]]:
    """Greedy reasoning and the user vector after it: (vectors [B, H], rendered prompts, reasoning texts up to
    and including <answer>, generated token counts)."""
    prompt_ids = [prompter.user_ids(ex) for ex in examples]
    texts, counts = model.generate_reasoning(prompt_ids, max_new_tokens, do_sample=False,
                                             stop_token_ids=prompter.stop_token_ids(), batch_size=batch_size)
    seqs = [prompter.user_sequence_ids(ex, t, p)[0] for ex, t, p in zip(examples, texts, prompt_ids)]
    h = model.embed_sequences(seqs, batch_size=batch_size)
    return h, [prompter.user_prompt(ex) for ex in examples], [prompter.complete_reasoning(t) for t in texts], counts


def rank_with_rrec(model, prompter, items: Sequence[tuple[dict, list[int]]], item_table: torch.Tensor,
                   max_new_tokens: int, batch_size: int = 8, full_ranking: bool = False,
                   on_sample: Callable[[dict], Any] | None = None, progress: bool = True,
                   save_prompts: bool = False, rank_repeat_targets: bool = False) -> list[dict]:
    """Result-JSON samples for (example, candidates) items: each example's candidates ranked by the model's
    scores. With full_ranking each sample also gets "full_rank" (pad and history masked; None when the target is
    itself a history item, unless rank_repeat_targets keeps it rankable); with save_prompts, "prompt" holds the
    exact rendered user prompt (outputs.reasoning always holds the reasoning)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise UserInputError(f"--batch_size {batch_size}: must be >= 1")
    was_training = model.training
    model.eval()
    out: list[dict] = []
    bar = tqdm(total=len(items), desc="rrec eval", unit="user", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            examples = [ex for ex, _ in batch]
            h_u, prompts_text, reasoning, counts = user_vectors(model, prompter, examples, max_new_tokens, batch_size)
            sims = model.similarity(h_u, item_table.to(h_u.device)).cpu()
            full = None
            if full_ranking:
                targets = [int(ex["item_id"]) for ex in examples]
                keep = targets if rank_repeat_targets else None
                full = catalogue_ranks(masked_scores(sims, [ex["history_item_id"] for ex in examples], keep=keep),
                                       targets)
            for b, (ex, cands) in enumerate(batch):
                target = int(ex["item_id"])
                cands = [int(c) for c in cands]
                s = [float(x) for x in sims[b, cands].tolist()]
                sample = {
                    "interaction_id": int(ex["interaction_id"]), "user_id": ex["user_id"], "target_item_id": target,
                    "candidates": cands, "scores": s, "ranking": ranking_from_scores(cands, s, target),
                    "target_rank": target_rank(s, cands.index(target)),
                    "outputs": {"reasoning": reasoning[b], "reasoning_tokens": counts[b]},
                }
                if full is not None:
                    sample["full_rank"] = full[b]
                if save_prompts:
                    sample["prompt"] = prompts_text[b]
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


def rrec_metrics(samples: Sequence[dict], K_eval: int | None, full_ranking: bool = False,
                 name: str = "rrec") -> dict[str, dict]:
    """Candidate metrics (NDCG/HR@{1,5,10,K_eval}, MRR) and, with full_ranking, full-catalogue ones
    (NDCG/HR@5/10/20 plus the candidate cut-offs; a masked target, full_rank None, is a miss), as rows `name` and
    "`name` (full catalogue)" (the sequential baselines' rows come from here too)."""
    rows = {name: metrics_from_ranks([s["target_rank"] for s in samples], eval_ks(K_eval))}
    if full_ranking:
        ks = sorted(set(FULL_RANKING_KS) | set(eval_ks(K_eval)))
        ranks = [math.inf if s["full_rank"] is None else s["full_rank"] for s in samples if "full_rank" in s]
        rows[f"{name} (full catalogue)"] = metrics_from_ranks(ranks, ks)
    return rows


class FullCatalogueRanker(Ranker):
    """A ranker whose samples may also hold the full-catalogue rank (RRec, the sequential baselines): the candidate
    and full-catalogue rows (rrec_metrics), full_ranking_metrics in the result JSON, the second table. Subclasses set
    `full_ranking` and `fresh_flag` (what starts a result file afresh)."""

    full_ranking = False
    fresh_flag = "--overwrite_output_dir"

    def check_saved(self, job, samples) -> None:
        """A run that adds the full-catalogue rank cannot resume samples saved without it."""
        if self.full_ranking and any("full_rank" not in s for s in samples.values()):
            raise UserInputError(f"{job.result_file}: earlier samples were made without --full_ranking; pass "
                                 f"{self.fresh_flag}")

    def metrics(self, samples, K_eval: int) -> dict[str, dict]:
        return rrec_metrics(samples, K_eval, self.full_ranking, name=self.name)

    def extra_results(self, rows: dict[str, dict]) -> dict:
        return {"full_ranking_metrics": rows[f"{self.name} (full catalogue)"]} if self.full_ranking else {}

    def full_catalogue_table(self, job, rows: dict[str, dict], title: str) -> list[str]:
        """The full-catalogue table printed after the candidate one (nothing without full_ranking)."""
        from trainers.evaluation.metrics import format_metrics_table

        if not self.full_ranking:
            return []
        row = f"{self.name} (full catalogue)"
        return [title, format_metrics_table({row: rows[row]}, sorted(set(eval_ks(job.K_eval)) | set(FULL_RANKING_KS)))]


class RRecRanker(FullCatalogueRanker):
    """An RRec model as trainers/evaluation/runner.py's ranker (compare_model/rrec.py): every process loads the model
    and takes part in the item table (each encodes a share of the items), then ranks its share of the examples."""

    name = "rrec"
    fresh_flag = "--no_resume"

    def __init__(self, opts, dataset, ckpt, base: str | None, settings, category: str) -> None:
        self.opts, self.dataset, self.ckpt, self.base = opts, dataset, ckpt, base
        self.settings, self.category = settings, category
        self.full_ranking = opts.full_ranking

    def load(self, mine, state) -> tuple:
        """(model, prompter) of this process, also when it has no examples of its own (the item table needs it)."""
        from dataclasses import asdict

        from models.rrec_models import RRecModel
        from prompters.rrec_prompter import RRecPrompter
        from trainers.evaluation.runner import process_device

        o, st = self.opts, self.settings
        model = RRecModel.load(str(self.ckpt), device=process_device(state, o.device), dtype=o.dtype,
                               attn_implementation=o.attn_implementation, base_model=self.base,
                               forward_batch_size=o.item_batch_size, trust_remote_code=o.trust_remote_code,
                               settings=asdict(st), merge_adapter=True, flag="--checkpoint_path")
        model.eval()
        prompter = RRecPrompter(model.tokenizer, self.dataset.item_rows, self.category,
                                user_window_size=st.user_window_size, model_type=st.model_type,
                                emb_token=st.emb_token, emb_end_token=st.emb_end_token,
                                item_rating_stats=st.item_rating_stats)
        return model, prompter

    def rank(self, loaded, mine, on_sample, state) -> None:
        """This process's share: compute (its share of) the item table, rank its examples."""
        from foundation.distributed import gather_objects

        model, prompter = loaded
        o, rank, world = self.opts, state.process_index, state.num_processes
        show = not o.no_progress and rank == 0
        table = compute_item_table(model, prompter, self.dataset.n_items, batch_size=o.item_batch_size,
                                   progress=show, rank=rank, world=world,
                                   gather=lambda obj: gather_objects(state, obj))
        rank_with_rrec(model, prompter, mine, table, self.settings.max_new_tokens, batch_size=o.batch_size,
                       full_ranking=o.full_ranking, on_sample=on_sample, progress=show,
                       save_prompts=o.save_prompts, rank_repeat_targets=o.rank_repeat_targets)

    def describe(self, job, samples) -> str:
        o = self.opts
        return (f"{o.split}: {len(samples)} samples, K={o.K}, candidates from "
                f"{o.reference_json or 'seeded sampling'}; model {self.ckpt} ({job.meta['checkpoint_kind']})")

    def report(self, job, rows: dict[str, dict], samples) -> list[str]:
        return self.full_catalogue_table(job, rows, "full catalogue (history masked):")
