"""compare_model/train_rrec.py's settings: RRecTrainingArguments, one flag per field (defaults: upstream R2ec's
launch_train.sh). Importable without torch: the script builds its parser from here and imports the trainer
(trainers/recpo_trainer.py) only after the flags are parsed."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from foundation.config import SEED_MAX, RunConfig, config_from_args, option, require
from foundation.config import build_parser as config_parser
from trainers.rl.names import ADVANTAGE_TYPES

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


def build_parser(description: str | None = None):
    """train_rrec.py's flags: one per RRecTrainingArguments field."""
    return config_parser(RRecTrainingArguments, description=description)


def parse_config(argv: Sequence[str] | None = None, description: str | None = None) -> RRecTrainingArguments:
    """Flags -> settings (validated later, inside the run, so errors are one line)."""
    return config_from_args(RRecTrainingArguments, build_parser(description).parse_args(argv), validate=False)
