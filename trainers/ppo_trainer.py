"""PL-PPO training of the binary judge (DESIGN.md section 5), on accelerate.

One training step reads as: make_experience(step) -> Rollout -> update(rollout) -> one metrics.jsonl record.

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
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from models.abstract_models import LoraSettings, check_model_dir, disable_dropout
from models.flops import ModelFlops, peak_tflops
from models.qwen_models import BinaryJudge, SamplingSettings
from models.shared_prefix import user_chunks
from paths import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHT_FILES, HEADS_FILE, TOKENIZER_FILES, WEIGHT_FILES
from prompters.binary_prompter import BinaryPrompter, load_template
from trainers.data.candidates import sample_candidates
from trainers.data.dataset import check_dataset_type, load_processed_dataset
from trainers.evaluation.judge import JudgeRankSettings, rank_examples
from trainers.evaluation.metrics import (eval_ks, metrics_from_ranks, ndcg_at_tensor, ndcg_reward,
                                         target_rank_tensor)
from trainers.evaluation.protocol import build_eval_items
from foundation.checkpoints import (apply_base_lrs, capture_rng_state, check_optimizer_state_fits,
                                             finish_resume, load_torch_state, open_resume, prepare_output_dir,
                                    restore_rng_state, run_files, save_torch, select_param_groups,
                                    write_checkpoint, write_final_model)
from foundation.config import SEED_MAX, RunConfig, config_from_args, option, require
from foundation.config import build_parser as config_parser
from foundation.distributed import (StopRequest, TrainerProcess, any_process, configure_deepspeed,
                                    describe_distribution, gather_objects, init_tracking, is_sharded, log_metrics,
                                    max_over_processes, mean_over_processes, run_trainer, shard, step_resources,
                                    uses_deepspeed)
from foundation.errors import UserInputError
from foundation.files import append_jsonl, atomic_write_json, atomic_write_text
from foundation.plotting import plot_training
from foundation.seeding import derived_seed
from foundation.step_timing import PhaseTimer
from trainers.rl.advantages import (ADVANTAGE_ESTIMATORS, estimator_uses_critic, get_advantage_estimator,
                                    normalize_advantages)
from trainers.rl.diagnostics import StepStats, explained_variance, pl_entropy_mc, pl_first_position_entropy
from trainers.rl.kl import approx_kl_k3, kl_penalty
from trainers.rl.losses import clipped_surrogate, clipped_value_loss
from trainers.rl.micro_batches import (MicroBatch, fixed_micro_batches, from_index_groups, micro_batch_loss_factor,
                                       token_budget_micro_batches)
from trainers.rl.pl import gumbel_topk_from_uniform, pl_log_prob
from trainers.utils import SCHEDULERS, lr_lambda_factory, param_checksum, sample_step_indices, step_candidate_seed

FINAL_DIR = "final"
SHARDED_STATE_DIR = "accelerate_state"  # FSDP/DeepSpeed optimizer and model shards (accelerator.save_state)


# ---------------------------------------------------------------------------------------------- config
@dataclass
class PPOConfig(RunConfig):
    """Every setting of a PL-PPO run; train.py turns each field into a flag (the shared precision, LoRA and run
    settings come from foundation/config.RunConfig)."""

    OPERATIONAL = RunConfig.OPERATIONAL + ("save_every", "save_total_limit", "print_every", "eval_every",
                                           "num_valid_samples", "eval_K", "token_log_path", "no_plot",
                                           "write_param_checksums", "scoring_chunk_size")
    G_DATA = "data and model"
    # data and model
    model_name_or_path: str = option("demo/tiny-qwen", "base model directory or known name (paths.py); a PEFT "
                                     "adapter directory continues training that adapter", group=G_DATA)
    dataset_path: str = option("demo/data/Video_Games_5_2021-1-2023-12",
                               "processed DatasetDict written by preprocess.py", group=G_DATA)
    dataset_type: str = option("other", "movies|other: which binary prompt template", group=G_DATA)
    prompt_template: str | None = option(None, "file overriding the binary prompt template", group=G_DATA)
    max_len_per_item: int = option(64, "tokens of item text per history/candidate item", group=G_DATA)
    user_window_size: int = option(10, "history items shown in the prompt", group=G_DATA)
    scoring_chunk_size: int = option(32, "prompts per forward pass in naive scoring (the shared path packs "
                                         "users up to the same token budget)", group=G_DATA,
                                     aliases=("--micro_batch_size",))
    output_dir: str = option("outputs/ppo", "checkpoint-N/ directories, final/ (the finished model), "
                                            "metrics.jsonl, training.png", group="run: output, resume, tracking")
    # ranking and reward
    K: int = option(20, "candidates per user (target + K-1 negatives)", group="ranking and reward")
    K_eval: int = option(10, "NDCG cut-off of the reward and validation metric", group="ranking and reward")
    eval_K: int = option(20, "candidates per validation example (target + eval_K-1 negatives), as test.py's --K "
                             "(default 20): validation ranks what evaluation ranks, whatever the training --K; its "
                             "metrics are named with both, e.g. val_NDCG@10_K20", group="ranking and reward")
    temperature: float = option(1.0, "PL temperature τ on the scores", group="ranking and reward")
    scoring: str = option("naive", "naive|shared: per-prompt or shared-prefix scoring", group="ranking and reward")
    max_new_tokens: int = option(0, "reasoning tokens per candidate (0 = direct mode)", group="ranking and reward")
    gen_temperature: float = option(1.0, "sampling temperature of reasoning generation",
                                    group="ranking and reward")
    gen_top_k: int = option(50, "top-k of reasoning sampling (0 = off)", group="ranking and reward")
    gen_top_p: float = option(1.0, "top-p of reasoning sampling (1 = off)", group="ranking and reward")
    gen_batch_size: int = option(256, "(user, candidate) rows decoded together in reasoning generation with "
                                      "--scoring shared (memory: rows x prompt length of KV cache)",
                                 group="ranking and reward")
    # optimisation
    batch_size: int = option(4, "users per process per micro-batch (one forward/backward)", group="optimisation")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimiser step (HF's meaning: a step sees "
                                                 "batch_size x this x processes users)", group="optimisation")
    max_steps: int = option(-1, "training steps (<= 0: from --num_train_epochs)", group="optimisation")
    num_train_epochs: float = option(1.0, "used when --max_steps <= 0: epochs over the train split",
                                     group="optimisation")
    ppo_epochs: int = option(2, "optimiser updates per rollout batch", group="optimisation")
    clip_eps: float = option(0.2, "PPO ratio clip (also the value clip)", group="optimisation")
    rankings_per_user: int = option(4, "PL rankings sampled per user from one scoring pass: more samples, lower-"
                                       "variance gradients at almost no extra cost", group="optimisation")
    advantage_estimator: str = option("critic", "critic: A = R - V with the value head as the baseline (PPO, trains "
                                                "the value head); rloo: R minus the mean reward of the user's other "
                                                "rankings; grpo: (R - mean) / std over the user's rankings. rloo and "
                                                "grpo need --rankings_per_user >= 2 and do not run or train the value "
                                                "head (no value loss, --lr_critic and --vf_coef unused)",
                                      group="optimisation")
    kl_coef: float = option(0.0, "KL penalty to the frozen initial model (0 = none; with LoRA the reference is "
                                 "the base model with adapters disabled)", group="optimisation")
    vf_coef: float = option(1.0, "weight of the value loss", group="optimisation")
    lr_actor: float = option(1e-5, "learning rate of the backbone (or the LoRA adapters)", group="optimisation")
    lr_critic: float = option(1e-4, "learning rate of the value head", group="optimisation")
    weight_decay: float = option(0.0, "AdamW weight decay (actor and critic)", group="optimisation")
    warmup_steps: int = option(0, "linear learning-rate warmup steps before --lr_scheduler takes over",
                               group="optimisation")
    lr_scheduler: str = option("constant", "constant|cosine (after warmup)", group="optimisation")
    max_grad_norm: float = option(1.0, "gradient clipping, actor and critic separately (<= 0: off; the pre-clip "
                                       "norm is logged either way)", group="optimisation")
    normalize_advantage: bool = option(True, "standardise advantages over the global batch (needs >= 2 "
                                             "samples in it)", group="optimisation")
    seed: int = option(42, "seed of model init, batch order, candidates and PL/reasoning sampling",
                       group="optimisation", min=0, max=SEED_MAX)
    # logging, validation, checkpoints
    save_every: int = option(100, "checkpoint every N steps (and at the end)", group="logging and checkpoints")
    save_total_limit: int = option(3, "keep the newest N checkpoints (<= 0: all)", group="logging and checkpoints")
    print_every: int = option(50, "print example rankings every N steps (0 = never)",
                              group="logging and checkpoints")
    eval_every: int = option(0, "validation NDCG every N steps and at the last step (0 = only at the last step)",
                             group="logging and checkpoints")
    num_valid_samples: int = option(200, "validation examples (<= 0: all)", group="logging and checkpoints")
    token_log_path: str | None = option(None, "JSONL of reasoning output lengths (default "
                                              "{output_dir}/token_lengths.jsonl in reasoning mode)",
                                        group="logging and checkpoints")
    no_plot: bool = option(False, "do not write {output_dir}/training.png at the end",
                           group="logging and checkpoints")
    write_param_checksums: bool = option(False, "at the end every process writes "
                                                "{output_dir}/param_checksum_rank{R}.txt, a checksum of its weights "
                                                "(checks that DDP processes hold identical weights)",
                                         group="logging and checkpoints")
    # throughput of the update (issue 26; docs/performance.md)
    max_tokens_per_micro_batch: int = option(
        0, "0: micro-batches of --batch_size users (today's split); N > 0: every optimiser step still sees all "
           "--batch_size x --gradient_accumulation_steps users of the step, split into micro-batches of up to N "
           "tokens (packed users, counted as a forward counts them; one user always fits), and every shared-prefix "
           "forward of the run packs up to N tokens, so the update reuses the rollout's layouts. The gradient is the "
           "full-batch mean however the users are split", group="optimisation", min=0)
    adamw_implementation: str = option(
        "auto", "AdamW kernels: auto = fused on CUDA (one kernel for all weights), torch's default elsewhere (a "
                "CPU's fused kernel rounds differently from the for-each one, so CPU results stay as they were); "
                "fused|foreach force one", group="optimisation", choices=("auto", "fused", "foreach"))

    @property
    def reasoning(self) -> bool:
        return self.max_new_tokens > 0

    @property
    def uses_critic(self) -> bool:
        """Whether the advantage estimator needs the value head (else it is neither run nor trained)."""
        return estimator_uses_critic(self.advantage_estimator)

    def validate(self) -> None:
        check_dataset_type(self.dataset_type)
        self.validate_run()
        for flag, allowed in (("scoring", ("naive", "shared")), ("lr_scheduler", SCHEDULERS)):
            require(getattr(self, flag) in allowed, f"--{flag} {getattr(self, flag)!r}: must be one of "
                                                    f"{'|'.join(allowed)}")
        require(self.K >= 2, f"--K {self.K}: must be >= 2 (the target plus at least one negative)")
        require(1 <= self.K_eval <= self.K, f"--K_eval {self.K_eval}: must be in 1..--K ({self.K})")
        require(self.eval_K >= self.K_eval and self.eval_K >= 2,
                f"--eval_K {self.eval_K}: must be >= 2 and >= --K_eval ({self.K_eval})")
        require(self.advantage_estimator in ADVANTAGE_ESTIMATORS,
                f"--advantage_estimator {self.advantage_estimator!r}: must be one of {'|'.join(ADVANTAGE_ESTIMATORS)}")
        require(self.uses_critic or self.rankings_per_user >= 2,
                f"--advantage_estimator {self.advantage_estimator} compares the rankings of one user: it needs "
                f"--rankings_per_user >= 2 (got {self.rankings_per_user})")
        for flag in ("max_len_per_item", "user_window_size", "batch_size", "ppo_epochs", "save_every",
                     "rankings_per_user", "gradient_accumulation_steps", "scoring_chunk_size", "gen_batch_size"):
            require(getattr(self, flag) >= 1, f"--{flag} {getattr(self, flag)}: must be >= 1")
        for flag in ("temperature", "clip_eps", "gen_temperature"):
            v = getattr(self, flag)
            require(v > 0 and math.isfinite(v), f"--{flag} {v}: must be a finite number > 0")
        for flag in ("kl_coef", "lr_actor", "lr_critic", "max_new_tokens", "warmup_steps", "eval_every",
                     "print_every", "gen_top_k", "weight_decay", "vf_coef"):
            v = getattr(self, flag)
            require(v >= 0 and math.isfinite(v), f"--{flag} {v}: must be >= 0")
        require(0 < self.gen_top_p <= 1, f"--gen_top_p {self.gen_top_p}: must be in (0, 1]")
        require(self.max_steps > 0 or self.num_train_epochs > 0, "--max_steps <= 0 needs --num_train_epochs > 0")
        # One user and one ranking per global batch would normalise every advantage to exactly 0.
        require(not self.normalize_advantage or self.batch_size * self.gradient_accumulation_steps
                * self.rankings_per_user >= 2,
                "--normalize_advantage with one sample per batch gives every advantage 0 (the actor would not "
                "learn); raise --batch_size or --rankings_per_user, or pass --no-normalize_advantage")
        if self.prompt_template:
            load_template(self.dataset_type, self.prompt_template)


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
class PPOTrainer(TrainerProcess):
    """Owns the accelerator, the judge, optimiser, scheduler and logs of one run (one instance per process)."""

    def __init__(self, cfg: PPOConfig, accelerator) -> None:
        super().__init__(cfg, accelerator)
        self.token_log = Path(cfg.token_log_path) if cfg.token_log_path else (
            self.out / "token_lengths.jsonl" if cfg.reasoning else None)
        self.sampling = SamplingSettings(cfg.gen_temperature, cfg.gen_top_k, cfg.gen_top_p).validate()

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
        lr = self.scheduler.get_last_lr()
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
        if rollout.old_values is not None:  # of each ranking's reward by V (what the baseline removes), global batch
            explained = explained_variance(rollout.rewards, rollout.old_values.unsqueeze(1),
                                           all_reduce_sum=self._all_reduce_sum if self.world > 1 else None)
        local = self.update(rollout, step_stats)
        maxima = {k: local.pop(k) for k in [k for k in local if k.endswith("_max")]}
        mean = mean_over_processes(self.acc, local)
        mean.update(max_over_processes(self.acc, maxima))
        if explained is not None:
            mean["explained_variance"] = explained
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
        tokens, flops, hw_flops = self.acc.reduce(torch.tensor([tokens * passes, flops, hw_flops], dtype=torch.float64,
                                                               device=self.acc.device), reduction="sum").tolist()
        # this process's phases (the GPU timeline on CUDA: the events are complete, the step has read its results)
        phases = {f"time_{k}_s": v for k, v in self.step_timer.read().items()}
        res = step_resources(self.acc.device, t0)
        dt = max(res["step_seconds"], 1e-9)
        lrs = {"lr_actor": lr[0], **({"lr_critic": lr[1]} if c.uses_critic else {})}
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

    # ---- main loop ---------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        c = self.cfg
        self.prepare_output_dir()
        tracking = init_tracking(self.acc, "ourrec_ppo", c)
        t_start = time.time()
        wall_offset = float(self.state.get("wall_time", 0.0))
        last: dict[str, Any] = {}
        stopped_by: str | None = None
        saved_step = self.start_step
        bar = tqdm(total=self.max_steps, initial=self.start_step, desc="PL-PPO", unit="step",
                   disable=not self.is_main, dynamic_ncols=True)
        with StopRequest() as stop:
            for step in range(self.start_step + 1, self.max_steps + 1):
                rec, rollout = self.training_step(step)
                if (c.eval_every > 0 and step % c.eval_every == 0) or step == self.max_steps:
                    m = self.validate()  # the last step's is the final validation: logged, tracked, checkpointed
                    if m is not None:
                        rec[self.val_key] = m[f"NDCG@{c.K_eval}"]
                        self.state["validation"] = {"step": step, "split": "valid", "K": c.eval_K, "n": m["n"],
                                                    **{k: v for k, v in m.items() if k != "n"}}
                rec["wall_time"] = wall_offset + time.time() - t_start
                if c.reasoning and self.token_log is not None:
                    self._log_tokens(step, rollout.token_lengths)
                log_metrics(self.acc, self.out / "metrics.jsonl", rec, tracking)
                if self.is_main:
                    bar.update(1)
                    bar.set_postfix(reward=f"{rec['reward']:.3f}", ndcg=f"{rec['ndcg']:.3f}",
                                    kl=f"{rec['approx_kl']:.2g}")
                    if c.print_every and step % c.print_every == 0:
                        self.print_examples(step, rec, rollout, bar.write)
                last = rec
                if any_process(self.acc, stop.requested):
                    stopped_by = stop.signal_name or "a signal on another process"
                if step % c.save_every == 0 or step == self.max_steps or stopped_by:
                    self.state["wall_time"] = rec["wall_time"]
                    self.save_checkpoint(step)
                    saved_step = step
                if stopped_by:
                    break
        bar.close()
        final_val = None
        if stopped_by:
            if self.is_main:
                print(f"train.py: stopped by {stopped_by} after step {saved_step}; checkpoint-{saved_step} is "
                      f"complete; rerun with --resume_from auto to continue")
        else:
            final_val = self.state.get("validation")
            final_val = final_val if final_val is not None and final_val.get("step") == self.max_steps else None
            if final_val is not None and self.is_main:
                print(f"validation at step {self.max_steps}: NDCG@{c.K_eval} of {final_val['K']} candidates = "
                      f"{final_val[f'NDCG@{c.K_eval}']:.4f} (n={final_val['n']}; metrics.jsonl: {self.val_key})")
            self.save_final()
            if self.is_main:
                print(f"final model: {self.out / FINAL_DIR}")
            if self.is_main and not c.no_plot and (self.out / "metrics.jsonl").exists():
                plot_training(self.out / "metrics.jsonl", self.out / "training.png")
        if c.write_param_checksums:
            atomic_write_text(self.out / f"param_checksum_rank{self.rank}.txt", param_checksum(self.judge) + "\n")
        if tracking:
            self.acc.end_training()
        self.acc.wait_for_everyone()
        return {"last": last, "final_validation": final_val, "max_steps": self.max_steps, "stopped_by": stopped_by}

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
    names = ["metrics.jsonl", "training.png", "token_lengths.jsonl", "args.json", FINAL_DIR,
             *(p.name for p in out.glob("param_checksum_rank*.txt"))]
    return run_files(out, names + ([token_log] if token_log is not None else []))


def run_training(cfg: PPOConfig) -> dict[str, Any]:
    """train.py's entry point: validate, lock the output dir, build, train, release (foundation run_trainer)."""
    return run_trainer(cfg, PPOTrainer)


def build_parser():
    """train.py's flags: one per PPOConfig field."""
    return config_parser(PPOConfig, description="PL-PPO training of the binary judge (DESIGN.md section 5).")


def parse_config(argv: Sequence[str] | None = None) -> PPOConfig:
    """train.py's flags -> PPOConfig (validated later, inside run_training, so errors are one line)."""
    return config_from_args(PPOConfig, build_parser().parse_args(argv), validate=False)
