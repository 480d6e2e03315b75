"""Checkpoint/resume: a run SIGKILLed after a checkpoint and resumed with --resume_from last ends with the
same weights and the same metrics.jsonl tail as an uninterrupted run; bad input fails in one line."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest

from tests.fixtures.assets import build_tiny_qwen
from tests.fixtures.ppo_train import (
    REPO,
    load_weights,
    ppo_assets,  # noqa: F401 (session fixture)
    run_train,
    train_cmd,
    train_env,
)
from trainers.foundation.errors import UserInputError

N_STEPS = 8
FAST = ["--K", "4", "--K_eval", "3", "--batch_size", "2", "--max_len_per_item", "4", "--user_window_size", "3",
        "--ppo_epochs", "2", "--lr_actor", "1e-3", "--lr_critic", "1e-3", "--num_valid_samples", "6",
        "--eval_every", "3", "--save_every", "2", "--save_total_limit", "2", "--print_every", "0",
        "--gradient_accumulation_steps", "2", "--lr_scheduler", "cosine", "--warmup_steps", "2", "--seed", "5",
        "--max_steps", str(N_STEPS)]
VOLATILE = {"wall_time", "samples_per_s"}


@pytest.fixture(scope="module")
def assets(ppo_assets):
    return ppo_assets


def _records(out):
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in recs]


def test_kill_and_resume_matches_uninterrupted_run(assets, tmp_path):
    data, model = assets
    ref = tmp_path / "ref"
    r = run_train(train_cmd(data, model, ref, *FAST))
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(data, model, out, *FAST), cwd=REPO, env=train_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoint-2" / "COMPLETE").exists():
        assert proc.poll() is None, "training exited before its first checkpoint"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / f"checkpoint-{N_STEPS}").exists(), "the run finished before it could be killed"

    r = run_train(train_cmd(data, model, out, *FAST, "--resume_from", "last"))
    assert r.returncode == 0, r.stderr[-3000:]

    a, b = load_weights(ref / f"checkpoint-{N_STEPS}"), load_weights(out / f"checkpoint-{N_STEPS}")
    assert a.keys() == b.keys() and len(a) > 5
    diff = [k for k in a if not (a[k] == b[k]).all()]
    assert not diff, f"weights differ after resume: {diff[:5]}"
    ra, rb = _records(ref), _records(out)
    assert [x["step"] for x in rb] == list(range(1, N_STEPS + 1))
    assert ra == rb
    assert any("val_NDCG@3" in x for x in rb)
    # rotation keeps the newest two complete checkpoints
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{N_STEPS - 2}", f"checkpoint-{N_STEPS}"]


def _args(data, model, out, *extra):
    from trainers.ppo_trainer import parse_config

    return parse_config(["--dataset_path", str(data), "--model_name_or_path", str(model),
                                          "--output_dir", str(out), "--device", "cpu", "--no_plot",
                                          "--K", "4", "--K_eval", "3", "--max_steps", "1", *extra])


def test_bad_input_is_a_one_line_error(assets, tmp_path):
    from trainers.ppo_trainer import run_training

    data, model = assets
    out = tmp_path / "o"
    cases = [
        (["--K_eval", "5"], "--K_eval"),
        (["--K", "1000"], "catalogue"),
        (["--user_window_size", "0"], "--user_window_size"),
        (["--max_len_per_item", "0"], "--max_len_per_item"),
        (["--dataset_type", "books"], "--dataset_type"),
        (["--resume_from", "last"], "no complete checkpoint"),
    ]
    for extra, needle in cases:
        with pytest.raises(UserInputError, match=needle.replace("-", r"\-")):
            run_training(_args(data, model, out, *extra))
    with pytest.raises(UserInputError, match="does not exist"):
        run_training(_args(tmp_path / "missing", model, out))

    # A finished one-step run: the dir is now non-empty, an incomplete checkpoint is refused.
    run_training(_args(data, model, out, "--batch_size", "1", "--num_valid_samples", "2"))
    with pytest.raises(UserInputError, match="not empty"):
        run_training(_args(data, model, out))
    broken = out / "checkpoint-9"
    shutil.copytree(out / "checkpoint-1", broken)
    (broken / "COMPLETE").unlink()
    with pytest.raises(UserInputError, match="incomplete checkpoint"):
        run_training(_args(data, model, out, "--resume_from", str(broken)))

    # A checkpoint of another architecture cannot resume this one.
    other = build_tiny_qwen(tmp_path / "other", hidden_size=32, intermediate_size=64)
    with pytest.raises(UserInputError, match="different model shape"):
        run_training(_args(data, other, out, "--resume_from", "last"))

    # The script turns it into `train.py: error: ...` on one line with exit status 2.
    r = run_train(train_cmd(data, model, out, "--K", "4", "--K_eval", "9"))
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("train.py: error: --K_eval"), r.stderr
