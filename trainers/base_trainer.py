"""The one training loop: the lifecycle of a run that PL-PPO (trainers/ppo_trainer.py) and RecPO
(trainers/grec_trainer.py + recpo_trainer.py) share. SFT (on transformers' Trainer) and the SASRec/GRU4Rec epochs
keep their own loops and share the pieces and the metrics key names (docs/training.md says why).

A trainer builds its model, optimiser and data in __init__ (checking every input before anything in --output_dir
is touched) and sets `start_step` (0, or the resumed checkpoint's step), `max_steps` and `state` (the resumed
checkpoint's trainer_state.json, or {}); it supplies

    make_experience(step) -> experience     what one step learns from (PL-PPO: a Rollout, RecPO: a RecPORollout)
    update(experience) -> {name: number}    the optimiser steps on it; the step's losses and diagnostics
    evaluate(step) -> {name: number}        validation metrics, joined to the step's record (when should_evaluate)
    prepare_output_dir(), save_checkpoint(step), finish(step, early_stopped)  (the final model)

and train() runs the rest, the same way for every trainer:

    prepare_output_dir -> trackers (--report_to) -> on_train_start (e.g. RRec's evaluation at step 0) ->
    for step in start_step + 1 .. max_steps:
        record, experience = training_step(step)          make_experience -> update -> one record
        record += evaluate(step) when should_evaluate(step)
        record["wall_time_s"]; the record to metrics.jsonl and the trackers (foundation.distributed.log_metrics)
        after_step (example rankings, token logs), progress bar
        SIGTERM/SIGINT on any process (StopRequest): finish the step, checkpoint, stop; should_stop_early: the same
        checkpoint when should_save(step, evaluated), at the last step, on a signal and on early stopping
    -> a signal: one line naming the checkpoint to resume from; otherwise finish() writes the final model
    -> after_train (every process), trackers closed.

Every record of metrics.jsonl carries the shared keys (docs/training.md, "Keys every trainer logs"): `step`, `lr`
(the first parameter group's learning rate; further named groups as `lr_<name>`, e.g. PL-PPO's `lr_critic`),
`step_seconds` (and `peak_mem_gb` on CUDA) and `wall_time_s` (seconds since the run started, continued across
resumes: the checkpoint's trainer_state.json keeps it as `wall_time`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from foundation.distributed import (StopRequest, TrainerProcess, any_process, init_tracking, log_metrics,
                                    mean_over_processes, step_resources)

# The keys every trainer's metrics.jsonl records share (docs/training.md lists the renamed ones).
STEP, LR, WALL_TIME = "step", "lr", "wall_time_s"
STATE_WALL_TIME = "wall_time"  # trainer_state.json's name for it (a checkpoint file format: unchanged)


def learning_rate_keys(lrs: list[float], group_names: list[str | None]) -> dict[str, float]:
    """The learning rates of a step as metrics keys: the first parameter group's as `lr`, every further group's
    as `lr_<its name>` (its position when it has none)."""
    out = {LR: float(lrs[0])} if lrs else {}
    for i, (lr, name) in enumerate(zip(lrs[1:], group_names[1:]), 1):
        out[f"{LR}_{name or i}"] = float(lr)
    return out


class BaseTrainer(TrainerProcess):
    """The lifecycle of one training run, on one process (module docstring). Subclasses set the class attributes,
    start_step/max_steps/state in __init__, and implement the methods that raise NotImplementedError."""

    SCRIPT = "train"  # names the script in the message of a stopped run
    PROGRESS_DESC = "train"
    PROGRESS_UNIT = "step"
    TRACKER_PROJECT = "ourrec"

    start_step: int = 0
    max_steps: int = 0
    state: dict[str, Any]
    scheduler: Any = None

    # ---- what a trainer supplies ---------------------------------------------------------------
    def make_experience(self, step: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, experience: Any) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare_output_dir(self) -> None:  # pragma: no cover - abstract
        """Every input check has passed: --overwrite_output_dir may remove the old run's files now, and a resumed
        run's logs lose the records after its checkpoint (foundation.checkpoints.prepare_output_dir)."""
        raise NotImplementedError

    def save_checkpoint(self, step: int) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self, step: int, early_stopped: bool) -> Path | None:  # pragma: no cover - abstract
        """The run reached its end (max_steps or early stopping): write the final model, say where; its path."""
        raise NotImplementedError

    # ---- what a trainer may change ------------------------------------------------------------
    def training_step(self, step: int) -> tuple[dict[str, Any], Any]:
        """make_experience -> update -> the step's record: the update's numbers averaged over the processes, the
        learning rates the step used, what it took (step_seconds, peak_mem_gb)."""
        started = time.time()
        lrs = self.learning_rates()
        experience = self.make_experience(step)
        stats = mean_over_processes(self.acc, self.update(experience))
        return {STEP: step, **stats, **lrs, **step_resources(self.acc.device, started)}, experience

    def learning_rates(self) -> dict[str, float]:
        """The scheduler's current learning rates as metrics keys (learning_rate_keys)."""
        if self.scheduler is None:
            return {}
        groups = self.scheduler.optimizer.param_groups
        return learning_rate_keys(list(self.scheduler.get_last_lr()), [g.get("name") for g in groups])

    def should_evaluate(self, step: int) -> bool:
        return False

    def evaluate(self, step: int) -> dict[str, Any]:
        """Validation metrics to join to the step's record ({}: nothing to log)."""
        return {}

    def should_stop_early(self, step: int, evaluation: dict[str, Any]) -> bool:
        """After an evaluation: True ends the run here (a checkpoint, then finish)."""
        return False

    def should_save(self, step: int, evaluated: bool) -> bool:
        """A checkpoint besides the ones at the last step, on a signal and on early stopping."""
        return False

    def should_log(self, step: int) -> bool:
        """Whether the step's record goes to metrics.jsonl (one with evaluation metrics always does)."""
        return True

    def on_train_start(self) -> dict[str, Any] | None:
        """Before the first step (output dir prepared, trackers on, signals caught): a record to log first (e.g. the
        untrained model's evaluation), or None."""
        return None

    def after_step(self, step: int, record: dict[str, Any], experience: Any, write: Callable[[str], None]) -> None:
        """After the step's record is logged, on every process (write prints above the progress bar)."""

    def progress_postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {}

    @property
    def show_progress(self) -> bool:
        return True

    def after_train(self) -> None:
        """Last, on every process, whether the run finished or was stopped."""

    def result(self) -> dict[str, Any]:
        """What train() returns besides the shared keys (last, step, max_steps, stopped_by, early_stopped, final)."""
        return {}

    # ---- the loop ------------------------------------------------------------------------------
    def wall_time(self) -> float:
        """Seconds since the run started, the time of the runs it resumes included."""
        return self._wall_offset + time.time() - self._wall_start

    def log(self, record: dict[str, Any]) -> None:
        """A record to metrics.jsonl and the trackers (call on every process)."""
        log_metrics(self.acc, self.out / "metrics.jsonl", record, self.tracking)

    def train(self) -> dict[str, Any]:
        """Run from start_step to max_steps, early stopping or a signal (module docstring)."""
        from tqdm.auto import tqdm

        self.prepare_output_dir()
        self.tracking = init_tracking(self.acc, self.TRACKER_PROJECT, self.cfg)
        self._wall_start, self._wall_offset = time.time(), float(self.state.get(STATE_WALL_TIME, 0.0))
        step, last, stopped_by, early = self.start_step, {}, None, False
        bar = tqdm(total=self.max_steps, initial=self.start_step, desc=self.PROGRESS_DESC, unit=self.PROGRESS_UNIT,
                   disable=not (self.show_progress and self.is_main), dynamic_ncols=True)
        with StopRequest() as stop:
            first = self.on_train_start()
            if first:
                self.log({**first, WALL_TIME: self.wall_time()})
            while step < self.max_steps:
                step += 1
                record, experience = self.training_step(step)
                evaluated = self.should_evaluate(step)
                evaluation = self.evaluate(step) if evaluated else {}
                record.update(evaluation)
                record[WALL_TIME] = self.wall_time()
                if evaluation or self.should_log(step):
                    self.log(record)
                self.after_step(step, record, experience, bar.write)
                bar.update(1)
                bar.set_postfix(self.progress_postfix(record))
                last = record
                early = evaluated and self.should_stop_early(step, evaluation)
                if any_process(self.acc, stop.requested):
                    stopped_by = stop.signal_name or "a signal on another process"
                if self.should_save(step, evaluated) or step == self.max_steps or stopped_by or early:
                    self.state[STATE_WALL_TIME] = record[WALL_TIME]
                    self.save_checkpoint(step)
                if stopped_by or early:
                    break
        bar.close()
        final = None
        if stopped_by:
            if self.is_main:
                print(f"{self.SCRIPT}: stopped by {stopped_by} after step {step}; checkpoint-{step} is complete; "
                      "rerun with --resume_from auto to continue")
        else:
            final = self.finish(step, early)
        self.after_train()
        if self.tracking:
            self.acc.end_training()
        self.acc.wait_for_everyone()
        return {"last": last, "step": step, "max_steps": self.max_steps, "stopped_by": stopped_by,
                "early_stopped": early, "final": final, **self.result()}
