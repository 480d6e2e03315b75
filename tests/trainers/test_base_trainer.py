"""trainers/base_trainer.py, the one training loop, on a minimal trainer: linear regression learned by SGD (a real
torch model whose loss must fall), run through foundation.distributed.run_trainer like train.py and
train_rrec.py. The lifecycle: one metrics.jsonl record per step with the shared keys, evaluation and checkpoint
cadence, the final model, a SIGTERM that stops after a complete checkpoint, and a resume that ends with the same
weights and the same records as an uninterrupted run; early stopping."""
from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from foundation.checkpoints import (finish_resume, load_torch_state, prepare_output_dir, read_trainer_state,
                                    resolve_checkpoint, save_torch, write_checkpoint, write_final_model)
from foundation.config import RunConfig, option
from foundation.distributed import run_trainer
from foundation.files import append_jsonl
from trainers.base_trainer import BaseTrainer, learning_rate_keys

W_TRUE = torch.tensor([[2.0], [-1.0], [0.5]])
SHARED_KEYS = {"step", "lr", "step_seconds", "wall_time_s"}
VOLATILE = {"step_seconds", "wall_time_s"}


@dataclass
class LinearConfig(RunConfig):
    OPERATIONAL = RunConfig.OPERATIONAL + ("stop_early_after",)

    max_steps: int = option(12, "steps")
    learning_rate: float = option(0.1, "SGD learning rate (x 0.95 per step)")
    batch_size: int = option(16, "examples per step")
    eval_every: int = option(4, "evaluate every N steps")
    save_every: int = option(5, "checkpoint every N steps")
    stop_early_after: int = option(0, "stop at the first evaluation after this step (0: never)")
    seed: int = option(0, "seed of the initial weights and the batches")

    def validate(self) -> None:
        self.validate_run()


class LinearTrainer(BaseTrainer):
    """y = x W + 0.5 from 256 fixed examples; every step a seeded batch (so a resume replays it)."""

    SCRIPT, PROGRESS_DESC = "linear.py", "linear"

    def __init__(self, cfg: LinearConfig, accelerator) -> None:
        super().__init__(cfg, accelerator)
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(256, 3, generator=g)
        self.y = self.x @ W_TRUE + 0.5
        self.resume_ckpt = resolve_checkpoint(cfg.resume_from, self.out, required=[("model.pt",)],
                                              where=f"--output_dir {self.out}", training=True)
        self.state = read_trainer_state(self.resume_ckpt) if self.resume_ckpt else {}
        self.start_step, self.max_steps = int(self.state.get("step", 0)), cfg.max_steps
        torch.manual_seed(cfg.seed)
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer, lambda t: 0.95 ** t)
        if self.resume_ckpt is not None:
            self.model.load_state_dict(load_torch_state(self.resume_ckpt / "model.pt"))
            self.optimizer.load_state_dict(load_torch_state(self.resume_ckpt / "optimizer.pt"))
            self.scheduler.load_state_dict(load_torch_state(self.resume_ckpt / "scheduler.pt"))
            finish_resume(self.resume_ckpt, self.rank, self.world, self.state, [], self.is_main)

    def make_experience(self, step: int):
        idx = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(1000 * self.cfg.seed + step))
        idx = idx[:self.cfg.batch_size]
        return self.x[idx], self.y[idx]

    def update(self, batch) -> dict[str, float]:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        self.acc.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.scheduler.step()
        return {"loss": float(loss.detach())}

    def should_evaluate(self, step: int) -> bool:
        return step % self.cfg.eval_every == 0

    def evaluate(self, step: int) -> dict[str, float]:
        with torch.no_grad():
            return {"val_loss": float(torch.nn.functional.mse_loss(self.model(self.x), self.y))}

    def should_stop_early(self, step: int, evaluation: dict) -> bool:
        return bool(self.cfg.stop_early_after) and step > self.cfg.stop_early_after

    def should_save(self, step: int, evaluated: bool) -> bool:
        return step % self.cfg.save_every == 0

    def prepare_output_dir(self) -> None:
        prepare_output_dir(self.out, self.run_args(), logs=[self.out / "metrics.jsonl"],
                           keep_records_through=self.start_step if self.cfg.resume_from else None)

    def _write_model(self, d: Path) -> None:
        save_torch(self.acc.unwrap_model(self.model).state_dict(), d / "model.pt")

    def save_checkpoint(self, step: int) -> Path:
        def files(tmp: Path) -> None:
            self._write_model(tmp)
            save_torch(self.optimizer.state_dict(), tmp / "optimizer.pt")
            save_torch(self.scheduler.state_dict(), tmp / "scheduler.pt")

        state = {"step": step, "world_size": self.world, "wall_time": self.state["wall_time"]}
        return write_checkpoint(self.out, step, files, state, self.cfg.to_dict(), rank=self.rank,
                                barrier=self.acc.wait_for_everyone)

    def finish(self, step: int, early_stopped: bool) -> Path | None:
        return write_final_model(self.out / "final", self._write_model, self.is_main, self.acc.wait_for_everyone)


def train(out: Path, **settings) -> dict:
    cfg = LinearConfig(output_dir=str(out), device="cpu", **settings)
    return run_trainer(cfg, LinearTrainer)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("base_trainer") / "whole"
    return out, train(out)


def test_learns_with_one_record_per_step_and_the_cadences(uninterrupted):
    out, result = uninterrupted
    recs = records(out)
    assert [r["step"] for r in recs] == list(range(1, 13))
    for r in recs:
        assert SHARED_KEYS <= set(r) and r["step_seconds"] >= 0
        assert r["lr"] == pytest.approx(0.1 * 0.95 ** (r["step"] - 1))  # the rate the step's update used
    assert [r["step"] for r in recs if "val_loss" in r] == [4, 8, 12]  # --eval_every 4, joined to the step's record
    walls = [r["wall_time_s"] for r in recs]
    assert walls == sorted(walls)
    val = [r["val_loss"] for r in recs if "val_loss" in r]
    assert val[-1] < val[0] / 5 and val == sorted(val, reverse=True), val  # it learns
    # checkpoints every --save_every steps and at the last; the final model is the last step's
    assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == [5, 10, 12]
    assert result["stopped_by"] is None and result["early_stopped"] is False and result["step"] == 12
    assert result["final"] == out / "final" and result["last"] == recs[-1]
    final, last = weights(out / "final" / "model.pt"), weights(out / "checkpoint-12" / "model.pt")
    assert all(torch.equal(final[k], last[k]) for k in final)
    state = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["wall_time"] == pytest.approx(recs[-1]["wall_time_s"])


def test_sigterm_checkpoints_and_a_resume_replays_the_run(uninterrupted, tmp_path, monkeypatch, capsys):
    whole, _ = uninterrupted
    out = tmp_path / "resumed"
    update = LinearTrainer.update

    def update_then_sigterm(self, batch):
        stats = update(self, batch)
        if self.scheduler.last_epoch == 7:  # during step 7
            os.kill(os.getpid(), signal.SIGTERM)
        return stats

    monkeypatch.setattr(LinearTrainer, "update", update_then_sigterm)
    first = train(out)
    monkeypatch.undo()
    assert first["stopped_by"] == "SIGTERM" and first["step"] == 7 and first["final"] is None
    assert "linear.py: stopped by SIGTERM after step 7; checkpoint-7 is complete" in capsys.readouterr().out
    assert (out / "checkpoint-7" / "COMPLETE").is_file() and not (out / "final").exists()
    stopped_wall = records(out)[-1]["wall_time_s"]
    append_jsonl(out / "metrics.jsonl", [{"step": 8, "loss": 123.0}])  # logged by a run killed before its save

    again = train(out, resume_from="auto")
    assert again["stopped_by"] is None and again["step"] == 12
    got, want = records(out), records(whole)
    strip = [{k: v for k, v in r.items() if k not in VOLATILE} for r in got]
    assert strip == [{k: v for k, v in r.items() if k not in VOLATILE} for r in want]  # the stale step 8 is gone
    assert got[7]["wall_time_s"] > stopped_wall  # the wall time continues across the resume
    for d in ("final", "checkpoint-12", "checkpoint-10"):
        a, b = weights(out / d / "model.pt"), weights(whole / d / "model.pt")
        assert all(torch.equal(a[k], b[k]) for k in a), d


def test_early_stopping_ends_the_run_with_a_checkpoint_and_the_final_model(tmp_path):
    out = tmp_path / "early"
    result = train(out, stop_early_after=5)
    assert result["early_stopped"] is True and result["step"] == 8 and result["stopped_by"] is None
    assert records(out)[-1]["step"] == 8 and (out / "checkpoint-8" / "COMPLETE").is_file()
    assert result["final"] == out / "final" and (out / "final" / "model.pt").is_file()


def test_learning_rate_keys():
    """The first group's rate is `lr`; further groups are named by their "name" (PL-PPO: lr_critic)."""
    assert learning_rate_keys([1e-5, 1e-4], ["actor", "critic"]) == {"lr": 1e-5, "lr_critic": 1e-4}
    assert learning_rate_keys([0.1, 0.2], [None, None]) == {"lr": 0.1, "lr_1": 0.2}
    assert learning_rate_keys([], []) == {}
