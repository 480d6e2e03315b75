"""train.py's settings: PPOConfig, one flag per field (the shared precision, LoRA and run settings come from
foundation/config.RunConfig). Importable without torch: train.py builds its parser from here and imports the trainer
(trainers/ppo_trainer.py: torch, transformers, accelerate) only after the flags are parsed."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from foundation.config import SCORING_MODES, SEED_MAX, RunConfig, config_from_args, option, require
from foundation.config import build_parser as config_parser
from trainers.utils import SCHEDULERS


@dataclass
class PPOConfig(RunConfig):
    """Every setting of a PL-PPO run; train.py turns each field into a flag (the shared precision, LoRA and run
    settings come from foundation/config.RunConfig)."""

    OPERATIONAL = RunConfig.OPERATIONAL + ("save_every", "save_total_limit", "print_every", "eval_every",
                                           "num_valid_samples", "eval_K", "token_log_path", "no_plot",
                                           "write_param_checksums", "scoring_chunk_size", "scoring")
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
    scoring: str = option("auto", "auto|naive|shared: per-prompt or shared-prefix scoring; auto = shared where it is "
                                  "exact for the model and backend, else naive (decided once, printed)",
                          group="ranking and reward", choices=SCORING_MODES)
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
        from trainers.rl.advantages import estimator_uses_critic  # torch: only once a run needs it

        return estimator_uses_critic(self.advantage_estimator)

    def validate(self) -> None:
        # here, not at the top: the estimator registry and the prompt templates are the trainer's (torch) side
        from prompters.binary_prompter import load_template
        from trainers.data.dataset import check_dataset_type
        from trainers.rl.advantages import ADVANTAGE_ESTIMATORS

        check_dataset_type(self.dataset_type)
        self.validate_run()
        for flag, allowed in (("scoring", SCORING_MODES), ("lr_scheduler", SCHEDULERS)):
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




def build_parser():
    """train.py's flags: one per PPOConfig field."""
    return config_parser(PPOConfig, description="PL-PPO training of the binary judge.")


def parse_config(argv: Sequence[str] | None = None) -> PPOConfig:
    """train.py's flags -> PPOConfig (validated later, inside run_training, so errors are one line)."""
    return config_from_args(PPOConfig, build_parser().parse_args(argv), validate=False)
