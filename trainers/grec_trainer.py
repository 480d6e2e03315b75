"""RRec's base trainer (docs/rrec.md): model, data order, the item table, evaluation with best-
checkpoint selection and early stopping, checkpoints, logs. The RL step lives in trainers/recpo_trainer.py.

A plain torch loop on accelerate (one process, or one per GPU with DDP under `accelerate launch`/torchrun): the
lifecycle is trainers/base_trainer.py's, the settings trainers/configs/rrec.py's.
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
from pathlib import Path
from typing import Any, Iterator

import torch

from models.abstract_models import LoraSettings, check_model_dir, disable_dropout, load_causal_lm
from models.resolution import ITEM_TABLE_FILE, RREC_FINAL_DIR as FINAL_DIR, rrec_checkpoint_files
from models.rrec_models import RRecModel
from prompters.rrec_prompter import RRecPrompter, category_from_dataset_dir
from trainers.base_trainer import BaseTrainer
from trainers.configs.rrec import (ADVANTAGE_BROADCASTS, OPTIMIZERS, RRecTrainingArguments,  # noqa: F401 (re-exported)
                                   build_parser, parse_config)
from trainers.data.dataset import load_processed_dataset
from trainers.evaluation.protocol import build_eval_items
from trainers.evaluation.rrec import compute_item_table, rank_with_rrec, rrec_metrics
from foundation.checkpoints import (apply_base_lrs, check_optimizer_state_fits, finish_resume, load_torch_state, open_resume,
                                    prepare_output_dir, run_files, save_torch, write_checkpoint, write_final_model)
from foundation.config import require
from foundation.distributed import gather_objects, is_sharded, shard
from foundation.errors import UserInputError
from foundation.files import atomic_write_json, read_json
from foundation.seeding import numpy_rng



def upstream_eval_steps(n_train: int, train_batch_size: int) -> int:
    """Upstream's evaluation interval: floor(n_train / (3 * train_batch_size) / 8), at least 1 (about 1/24
    epoch on one process; upstream ignores the process count)."""
    return max(1, int((n_train / (train_batch_size * 3)) // 8))


def output_dir_artifacts(out: Path) -> list[Path]:
    """What a run writes into --output_dir (and --overwrite_output_dir removes): a training run's entries."""
    return run_files(out)


# ------------------------------------------------------------------------------------ the trainer
class GRecTrainer(BaseTrainer):
    """Base RRec trainer (one instance per process): model, data order, item table, evaluation with best-checkpoint
    selection and early stopping, checkpoints; the loop is BaseTrainer's. Subclasses (RecPOTrainer) implement
    make_experience(step) and update(experience)."""

    SCRIPT, PROGRESS_DESC, TRACKER_PROJECT = "train_rrec.py", "RecPO", "ourrec_rrec"

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
        self.max_steps = cfg.max_steps if cfg.max_steps > 0 else max(
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
                                           num_training_steps=self.max_steps)
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

    def evaluate_split(self, split: str) -> dict[str, float]:
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

    def evaluate(self, step: int) -> dict[str, Any]:
        """Recompute the item table (upstream does at every evaluation), then the valid (and test) metrics."""
        self.refresh_item_table()
        out: dict[str, Any] = {}
        if self.cfg.num_eval_samples == 0:
            return out
        if len(self.dataset.split("valid")):
            out.update(self.evaluate_split("valid"))
        if self.cfg.eval_test_split and len(self.dataset.split("test")):
            out.update(self.evaluate_split("test"))
        return out

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

    # ---- output dir ------------------------------------------------------------------------------
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

    def save_checkpoint(self, step: int) -> Path:
        state = {"step": step, "world_size": self.world, "total_steps": self.max_steps,
                 "wall_time": self.state.get("wall_time", 0.0),
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

    # ---- the lifecycle's hooks (BaseTrainer.train runs the loop) -------------------------------------
    @property
    def show_progress(self) -> bool:
        return self.cfg.progress

    def on_train_start(self) -> dict[str, Any] | None:
        """Upstream's eval_on_start (a fresh run only; never a candidate for the best model), the item table, the
        batch order from the step after start_step."""
        first = None
        if self.resume_ckpt is None and self.cfg.eval_on_start:
            first = self.evaluate(0)
            first = {"step": 0, **first} if first else None
        if self.item_table is None:
            self.refresh_item_table()
        self._batches = self.batches()
        return first

    def next_batch(self) -> list[dict]:
        """This process's examples of the next step."""
        return next(self._batches)

    def training_step(self, step: int) -> tuple[dict[str, Any], Any]:
        c = self.cfg
        if c.item_refresh_steps and step > 1 and (step - 1) % c.item_refresh_steps == 0:
            self.refresh_item_table()
        return super().training_step(step)

    def should_log(self, step: int) -> bool:
        return step % self.cfg.logging_steps == 0 or step == self.max_steps

    def should_evaluate(self, step: int) -> bool:
        return (self.eval_every > 0 and step % self.eval_every == 0) or \
            (self.eval_every == 0 and step == self.max_steps)

    def should_stop_early(self, step: int, evaluation: dict[str, Any]) -> bool:
        return self.update_best(step, evaluation)

    def should_save(self, step: int, evaluated: bool) -> bool:
        return evaluated or bool(self.cfg.save_steps and step % self.cfg.save_steps == 0)

    def progress_postfix(self, record: dict[str, Any]) -> dict[str, str]:
        nan = float("nan")
        return {"loss": f"{record.get('loss', nan):.3f}", "reward": f"{record.get('reward', nan):.3f}"}

    def finish(self, step: int, early_stopped: bool) -> Path | None:
        """{output_dir}/final_checkpoint: the best checkpoint's model (or the last one)."""
        if early_stopped and self.is_main:
            print(f"early stopping at step {step}: {self.evals_without_improvement} evaluations without a "
                  f"better valid NDCG@10 (best {self.best_metric:.4f} at step {self.best_step})")
        final = self.save_final(step)
        if self.is_main:
            print(f"final model: {self.out / FINAL_DIR} (from step "
                  f"{self.best_step if self.cfg.load_best_model_at_end and self.best_step else step})")
        return final

    def result(self) -> dict[str, Any]:
        return {"best_step": self.best_step, "best_metric": self.best_metric}
