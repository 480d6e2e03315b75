"""RRec's base trainer (docs/rrec.md): settings, model, data order, the item table, evaluation with best-
checkpoint selection and early stopping, checkpoints, logs. The RL step lives in trainers/recpo_trainer.py.

A plain torch loop on accelerate (one process, or one per GPU with DDP under `accelerate launch`/torchrun).
Upstream's behaviour by default, setting by setting (README "RRec" lists each with its flag):
  LoRA r=4, alpha 128, dropout 0.05 on q/k/v/o/gate/up/down (every dropout then set to 0, as upstream's
  disable_dropout does), fp32 master weights with bf16 autocast on CUDA (--pure_bf16: bf16 weights), lr 1e-5
  with HF's constant schedule (which ignores the 32 warmup steps), gradient clipping 1.0, gradient checkpointing;
  the item table recomputed at every evaluation (the batch's targets re-encoded each step, RecPOTrainer);
  evaluation on start and every floor(n_train / (3 * train_batch_size) / 8) steps, greedy reasoning, full-
  catalogue ranking with the history masked, a checkpoint at every evaluation, the best by valid NDCG@10 kept
  (never rotated away) and copied to {output_dir}/final_checkpoint at the end, early stopping after 8
  evaluations without improvement.

Checkpoints `{output_dir}/checkpoint-{step}` (foundation/checkpoints.py writes them atomically):
model (PEFT adapter or full model) + tokenizer + rrec_config.json, optimizer.pt, scheduler.pt, item_table.pt,
rng_state_rank{r}.pt, trainer_state.json (step, best step/metric, early-stopping count), args.json, COMPLETE.
A checkpoint missing any of them is incomplete and never loaded. SIGTERM/SIGINT finish the step, write a
checkpoint and exit 0; --resume_from auto continues from the newest complete one.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from models.abstract_models import LoraSettings, check_model_dir, disable_dropout, load_causal_lm
from models.resolution import ITEM_TABLE_FILE, RREC_FINAL_DIR as FINAL_DIR, rrec_checkpoint_files
from models.rrec_models import RRecModel
from prompters.rrec_prompter import RRecPrompter, category_from_dataset_dir
from trainers.data.dataset import load_processed_dataset
from trainers.evaluation.protocol import build_eval_items
from trainers.evaluation.rrec import compute_item_table, rank_with_rrec, rrec_metrics
from foundation.checkpoints import (apply_base_lrs, check_optimizer_state_fits,
                                             finish_resume, load_torch_state,
                                             open_resume, prepare_output_dir, run_files, save_torch,
                                             write_checkpoint, write_final_model)
from foundation.config import SEED_MAX, RunConfig, option, require
from foundation.distributed import (StopRequest, TrainerProcess, any_process, gather_objects, init_tracking,
                                             is_sharded, log_metrics, mean_over_processes, shard, step_resources)
from foundation.errors import UserInputError
from foundation.files import atomic_write_json, read_json
from foundation.seeding import numpy_rng
from trainers.rl.advantages import ADVANTAGE_TYPES

OPTIMIZERS = ("adamw", "paged_adamw_8bit")
# How RecPO's losses weight a mini-batch's rollouts by advantage (trainers/recpo_trainer.py, docs/rrec.md):
# "upstream" = what upstream's code computes (every rollout weighted by the sum of the mini-batch's advantages),
# "per_row" = the paper's equations (each rollout weighted by its own advantage).
ADVANTAGE_BROADCASTS = ("upstream", "per_row")
G_DATA, G_LORA, G_SIM, G_ROLL, G_RECPO, G_OPT, G_EVAL = (
    "data and model", "LoRA", "similarity", "rollouts", "RecPO", "optimisation", "evaluation and checkpoints")


@dataclass
class RRecTrainingArguments(RunConfig):
    """Every setting of an RRec run (defaults: upstream's launch_train.sh); train_rrec.py turns each into a flag.
    The precision, LoRA and run settings are RunConfig's, with upstream's defaults redeclared here."""

    OPERATIONAL = RunConfig.OPERATIONAL + ("progress", "logging_steps", "eval_batch_size", "item_emb_batch_size",
                                           "save_total_limit")

    # data and model
    model_name_or_path: str = option("demo/tiny-qwen", "base causal LM (directory or known name, see paths.py); "
                                     "upstream trains Qwen2.5-3B-Instruct or gemma-2-2b-it", group=G_DATA)
    dataset_dir: str = option("demo/data/Video_Games_5_2021-1-2023-12", "processed dataset (ours or upstream "
                              "R2ec's layout)", group=G_DATA, aliases=("--dataset_path",))
    category: str = option("", "category for the prompts (default: from the dataset directory name)", group=G_DATA)
    model_type: str = option("", "qwen|gemma: the family's end-of-turn stop token (default: from the model's "
                                 "config.json)", group=G_DATA)
    user_window_size: int = option(20, "history items in the user prompt (upstream 20)", group=G_DATA)
    item_rating_stats: bool = option(True, "show each item's average_rating ('User Rating') and rating_number "
                                           "('Number of Buyers') in the item prompt, as upstream does; "
                                           "--no-item_rating_stats leaves both out: on real Amazon data they are "
                                           "crawl-time totals that include the valid/test period, a popularity "
                                           "signal from the future (docs/rrec.md). Recorded in the checkpoint; "
                                           "compare_model/rrec.py evaluates with the trained setting",
                                     group=G_DATA)
    attn_implementation: str = option("auto", "auto|flash_attention_2|sdpa|eager (auto: FA2 on GPU when installed)",
                                      group=G_DATA)
    gradient_checkpointing: bool = option(True, "recompute activations in backward (upstream: on); "
                                                "--no-gradient_checkpointing trades memory for speed", group=G_DATA)
    # LoRA
    use_lora: bool = option(True, "train LoRA adapters (upstream: on); --no-use_lora trains all weights",
                            group=G_LORA)
    lora_r: int = option(4, "LoRA rank (upstream 4)", group=G_LORA)
    lora_alpha: float = option(128.0, "LoRA alpha (upstream 128; scale = alpha / r)", group=G_LORA)
    lora_dropout: float = option(0.05, "LoRA dropout recorded in the adapter (upstream 0.05; inactive while "
                                       "--disable_dropout)", group=G_LORA)
    merge_lora: bool = option(False, "write final_checkpoint as a full model with the adapters merged in "
                                     "(checkpoints keep the adapter)", group=G_LORA)
    disable_dropout: bool = option(True, "set every dropout, LoRA's included, to 0 (upstream's disable_dropout)",
                                   group=G_LORA)
    # similarity
    similarity_type: str = option("dot", "dot|cosine|L2 (upstream: dot on normalised vectors = cosine)",
                                  group=G_SIM)
    similarity_temperature: float = option(0.02, "scores are divided by it (upstream 0.02)", group=G_SIM)
    similarity_normalization: bool = option(True, "L2-normalise user and item vectors first (upstream: on)",
                                            group=G_SIM)
    # rollouts
    group_size: int = option(4, "reasoning rollouts per user, G (upstream 4; G = 1 generates greedily, as "
                                "upstream does)", group=G_ROLL)
    max_new_tokens: int = option(640, "reasoning length limit in training and evaluation (upstream 640)",
                                 group=G_ROLL)
    gen_temperature: float = option(2.0, "rollout sampling temperature (upstream 2.0)", group=G_ROLL,
                                    aliases=("--temperature",))
    gen_top_k: int = option(50, "rollout top-k, 0 = off (upstream 50)", group=G_ROLL, aliases=("--top_k",))
    gen_top_p: float = option(1.0, "rollout top-p, 1 = off (upstream 1.0)", group=G_ROLL)
    repetition_penalty: float | None = option(None, "repetition penalty of rollouts and evaluation (default: the "
                                                    "model's generation_config.json, as upstream's vLLM gets it; "
                                                    "1.05 for Qwen2.5-Instruct)", group=G_ROLL)
    # RecPO
    reward_ndcg_k: int = option(1000, "k of the NDCG part of the reward (full-catalogue rank, history masked)",
                                group=G_RECPO)
    reward_softmax_weight: float = option(0.05, "w: reward = (1-w)*NDCG@k + w*softmax(scores)[target]",
                                          group=G_RECPO)
    advantage_type: str = option("gaussian", "gaussian ((r-mean)/(std+1e-8), G=1 -> 1; upstream) | rloo (true "
                                             "leave-one-out) | upstream_leave_one_out (upstream's r(1+1/G)-mean)",
                                 group=G_RECPO, choices=ADVANTAGE_TYPES)
    relabel_topk: int = option(2, "rollouts per user (largest advantage) that get the recommendation loss "
                                  "(upstream launch script: 2)", group=G_RECPO)
    advantage_broadcast: str = option(
        "upstream", "how the token and recommendation losses weight rollouts by advantage. upstream: as upstream's "
                    "code computes them (its [B,1] advantages, unsqueezed again, broadcast against the [B,L] token "
                    "ratios and [B,1] item probabilities): every rollout is weighted by the sum of all advantages of "
                    "its mini-batch (the gathered, relabel-masked ones for the rec loss); with one gaussian group per "
                    "mini-batch (the default settings) the reasoning tokens get no gradient and the rec loss pulls "
                    "all G rollouts to the target. per_row: the paper's equations, each rollout weighted by its own "
                    "advantage (docs/rrec.md)", group=G_RECPO, choices=ADVANTAGE_BROADCASTS)
    clip_eps_low: float = option(0.2, "surrogate ratio clip below 1", group=G_RECPO)
    clip_eps_high: float = option(0.28, "surrogate ratio clip above 1", group=G_RECPO)
    mini_batch_size: int = option(8, "rollouts per forward/backward in the update; upstream caps it at "
                                     "--train_batch_size, and each mini-batch's losses are averaged over it",
                                  group=G_RECPO)
    gather_negs_across_processes: bool = option(True, "in-batch negatives from every process (upstream: on)",
                                                group=G_RECPO)
    ppo_epochs: int = option(1, "updates per rollout batch (upstream 1: the ratio is 1 and never clipped)",
                             group=G_RECPO)
    step_per_mini_batch: bool = option(True, "an optimiser step (with gradient clipping) after every mini-batch's "
                                             "backward, as upstream's DeepSpeed launch does (accelerate's DeepSpeed "
                                             "backward steps the engine at each call); --no-step_per_mini_batch "
                                             "accumulates the mini-batches into one step per batch", group=G_RECPO)
    token_loss_weight: float = option(1.0, "weight of the reasoning-token loss (upstream 1)", group=G_RECPO)
    rec_loss_weight: float = option(1.0, "weight of the recommendation loss (upstream 1)", group=G_RECPO)
    item_refresh_steps: int = option(0, "also recompute the whole item table every N steps (0 = only at "
                                        "evaluations, as upstream)", group=G_RECPO)
    # optimisation
    train_batch_size: int = option(4, "users per step per process (upstream 4)", group=G_OPT)
    learning_rate: float = option(1e-5, "learning rate (upstream 1e-5)", group=G_OPT)
    lr_scheduler_type: str = option("constant", "transformers scheduler: constant (upstream; ignores warmup, as "
                                                "HF's does)|constant_with_warmup|linear|cosine", group=G_OPT)
    warmup_steps: int = option(32, "warmup steps of schedulers that warm up (upstream passes 32)", group=G_OPT)
    weight_decay: float = option(0.0, "AdamW weight decay", group=G_OPT)
    max_grad_norm: float = option(1.0, "gradient clipping (0 = off)", group=G_OPT)
    optim: str = option("adamw", "adamw (torch) | paged_adamw_8bit (upstream's; needs bitsandbytes)", group=G_OPT,
                        choices=OPTIMIZERS)
    num_train_epochs: float = option(3.0, "passes over the train split (upstream 3)", group=G_OPT)
    max_steps: int = option(-1, "stop after this many steps (> 0 overrides --num_train_epochs)", group=G_OPT)
    max_train_samples: int = option(-1, "use only the first N train examples (-1 = all)", group=G_OPT)
    seed: int = option(42, "seed of data order, rollout sampling and validation candidates", group=G_OPT,
                       min=0, max=SEED_MAX)
    # evaluation and checkpoints
    eval_steps: int = option(-1, "validate (and checkpoint) every N steps; -1 = upstream's "
                                 "floor(n_train / (3 * train_batch_size) / 8); 0 = only at the end", group=G_EVAL)
    eval_on_start: bool = option(True, "validate the untrained model at step 0 (logged, never the best)",
                                 group=G_EVAL)
    num_eval_samples: int = option(-1, "validation users per evaluation (-1 = the whole valid split, upstream; 0 = "
                                       "no evaluation, so no best model)", group=G_EVAL)
    eval_test_split: bool = option(False, "also evaluate the test split at every evaluation and log it (upstream "
                                          "does; never used for selection)", group=G_EVAL)
    rank_repeat_targets: bool = option(False, "full-catalogue metrics: keep a target that is also a history item "
                                              "rankable (upstream masks it with the rest of the history, so it "
                                              "counts as a miss; only upstream-built data has such targets)",
                                       group=G_EVAL)
    eval_batch_size: int = option(32, "users per generation/forward batch in evaluation and reward scoring",
                                  group=G_EVAL)
    item_emb_batch_size: int = option(128, "items per forward when the item table is computed", group=G_EVAL)
    K: int = option(20, "candidates per validation user for the candidate metrics (target + K-1 negatives)",
                    group=G_EVAL)
    K_eval: int | None = option(None, "extra candidate-metric cut-off (default min(10, --K))", group=G_EVAL)
    load_best_model_at_end: bool = option(True, "final_checkpoint = the checkpoint with the best valid full-"
                                                "catalogue NDCG@10 (upstream); --no-... keeps the last model",
                                          group=G_EVAL)
    early_stopping_patience: int = option(8, "stop after N evaluations without a better valid NDCG@10 (0 = "
                                             "never; upstream 8)", group=G_EVAL)
    save_steps: int = option(0, "extra checkpoints every N steps (0 = none; a checkpoint is written at every "
                                "evaluation and at the end anyway)", group=G_EVAL)
    save_total_limit: int = option(5, "keep the newest N checkpoints plus the best (0 = all; upstream 5)",
                                   group=G_EVAL)
    logging_steps: int = option(1, "write metrics.jsonl every N steps", group=G_EVAL)
    output_dir: str = option("outputs/rrec", "checkpoint-N/, final_checkpoint/, metrics.jsonl, args.json",
                             group=G_EVAL)
    progress: bool = option(True, "show tqdm bars (--no-progress hides them)", group=G_EVAL)

    def validate(self) -> None:
        if self.K_eval is None:
            self.K_eval = min(10, self.K)
        self.validate_run()
        for flag, allowed in (("model_type", ("", "qwen", "gemma")), ("similarity_type", ("dot", "cosine", "L2")),
                              ("advantage_broadcast", ADVANTAGE_BROADCASTS)):
            require(getattr(self, flag) in allowed, f"--{flag} {getattr(self, flag)!r}: must be one of "
                                                    f"{'|'.join(a for a in allowed if a)}")
        require(self.K >= 2, f"--K {self.K}: must be >= 2 (the target plus at least one negative)")
        require(1 <= self.K_eval <= self.K, f"--K_eval {self.K_eval}: must be between 1 and --K {self.K}")
        for flag in ("user_window_size", "group_size", "train_batch_size", "eval_batch_size", "item_emb_batch_size",
                     "relabel_topk", "mini_batch_size", "ppo_epochs", "reward_ndcg_k", "logging_steps"):
            require(getattr(self, flag) >= 1, f"--{flag} {getattr(self, flag)}: must be >= 1")
        for flag in ("max_new_tokens", "gen_top_k", "warmup_steps", "weight_decay", "max_grad_norm",
                     "item_refresh_steps", "early_stopping_patience", "save_steps", "save_total_limit",
                     "clip_eps_low", "clip_eps_high", "token_loss_weight", "rec_loss_weight", "learning_rate"):
            v = getattr(self, flag)
            require(v >= 0 and math.isfinite(v), f"--{flag} {v}: must be >= 0")
        for flag in ("gen_temperature", "similarity_temperature"):
            v = getattr(self, flag)
            require(v > 0 and math.isfinite(v), f"--{flag} {v}: must be a finite number > 0")
        require(0 < self.gen_top_p <= 1, f"--gen_top_p {self.gen_top_p}: must be in (0, 1]")
        require(0 <= self.reward_softmax_weight <= 1,
                f"--reward_softmax_weight {self.reward_softmax_weight}: must be in [0, 1]")
        require(self.repetition_penalty is None or self.repetition_penalty > 0,
                f"--repetition_penalty {self.repetition_penalty}: must be > 0")
        require(self.eval_steps >= -1, f"--eval_steps {self.eval_steps}: must be -1 (upstream's rule), 0 or > 0")
        require(self.max_steps > 0 or self.num_train_epochs > 0, "--max_steps <= 0 needs --num_train_epochs > 0")
        require(not (self.advantage_type == "rloo" and self.group_size < 2),
                "--advantage_type rloo needs --group_size >= 2")

    @property
    def gradient_accumulation_steps(self) -> int:
        """One optimiser step per training step."""
        return 1


def upstream_eval_steps(n_train: int, train_batch_size: int) -> int:
    """Upstream's evaluation interval: floor(n_train / (3 * train_batch_size) / 8), at least 1 (about 1/24
    epoch on one process; upstream ignores the process count)."""
    return max(1, int((n_train / (train_batch_size * 3)) // 8))


def output_dir_artifacts(out: Path) -> list[Path]:
    """What a run writes into --output_dir (and --overwrite_output_dir removes)."""
    return run_files(out, ["metrics.jsonl", "args.json", FINAL_DIR])


# ------------------------------------------------------------------------------------ the trainer
class GRecTrainer(TrainerProcess):
    """Base RRec trainer (one instance per process). Subclasses implement training_step(step, examples)."""

    def __init__(self, cfg: RRecTrainingArguments, accelerator) -> None:
        super().__init__(cfg, accelerator)
        if is_sharded(accelerator):
            raise UserInputError("train_rrec.py runs single-process or DDP (LoRA keeps every GPU's copy small); "
                                 "launch it without an FSDP/DeepSpeed accelerate config")

        # ---- every check that can fail on the inputs, before anything in --output_dir is touched ----
        self.dataset = load_processed_dataset(cfg.dataset_dir, flag="--dataset_dir")
        train = self.dataset.split("train")
        if cfg.max_train_samples > 0:
            train = train.select(range(min(cfg.max_train_samples, len(train))))
        per_step = cfg.train_batch_size * self.world
        require(len(train) >= per_step, f"--dataset_dir {cfg.dataset_dir}: the train split has {len(train)} "
                                        f"examples, fewer than one step's {per_step} (--train_batch_size x processes)")
        self.dataset.check_K(cfg.K)
        self.base_model_dir = check_model_dir(cfg.model_name_or_path)
        self.resume_ckpt, self.state, self.changed = open_resume(cfg, rrec_checkpoint_files(), self.base_model_dir)
        self.train_rows = train.to_list()
        self.steps_per_epoch = len(self.train_rows) // per_step
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else max(
            1, math.ceil(cfg.num_train_epochs * self.steps_per_epoch))
        self.eval_every = upstream_eval_steps(len(self.train_rows), cfg.train_batch_size) if cfg.eval_steps == -1 \
            else cfg.eval_steps
        self.start_step = int(self.state.get("step", 0))

        # ---- the model: fp32 master weights (bf16 with --pure_bf16), LoRA, dropout off ----
        torch.manual_seed(cfg.seed)
        lora = None
        if cfg.use_lora and self.resume_ckpt is None:
            lora = LoraSettings.from_flags(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        settings = {"model_type": cfg.model_type or None, "similarity_type": cfg.similarity_type,
                    "similarity_temperature": cfg.similarity_temperature,
                    "similarity_normalization": cfg.similarity_normalization,
                    "user_window_size": cfg.user_window_size, "max_new_tokens": cfg.max_new_tokens,
                    "repetition_penalty": cfg.repetition_penalty, "item_rating_stats": cfg.item_rating_stats}
        src = self.resume_ckpt or self.base_model_dir
        self.rrec = RRecModel.load(
            str(src), device=str(accelerator.device), dtype=torch.bfloat16 if cfg.pure_bf16 else torch.float32,
            attn_implementation=cfg.attn_implementation,
            base_model=str(self.base_model_dir) if self.resume_ckpt is not None else None, lora=lora,
            trainable=True, gradient_checkpointing=cfg.gradient_checkpointing,
            forward_batch_size=cfg.eval_batch_size, trust_remote_code=cfg.trust_remote_code, settings=settings,
            flag="--resume_from" if self.resume_ckpt else "--model_name_or_path")
        if cfg.disable_dropout:
            disable_dropout(self.rrec)
        s = self.rrec.settings
        self.prompter = RRecPrompter(self.rrec.tokenizer, self.dataset.item_rows,
                                     cfg.category or category_from_dataset_dir(cfg.dataset_dir),
                                     user_window_size=s.user_window_size, model_type=s.model_type,
                                     emb_token=s.emb_token, emb_end_token=s.emb_end_token,
                                     item_rating_stats=s.item_rating_stats)

        # ---- optimiser, schedule, accelerate ----
        params = [p for p in self.rrec.parameters() if p.requires_grad]
        optimizer = self._build_optimizer(params)
        self.model, self.optimizer = accelerator.prepare(self.rrec, optimizer)
        self.rrec = accelerator.unwrap_model(self.model)
        from transformers import get_scheduler  # here, not at the top: transformers takes seconds to import (--help)

        raw = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        try:  # stepped by us once per training step
            self.scheduler = get_scheduler(cfg.lr_scheduler_type, raw, num_warmup_steps=cfg.warmup_steps,
                                           num_training_steps=self.total_steps)
        except (ValueError, KeyError, TypeError) as e:
            raise UserInputError(f"--lr_scheduler_type {cfg.lr_scheduler_type!r}: {e}")
        self.item_table: torch.Tensor | None = None
        self.best_step: int | None = self.state.get("best_step")
        self.best_metric: float | None = self.state.get("best_metric")
        self.evals_without_improvement = int(self.state.get("evals_without_improvement", 0))
        if self.resume_ckpt is not None:
            self._load_training_state(self.resume_ckpt)

    # ---- construction helpers ----------------------------------------------------------------
    def _build_optimizer(self, params):
        c = self.cfg
        if c.optim == "paged_adamw_8bit":
            try:
                import bitsandbytes as bnb  # optional, CUDA only
            except ImportError:
                raise UserInputError("--optim paged_adamw_8bit needs bitsandbytes (pip install bitsandbytes, CUDA "
                                     "only); or use --optim adamw")
            return bnb.optim.PagedAdamW8bit(params, lr=c.learning_rate, weight_decay=c.weight_decay)
        return torch.optim.AdamW(params, lr=c.learning_rate, weight_decay=c.weight_decay)

    def _load_training_state(self, ckpt: Path) -> None:

        opt_state = load_torch_state(ckpt / "optimizer.pt", map_location=self.acc.device)
        check_optimizer_state_fits(opt_state, self.optimizer, ckpt)
        try:
            self.optimizer.load_state_dict(opt_state)
            self.scheduler.load_state_dict(load_torch_state(ckpt / "scheduler.pt"))
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            raise UserInputError(f"--resume_from {ckpt}: optimizer/scheduler state does not fit this run "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})")
        apply_base_lrs(self.optimizer, self.scheduler, [self.cfg.learning_rate] * len(self.scheduler.base_lrs))
        table = load_torch_state(ckpt / ITEM_TABLE_FILE)
        H = self.rrec.base_lm().config.hidden_size
        if not torch.is_tensor(table) or tuple(table.shape) != (self.dataset.n_items + 1, H):
            raise UserInputError(f"--resume_from {ckpt}: {ITEM_TABLE_FILE} does not fit {self.cfg.dataset_dir} and "
                                 f"this model (expected shape {(self.dataset.n_items + 1, H)})")
        self.item_table = table.float().to(self.acc.device)
        finish_resume(ckpt, self.rank, self.world, self.state, self.changed, self.is_main)

    # ---- data --------------------------------------------------------------------------------
    def batches(self) -> Iterator[list[dict]]:
        """This process's batches from the step after start_step on: per epoch a seeded permutation of the train
        examples, split into steps of train_batch_size x processes (an incomplete last step is dropped)."""
        c = self.cfg
        per_step = c.train_batch_size * self.world
        step, epoch = 0, 0
        while True:
            order = numpy_rng(c.seed, epoch).permutation(len(self.train_rows))
            for b in range(self.steps_per_epoch):
                if step >= self.start_step:
                    idx = shard(list(order[b * per_step:(b + 1) * per_step]), self.rank, self.world)
                    yield [self.train_rows[int(i)] for i in idx]
                step += 1
            epoch += 1

    # ---- the item table and evaluation ---------------------------------------------------------
    def refresh_item_table(self) -> None:
        with self.acc.autocast():
            self.item_table = compute_item_table(
                self.rrec, self.prompter, self.dataset.n_items, batch_size=self.cfg.item_emb_batch_size,
                progress=self.cfg.progress and self.is_main, rank=self.rank, world=self.world,
                gather=lambda obj: gather_objects(self.acc, obj)).float()

    def evaluate(self, split: str) -> dict[str, float]:
        """Candidate and full-catalogue metrics of a split (each process ranks its shard; all get the result)."""
        c = self.cfg
        items = build_eval_items(self.dataset, split, c.num_eval_samples, c.K, c.seed)
        with self.acc.autocast():
            samples = rank_with_rrec(self.rrec, self.prompter, shard(items, self.rank, self.world), self.item_table,
                                     self.rrec.settings.max_new_tokens, batch_size=c.eval_batch_size,
                                     full_ranking=True, progress=c.progress and self.is_main,
                                     rank_repeat_targets=c.rank_repeat_targets)
        slim = [{"target_rank": s["target_rank"], "full_rank": s["full_rank"]} for s in samples]
        merged = [s for part in gather_objects(self.acc, slim) for s in part]
        rows = rrec_metrics(merged, c.K_eval, full_ranking=True)
        return {**{f"{split}/{k}": v for k, v in rows["rrec"].items()},
                **{f"{split}_full/{k}": v for k, v in rows["rrec (full catalogue)"].items()}}

    def evaluate_and_log(self, step: int) -> dict[str, Any]:
        """Recompute the item table (upstream does at every evaluation), evaluate valid (and test), log."""
        self.refresh_item_table()
        rec: dict[str, Any] = {"step": step, "split": "valid"}
        if self.cfg.num_eval_samples == 0:
            return rec
        if len(self.dataset.split("valid")):
            rec.update(self.evaluate("valid"))
        if self.cfg.eval_test_split and len(self.dataset.split("test")):
            rec.update(self.evaluate("test"))
        self.log(rec)
        return rec

    def update_best(self, step: int, rec: dict[str, Any]) -> bool:
        """Track the best valid full-catalogue NDCG@10 (upstream's metric_for_best_model) and the early-stopping
        count (HF's EarlyStoppingCallback: reset on a strictly better value). True if training should stop."""
        metric = rec.get("valid_full/NDCG@10")
        if metric is None or (isinstance(metric, float) and math.isnan(metric)):
            return False
        if self.best_metric is None or metric > self.best_metric:
            self.best_metric, self.best_step = float(metric), step
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        p = self.cfg.early_stopping_patience
        return bool(p) and self.evals_without_improvement >= p

    # ---- logging, output dir -------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        log_metrics(self.acc, self.out / "metrics.jsonl", record, self.cfg.report_to != "none")

    def prepare_output_dir(self) -> None:
        """Every check has passed: now (and only now) --overwrite_output_dir removes the old run's files, and a
        resumed run's metrics.jsonl loses the records of steps after its checkpoint ('auto' without one: all of
        them, the step-0 evaluation included)."""
        if self.is_main:
            prepare_output_dir(self.out, self.run_args(),
                               overwrite_files=output_dir_artifacts(self.out) if self.cfg.overwrite_output_dir else (),
                               logs=[self.out / "metrics.jsonl"],
                               keep_records_through=(self.start_step if self.resume_ckpt else -1)
                               if self.cfg.resume_from else None)
        self.acc.wait_for_everyone()

    # ---- checkpoints ---------------------------------------------------------------------------
    def _write_checkpoint_files(self, tmp: Path) -> None:
        if self.is_main:
            self.rrec.save(tmp)
            save_torch(self.optimizer.state_dict(), tmp / "optimizer.pt")
            save_torch(self.scheduler.state_dict(), tmp / "scheduler.pt")
            save_torch(self.item_table.detach().cpu(), tmp / ITEM_TABLE_FILE)

    def save_checkpoint(self, step: int, wall_time: float) -> Path:
        state = {"step": step, "world_size": self.world, "total_steps": self.total_steps, "wall_time": wall_time,
                 "best_step": self.best_step, "best_metric": self.best_metric,
                 "evals_without_improvement": self.evals_without_improvement,
                 "base_model": str(self.base_model_dir), "lora": self.rrec.lora_settings_dict()}
        return write_checkpoint(self.out, step, self._write_checkpoint_files, state, self.cfg.to_dict(),
                                rank=self.rank, barrier=self.acc.wait_for_everyone,
                                save_total_limit=self.cfg.save_total_limit, keep_step=self.best_step)

    def save_final(self, step: int) -> Path | None:
        """{output_dir}/final_checkpoint: the best checkpoint's model (load_best_model_at_end) or the current one,
        with tokenizer, rrec_config.json and training_args.json; written atomically."""
        c = self.cfg
        final = self.out / FINAL_DIR
        source = step
        if c.load_best_model_at_end and self.best_step is not None:
            source = self.best_step
        info = {"source_step": source, "last_step": step, "best_step": self.best_step,
                "best_valid_full/NDCG@10": self.best_metric, "merged": c.merge_lora}
        try:  # a rerun of a finished run: final_checkpoint is already this model (keep its files untouched)
            done = read_json(final / "final_info.json") == info
        except (OSError, ValueError):
            done = False
        if done:
            self.acc.wait_for_everyone()
            return final if self.is_main else None

        def write_files(tmp: Path) -> None:
            if source == step:
                self.rrec.save(tmp, merge_adapter=c.merge_lora)
            else:
                self._copy_model(self.out / f"checkpoint-{source}", tmp)
            atomic_write_json(tmp / "training_args.json", c.to_dict())
            atomic_write_json(tmp / "final_info.json", info)

        return write_final_model(final, write_files, self.is_main, self.acc.wait_for_everyone)

    def _copy_model(self, ckpt: Path, dst: Path) -> None:
        """A checkpoint's model files (no training state) into the existing dir dst; merged into a full model with
        --merge_lora."""
        training_state = {"optimizer.pt", "scheduler.pt", ITEM_TABLE_FILE, "trainer_state.json", "args.json",
                          "COMPLETE"}
        if self.cfg.merge_lora:
            # eager: a load-and-save merge runs no forward, and every architecture accepts it (Gemma-2 refuses sdpa)
            lm = load_causal_lm(ckpt, torch.device("cpu"), torch.float32, "eager", self.cfg.trust_remote_code,
                                base_model=str(self.base_model_dir), merge_adapter=True)
            lm.save_pretrained(dst)
            training_state |= {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}
        for f in ckpt.iterdir():
            if f.is_file() and f.name not in training_state and not f.name.startswith("rng_state_") \
                    and not (dst / f.name).exists():
                shutil.copy2(f, dst / f.name)

    # ---- the loop ----------------------------------------------------------------------------
    def training_step(self, step: int, examples: list[dict]) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def train(self) -> dict[str, Any]:
        """Run to --max_steps / --num_train_epochs (or early stopping, or a signal)."""
        c = self.cfg
        self.prepare_output_dir()
        init_tracking(self.acc, "ourrec_rrec", c)
        t0, wall0 = time.time(), float(self.state.get("wall_time", 0.0))
        stopped_by, early, step, last = None, False, self.start_step, {}
        bar = tqdm(total=self.total_steps, initial=self.start_step, desc="RecPO", unit="step",
                   disable=not (c.progress and self.is_main), dynamic_ncols=True)
        with StopRequest() as stop:
            if self.resume_ckpt is None and c.eval_on_start:
                self.evaluate_and_log(0)  # upstream's eval_on_start; never a candidate for the best model
            if self.item_table is None:
                self.refresh_item_table()
            batches = self.batches()
            while step < self.total_steps:
                step += 1
                if c.item_refresh_steps and step > 1 and (step - 1) % c.item_refresh_steps == 0:
                    self.refresh_item_table()
                t = time.time()
                lr = self.scheduler.get_last_lr()[0]
                stats = self.training_step(step, next(batches))
                stats = mean_over_processes(self.acc, stats)
                last = {"step": step, **stats, "lr": lr, **step_resources(self.acc.device, t),
                        "wall_time_s": wall0 + time.time() - t0}
                if step % c.logging_steps == 0 or step == self.total_steps:
                    self.log(last)
                bar.update(1)
                bar.set_postfix(loss=f"{stats.get('loss', float('nan')):.3f}",
                                reward=f"{stats.get('reward', float('nan')):.3f}")
                evaluated = (self.eval_every > 0 and step % self.eval_every == 0) or \
                    (self.eval_every == 0 and step == self.total_steps)
                if evaluated:
                    early = self.update_best(step, self.evaluate_and_log(step))
                if any_process(self.acc, stop.requested):
                    stopped_by = stop.signal_name or "a signal on another process"
                if evaluated or step == self.total_steps or stopped_by or early or \
                        (c.save_steps and step % c.save_steps == 0):
                    self.save_checkpoint(step, wall0 + time.time() - t0)
                if stopped_by or early:
                    break
        bar.close()
        result = {"last": last, "step": step, "stopped_by": stopped_by, "early_stopped": early,
                  "best_step": self.best_step, "best_metric": self.best_metric, "final": None}
        if stopped_by:
            if self.is_main:
                print(f"train_rrec.py: stopped by {stopped_by} after step {step}; checkpoint-{step} is complete; "
                      "rerun with --resume_from auto to continue")
        else:
            if early and self.is_main:
                print(f"early stopping at step {step}: {self.evals_without_improvement} evaluations without a "
                      f"better valid NDCG@10 (best {self.best_metric:.4f} at step {self.best_step})")
            result["final"] = self.save_final(step)
            if self.is_main:
                print(f"final model: {self.out / FINAL_DIR} (from step "
                      f"{self.best_step if c.load_best_model_at_end and self.best_step else step})")
        if c.report_to != "none":
            self.acc.end_training()
        self.acc.wait_for_everyone()
        return result
