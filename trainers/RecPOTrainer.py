"""RecPO (shared/RRec.md): RRec's RL step on top of GRecTrainer.

Per step, for each of the batch's users:
1. G = --group_size reasoning rollouts are sampled (--temperature, --top_k, --max_new_tokens);
2. one forward over [B*G user prompt + reasoning sequences] + [the batch's distinct target item
   prompts] gives every rollout's user vector, the reasoning tokens' log-probs, and freshly encoded
   target vectors (so the recommendation loss reaches the item side);
3. reward of a rollout = (1-w) * NDCG@reward_ndcg_k(target rank among all items) +
   w * softmax(sim/tau)[target], scored against the (periodically refreshed) item table;
4. advantages per user group: gaussian (GRPO) or leave-one-out (RLOO);
5. token loss = clipped PPO surrogate on the reasoning tokens (token-level mean, clip-higher);
   recommendation loss = in-batch softmax over the batch's targets for the --relabel_topk rollouts
   with the best advantage per user ("winner takes the item, all rollouts train the reasoning").
"""
from __future__ import annotations

import torch

from models.rrec_models import pad_right
from trainers.evaluation.metrics import ndcg_at
from trainers.GRecTrainer import GRecTrainer
from trainers.rl.advantages import group_advantages
from trainers.rl.losses import clipped_surrogate, inbatch_rec_loss


# ------------------------------------------------------------------------------------ pure pieces
def catalogue_ranks(sims: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based ranks of targets among item ids 1..N-1 of sims [R, N] (column 0 = pad, never ranked),
    ties against the target (as trainers/metrics.target_rank)."""
    s = sims[:, 1:]
    t = s.gather(1, (targets - 1).unsqueeze(1))
    return (s >= t).sum(1)  # counts the target itself once -> 1 + number of others >= it


def fused_reward(sims: torch.Tensor, targets: torch.Tensor, ndcg_k: int, softmax_weight: float,
                 temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """reward = (1-w)*NDCG@k(rank of target) + w*softmax(sims/tau)[target] over items 1..N-1.
    sims [R, N] (item id = column), targets [R] item ids. Returns (reward [R], parts)."""
    sims = sims.detach().float()
    ranks = catalogue_ranks(sims, targets)
    ndcg = torch.tensor([ndcg_at(int(r), int(ndcg_k)) for r in ranks.tolist()], dtype=torch.float32,
                        device=sims.device)
    prob = torch.softmax(sims[:, 1:] / temperature, dim=-1).gather(1, (targets - 1).unsqueeze(1)).squeeze(1)
    reward = (1.0 - softmax_weight) * ndcg + softmax_weight * prob
    return reward, {"ndcg": ndcg, "softmax_prob": prob, "rank": ranks.float()}


def select_topk_rollouts(advantages: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices (into B*G) of the k rollouts with the largest advantage in each group."""
    B, G = advantages.shape
    top = torch.topk(advantages, k=min(k, G), dim=1).indices  # [B, k]
    return (top + torch.arange(B, device=advantages.device).unsqueeze(1) * G).reshape(-1)


# ------------------------------------------------------------------------------------ the trainer
class RecPOTrainer(GRecTrainer):
    """GRecTrainer + the RecPO step."""

    def _batch_tensors(self, prompt_ids, reasoning_ids, item_ids):
        seqs = [list(p) + list(r) for p, r in zip(prompt_ids, reasoning_ids)] + [self.prompter.item_ids(i) for i in item_ids]
        ids, mask = pad_right(seqs, self.model.tokenizer.pad_token_id)
        lp_mask = torch.zeros_like(mask, dtype=torch.bool)
        for i, (p, r) in enumerate(zip(prompt_ids, reasoning_ids)):
            lp_mask[i, len(p):len(p) + len(r)] = True
        dev = self.accelerator.device if self.accelerator.num_processes > 1 else self.model.device
        return ids.to(dev), mask.to(dev), lp_mask.to(dev)

    def training_step(self, examples: list[dict]) -> dict[str, float]:
        a = self.args
        model, G, B = self.model, a.group_size, len(examples)
        prompts = [self.prompter.user_ids(ex) for ex in examples]
        targets = [int(ex["item_id"]) for ex in examples]
        roll = model.generate_reasoning(prompts, a.max_new_tokens, do_sample=True, temperature=a.temperature,
                                        top_k=a.top_k, stop_token_ids=self.prompter.stop_token_ids(),
                                        num_return_sequences=G, batch_size=max(a.eval_batch_size, G))
        uniq = sorted(set(targets))
        labels_users = torch.tensor([uniq.index(t) for t in targets])
        ids, mask, lp_mask = self._batch_tensors(roll.prompt_ids, roll.reasoning_ids, uniq)
        n_tok = [len(r) for r in roll.reasoning_ids]
        tok_owner = torch.repeat_interleave(torch.arange(B * G), torch.tensor(n_tok, dtype=torch.long)).to(ids.device)

        model.train()
        old_logps = None
        if a.ppo_epochs > 1:  # several updates per rollout batch: freeze the behaviour policy's log-probs first
            with torch.no_grad():
                _, old_logps = self.wrapped(ids, mask, lp_mask)
        table = self.item_table
        stats: dict[str, float] = {}
        for epoch in range(a.ppo_epochs):
            emb, logps = self.wrapped(ids, mask, lp_mask)
            h_u, h_v = emb[:B * G], emb[B * G:]
            if old_logps is None:
                old_logps = logps.detach()  # one update: the sampling policy is the current one (ratio 1)
            if epoch == 0:
                with torch.no_grad():
                    sims = model.scores(h_u.detach(), table.to(h_u.device))
                    t_rep = torch.tensor(targets, device=sims.device).repeat_interleave(G)
                    rewards, parts = fused_reward(sims, t_rep, a.reward_ndcg_k, a.reward_softmax_weight, model.temperature)
                    adv = group_advantages(rewards.view(B, G), a.advantage_type)
                    sel = select_topk_rollouts(adv, a.relabel_topk)
            tok_adv = adv.reshape(-1).to(logps.device)[tok_owner]
            tok_loss, clip_frac = clipped_surrogate(logps, old_logps, tok_adv, a.clip_eps_low, a.clip_eps_high)
            labels = labels_users.repeat_interleave(min(a.relabel_topk, G)).to(h_u.device)
            rec_loss = inbatch_rec_loss(h_u[sel.to(h_u.device)], h_v, labels, model.temperature)
            loss = a.token_loss_weight * tok_loss + a.rec_loss_weight * rec_loss
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            grad_norm = float("nan")
            if a.max_grad_norm and a.max_grad_norm > 0:
                grad_norm = float(self.accelerator.clip_grad_norm_(self.wrapped.parameters(), a.max_grad_norm))
            self.optimizer.step()
            stats = {"loss": float(loss.detach()), "token_loss": float(tok_loss.detach()),
                     "rec_loss": float(rec_loss.detach()), "clip_frac": float(clip_frac), "grad_norm": grad_norm}
        self.scheduler.step()
        stats.update({
            "reward": float(rewards.mean()), "reward_std": float(rewards.view(B, G).std(1).mean()) if G > 1 else 0.0,
            "reward_ndcg": float(parts["ndcg"].mean()), "reward_softmax_prob": float(parts["softmax_prob"].mean()),
            "target_rank_mean": float(parts["rank"].mean()), "reasoning_tokens": sum(n_tok) / max(1, len(n_tok)),
        })
        return stats
