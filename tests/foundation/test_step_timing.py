"""Per-phase times of a training step (foundation/step_timing.py) and what train.py logs of them in metrics.jsonl."""
from __future__ import annotations

import time

import pytest

from foundation.step_timing import PhaseTimer
from tests.fixtures.ppo_train import build_trainer, ppo_assets  # noqa: F401 (session fixture)


def test_phases_sum_over_entries_in_first_entry_order():
    t = PhaseTimer("cpu")
    for _ in range(2):
        with t.phase("b"):
            time.sleep(0.01)
        with t.phase("a"):
            time.sleep(0.002)
    got = t.read()
    assert list(got) == ["b", "a"]
    assert 0.02 <= got["b"] < 0.5 and 0.004 <= got["a"] < got["b"]
    assert t.read(host=True) == got  # the host clock is what a CPU reports
    with pytest.raises(ZeroDivisionError), t.phase("c"):
        1 / 0
    assert "c" in t.read()  # a phase that raised still counts its time
    t.reset()
    assert t.read() == {}


def test_train_step_logs_its_phases(ppo_assets, tmp_path):  # noqa: F811
    data, model = ppo_assets
    tr = build_trainer(data, model, tmp_path / "run", "--kl_coef", "0.1", "--max_new_tokens", "2",
                       "--gradient_checkpointing")
    tr.prepare_output_dir()
    for step in (1, 2):
        rec, _ = tr.training_step(step)
        phases = {k: v for k, v in rec.items() if k.startswith("time_")}
        assert set(phases) == {f"time_{p}_s" for p in ("data", "generation", "rollout_scoring", "reference",
                                                       "update_forward", "update_backward", "optimizer")}
        assert all(v > 0 for v in phases.values())
        assert sum(phases.values()) <= rec["step_seconds"]  # the step's phases, not an earlier step's too
    assert "mfu" not in rec and "hfu" not in rec  # no known peak on a CPU
