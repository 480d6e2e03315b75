"""PL-PPO training of the binary judge (docs/training.md), on accelerate.

One training step reads as: make_experience(step) -> Rollout -> update(rollout) -> one metrics.jsonl record; the
lifecycle around the steps is trainers/base_trainer.py's, the settings trainers/configs/ppo.py's.

  make_experience: every process takes its share of the step's users (batch_size x gradient_accumulation_steps
    per process, drawn from one global seeded draw), K candidates each, binary prompts; under no_grad: optional
    reasoning generation, scores s, critic values V (only with --advantage_estimator critic);
    --rankings_per_user Gumbel-top-K rankings of s/τ (noise seeded per user), old log-prob log PL(σ|s) (+ reasoning
    token log-probs under the sampling distribution), reward R = NDCG@K_eval of the target, advantage A from the
    estimator (trainers/rl/advantages.py: R - V, leave-one-out or group-normalised; then normalised over the global
    batch), optional reference log-probs for the KL penalty.
  update: --ppo_epochs optimiser steps, each over all the step's users (HF's meaning: one optimiser step sees
    batch_size x accumulation x processes users), split into micro-batches of --batch_size users or, with
    --max_tokens_per_micro_batch, by a token budget (trainers/rl/micro_batches.py: the gradient is the full-batch
    mean however they are split) and accumulated through accelerator.accumulate; clipped PL surrogate + clipped
    value loss (+ KL), gradient clipping, AdamW (fused on CUDA). The RL diagnostics (trainers/rl/diagnostics.py,
    docs/training.md), the rollout's included, stay on the device until the step's one read; the phases of the
    step are timed without a sync (foundation/step_timing.py, the time_*_s keys).

Distribution and precision belong to accelerate: DDP by default under `accelerate launch`/torchrun, FSDP or
DeepSpeed ZeRO through the config files in configs/accelerate/; fp32 master weights with bf16 autocast on CUDA
(--dtype), pure bf16 weights only with --pure_bf16. The judge (models/qwen_models.BinaryJudge: policy + value
head) is one module, prepared once. LoRA through peft (--use_lora): the adapters and the value head train.

Every random draw comes from a generator seeded by (seed, step, user or process) or from state restored from
the checkpoint, so a run killed and resumed with --resume_from last ends with the same weights and the same
metrics.jsonl as an uninterrupted one (same hardware, same process count). SIGTERM/SIGINT finish the step,
write a complete checkpoint and exit 0; --resume_from auto (what train.sh passes) continues from it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from models.abstract_models import LoraSettings, check_model_dir, disable_dropout
from models.flops import ModelFlops, peak_tflops
from models.qwen_models import BinaryJudge, SamplingSettings, resolve_scoring
from models.shared_prefix import user_chunks
from paths import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHT_FILES, HEADS_FILE, TOKENIZER_FILES, WEIGHT_FILES
from prompters.binary_prompter import BinaryPrompter
from trainers.base_trainer import BaseTrainer
from trainers.configs.ppo import PPOConfig, build_parser, parse_config  # noqa: F401 (train.py's)
from trainers.data.candidates import sample_candidates
from trainers.data.dataset import load_processed_dataset
from trainers.evaluation.judge import JudgeRankSettings, rank_examples
from trainers.evaluation.metrics import (eval_ks, metrics_from_ranks, ndcg_at_tensor, ndcg_reward,
                                         target_rank_tensor)
from trainers.evaluation.protocol import build_eval_items
from foundation.checkpoints import (apply_base_lrs, capture_rng_state, check_optimizer_state_fits,
                                    finish_resume, load_torch_state, open_resume, prepare_output_dir,
                                    restore_rng_state, run_files, save_torch, select_param_groups,
                                    write_checkpoint, write_final_model)
from foundation.config import require
from foundation.distributed import (configure_deepspeed, describe_distribution, gather_objects, is_sharded,
                                    log_to_trackers, max_over_processes, mean_over_processes, run_trainer, shard,
                                    step_resources, uses_deepspeed)
from foundation.errors import UserInputError
from foundation.files import append_jsonl, atomic_write_json, atomic_write_text
from foundation.plotting import plot_training
from foundation.seeding import derived_seed
from foundation.step_timing import PhaseTimer
from trainers.rl.advantages import get_advantage_estimator, normalize_advantages
from trainers.rl.diagnostics import (StepStats, explained_variance_from_sums, explained_variance_sums, pl_entropy_mc,
                                    pl_first_position_entropy)
from trainers.rl.kl import approx_kl_k3, kl_penalty
from trainers.rl.losses import clipped_surrogate, clipped_value_loss
from trainers.rl.micro_batches import (MicroBatch, fixed_micro_batches, from_index_groups, micro_batch_loss_factor,
                                       token_budget_micro_batches)
from trainers.rl.pl import gumbel_topk_from_uniform, pl_log_prob
from trainers.utils import lr_lambda_factory, param_checksum, sample_step_indices, step_candidate_seed

FINAL_DIR = "final"
SHARDED_STATE_DIR = "accelerate_state"  # FSDP/DeepSpeed optimizer and model shards (accelerator.save_state)


# ---------------------------------------------------------------------------------------------- pieces
def adamw_kernel_kwargs(implementation: str, device: torch.device | str) -> dict[str, bool]:
    """torch.optim.AdamW's kernel arguments for --adamw_implementation: auto = fused on CUDA, torch's own default
    elsewhere (on a CPU the fused kernel's rounding differs from the for-each one by ~1 ulp per step)."""
    if implementation == "fused" or (implementation == "auto" and torch.device(device).type == "cuda"):
        return {"fused": True}
    if implementation == "foreach":
        return {"foreach": True}
    return {}


def check_token_budget_distribution(budget: int, accelerator) -> None:
    """--max_tokens_per_micro_batch splits each process's users by their lengths, so processes may run different
    numbers of forwards: refused under FSDP (every forward gathers the weights, all processes must take part) and
    DeepSpeed (its engine steps after a fixed count of micro-batches)."""
    if is_sharded(accelerator):
        kind = "DeepSpeed" if uses_deepspeed(accelerator) else "FSDP"
        raise UserInputError(f"--max_tokens_per_micro_batch {budget}: not under {kind} (every process must run the "
                             "same number of forwards); use --batch_size")


@dataclass
class Rollout:
    """One step's experience on this process: who was ranked, how, and what it earned."""

    examples: list[dict]
    candidates: list[list[int]]
    prompts: list  # UserPrompt, with reasoning attached in reasoning mode
    rankings: torch.Tensor  # [B, M, K] candidate indices, best first
    target_index: torch.Tensor  # [B]
    scores: torch.Tensor  # [B, K] judge scores at rollout time
    old_logp: torch.Tensor  # [B, M] log π_old(ranking) (+ reasoning log-probs): what the PPO ratio uses
    old_pl_logp: torch.Tensor  # [B, M] the PL part of old_logp
    old_token_logp: torch.Tensor | None  # [B, 1] the reasoning part (all K texts of a user), or None
    ref_logp: torch.Tensor | None  # [B, M] under the frozen reference (KL), or None
    rewards: torch.Tensor  # [B, M] NDCG@K_eval of the target
    old_values: torch.Tensor | None  # [B] (None: the estimator uses no critic)
    returns: torch.Tensor | None  # [B] the critic's regression target (None without a critic)
    advantages: torch.Tensor  # [B, M]
    token_lengths: list[list[int]] | None


# ---------------------------------------------------------------------------------------------- the trainer
class PPOTrainer(BaseTrainer):
    """Owns the accelerator, the judge, optimiser, scheduler and logs of one run (one instance per process); the
    lifecycle (resume, steps, validation and checkpoint cadence, signals, final model, logs) is BaseTrainer's."""

    SCRIPT, PROGRESS_DESC, TRACKER_PROJECT = "train.py", "PL-PPO", "ourrec_ppo"

    def __init__(self, cfg: PPOConfig, accelerator) -> None:
        super().__init__(cfg, accelerator)
        self.token_log = Path(cfg.token_log_path) if cfg.token_log_path else (
            self.out / "token_lengths.jsonl" if cfg.reasoning else None)
        self.sampling = SamplingSettings(cfg.gen_temperature, cfg.gen_top_k, cfg.gen_top_p).validate()
        self.final_validation: dict | None = None  # the last step's validation, once the run has finished

        # ---- every check that can fail on the inputs, before anything in --output_dir is touched ----
        self.dataset = load_processed_dataset(cfg.dataset_path)
        self.train_split = self.dataset.split("train")
        require(len(self.train_split) > 0, f"--dataset_path {cfg.dataset_path}: the train split is empty")
        self.dataset.check_K(cfg.K)
        if len(self.dataset.split("valid")) > 0:
            self.dataset.check_K(cfg.eval_K, flag="--eval_K")
        base = check_model_dir(cfg.model_name_or_path)
        self.base_model_dir = base
        self.resume_ckpt, self.state, self.changed = open_resume(cfg, judge_checkpoint_files(), base)
        self.start_step = int(self.state.get("step", 0))
        n_global = cfg.batch_size * cfg.gradient_accumulation_steps * self.world
        self.max_steps = cfg.max_steps if cfg.max_steps > 0 else max(
            1, math.ceil(cfg.num_train_epochs * len(self.train_split) / n_global))
        if self.start_step >= self.max_steps and self.resume_ckpt is not None and self.is_main:
            print(f"{self.resume_ckpt} is at step {self.start_step} of {self.max_steps}: nothing left to train")

        # ---- the model: fp32 master weights (bf16 with --pure_bf16), LoRA if asked, dropout off ----
        # Same seed on every process before building the model: the value head starts identical everywhere.
        torch.manual_seed(cfg.seed)
        weights_dtype = torch.bfloat16 if cfg.pure_bf16 else torch.float32
        lora = LoraSettings.from_flags(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules) \
            if cfg.use_lora else None
        src = self.resume_ckpt or base
        # --scoring auto: decided once, for this model and backend, before it loads (it picks the attention kernel)
        cfg.scoring = resolve_scoring(cfg.scoring, str(src), cfg.attn_implementation, cfg.device,
                                      base_model=str(base) if self.resume_ckpt is not None else None)
        self.judge = BinaryJudge.load(
            str(src), device="cpu", dtype=weights_dtype, attn_implementation=cfg.attn_implementation,
            packed_mask=cfg.scoring == "shared", trust_remote_code=cfg.trust_remote_code,
            base_model=str(base) if self.resume_ckpt is not None else None,
            lora=lora if self.resume_ckpt is None else None, trainable=True,
            gradient_checkpointing=cfg.gradient_checkpointing, scoring_chunk_size=cfg.scoring_chunk_size,
            generation_batch_rows=cfg.gen_batch_size, load_heads=False,
            flag="--resume_from" if self.resume_ckpt else "--model_name_or_path")
        if self.resume_ckpt is not None:
            self.judge.load_heads(self.resume_ckpt)
        disable_dropout(self.judge)
        self.ref_judge = None
        if cfg.kl_coef > 0 and not cfg.use_lora:  # frozen initial model (LoRA: the base with adapters disabled)
            # forwards only: held in the compute dtype (bf16 under bf16 autocast), not as fp32 master weights
            ref_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, weights_dtype)
            self.ref_judge = BinaryJudge.load(str(base), device="cpu", dtype=ref_dtype,
                                              attn_implementation=self.judge.attn_implementation,
                                              packed_mask=cfg.scoring == "shared",
                                              trust_remote_code=cfg.trust_remote_code, load_heads=False,
                                              scoring_chunk_size=cfg.scoring_chunk_size)
            disable_dropout(self.ref_judge)
            self.ref_judge.eval().requires_grad_(False)
        self.prompter = BinaryPrompter(self.judge.tokenizer, self.dataset.item_rows, dataset_type=cfg.dataset_type,
                                       max_len_per_item=cfg.max_len_per_item, user_window_size=cfg.user_window_size,
                                       template_file=cfg.prompt_template, reasoning=cfg.reasoning)

        # ---- optimiser (actor and, with a critic, critic groups), schedule, accelerate ----
        actor = [p for p in self.judge.lm.parameters() if p.requires_grad]
        groups = [{"params": actor, "lr": cfg.lr_actor, "name": "actor"}]
        if cfg.uses_critic:
            groups.append({"params": list(self.judge.value_head.parameters()), "lr": cfg.lr_critic, "name": "critic"})
        else:  # rloo/grpo: the value head stays as loaded (it is saved, so checkpoints keep one layout), untrained
            self.judge.value_head.requires_grad_(False)
        self.base_lrs = [g["lr"] for g in groups]
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay,
                                      **adamw_kernel_kwargs(cfg.adamw_implementation, accelerator.device))
        self.model_flops = ModelFlops.of(self.judge.lm)  # counted before sharding hides weights
        self.peak_tflops = peak_tflops(accelerator.device)
        if cfg.max_tokens_per_micro_batch > 0:
            check_token_budget_distribution(cfg.max_tokens_per_micro_batch, accelerator)
            for j in (self.judge, self.ref_judge):  # every shared-prefix forward packs what an update micro-batch does
                if j is not None:
                    j.shared_tokens_per_forward = cfg.max_tokens_per_micro_batch
        self.step_timer = PhaseTimer(accelerator.device)  # per-phase seconds of a step (metrics.jsonl time_*_s)
        configure_deepspeed(accelerator, cfg.batch_size, cfg.max_grad_norm)  # no-op unless DeepSpeed
        self.model, self.optimizer = accelerator.prepare(self.judge, optimizer)
        self.judge = accelerator.unwrap_model(self.model)
        if self.ref_judge is not None:
            self.ref_judge.to(accelerator.device)
        self.actor_params = [p for p in self.judge.lm.parameters() if p.requires_grad]
        self.critic_params = list(self.judge.value_head.parameters()) if cfg.uses_critic else []
        # Stepped once per training step by us (accelerate's scheduler wrapper steps once per process).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer,
            lr_lambda_factory(cfg.warmup_steps, self.max_steps, cfg.lr_scheduler))
        if self.resume_ckpt is not None:
            self._load_training_state(self.resume_ckpt)

    # ---- distribution helpers ------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return is_sharded(self.acc)

    def _all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(t.to(self.acc.device), reduction="sum").to(t.device)

    # ---- resume ------------------------------------------------------------------------------
    def _load_training_state(self, ckpt: Path) -> None:
        if self.sharded != (ckpt / SHARDED_STATE_DIR).is_dir():
            raise UserInputError(f"--resume_from {ckpt}: written {'without' if self.sharded else 'with'} sharded "
                                 f"optimiser state ({SHARDED_STATE_DIR}/), this run is "
                                 f"{describe_distribution(self.acc)['mode']}; resume it under the accelerate config "
                                 "that wrote it")
        if self.sharded:
            self.acc.load_state(str(ckpt / SHARDED_STATE_DIR))
        else:
            opt_state = select_param_groups(load_torch_state(ckpt / "optimizer.pt", map_location=self.acc.device),
                                            self.optimizer, ckpt)
            check_optimizer_state_fits(opt_state, self.optimizer, ckpt)
            try:
                self.optimizer.load_state_dict(opt_state)
            except (ValueError, RuntimeError, KeyError) as e:
                raise UserInputError(f"--resume_from {ckpt}: optimizer state does not fit this run "
                                     f"({str(e).splitlines()[0] if str(e) else type(e).__name__})")
        try:
            self.scheduler.load_state_dict(load_torch_state(ckpt / "scheduler.pt"))
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            raise UserInputError(f"--resume_from {ckpt}: scheduler.pt does not fit this run ({e})")
        apply_base_lrs(self.optimizer, self.scheduler, self.base_lrs)
        finish_resume(ckpt, self.rank, self.world, self.state, self.changed, self.is_main)

    # ---- output directory ----------------------------------------------------------------------
    def prepare_output_dir(self) -> None:
        """Every check has passed: now (and only now) --overwrite_output_dir removes the old run's files, and a
        resumed run's logs lose the records of steps after its checkpoint ('auto' without one: all of them)."""
        if self.is_main:
            prepare_output_dir(self.out, self.run_args(),
                               overwrite_files=output_dir_artifacts(self.out, self.token_log)
                               if self.cfg.overwrite_output_dir else (),
                               logs=[p for p in (self.out / "metrics.jsonl", self.token_log) if p is not None],
                               keep_records_through=self.start_step if self.cfg.resume_from else None)
        self.acc.wait_for_everyone()

    # ---- experience ----------------------------------------------------------------------------
    def _step_examples(self, step: int) -> tuple[list[dict], list[list[int]], list]:
        c = self.cfg
        n_local = c.batch_size * c.gradient_accumulation_steps
        idx = sample_step_indices(len(self.train_split), n_local * self.world, c.seed, step)
        idx = shard(idx, self.rank, self.world)
        examples = self.train_split.select(idx).to_list()
        cseed = step_candidate_seed(c.seed, step)
        cands = [sample_candidates(int(ex["item_id"]), ex["history_item_id"], self.dataset.n_items, c.K, cseed,
                                   int(ex["interaction_id"])) for ex in examples]
        prompts = [self.prompter.build(ex, cs) for ex, cs in zip(examples, cands)]
        return examples, cands, prompts

    def _policy_logp_parts(self, out, rankings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(PL log-prob of each ranking [B, M], the log-prob of the user's K reasoning texts [B, 1] or None)."""
        scores = out.scores.float().unsqueeze(1).expand(-1, rankings.shape[1], -1)
        pl = pl_log_prob(scores, rankings, self.cfg.temperature)
        if self.cfg.reasoning and out.token_logprobs is not None:
            return pl, out.token_logprobs.float().sum(-1, keepdim=True)
        return pl, None

    def _policy_logp(self, out, rankings: torch.Tensor) -> torch.Tensor:
        """log π(ranking) [B, M]: PL log-prob of each ranking (+ the reasoning texts' log-probs in reasoning mode)."""
        pl, tok = self._policy_logp_parts(out, rankings)
        return pl if tok is None else pl + tok

    def _score(self, prompts, with_values: bool):
        return self.model(prompts, scoring=self.cfg.scoring, with_values=with_values,
                          with_token_logprobs=self.cfg.reasoning, sampling=self.sampling)

    def _reference_logp(self, prompts, rankings: torch.Tensor) -> torch.Tensor | None:
        if self.cfg.kl_coef <= 0:
            return None
        with self.step_timer.phase("reference"):
            if self.ref_judge is not None:
                out = self.ref_judge(prompts, scoring=self.cfg.scoring, with_token_logprobs=self.cfg.reasoning,
                                     sampling=self.sampling)
            else:  # LoRA: the reference policy is the base model, i.e. the same weights with the adapters switched off
                with self.judge.lm.disable_adapter():
                    out = self._score(prompts, with_values=False)
            return self._policy_logp(out, rankings)

    @torch.no_grad()
    def make_experience(self, step: int) -> Rollout:
        c, dev = self.cfg, self.acc.device
        timer = self.step_timer
        with timer.phase("data"):
            examples, cands, prompts = self._step_examples(step)
        self.model.eval()
        token_lengths = None
        with self.acc.autocast():
            if c.reasoning:
                # generation samples from the global torch RNG: seed it per (step, process) so a resume replays it
                torch.manual_seed(derived_seed(c.seed, step, self.rank, 2))
                with timer.phase("generation"):
                    prompts = self.judge.generate_reasoning(prompts, c.max_new_tokens, do_sample=True,
                                                            sampling=self.sampling, scoring=c.scoring)
                token_lengths = [[int(e - s) for s, e in p.reasoning_spans] for p in prompts]
            with timer.phase("rollout_scoring"):
                out = self._score(prompts, with_values=c.uses_critic)
        M = c.rankings_per_user
        # Gumbel noise seeded per (step, user): the rankings of a user do not depend on the process layout. Drawn on
        # the host per user, copied to the device once, all users sorted in one call.
        K = out.scores.shape[-1]
        uniform = torch.stack([
            torch.rand((M, K), dtype=torch.float64, generator=torch.Generator().manual_seed(
                derived_seed(c.seed, step, int(ex["interaction_id"]), 1))) for ex in examples]).to(dev)
        rankings = gumbel_topk_from_uniform(out.scores.float().unsqueeze(1).expand(-1, M, -1), uniform,
                                            c.temperature)  # [B, M, K]
        old_pl_logp, old_token_logp = self._policy_logp_parts(out, rankings)
        old_logp = old_pl_logp if old_token_logp is None else old_pl_logp + old_token_logp
        target_idx = torch.tensor([cs.index(int(ex["item_id"])) for ex, cs in zip(examples, cands)], device=dev)
        rewards = ndcg_reward(rankings, target_idx.unsqueeze(1).expand(-1, M), c.K_eval).to(dev)  # [B, M]
        old_values = out.values.float() if c.uses_critic else None
        adv, returns = get_advantage_estimator(c.advantage_estimator)(rewards, old_values)
        if c.normalize_advantage:
            adv = normalize_advantages(adv, all_reduce_sum=self._all_reduce_sum if self.world > 1 else None)
        with self.acc.autocast():
            ref_logp = self._reference_logp(prompts, rankings)
        return Rollout(examples=examples, candidates=cands, prompts=prompts, rankings=rankings,
                       target_index=target_idx, scores=out.scores.float(), old_logp=old_logp,
                       old_pl_logp=old_pl_logp, old_token_logp=old_token_logp, ref_logp=ref_logp, rewards=rewards,
                       old_values=old_values, returns=returns, advantages=adv, token_lengths=token_lengths)

    # ---- update ------------------------------------------------------------------------------
    def _clip_gradients(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Clip to --max_grad_norm (<= 0: measure only); returns the pre-clip norms (actor or whole model, critic)
        as device tensors."""
        c = self.cfg
        limit = c.max_grad_norm if c.max_grad_norm > 0 else float("inf")
        if uses_deepspeed(self.acc):  # DeepSpeed clips in its engine (build_accelerator set it to --max_grad_norm)
            gn = self.acc.clip_grad_norm_(self.model.parameters(), limit)
            return (torch.as_tensor(gn if gn is not None else float("nan"), device=self.acc.device), None)
        # Actor and critic separately (DDP and FSDP alike): the value head's gradients must not shrink the actor's.
        gn = self.acc.clip_grad_norm_(self.actor_params, limit)
        cn = self.acc.clip_grad_norm_(self.critic_params, limit) if self.critic_params else None
        return gn, cn

    def micro_batches(self, prompts: Sequence) -> list[MicroBatch]:
        """The step's users split for the update: --batch_size users each, or with --max_tokens_per_micro_batch the
        shared path's own forward chunks under that budget (the rollout's scoring pass built and cached exactly
        these layouts), and for naive scoring consecutive users up to that many tokens."""
        c = self.cfg
        if c.max_tokens_per_micro_batch <= 0:
            return fixed_micro_batches(len(prompts), c.batch_size)
        if c.scoring == "shared":
            return from_index_groups(user_chunks(self.judge, prompts, "packed"))
        return token_budget_micro_batches([p.n_tokens(shared=False) for p in prompts], c.max_tokens_per_micro_batch)

    def accumulate_gradients(self, r: Rollout, micro: Sequence[MicroBatch], stats: StepStats) -> None:
        """Forward and backward of every micro-batch of one optimiser step, leaving in .grad the gradient of the mean
        loss over all the rollout's users (however `micro` splits them); the diagnostics go to `stats` on the
        device. accelerate syncs gradients across processes at the last micro-batch only."""
        c, n, timer = self.cfg, len(r.prompts), self.step_timer
        self.acc.gradient_accumulation_steps = len(micro)  # accelerate's accumulate()/backward count these
        self.acc.step = 0
        equal = len({b - a for a, b in micro}) == 1  # then a plain mean over micro-batches is the mean over users
        for a, b in micro:
            with self.acc.accumulate(self.model):
                with timer.phase("update_forward"):
                    new = self._score(r.prompts[a:b], with_values=c.uses_critic)
                    new_pl, new_tok = self._policy_logp_parts(new, r.rankings[a:b])
                    new_logp = new_pl if new_tok is None else new_pl + new_tok
                    old_logp = r.old_logp[a:b]
                    pol, clipfrac = clipped_surrogate(new_logp, old_logp, r.advantages[a:b], c.clip_eps)
                    loss = pol
                    users = 1.0 if equal else float(b - a)  # diagnostics: means over the step's users
                    stats.mean("policy_loss", pol, users)
                    if c.uses_critic:
                        vloss = clipped_value_loss(new.values.float(), r.old_values[a:b], r.returns[a:b], c.clip_eps)
                        loss = loss + c.vf_coef * vloss
                        stats.mean("value_loss", vloss, users)
                    if r.ref_logp is not None:
                        kl = kl_penalty(new_logp, r.ref_logp[a:b])
                        loss = loss + c.kl_coef * kl
                        stats.mean("kl_ref", kl, users)
                with timer.phase("update_backward"):
                    self.acc.backward(loss * micro_batch_loss_factor((a, b), n, len(micro)))
            # rollout policy -> current policy, on the rollout's samples (before this optimiser step)
            ratio = torch.exp((new_logp - old_logp).detach().float())
            stats.mean("clipfrac", clipfrac, users)
            stats.mean("approx_kl", approx_kl_k3(old_logp, new_logp), users)
            if new_tok is not None:
                stats.mean("approx_kl_ranking", approx_kl_k3(r.old_pl_logp[a:b], new_pl), users)
                stats.mean("approx_kl_reasoning", approx_kl_k3(r.old_token_logp[a:b], new_tok), users)
            stats.mean("ratio_mean", ratio.mean(), users)
            stats.max("ratio_max", ratio)

    def optimizer_step(self, stats: StepStats) -> None:
        """Clip (the pre-clip norms go to `stats`), step, zero the gradients."""
        with self.step_timer.phase("optimizer"):
            actor_norm, critic_norm = self._clip_gradients()
            stats.mean("grad_norm", actor_norm)
            stats.max("grad_norm_max", actor_norm)
            if critic_norm is not None:
                stats.mean("grad_norm_critic", critic_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def update(self, r: Rollout, stats: StepStats | None = None) -> dict[str, float]:
        """--ppo_epochs optimiser steps over the rollout, each over all its users (micro_batches splits them);
        returns the step's losses and diagnostics (docs/training.md): means over the step's users (grad norms: over
        the optimiser steps) and maxima, with whatever `stats` already held (the rollout's), read from the device
        once for the whole update (no other host read: the micro-batches are slices, not index tensors built on the
        host)."""
        self.model.train()
        micro = self.micro_batches(r.prompts)
        stats = stats if stats is not None else StepStats()
        for _epoch in range(self.cfg.ppo_epochs):
            self.accumulate_gradients(r, micro, stats)
            self.optimizer_step(stats)
        self.scheduler.step()
        self.model.eval()
        return stats.read()

    # ---- one step, logged --------------------------------------------------------------------
    def training_step(self, step: int) -> tuple[dict[str, Any], Rollout]:
        t0 = time.time()
        self.step_timer.reset()
        lrs = self.learning_rates()  # lr (actor), lr_critic
        rollout = self.make_experience(step)
        c = self.cfg
        # What the rollout says about the policy before the update (PL entropies, greedy NDCG) and about the critic:
        # on the device, read with the update's losses in one go
        step_stats = StepStats()
        step_stats.mean("reward", rollout.rewards.mean())
        step_stats.mean("ndcg", ndcg_at_tensor(target_rank_tensor(rollout.scores, rollout.target_index),
                                               c.K_eval).double().mean())
        step_stats.mean("pl_entropy_mc", pl_entropy_mc(rollout.old_pl_logp))
        step_stats.mean("pl_entropy_top1", pl_first_position_entropy(rollout.scores, c.temperature))
        if rollout.old_values is not None:
            step_stats.mean("value_mean", rollout.old_values.mean())
        explained = None
        if rollout.old_values is not None:  # of each ranking's reward by V (what the baseline removes), global batch:
            # its sums stay on the device and are read after the update, not before it
            explained = explained_variance_sums(rollout.rewards, rollout.old_values.unsqueeze(1),
                                                all_reduce_sum=self._all_reduce_sum if self.world > 1 else None)
        local = self.update(rollout, step_stats)
        maxima = {k: local.pop(k) for k in [k for k in local if k.endswith("_max")]}
        mean = mean_over_processes(self.acc, local)
        mean.update(max_over_processes(self.acc, maxima))
        if explained is not None:
            mean["explained_variance"] = explained_variance_from_sums(explained)
        # Tokens through the model this step, all processes: the rollout pass, the PPO passes (and the reference).
        shared = c.scoring == "shared"
        scoring_forwards = 1 + (1 if rollout.ref_logp is not None else 0)
        tokens = sum(p.n_tokens(shared) for p in rollout.prompts)
        pairs = sum(p.n_attended_pairs(shared) for p in rollout.prompts)
        # Model FLOPs (models/flops.py): the scoring forwards, reasoning generation counted as one more forward over
        # the final sequences, and ppo_epochs training passes; hardware FLOPs add checkpointing's recompute.
        flops, hw_flops = self.model_flops.of_step(tokens, pairs, scoring_forwards + (1 if c.reasoning else 0),
                                                   c.ppo_epochs, recompute=c.gradient_checkpointing)
        passes = scoring_forwards + c.ppo_epochs
        tokens, flops, hw_flops = tokens * passes, flops, hw_flops
        if self.world > 1:  # host numbers of every process, summed (one process: nothing to copy to the device)
            tokens, flops, hw_flops = self.acc.reduce(torch.tensor([tokens, flops, hw_flops], dtype=torch.float64,
                                                                   device=self.acc.device), reduction="sum").tolist()
        # this process's phases (the GPU timeline on CUDA: the events are complete, the step has read its results)
        phases = {f"time_{k}_s": v for k, v in self.step_timer.read().items()}
        res = step_resources(self.acc.device, t0)
        dt = max(res["step_seconds"], 1e-9)
        rec = {"step": step, **mean, **lrs,
               "samples_per_s": len(rollout.prompts) * self.world / dt, **res, **phases,
               "tokens": int(tokens), "tokens_per_s": tokens / dt, "tflops_per_s": flops / dt / 1e12}
        if self.peak_tflops:  # all processes' FLOPs against all their GPUs' dense bf16 peak
            rec["mfu"] = rec["tflops_per_s"] / (self.peak_tflops * self.world)
            rec["hfu"] = hw_flops / dt / 1e12 / (self.peak_tflops * self.world)
        return rec, rollout

    # ---- validation, examples, checkpoints -----------------------------------------------------
    @property
    def val_key(self) -> str:
        """The validation metric's name: NDCG@K_eval of greedy rankings of eval_K candidates on the valid split."""
        return f"val_NDCG@{self.cfg.K_eval}_K{self.cfg.eval_K}"

    def validate(self) -> dict[str, float] | None:
        """Greedy NDCG on --num_valid_samples validation examples of --eval_K candidates (test.py's protocol),
        sharded over the processes (each scores its share; shards are padded to equal length so every process runs
        the same forwards)."""
        c = self.cfg
        if len(self.dataset.split("valid")) == 0:
            if self.is_main:
                print(f"warning: the valid split of {c.dataset_path} is empty; no validation")
            return None
        rng = capture_rng_state()  # evaluation must not perturb training randomness
        items = build_eval_items(self.dataset, "valid", c.num_valid_samples, c.eval_K, c.seed)
        mine = shard(items, self.rank, self.world)
        per = math.ceil(len(items) / self.world)
        padded = mine + [mine[-1] if mine else items[0]] * (per - len(mine))
        with self.acc.autocast():
            samples = rank_examples(self.judge, self.prompter, padded, JudgeRankSettings(
                scoring=c.scoring, batch_size=c.batch_size, max_new_tokens=c.max_new_tokens, seed=c.seed,
                progress=False, sampling=self.sampling), forward=self.model)
        restore_rng_state(rng)
        ranks = [s["target_rank"] for s in samples[:len(mine)]]
        all_ranks = [x for part in gather_objects(self.acc, ranks) for x in part]
        return metrics_from_ranks(all_ranks, eval_ks(c.K_eval))

    def print_examples(self, step: int, rec: dict, r: Rollout, write) -> None:
        titles = self.dataset.titles
        ex, cands = r.examples[0], r.candidates[0]
        order = r.rankings[0, 0].tolist()
        hist = [titles[int(i)] for i in ex["history_item_id"]][-3:]
        lines = [f"[step {step}] interaction {ex['interaction_id']}: reward {float(r.rewards[0, 0]):.3f}",
                 f"  history (last {len(hist)}): " + " | ".join(hist),
                 f"  target: {titles[int(ex['item_id'])]}"]
        for n, i in enumerate(order[:3], 1):
            mark = " *" if cands[i] == int(ex["item_id"]) else ""
            lines.append(f"  sampled {n}. [{float(r.scores[0][i]):+.3f}] {titles[cands[i]]}{mark}")
        if self.cfg.reasoning:
            p = r.prompts[0]
            s, e = p.reasoning_spans[order[0]]
            lines.append(f"  reasoning: {self.judge.tokenizer.decode(p.suffix_ids[order[0]][s:e])!r}")
        write("\n".join(lines))

    def _save_judge(self, out: Path, state: dict | None, merge_adapter: bool = False) -> None:
        """The judge's model files (LM + tokenizer + value head) into out; state: the full state dict gathered from
        FSDP/DeepSpeed shards (None: the unwrapped judge's own weights)."""
        if state is None:
            self.judge.save(out, merge_adapter=merge_adapter)
            return
        self.judge.save(out, merge_adapter=merge_adapter,
                        lm_state_dict={k[len("lm."):]: v for k, v in state.items() if k.startswith("lm.")},
                        heads_state_dict={k[len("value_head."):]: v for k, v in state.items()
                                          if k.startswith("value_head.")})

    def _write_checkpoint_files(self, tmp: Path) -> None:
        """What each process contributes to a checkpoint (collective under FSDP/DeepSpeed)."""
        if self.sharded:
            state = self.acc.get_state_dict(self.model)  # full state dict, gathered on the main process
            self.acc.save_state(str(tmp / SHARDED_STATE_DIR))
            if self.is_main:
                self._save_judge(tmp, state)
                for f in (tmp / SHARDED_STATE_DIR).glob("random_states_*.pkl"):
                    f.unlink()  # pickles; our own rng_state_rank*.pt load with weights_only=True
        elif self.is_main:
            self._save_judge(tmp, None)
            save_torch(self.optimizer.state_dict(), tmp / "optimizer.pt")
        if self.is_main:
            save_torch(self.scheduler.state_dict(), tmp / "scheduler.pt")

    def save_checkpoint(self, step: int) -> Path:
        state = {"step": step, "world_size": self.world, "max_steps": self.max_steps,
                 "wall_time": self.state.get("wall_time", 0.0), "base_model": str(self.base_model_dir),
                 "lora": self.judge.lora_settings_dict()}
        if "validation" in self.state:  # the latest validation (the final one in the last checkpoint)
            state["validation"] = self.state["validation"]
        return write_checkpoint(self.out, step, self._write_checkpoint_files, state, self.cfg.to_dict(),
                                rank=self.rank, barrier=self.acc.wait_for_everyone,
                                save_total_limit=self.cfg.save_total_limit)

    def save_final(self) -> Path | None:
        """{output_dir}/final: the trained model to evaluate or share (LM + tokenizer + value head; merged with
        --merge_lora), written atomically."""
        state = self.acc.get_state_dict(self.model) if self.sharded else None  # collective: every process

        def write_files(tmp: Path) -> None:
            self._save_judge(tmp, state, merge_adapter=self.cfg.merge_lora)
            atomic_write_json(tmp / "training_args.json", self.cfg.to_dict())

        return write_final_model(self.out / FINAL_DIR, write_files, self.is_main, self.acc.wait_for_everyone)

    # ---- the lifecycle's hooks (BaseTrainer.train runs the loop) -------------------------------------
    def should_evaluate(self, step: int) -> bool:
        c = self.cfg
        return (c.eval_every > 0 and step % c.eval_every == 0) or step == self.max_steps

    def evaluate(self, step: int) -> dict[str, Any]:
        """The validation metric for the step's record; the last step's is the final validation (logged, tracked,
        kept in the checkpoint's trainer_state.json)."""
        c = self.cfg
        m = self.validate()
        if m is None:
            return {}
        self.state["validation"] = {"step": step, "split": "valid", "K": c.eval_K, "n": m["n"],
                                    **{k: v for k, v in m.items() if k != "n"}}
        return {self.val_key: m[f"NDCG@{c.K_eval}"]}

    def should_save(self, step: int, evaluated: bool) -> bool:
        return step % self.cfg.save_every == 0

    def after_step(self, step: int, record: dict[str, Any], rollout: Rollout, write: Callable[[str], None]) -> None:
        c = self.cfg
        if c.reasoning and self.token_log is not None:
            self._log_tokens(step, rollout.token_lengths)  # collective: every process
        if self.is_main and c.print_every and step % c.print_every == 0:
            self.print_examples(step, record, rollout, write)

    def progress_postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"reward": f"{record['reward']:.3f}", "ndcg": f"{record['ndcg']:.3f}",
                "kl": f"{record['approx_kl']:.2g}"}

    def finish(self, step: int, early_stopped: bool) -> Path | None:
        """The final validation's line, {output_dir}/final, training.png."""
        c = self.cfg
        final_val = self.state.get("validation")
        final_val = final_val if final_val is not None and final_val.get("step") == self.max_steps else None
        self.final_validation = final_val
        if final_val is not None and self.tracking:  # the trackers' copy of the whole final validation
            log_to_trackers(self.acc, {"step": self.max_steps, "final_validation": {
                k: v for k, v in final_val.items() if k not in ("step", "split")}})
        if final_val is not None and self.is_main:
            print(f"validation at step {self.max_steps}: NDCG@{c.K_eval} of {final_val['K']} candidates = "
                  f"{final_val[f'NDCG@{c.K_eval}']:.4f} (n={final_val['n']}; metrics.jsonl: {self.val_key})")
        final = self.save_final()
        if self.is_main:
            print(f"final model: {self.out / FINAL_DIR}")
        if self.is_main and not c.no_plot and (self.out / "metrics.jsonl").exists():
            plot_training(self.out / "metrics.jsonl", self.out / "training.png")
        return final

    def after_train(self) -> None:
        if self.cfg.write_param_checksums:
            atomic_write_text(self.out / f"param_checksum_rank{self.rank}.txt", param_checksum(self.judge) + "\n")

    def result(self) -> dict[str, Any]:
        return {"final_validation": self.final_validation}

    def _log_tokens(self, step: int, lengths: list[list[int]] | None) -> None:
        gathered = gather_objects(self.acc, lengths)
        if self.is_main:
            flat = [n for per_rank in gathered for per_user in (per_rank or []) for n in per_user]
            append_jsonl(self.token_log, [{"step": step, "lengths": gathered,
                                           "mean": float(np.mean(flat)) if flat else 0.0,
                                           "max": int(max(flat)) if flat else 0}])


# ---------------------------------------------------------------------------------------------- helpers
def judge_checkpoint_files() -> list[tuple[str, ...]]:
    """What a complete train.py checkpoint must hold (any one of each group)."""
    return [("config.json", ADAPTER_CONFIG_FILE), tuple(WEIGHT_FILES) + tuple(ADAPTER_WEIGHT_FILES),
            tuple(TOKENIZER_FILES), (HEADS_FILE,), ("optimizer.pt", SHARDED_STATE_DIR), ("scheduler.pt",),
            ("trainer_state.json",), ("args.json",)]


def output_dir_artifacts(out: Path, token_log: Path | None) -> list[Path]:
    """What a run writes into --output_dir (and --overwrite_output_dir may remove)."""
    return run_files(out, [token_log] if token_log is not None else [])  # --token_log_path may lie elsewhere


def run_training(cfg: PPOConfig) -> dict[str, Any]:
    """train.py's entry point: validate, lock the output dir, build, train, release (foundation run_trainer)."""
    return run_trainer(cfg, PPOTrainer)
