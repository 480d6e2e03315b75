"""RecPO (docs/rrec.md): RRec's RL step on top of GRecTrainer, upstream's algorithm by default.

One step, per process, for its --train_batch_size users:
1. rollouts: G = --group_size reasoning texts per user, sampled (temperature 2.0, top-k 50, top-p 1.0, the
   model's repetition penalty; greedy when G = 1, as upstream) until <answer> or --max_new_tokens; each becomes
   a user sequence ending in <answer> (prompters/rrec_prompter.py, text round trip as upstream);
2. reward (no gradient, current weights): user vectors against the item table, the pad item and the user's
   history items masked; reward = (1-w) NDCG@1000(rank of the target) + w softmax(scores)[target], w = 0.05
   (a target that is itself a history item, possible in upstream-built data, is masked and earns 0);
3. advantages per user group (trainers/rl/advantages.py: gaussian (r-mean)/(std+1e-8), G=1 -> 1), and the
   relabel mask: the --relabel_topk rollouts with the largest advantage per user;
4. update, in mini-batches of min(--mini_batch_size, --train_batch_size) rollouts (upstream's cap), each one
   forward over [its user sequences + the batch's target item prompts, duplicates kept] and one backward:
     token loss = clipped surrogate over the completion tokens (<answer> included), / tokens, / rows
     rec loss   = clipped surrogate of log softmax(scores(users, in-batch targets))[own target] with weight
                  advantage x relabel mask, averaged; users and targets of the other processes are gathered
                  (detached) as extra rows and negatives
   with the advantage weighting of --advantage_broadcast (token_loss, rec_loss): "upstream" (default) as
   upstream's code computes it, every rollout weighted by every advantage of the mini-batch (so by their sum),
   "per_row" as the paper's equations read, each rollout by its own
   (trainers/rl/losses.clipped_surrogate for both; with one pass (--ppo_epochs 1) the ratio is 1, so this is the
   advantage-weighted policy gradient); the targets' fresh vectors replace their rows of the item table;
   after each mini-batch's backward the gradients are clipped to 1.0 and the optimiser steps (upstream's
   DeepSpeed launch: accelerate's DeepSpeed backward calls engine.step() every time, and with gradient
   accumulation 1 each call is an optimiser step; --no-step_per_mini_batch: one step after the last
   mini-batch). The learning-rate schedule advances once per training step.
Upstream drops the last token of each mini-batch's longest sequence; we do not.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from models.abstract_models import pad_right
from trainers.evaluation.metrics import ndcg_at
from trainers.evaluation.rrec import catalogue_ranks, masked_scores
from foundation.seeding import derived_seed
from foundation.distributed import run_trainer
from trainers.configs.rrec import ADVANTAGE_BROADCASTS, RRecTrainingArguments
from trainers.grec_trainer import GRecTrainer
from trainers.rl.advantages import group_advantages
from trainers.rl.diagnostics import StepStats
from trainers.rl.losses import clipped_surrogate


# ------------------------------------------------------------------------------------ pure pieces
def recpo_reward(masked: torch.Tensor, targets: torch.Tensor, ndcg_k: int, softmax_weight: float
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """reward = (1-w) NDCG@k + w softmax(masked)[target] per row. masked [R, N+1]: scores (already divided by the
    similarity temperature) with masked columns at -inf; targets [R] item ids. Ranks count ties against the
    target; a masked target gets NDCG 0 and probability 0. Returns (reward [R], {"ndcg", "softmax", "rank"})."""
    masked = masked.detach().float()
    ranks = catalogue_ranks(masked, targets.tolist())
    ndcg = torch.tensor([0.0 if r is None else ndcg_at(r, ndcg_k) for r in ranks], device=masked.device)
    prob = torch.softmax(masked, dim=-1).gather(1, targets.view(-1, 1).to(masked.device)).squeeze(1)
    prob = torch.nan_to_num(prob, nan=0.0)  # a row with every column masked
    rank = torch.tensor([float(r) if r is not None else float("nan") for r in ranks], device=masked.device)
    reward = (1.0 - softmax_weight) * ndcg + softmax_weight * prob
    return reward, {"ndcg": ndcg, "softmax": prob, "rank": rank}


def relabel_mask(advantages: torch.Tensor, k: int) -> torch.Tensor:
    """[B, G] bool: the min(k, G) rollouts with the largest advantage in each group (torch.topk, as upstream)."""
    top = torch.topk(advantages, k=min(int(k), advantages.shape[1]), dim=1).indices
    return torch.zeros_like(advantages, dtype=torch.bool).scatter_(1, top, True)


def mini_batches(n_rows: int, mini_batch_size: int, train_batch_size: int) -> list[list[int]]:
    """The update's mini-batches of rollout rows (G consecutive rows per user): consecutive slices of
    min(mini_batch_size, train_batch_size) rows, as upstream caps and slices them."""
    m = min(mini_batch_size, train_batch_size)
    return [list(range(a, min(a + m, n_rows))) for a in range(0, n_rows, m)]


def _check_broadcast(broadcast: str) -> None:
    if broadcast not in ADVANTAGE_BROADCASTS:
        raise ValueError(f"advantage broadcast {broadcast!r}: must be one of {'|'.join(ADVANTAGE_BROADCASTS)}")


def token_loss(logps: torch.Tensor, old_logps: torch.Tensor, row_advantages: torch.Tensor,
               tokens_per_row: torch.Tensor, clip_low: float, clip_high: float, broadcast: str = "upstream"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The token loss of one mini-batch of B rollouts. logps/old_logps: flat [M] completion-token log-probs, row
    after row; tokens_per_row [B] (summing to M); row_advantages [B]. With r_jt the ratio of token t of row j:
      per_row   sum_j sum_t -min(r_jt A_j, clip(r_jt) A_j) / M / B            (the paper's equations)
      upstream  sum_i sum_j sum_t -min(r_jt A_i, clip(r_jt) A_i) / M / B      (upstream's code: [B,1,1] advantages
                times [B,L] ratios broadcast to [B,B,L]) = the mean over the [B, M] products.
    At ratio 1 a token's gradient is -A_j / (M B) (per_row) or -sum_i A_i / (M B) (upstream: 0 on every token
    when the mini-batch is whole gaussian groups, whose advantages sum to 0). Returns (loss, clip fraction)."""
    _check_broadcast(broadcast)
    B = int(row_advantages.shape[0])
    if broadcast == "per_row":
        adv = row_advantages.repeat_interleave(tokens_per_row.to(row_advantages.device))
        loss, clipfrac = clipped_surrogate(logps, old_logps, adv, clip_low, clip_high)
        return loss / max(1, B), clipfrac
    M = int(logps.shape[0])
    return clipped_surrogate(logps.expand(B, M), old_logps.expand(B, M), row_advantages[:, None].expand(B, M),
                             clip_low, clip_high)


def rec_loss(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, old_logp: torch.Tensor | None,
             clip_low: float, clip_high: float, broadcast: str = "upstream"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recommendation loss of N user rows (gathered ones included): log p_j = log softmax(scores[j])[labels[j]]
    over the in-batch items, ratio c_j against old_logp (None: the current value, ratio 1), weights w = advantage x
    relabel mask:
      per_row   mean_j -min(c_j w_j, clip(c_j) w_j)                            (the paper's equations)
      upstream  mean_ij -min(c_j w_i, clip(c_j) w_i)                           (upstream's code: [N,1,1] weights
                times [N,1] probabilities broadcast to [N,N,1]): every row weighted by every row's weight.
    Returns (loss, clip fraction, log p detached, for later epochs)."""
    _check_broadcast(broadcast)
    logp = torch.log_softmax(scores.float(), dim=-1).gather(1, labels.view(-1, 1)).squeeze(1)
    old = logp.detach() if old_logp is None else old_logp
    w = weights.float()
    if broadcast == "per_row":
        loss, clipfrac = clipped_surrogate(logp, old, w, clip_low, clip_high)
    else:
        N = int(logp.shape[0])
        loss, clipfrac = clipped_surrogate(logp.expand(N, N), old.expand(N, N), w[:, None].expand(N, N),
                                           clip_low, clip_high)
    return loss, clipfrac, logp.detach()


# ------------------------------------------------------------------------------------ the experience
@dataclass
class RecPORollout:
    """One step's experience on this process: B users, G consecutive rollouts each (row r belongs to user r // G),
    their rewards and advantages, and the batch's target items (what every mini-batch's rec loss ranks)."""

    examples: list[dict]  # the step's B users
    seqs: list[list[int]]  # [B*G] user sequences: prompt, reasoning text, <answer>
    starts: list[int]  # [B*G] where each sequence's completion (the reasoning tokens, <answer> included) starts
    generated_tokens: list[int]  # [B*G] tokens each rollout generated
    targets: list[int]  # [B] each user's target item id
    item_seqs: list[list[int]]  # [B] the targets' item prompts (duplicates kept)
    rewards: torch.Tensor  # [B*G] (1-w) NDCG@k + w softmax, at rollout time
    reward_parts: dict[str, torch.Tensor]  # [B*G] each: "ndcg", "softmax", "rank" (recpo_reward)
    advantages: torch.Tensor  # [B, G] per user group (--advantage_type)
    relabel: torch.Tensor  # [B, G] bool: the rollouts that get the recommendation loss (--relabel_topk)

    @property
    def row_advantages(self) -> torch.Tensor:
        """[B*G] each rollout's advantage (the token loss's weights)."""
        return self.advantages.reshape(-1)

    @property
    def rec_weights(self) -> torch.Tensor:
        """[B*G] advantage x relabel mask (the rec loss's weights)."""
        return (self.advantages * self.relabel.float()).reshape(-1)


# ------------------------------------------------------------------------------------ the trainer
class RecPOTrainer(GRecTrainer):
    """GRecTrainer + the RecPO step: make_experience (rollouts, rewards, advantages) and update (mini-batches)."""

    def _across_processes(self, t: torch.Tensor, keep_local: bool = True) -> torch.Tensor:
        """[n, ...] on each process -> [world*n, ...] in rank order; this process's block keeps its autograd graph
        (the others arrive detached)."""
        if self.world == 1:
            return t
        everything = self.acc.gather(t.detach().contiguous())
        if not keep_local:
            return everything
        n = t.shape[0]
        return torch.cat([everything[:self.rank * n], t, everything[(self.rank + 1) * n:]])

    def _rollouts(self, step: int, examples: list[dict]) -> tuple[list[list[int]], list[int], list[int]]:
        """(user sequences, completion start of each, generated token counts), G consecutive rollouts per user."""
        c, s = self.cfg, self.rrec.settings
        prompts = [self.prompter.user_ids(ex) for ex in examples]
        torch.manual_seed(derived_seed(c.seed, step, self.rank, 2))  # sampling replays on resume
        with self.acc.autocast():  # G = 1: greedy, as upstream (its vLLM and HF paths both switch sampling off)
            texts, counts = self.rrec.generate_reasoning(
                prompts, s.max_new_tokens, do_sample=c.group_size > 1, temperature=c.gen_temperature,
                top_k=c.gen_top_k,
                top_p=c.gen_top_p, stop_token_ids=self.prompter.stop_token_ids(), num_return_sequences=c.group_size,
                batch_size=max(c.eval_batch_size, c.group_size))
        seqs, starts = [], []
        for i, text in enumerate(texts):
            b = i // c.group_size
            ids, start = self.prompter.user_sequence_ids(examples[b], text, prompts[b])
            seqs.append(ids)
            starts.append(start)
        return seqs, starts, counts

    def make_experience(self, step: int) -> RecPORollout:
        """Steps 1-3 of the module docstring for this process's next batch: rollouts, rewards (current weights, no
        gradient), group advantages and the relabel mask."""
        c = self.cfg
        examples = self.next_batch()
        G, B = c.group_size, len(examples)
        dev = self.acc.device
        seqs, starts, counts = self._rollouts(step, examples)
        targets = [int(ex["item_id"]) for ex in examples]
        item_seqs = [self.prompter.item_ids(t) for t in targets]  # the batch's targets, duplicates kept
        self.rrec.eval()
        with torch.no_grad(), self.acc.autocast():
            h = self.rrec.embed_sequences(seqs, batch_size=c.eval_batch_size)
            scores = self.rrec.similarity(h, self.item_table)
        hist = [ex["history_item_id"] for ex in examples for _ in range(G)]
        t_rep = torch.tensor(targets, device=dev).repeat_interleave(G)
        rewards, parts = recpo_reward(masked_scores(scores, hist), t_rep, c.reward_ndcg_k, c.reward_softmax_weight)
        adv = group_advantages(rewards.view(B, G), c.advantage_type)
        return RecPORollout(examples=examples, seqs=seqs, starts=starts, generated_tokens=counts, targets=targets,
                            item_seqs=item_seqs, rewards=rewards, reward_parts=parts, advantages=adv,
                            relabel=relabel_mask(adv, c.relabel_topk))

    def update(self, r: RecPORollout) -> dict[str, float]:
        """Step 4: --ppo_epochs passes over the rollouts in mini-batches, each a forward + backward (and with
        --step_per_mini_batch an optimiser step); the schedule advances once. The step's losses and diagnostics."""
        c = self.cfg
        G, B = c.group_size, len(r.examples)
        self.model.train()
        chunks = mini_batches(B * G, c.mini_batch_size, c.train_batch_size)
        old_tok: dict[int, torch.Tensor] = {}
        old_rec: dict[int, torch.Tensor] = {}
        stats = StepStats()  # every number of the step stays on the device until one read at the end
        for epoch in range(c.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            for ci, rows in enumerate(chunks):
                last = ci == len(chunks) - 1
                sync = last or self.world == 1 or c.step_per_mini_batch
                with nullcontext() if sync else self.acc.no_sync(self.model):
                    for k, v in self._mini_batch_loss(ci, rows, r, old_tok, old_rec).items():
                        stats.mean(k, v)
                if c.step_per_mini_batch or last:
                    stats.mean("grad_norm", self._optimizer_step())
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()  # once per training step (HF Trainer's schedule counts batches, not mini-batches)
        parts = r.reward_parts
        stats.mean("reward", r.rewards.mean())
        stats.mean("reward_std", r.rewards.view(B, G).std(1).mean() if G > 1 else torch.zeros(()))
        stats.mean("reward_ndcg", parts["ndcg"].mean())
        stats.mean("reward_softmax", parts["softmax"].mean())
        stats.mean("target_rank_mean", torch.nanmean(parts["rank"]) if parts["rank"].numel() else torch.zeros(()))
        stats.mean("advantage_mean", r.advantages.mean())
        n_comp = [len(s) - st for s, st in zip(r.seqs, r.starts)]
        return {**stats.read(), "generated_tokens": sum(r.generated_tokens) / len(r.generated_tokens),
                "completion_tokens": sum(n_comp) / len(n_comp)}

    def _optimizer_step(self) -> torch.Tensor:
        """Clip (--max_grad_norm), step, zero the gradients; returns the gradient norm before clipping (0 when
        clipping is off) as a device tensor (read with the step's other numbers)."""
        norm = torch.zeros(())
        if self.cfg.max_grad_norm > 0:
            norm = torch.as_tensor(self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _mini_batch_loss(self, ci: int, rows: list[int], rollout: RecPORollout, old_tok: dict, old_rec: dict
                         ) -> dict[str, torch.Tensor]:
        """Forward + backward of mini-batch ci (rollout rows `rows`; the losses of the module docstring); updates
        the item table rows of the batch's targets. old_tok/old_rec hold the first epoch's log-probs per chunk."""
        c, dev, G = self.cfg, self.acc.device, self.cfg.group_size
        seqs, starts, item_seqs, targets = rollout.seqs, rollout.starts, rollout.item_seqs, rollout.targets
        adv_flat, weight_flat = rollout.row_advantages, rollout.rec_weights
        user_seqs = [seqs[r] for r in rows]
        ids, mask = pad_right(user_seqs + item_seqs, self.rrec.tokenizer.pad_token_id)
        lp_mask = torch.zeros_like(mask, dtype=torch.bool)
        for i, r in enumerate(rows):
            lp_mask[i, starts[r]:len(seqs[r])] = True
        emb, logps = self.model(ids.to(dev), mask.to(dev), lp_mask.to(dev))
        u, v = emb[:len(rows)], emb[len(rows):]
        rows_t = torch.tensor(rows, device=dev)
        n_tok = lp_mask[:len(rows)].sum(1).to(dev)
        if ci not in old_tok:
            old_tok[ci] = logps.detach()
        labels = (rows_t // G) + self.rank * len(item_seqs)  # a rollout's own target among the gathered items
        if c.gather_negs_across_processes:
            U, V = self._across_processes(u), self._across_processes(v)
            labels, weights = self._across_processes(labels), self._across_processes(weight_flat[rows_t])
        else:
            U, V, weights = u, v, weight_flat[rows_t]
            labels = labels - self.rank * len(item_seqs)
        tok, tok_clip, rec, rec_clip, logp = self._losses(logps, old_tok[ci], adv_flat[rows_t], n_tok,
                                                          self.rrec.similarity(U, V), labels, weights, old_rec.get(ci))
        old_rec.setdefault(ci, logp)
        loss = c.token_loss_weight * tok + c.rec_loss_weight * rec
        self.acc.backward(loss)
        with torch.no_grad():  # upstream: the targets' rows of the item table take their fresh vectors
            all_v = self._across_processes(v.detach(), keep_local=False)
            all_t = self._across_processes(torch.tensor(targets, device=dev), keep_local=False)
            self.item_table[all_t] = all_v.float().to(self.item_table.device)
        return {"loss": loss.detach(), "token_loss": tok.detach(), "rec_loss": rec.detach(),
                "token_clipfrac": torch.as_tensor(tok_clip), "rec_clipfrac": torch.as_tensor(rec_clip)}

    def _losses(self, logps, old_logps, row_advantages, tokens_per_row, scores, labels, weights, old_rec_logp
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token loss, its clip fraction, rec loss, its clip fraction, rec log p) of one mini-batch under
        --advantage_broadcast; tools/rrec_loss_forms.py measures both forms here."""
        c = self.cfg
        tok, tok_clip = token_loss(logps, old_logps, row_advantages, tokens_per_row, c.clip_eps_low,
                                   c.clip_eps_high, c.advantage_broadcast)
        rec, rec_clip, logp = rec_loss(scores, labels, weights, old_rec_logp, c.clip_eps_low, c.clip_eps_high,
                                       c.advantage_broadcast)
        return tok, tok_clip, rec, rec_clip, logp


def run_training(cfg: RRecTrainingArguments) -> dict[str, Any]:
    """compare_model/train_rrec.py's entry point: validate, lock, train with RecPO."""
    return run_trainer(cfg, RecPOTrainer)
