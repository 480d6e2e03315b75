"""RRec's base trainer (shared/RRec.md): data, the item-embedding table, evaluation, checkpoints, logs.

A plain torch loop on accelerate.Accelerator (one process on CPU, or one per GPU with DDP); the
algorithm-specific step lives in a subclass (trainers/RecPOTrainer.py). Everything RRec-specific that
compare_model/rrec.py also needs (the item table, ranking candidates with the model) is a module
function here, so evaluation during training and the baseline script share one code path.

Checkpoints `{output_dir}/checkpoint-{step}` hold the model (save_pretrained + tokenizer +
rrec_config.json), optimizer.pt, scheduler.pt, rng_state_rank{r}.pt, trainer_state.json, args.json and
the COMPLETE marker (trainers/checkpointing.py: assembled in a temp dir, renamed atomically).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from trainers.evaluation.rrec import compute_item_table, rank_with_rrec, rrec_metrics
from trainers.foundation.errors import UserInputError
from trainers.foundation.files import append_jsonl


# ------------------------------------------------------------------------------------ arguments
def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RRecTrainingArguments:
    """Every training setting; compare_model/train_rrec.py turns each field into a --flag."""

    model_name_or_path: str = _f("demo/tiny-qwen", "base causal LM (HF directory or known name, see paths.py)")
    dataset_dir: str = _f("demo/data/Video_Games_5_2021-1-2023-12", "processed dataset (preprocess.py output)")
    output_dir: str = _f("outputs/rrec", "checkpoints and metrics.jsonl go here")
    model_type: str = _f("qwen", "qwen|gemma: chat details (stop token, no system role); see prompters/rrec_prompter.py")
    category: str = _f("", "category for the prompts (default: from the dataset directory name)")
    user_window_size: int = _f(10, "history items in the user prompt")
    # RecPO
    group_size: int = _f(4, "reasoning rollouts per user (G)")
    max_new_tokens: int = _f(128, "reasoning length limit (upstream 640)")
    temperature: float = _f(2.0, "sampling temperature of the rollouts (upstream 2.0)")
    top_k: int = _f(50, "top-k of the rollout sampling")
    reward_ndcg_k: int = _f(1000, "k of the NDCG part of the reward (full-catalogue rank)")
    reward_softmax_weight: float = _f(0.05, "w: reward = (1-w)*NDCG@k + w*softmax(sim/tau)[target]")
    advantage_type: str = _f("gaussian", "gaussian (GRPO: (r-mean)/std) | leave-one-out (RLOO)")
    clip_eps_low: float = _f(0.2, "PPO ratio clip below 1")
    clip_eps_high: float = _f(0.28, "PPO ratio clip above 1")
    ppo_epochs: int = _f(1, "updates per rollout batch (1: ratio is 1 at the update)")
    relabel_topk: int = _f(1, "rollouts per user (best advantage) that get the recommendation loss")
    similarity_temperature: float = _f(1.0, "tau: softmax temperature over inner-product scores")
    normalize: bool = _f(False, "L2-normalise user and item vectors (cosine scores)")
    token_loss_weight: float = _f(1.0, "weight of the reasoning-token (PPO) loss")
    rec_loss_weight: float = _f(1.0, "weight of the in-batch recommendation loss")
    # optimisation
    train_batch_size: int = _f(4, "users per step per process")
    eval_batch_size: int = _f(32, "users/items per forward in evaluation and the item table")
    learning_rate: float = _f(1e-5, "AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_steps: int = _f(32, "linear warmup steps")
    lr_scheduler_type: str = _f("linear", "transformers scheduler name: linear|cosine|constant_with_warmup|...")
    max_grad_norm: float = _f(1.0, "gradient clipping (0 = off)")
    num_train_epochs: float = _f(3.0, "passes over the train split")
    max_steps: int = _f(-1, "stop after this many steps (overrides epochs when > 0)")
    max_train_samples: int = _f(-1, "use only the first N train examples (-1 = all)")
    item_refresh_steps: int = _f(50, "recompute the item-embedding table every N steps")
    # evaluation / logging / checkpoints
    eval_steps: int = _f(0, "validate every N steps (0 = only at the end)")
    num_eval_samples: int = _f(200, "validation users per evaluation")
    K: int = _f(20, "candidates per validation user (target + K-1 sampled negatives)")
    K_eval: int = _f(10, "extra metric cut-off")
    logging_steps: int = _f(1, "write metrics.jsonl every N steps")
    save_steps: int = _f(0, "checkpoint every N steps (0 = only at the end)")
    save_total_limit: int = _f(2, "keep the newest N checkpoints (0 = all)")
    resume_from: str = _f("", "'last' or a checkpoint-N directory to continue from")
    seed: int = _f(42, "seed of data order, sampling and candidates")
    device: str = _f("auto", "auto|cpu|cuda[:i] (under accelerate launch each process takes its GPU)")
    dtype: str = _f("auto", "auto|bf16|fp16|fp32 (auto: bf16 on GPU, fp32 on CPU)")
    attn_implementation: str = _f("auto", "auto|flash_attention_2|sdpa|eager")
    gradient_checkpointing: bool = _f(False, "trade compute for memory")
    progress: bool = _f(True, "show tqdm bars")

    def validate(self) -> None:
        checks = [
            (self.group_size >= 1, f"--group_size {self.group_size}: must be >= 1"),
            (self.train_batch_size >= 1, f"--train_batch_size {self.train_batch_size}: must be >= 1"),
            (self.eval_batch_size >= 1, f"--eval_batch_size {self.eval_batch_size}: must be >= 1"),
            (self.max_new_tokens >= 0, f"--max_new_tokens {self.max_new_tokens}: must be >= 0"),
            (self.temperature > 0, f"--temperature {self.temperature}: must be > 0"),
            (0 <= self.reward_softmax_weight <= 1, f"--reward_softmax_weight {self.reward_softmax_weight}: must be in [0, 1]"),
            (self.reward_ndcg_k >= 1, f"--reward_ndcg_k {self.reward_ndcg_k}: must be >= 1"),
            (self.advantage_type in ADVANTAGE_TYPES, f"--advantage_type {self.advantage_type!r}: must be one of {'|'.join(ADVANTAGE_TYPES)}"),
            (1 <= self.relabel_topk <= self.group_size, f"--relabel_topk {self.relabel_topk}: must be in 1..--group_size ({self.group_size})"),
            (self.clip_eps_low >= 0 and self.clip_eps_high >= 0, "--clip_eps_low/--clip_eps_high: must be >= 0"),
            (self.ppo_epochs >= 1, f"--ppo_epochs {self.ppo_epochs}: must be >= 1"),
            (self.similarity_temperature > 0, f"--similarity_temperature {self.similarity_temperature}: must be > 0"),
            (self.item_refresh_steps >= 1, f"--item_refresh_steps {self.item_refresh_steps}: must be >= 1"),
            (self.K >= 2, f"--K {self.K}: must be >= 2"),
            (self.user_window_size >= 1, f"--user_window_size {self.user_window_size}: must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserInputError(msg)
        if self.train_batch_size < 2:
            import warnings

            warnings.warn("--train_batch_size 1: the in-batch recommendation loss has a single item per process "
                          "and is constant 0; use >= 2", stacklevel=2)


ADVANTAGE_TYPES = ("gaussian", "leave-one-out")


def add_dataclass_arguments(parser, cls=RRecTrainingArguments) -> None:
    """One --flag per dataclass field (bools are --flag / --no-flag)."""
    import argparse

    for f in fields(cls):
        kw = {"default": f.default, "help": f"{f.metadata.get('help', '')} (default: %(default)s)"}
        if f.type in (bool, "bool"):
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, **kw)
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            parser.add_argument(f"--{f.name}", type=typ, **kw)


# ------------------------------------------------------------------------------------ the trainer
class GRecTrainer:
    """Base RRec trainer. Subclasses implement `training_step(examples) -> dict of floats`."""

    def __init__(self, args: RRecTrainingArguments) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        from models.rrec_models import RRecModel
        from prompters.rrec_prompter import RRecPrompter, category_from_dataset_dir
        from trainers.data.dataset import load_processed_dataset

        args.validate()
        self.args = args
        # Unused parameters (e.g. an untied LM head when max_new_tokens is 0) must not hang DDP.
        self.accelerator = Accelerator(cpu=args.device == "cpu",
                                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        acc = self.accelerator
        self.dataset = load_processed_dataset(args.dataset_dir, flag="--dataset_dir")
        if args.K > self.dataset.n_items:
            raise UserInputError(f"--K {args.K}: the item catalogue of {args.dataset_dir} has only "
                                 f"{self.dataset.n_items} items; lower --K")
        self.out_dir = Path(args.output_dir)
        self.resume_ckpt = None
        if args.resume_from:
            from trainers.foundation.checkpoints import check_same_model_shape, resolve_checkpoint

            self.resume_ckpt = resolve_checkpoint(args.resume_from, self.out_dir,
                                                  required=[("trainer_state.json",), ("optimizer.pt",)],
                                                  where=f"--output_dir {self.out_dir}")
        device = str(acc.device) if (acc.num_processes > 1 or args.device == "auto") else args.device
        src = str(self.resume_ckpt) if self.resume_ckpt else args.model_name_or_path
        if self.resume_ckpt:
            from models.abstract_models import check_model_dir

            check_same_model_shape(check_model_dir(args.model_name_or_path), self.resume_ckpt)
        self.model = RRecModel(src, device=device, dtype=args.dtype, attn_implementation=args.attn_implementation,
                               model_type=args.model_type, normalize=args.normalize,
                               similarity_temperature=args.similarity_temperature,
                               gradient_checkpointing=args.gradient_checkpointing,
                               micro_batch_size=args.eval_batch_size,
                               flag="--resume_from" if self.resume_ckpt else "--model_name_or_path")
        category = args.category or category_from_dataset_dir(args.dataset_dir)
        self.prompter = RRecPrompter(self.model.tokenizer, self.dataset.item_rows, category,
                                     user_window_size=args.user_window_size, model_type=args.model_type)
        train = self.dataset.split("train")
        if args.max_train_samples and args.max_train_samples > 0:
            train = train.select(range(min(args.max_train_samples, len(train))))
        if len(train) == 0:
            raise UserInputError(f"--dataset_dir {args.dataset_dir}: empty train split")
        self.train_rows = train.to_list()
        self.steps_per_epoch = max(1, len(self.train_rows) // (args.train_batch_size * acc.num_processes))
        self.total_steps = args.max_steps if args.max_steps > 0 else max(1, math.ceil(args.num_train_epochs * self.steps_per_epoch))

        from transformers import get_scheduler

        opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=args.learning_rate,
                                weight_decay=args.weight_decay)
        try:
            sched = get_scheduler(args.lr_scheduler_type, opt, num_warmup_steps=args.warmup_steps,
                                  num_training_steps=self.total_steps)
        except (ValueError, KeyError) as e:
            raise UserInputError(f"--lr_scheduler_type {args.lr_scheduler_type!r}: {e}")
        self.wrapped, self.optimizer, self.scheduler = acc.prepare(self.model, opt, sched)
        self.step = 0
        self.item_table: torch.Tensor | None = None
        self.item_table_step = -1
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self._t0 = time.time()
        if self.resume_ckpt:
            self._load_state(self.resume_ckpt)

    # ---- helpers -----------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def log(self, record: dict) -> None:
        if self.is_main:
            append_jsonl(self.metrics_path, [record])

    def refresh_item_table(self, force: bool = False) -> torch.Tensor:
        """Recompute the catalogue's vectors every --item_refresh_steps steps (stale in between, as upstream)."""
        a = self.args
        if force or self.item_table is None or self.step - self.item_table_step >= a.item_refresh_steps:
            self.item_table = compute_item_table(self.model, self.prompter, self.dataset.n_items,
                                                 batch_size=a.eval_batch_size, progress=a.progress and self.is_main)
            self.item_table_step = self.step
        return self.item_table

    def batches(self) -> Iterable[list[dict]]:
        """This process's batches from the current step on: per epoch a seeded permutation, split by rank."""
        a, acc = self.args, self.accelerator
        per_step = a.train_batch_size * acc.num_processes
        step = 0
        epoch = 0
        while True:
            order = np.random.default_rng([a.seed, epoch]).permutation(len(self.train_rows))
            for b in range(self.steps_per_epoch):
                if step >= self.step:  # resume: skip the batches already trained on
                    idx = order[b * per_step:(b + 1) * per_step]
                    idx = idx[acc.process_index * a.train_batch_size:(acc.process_index + 1) * a.train_batch_size]
                    yield [self.train_rows[int(i)] for i in idx]
                step += 1
            epoch += 1

    def evaluate(self, split: str = "valid", num_samples: int | None = None, full_ranking: bool = True) -> dict:
        """Candidate and full-catalogue metrics of `num_samples` users of a split (main process)."""
        from trainers.evaluation.protocol import build_eval_items

        a = self.args
        n = a.num_eval_samples if num_samples is None else num_samples
        items = build_eval_items(self.dataset, split, n, a.K, a.seed)
        table = self.refresh_item_table(force=True)
        samples = rank_with_rrec(self.model, self.prompter, items, table, a.max_new_tokens,
                                 batch_size=a.eval_batch_size, full_ranking=full_ranking,
                                 progress=a.progress)
        return rrec_metrics(samples, a.K_eval, full_ranking)

    # ---- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        from trainers.foundation.checkpoints import write_checkpoint

        acc = self.accelerator

        def write_files(tmp: Path) -> None:
            if self.is_main:
                acc.unwrap_model(self.wrapped).save_pretrained(tmp)
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")

        state = {"step": self.step, "world_size": acc.num_processes, "total_steps": self.total_steps,
                 "item_table_step": self.item_table_step}
        final = write_checkpoint(self.out_dir, self.step, write_files, state, asdict(self.args),
                                 rank=acc.process_index, barrier=acc.wait_for_everyone,
                                 save_total_limit=self.args.save_total_limit)
        return final if self.is_main else None

    def _load_state(self, ckpt: Path) -> None:
        from trainers.foundation.checkpoints import load_torch_state, read_trainer_state, restore_rng_state

        state = read_trainer_state(ckpt)
        self.step = int(state["step"])
        if (ckpt / "optimizer.pt").is_file():
            self.optimizer.load_state_dict(load_torch_state(ckpt / "optimizer.pt"))
        if (ckpt / "scheduler.pt").is_file():
            self.scheduler.load_state_dict(load_torch_state(ckpt / "scheduler.pt"))
        rng = ckpt / f"rng_state_rank{self.accelerator.process_index}.pt"
        if rng.is_file():
            restore_rng_state(load_torch_state(rng))

    # ---- the loop ----------------------------------------------------------------------------
    def training_step(self, examples: list[dict]) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def train(self) -> Path | None:
        """Run to --max_steps / --num_train_epochs; returns the final checkpoint directory (main process)."""
        from tqdm.auto import tqdm

        a = self.args
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(a.seed + 1000 * self.accelerator.process_index + self.step)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="RecPO", unit="step",
                   disable=not (a.progress and self.is_main), dynamic_ncols=True)
        last_ckpt = None
        it = iter(self.batches())
        while self.step < self.total_steps:
            examples = next(it)
            self.refresh_item_table()
            t = time.time()
            stats = self.training_step(examples)
            self.step += 1
            stats = {k: float(self.accelerator.reduce(torch.tensor(v, device=self.accelerator.device), "mean"))
                     for k, v in stats.items()}
            bar.update(1)
            bar.set_postfix(loss=f"{stats.get('loss', float('nan')):.3f}", reward=f"{stats.get('reward', float('nan')):.3f}")
            if self.step % max(1, a.logging_steps) == 0 or self.step == self.total_steps:
                self.log({"step": self.step, **stats, "lr": self.scheduler.get_last_lr()[0],
                          "step_time_s": time.time() - t, "wall_time_s": time.time() - self._t0})
            if a.eval_steps and self.step % a.eval_steps == 0 and self.step < self.total_steps:
                self._eval_and_log()
            if a.save_steps and self.step % a.save_steps == 0 and self.step < self.total_steps:
                last_ckpt = self.save_checkpoint()
        bar.close()
        if a.num_eval_samples > 0:
            self._eval_and_log()
        last_ckpt = self.save_checkpoint()
        return last_ckpt

    def _eval_and_log(self) -> None:
        if self.is_main:
            rows = self.evaluate("valid")
            rec = {"step": self.step, "split": "valid"}
            for name, m in rows.items():
                prefix = "valid/" if name == "rrec" else "valid_full/"
                rec.update({prefix + k: v for k, v in m.items()})
            self.log(rec)
        self.accelerator.wait_for_everyone()
