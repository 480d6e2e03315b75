"""Train an ID-based sequential recommender (SASRec or GRU4Rec, models/sequential.py) on a processed dataset's train
split, pick the epoch with the best valid NDCG@10 on K sampled candidates, and rank a split's candidates (or a
reference result JSON's) with it: compare_model/sasrec.py's run. docs/baselines.md has the reasoning.

Data: every train user's interactions in time order (trainers/data/sequences.py; train split only, so no valid or
test target is trained on), the last max_len + 1 of them per user (the paper's one training sequence per user),
held as an int32 array and moved to the device a batch at a time. Each step: a batch of users; the states of the
input items predict the next item at every position (bce: one sampled negative per position, drawn uniformly
from the items outside the user's window; ce: softmax over the batch's targets plus shared uniform negatives).
Adam with betas (0.9, 0.98), constant learning rate.

Validation after every --eval_every epochs on --valid_samples valid examples with K candidates drawn by the
protocol's rule (trainers/evaluation/protocol.build_eval_items, --seed): NDCG@10 among the candidates picks the
best epoch; --patience validations without a strictly better value stop training.

{output_dir}: checkpoint-{step}/ after every epoch (model.pt, optimizer.pt, trainer_state.json, args.json, RNG
state, COMPLETE; foundation/checkpoints.py writes them atomically; the newest and the best are kept),
metrics.jsonl (one record per epoch: step, epoch, loss, lr, the validation metrics, best_epoch, epoch_seconds and
wall_time_s, the keys every trainer shares), args.json, and the result JSON. A rerun of the same command continues
from the newest complete checkpoint (every epoch's randomness is drawn from (--seed, epoch), so a killed and resumed
run ends with the same model and the same result JSON as an uninterrupted one) and, once training is finished,
only ranks what the result JSON still lacks. SIGTERM/SIGINT finish the epoch, save and exit.

Its epoch loop is its own, not trainers/base_trainer.py's: one process without accelerate, a "step" of the loop
is a whole epoch whose record also carries the best epoch so far, a signal during the last epoch still ends in
ranking, and the run continues by rerunning the same command (no --resume_from); fitting it to the base loop
would take hooks only it uses. It shares the pieces: StopRequest, foundation/checkpoints, the metrics key names.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foundation.checkpoints import (changed_settings, checkpoint_dirs, load_torch_state, prepare_output_dir,
                                    read_saved_args, read_trainer_state, resolve_checkpoint, run_files, save_torch,
                                    write_checkpoint)
from foundation.config import require
from foundation.errors import UserInputError
from foundation.files import RunLock, append_jsonl, check_output_path
from foundation.seeding import derived_seed, numpy_rng
from models.sequential import MODELS, SequentialRecommender, bce_loss, sampled_softmax_loss
from trainers.base_trainer import WALL_TIME
from trainers.configs.sequential import PAPER_HIDDEN, SequentialConfig

SPARSE_DENSITY = 0.01  # below it SASRec's paper setting is dropout 0.5 (Amazon, Steam), above 0.2 (MovieLens-1M)
CHECKPOINT_FILES = [("model.pt",), ("optimizer.pt",), ("trainer_state.json",), ("args.json",)]
KEEP_CHECKPOINTS = 2  # the newest (to resume) and the best (to rank with)


def resolve_K(cfg: SequentialConfig, reference: dict | None) -> None:
    """--K unset: the reference's candidate count, else 20; --K_eval unset: min(10, K)."""
    if cfg.K is None:
        samples = (reference or {}).get("samples") or []
        cfg.K = len(samples[0]["candidates"]) if samples else 20
    if cfg.K_eval is None:
        cfg.K_eval = min(10, cfg.K)
    require(cfg.K_eval <= cfg.K, f"--K_eval {cfg.K_eval}: must be between 1 and --K {cfg.K}")


def build_model(cfg: SequentialConfig, n_items: int, dropout: float) -> SequentialRecommender:
    hidden = cfg.hidden_size or PAPER_HIDDEN[cfg.model]
    if cfg.model == "sasrec":
        return MODELS["sasrec"](n_items, max_len=cfg.max_len, hidden_size=hidden, num_blocks=cfg.num_blocks,
                                num_heads=cfg.num_heads, dropout=dropout)
    return MODELS["gru4rec"](n_items, max_len=cfg.max_len, hidden_size=hidden, num_layers=cfg.num_layers,
                             dropout=dropout)


def default_dropout(cfg: SequentialConfig, density: float) -> float:
    """--dropout, or the paper's value for this model (and, for SASRec, this data's sparsity)."""
    if cfg.dropout is not None:
        return cfg.dropout
    if cfg.model == "gru4rec":
        return 0.3
    return 0.5 if density < SPARSE_DENSITY else 0.2


class SequentialTrainer:
    """One training run in cfg.output_dir: built (or resumed from its newest checkpoint) by __init__, trained by
    train(), its chosen model returned by best_model()."""

    def __init__(self, cfg: SequentialConfig, n_items: int, windows: np.ndarray, density: float,
                 valid_items: list, device: torch.device) -> None:
        self.cfg, self.n_items, self.windows, self.valid_items, self.device = cfg, n_items, windows, valid_items, device
        self.out = Path(cfg.output_dir)
        self.metrics_file = self.out / "metrics.jsonl"
        self.dropout = default_dropout(cfg, density)
        self.steps_per_epoch = math.ceil(len(windows) / cfg.batch_size)
        self.ckpt = None if cfg.overwrite_output_dir else self._resumable_checkpoint()
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, n_items, self.dropout).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.98))
        state = read_trainer_state(self.ckpt, flag="--output_dir") if self.ckpt else {}
        self.epoch = int(state.get("epoch", 0))
        self.best_epoch: int | None = state.get("best_epoch")
        self.best_metric: float | None = state.get("best_metric")
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.finished = bool(state.get("finished", False))
        self.early_stopped = bool(state.get("early_stopped", False))
        self.wall_time = float(state.get("wall_time", 0.0))
        if self.ckpt is not None:
            self._load(self.ckpt, with_optimizer=True)

    # ---- output dir and resume ---------------------------------------------------------------------------
    def _resumable_checkpoint(self) -> Path | None:
        """The newest complete checkpoint of this run, or None (a fresh start). Checkpoints that are not this
        script's are refused (their directory is not ours to rotate), and so is a run with other training
        settings."""
        for _, d in checkpoint_dirs(self.out, complete_only=False):
            try:
                args = json.loads((d / "args.json").read_text())
            except (OSError, ValueError):
                args = None
            if not isinstance(args, dict) or args.get("model") not in MODELS or "max_len" not in args:
                raise UserInputError(f"--output_dir {self.out}: holds {d.name}, which compare_model/sasrec.py did not "
                                     "write; use another --output_dir")
        ckpt = resolve_checkpoint("auto", self.out, required=CHECKPOINT_FILES, where=f"--output_dir {self.out}",
                                  training=True)
        if ckpt is None:
            return None
        saved = read_saved_args(ckpt, flag="--output_dir")
        diff = changed_settings(saved, self.cfg.to_dict(), self.cfg.trajectory_settings())
        if diff:
            shown = ", ".join(f"--{k} {saved[k]!r} -> {getattr(self.cfg, k)!r}" for k in diff)
            raise UserInputError(f"--output_dir {self.out}: holds a run trained with other settings ({shown}); rerun "
                                 "with its settings, pass --overwrite_output_dir to train afresh, or use another "
                                 "--output_dir")
        return ckpt

    def _load(self, ckpt: Path, with_optimizer: bool) -> None:
        try:
            self.model.load_state_dict(load_torch_state(ckpt / "model.pt", self.device, flag="--output_dir"))
            if with_optimizer:
                self.optimizer.load_state_dict(load_torch_state(ckpt / "optimizer.pt", self.device,
                                                                flag="--output_dir"))
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserInputError(f"--output_dir {ckpt}: the checkpoint does not fit this model and dataset "
                                 f"({str(e).splitlines()[0]}); pass --overwrite_output_dir to train afresh")

    def output_files(self, result_file: Path) -> list[Path]:
        """What --overwrite_output_dir removes: this run's checkpoints, logs and result JSON (and its partial log)."""
        return run_files(self.out, ["metrics.jsonl", "args.json", result_file,
                                    result_file.with_name(result_file.name + ".partial.jsonl")])

    @property
    def step(self) -> int:
        return self.epoch * self.steps_per_epoch

    # ---- training ------------------------------------------------------------------------------------------
    def train(self, result_file: Path) -> bool:
        """Train until --num_epochs, early stopping or a signal; False when a signal stopped it."""
        from tqdm.auto import tqdm

        from foundation.distributed import StopRequest

        c = self.cfg
        prepare_output_dir(self.out, c.to_dict(),
                           overwrite_files=self.output_files(result_file) if c.overwrite_output_dir else (),
                           logs=[self.metrics_file], keep_records_through=self.step if self.ckpt else -1)
        if self.finished:
            return True
        if self.ckpt is not None:
            print(f"resuming {self.ckpt} (epoch {self.epoch} of {c.num_epochs})", file=sys.stderr)
        bar = tqdm(total=c.num_epochs, initial=self.epoch, desc=c.model, unit="epoch", disable=c.no_progress,
                   dynamic_ncols=True)
        try:
            with StopRequest() as stop:
                while not self.finished:
                    epoch, started = self.epoch + 1, time.time()
                    record: dict[str, Any] = {"step": (epoch * self.steps_per_epoch), "epoch": epoch,
                                              "loss": self.train_epoch(epoch), "lr": c.learning_rate}
                    validated = bool(self.valid_items) and (epoch % c.eval_every == 0 or epoch == c.num_epochs)
                    if validated:
                        record.update(self.validate())
                    self.epoch = epoch
                    stop_early = self.update_best(record) if validated else False
                    if not self.valid_items:
                        self.best_epoch = epoch  # nothing to choose by: the newest model
                    self.finished = stop_early or epoch >= c.num_epochs
                    self.early_stopped = stop_early
                    record.update({"best_epoch": self.best_epoch, "epoch_seconds": time.time() - started})
                    self.wall_time += time.time() - started
                    record[WALL_TIME] = self.wall_time  # the key every trainer logs (trainers/base_trainer.py)
                    append_jsonl(self.metrics_file, [record])  # before the checkpoint: a resume cuts it back
                    self.save_checkpoint()
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}",
                                    **({"valid_NDCG10": f"{record['valid/NDCG@10']:.4f}"} if validated else {}))
                    if stop.requested and not self.finished:
                        print(f"stopped by {stop.signal_name} after epoch {epoch}; checkpoint-{self.step} is "
                              "complete; rerun the same command to continue", file=sys.stderr)
                        return False
        finally:
            bar.close()
        if self.early_stopped:
            print(f"early stopping after epoch {self.epoch}: {self.evals_without_improvement} validations without a "
                  f"better valid NDCG@10 (best {self.best_metric:.4f} after epoch {self.best_epoch})",
                  file=sys.stderr)
        return True

    def train_epoch(self, epoch: int) -> float:
        """One pass over the train users in a seeded order; the mean loss of its steps. Every random draw of the
        epoch (order, negatives, dropout) comes from (--seed, epoch): a resumed run replays it exactly."""
        c, model = self.cfg, self.model
        torch.manual_seed(derived_seed(c.seed, epoch, 1))  # dropout
        order = numpy_rng(c.seed, epoch, 2).permutation(len(self.windows))
        negatives = numpy_rng(c.seed, epoch, 3)
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=self.device)  # on the device: one read per epoch
        for b in range(self.steps_per_epoch):
            window = self.windows[order[b * c.batch_size:(b + 1) * c.batch_size]]
            inputs, targets = window[:, :-1], window[:, 1:].copy()
            targets[inputs == 0] = 0  # a user's first item has no state before it to predict it from
            seq = model.clip(torch.from_numpy(inputs).long().to(self.device))
            pos = torch.from_numpy(targets[:, -seq.shape[1]:]).long().to(self.device)
            hidden = model(seq)
            if c.paper_loss == "bce":
                neg = torch.from_numpy(self.sample_negatives(negatives, window)[:, -seq.shape[1]:]).long()
                loss = bce_loss(model, hidden, pos, neg.to(self.device))
            else:
                loss = sampled_softmax_loss(model, hidden, pos, self.softmax_columns(negatives, pos))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
        return total.item() / max(1, self.steps_per_epoch)

    def sample_negatives(self, rng: np.random.Generator, window: np.ndarray) -> np.ndarray:
        """One uniform item per position, none of them in the user's window (redrawn until so: the paper's
        negatives avoid the user's items; a window of max_len + 1 items stands for the user's sequence)."""
        neg = rng.integers(1, self.n_items + 1, size=window[:, 1:].shape).astype(np.int32)
        for _ in range(100):
            clash = (neg[:, :, None] == window[:, None, :]).any(-1)
            if not clash.any():
                break
            neg[clash] = rng.integers(1, self.n_items + 1, size=int(clash.sum()))
        return neg

    def softmax_columns(self, rng: np.random.Generator, pos: torch.Tensor) -> torch.Tensor:
        """The items the ce loss normalises over: every item when there are no more than --num_negatives, else the
        batch's targets plus --num_negatives uniform draws (sorted, distinct)."""
        if self.n_items <= self.cfg.num_negatives:
            return torch.arange(1, self.n_items + 1, device=self.device)
        drawn = torch.from_numpy(rng.integers(1, self.n_items + 1, size=self.cfg.num_negatives)).to(self.device)
        return torch.unique(torch.cat([pos[pos != 0], drawn]))

    def validate(self) -> dict[str, float]:
        from trainers.evaluation.rrec import rrec_metrics
        from trainers.evaluation.sequential import rank_with_sequential

        c = self.cfg
        samples = rank_with_sequential(self.model, self.valid_items, batch_size=c.eval_batch_size,
                                       full_ranking=c.full_ranking, rank_repeat_targets=c.rank_repeat_targets)
        rows = rrec_metrics(samples, c.K_eval, c.full_ranking, name="valid")
        return {f"{row.replace(' (full catalogue)', '_full')}/{k}": v for row, m in rows.items() for k, v in m.items()}

    def update_best(self, record: dict[str, Any]) -> bool:
        """Track the best valid NDCG@10 among the K candidates (strictly better resets the patience count); True
        when --patience validations went by without one."""
        metric = float(record["valid/NDCG@10"])
        if self.best_metric is None or metric > self.best_metric:
            self.best_metric, self.best_epoch, self.evals_without_improvement = metric, self.epoch, 0
        else:
            self.evals_without_improvement += 1
        return bool(self.cfg.patience) and self.evals_without_improvement >= self.cfg.patience

    def save_checkpoint(self) -> Path:
        state = {"step": self.step, "epoch": self.epoch, "steps_per_epoch": self.steps_per_epoch,
                 "best_epoch": self.best_epoch, "best_step": self.best_step, "best_metric": self.best_metric,
                 "evals_without_improvement": self.evals_without_improvement, "finished": self.finished,
                 "early_stopped": self.early_stopped, "wall_time": self.wall_time, "world_size": 1,
                 "n_items": self.n_items, "dropout": self.dropout}

        def write(tmp: Path) -> None:
            save_torch(self.model.state_dict(), tmp / "model.pt")
            save_torch(self.optimizer.state_dict(), tmp / "optimizer.pt")

        return write_checkpoint(self.out, self.step, write, state, self.cfg.to_dict(), rank=0, barrier=lambda: None,
                                save_total_limit=KEEP_CHECKPOINTS, keep_step=self.best_step)

    @property
    def best_step(self) -> int | None:
        return None if self.best_epoch is None else self.best_epoch * self.steps_per_epoch

    def best_model(self) -> tuple[SequentialRecommender, Path]:
        """The model of the best epoch (the newest one without validation), loaded from its checkpoint."""
        ckpt = self.out / f"checkpoint-{self.best_step if self.best_step is not None else self.step}"
        self._load(ckpt, with_optimizer=False)
        self.model.eval()
        return self.model, ckpt


# ---------------------------------------------------------------------------------------------- the whole run
RESULT_KEYS = ("method", "dataset", "split", "seed", "K", "candidate_source", "rank_repeat_targets", "model_files")


def run_sequential(cfg: SequentialConfig, script: str = "compare_model/sasrec.py") -> dict | None:
    """Validate everything, train (or resume), rank; the result JSON (None when a signal stopped training)."""
    from foundation.distributed import resolve_device
    from trainers.data.dataset import load_processed_dataset
    from trainers.data.sequences import last_windows, user_sequences
    from trainers.evaluation.protocol import build_eval_items
    from trainers.evaluation.results import check_resume_settings, load_result_json

    cfg.validate()
    dataset = load_processed_dataset(cfg.dataset_dir, flag="--dataset_dir")
    reference = load_result_json(cfg.reference_json) if cfg.reference_json else None
    resolve_K(cfg, reference)
    if reference is None or cfg.valid_samples:
        dataset.check_K(cfg.K)
    items = build_eval_items(dataset, cfg.split, cfg.num_samples, cfg.K, cfg.seed, reference=reference)
    if not items:
        raise UserInputError(f"--split {cfg.split}: no examples to rank in {cfg.dataset_dir}")
    valid_items = [] if cfg.valid_samples == 0 else \
        build_eval_items(dataset, "valid", None if cfg.valid_samples < 0 else cfg.valid_samples, cfg.K, cfg.seed)
    out = check_output_path(cfg.output_dir, "--output_dir", kind="dir")
    result_file = Path(cfg.output_file or out / ("results.json" if cfg.split == "test"
                                                 else f"results_{cfg.split}.json"))
    check_output_path(result_file, "--output_file" if cfg.output_file else "--output_dir")
    device = resolve_device(cfg.device)

    seq_items, offsets = user_sequences(dataset)
    windows = last_windows(seq_items, offsets, cfg.max_len + 1, min_items=2)
    if len(windows) == 0:
        raise UserInputError(f"--dataset_dir {cfg.dataset_dir}: no user has two train interactions; nothing to "
                             "learn a sequence from")
    n_users = len(offsets) - 1
    density = len(seq_items) / max(1, n_users * dataset.n_items)
    meta = {"args": cfg.to_dict(), "method": cfg.model, "script": script, "dataset": cfg.dataset_dir,
            "dataset_layout": dataset.layout, "split": cfg.split, "seed": cfg.seed, "K": cfg.K, "K_eval": cfg.K_eval,
            "candidate_source": cfg.reference_json or "sampled", "full_ranking": cfg.full_ranking,
            "rank_repeat_targets": cfg.rank_repeat_targets,
            "train_data": {"users": n_users, "users_with_a_sequence": int(len(windows)),
                           "interactions": int(len(seq_items)), "density": density}}
    if not cfg.overwrite_output_dir:
        check_resume_settings(result_file, meta, RESULT_KEYS[:-1] + tuple(cfg.trajectory_settings()),
                              flag="--output_file" if cfg.output_file else "--output_dir")
    with RunLock(out, flag="--output_dir"):
        trainer = SequentialTrainer(cfg, dataset.n_items, windows, density, valid_items, device)
        print(f"{cfg.model}: {len(windows)} train sequences ({len(seq_items)} train interactions of {n_users} users, "
              f"{dataset.n_items} items, density {density:.4%}), dropout {trainer.dropout}, loss {cfg.paper_loss}, "
              f"{len(valid_items)} valid examples, device {device}", file=sys.stderr)
        if not trainer.train(result_file):
            return None
        model, ckpt = trainer.best_model()
        meta["training"] = {"epochs": trainer.epoch, "best_epoch": trainer.best_epoch,
                            "best_valid/NDCG@10": trainer.best_metric, "early_stopped": trainer.early_stopped,
                            "dropout": trainer.dropout, "loss": cfg.paper_loss, "checkpoint": str(ckpt),
                            "train_seconds": round(trainer.wall_time, 2)}
        meta["model_files"] = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in [ckpt / "model.pt"]}
        return rank_and_write(cfg, dataset, items, model, result_file, meta)


def rank_and_write(cfg: SequentialConfig, dataset, items: list, model: SequentialRecommender, result_file: Path,
                   meta: dict) -> dict:
    """Rank the items into the result JSON through the evaluation runner (trainers/evaluation/runner.py: resuming
    what an earlier run left, with the sanity rows), print the table."""
    from trainers.evaluation.runner import EvalJob, launch_state, run_evaluation
    from trainers.evaluation.sequential import SequentialRanker

    pop = dataset.popularity
    meta["cold_targets"] = sum(1 for ex, _ in items if pop[int(ex["item_id"])] == 0)
    job = EvalJob(dataset=dataset, split=cfg.split, items=items, result_file=result_file, meta=meta, seed=cfg.seed,
                  K_eval=cfg.K_eval, fresh=cfg.overwrite_output_dir,
                  resume_keys=RESULT_KEYS + tuple(cfg.trajectory_settings()),
                  output_flag="--output_file" if cfg.output_file else "--output_dir", flush_every=cfg.eval_batch_size)
    state = launch_state(cpu=next(model.parameters()).device.type == "cpu")
    return run_evaluation(job, SequentialRanker(model, cfg, dataset, meta), state)
