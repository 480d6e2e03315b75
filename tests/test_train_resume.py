"""Checkpoint/resume: a run SIGKILLed after a checkpoint and resumed with --resume_from last, or stopped by SIGTERM
(a preemption) and resumed with --resume_from auto, ends with the same weights and the same metrics.jsonl as an
uninterrupted run; resuming with changed settings, damaged checkpoints and a second run on the same output dir
are refused in one line; bad input fails in one line."""
from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.fixtures.assets import build_tiny_qwen
from tests.fixtures.ppo_train import (
    REPO,
    load_weights,
    metric_records,
    ppo_assets,  # noqa: F401 (session fixture)
    run_train,
    train_cmd,
    train_env,
)
from foundation.errors import UserInputError, cli_message

N_STEPS = 8
FAST = ["--K", "4", "--K_eval", "3", "--batch_size", "2", "--max_len_per_item", "4", "--user_window_size", "3",
        "--ppo_epochs", "2", "--lr_actor", "1e-3", "--lr_critic", "1e-3", "--num_valid_samples", "6",
        "--eval_every", "3", "--save_every", "2", "--save_total_limit", "2", "--print_every", "0",
        "--gradient_accumulation_steps", "2", "--lr_scheduler", "cosine", "--warmup_steps", "2", "--seed", "5",
        "--max_steps", str(N_STEPS)]


@pytest.fixture(scope="module")
def assets(ppo_assets):
    return ppo_assets


@pytest.fixture(scope="module")
def reference_run(assets, tmp_path_factory):
    """An uninterrupted N_STEPS run every resume test compares with."""
    data, model = assets
    ref = tmp_path_factory.mktemp("ref") / "run"
    r = run_train(train_cmd(data, model, ref, *FAST))
    assert r.returncode == 0, r.stderr[-3000:]
    return ref


def _wait_for(path, proc, timeout=240):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training exited before {path.name} appeared"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def _same_as_reference(ref, out):
    a, b = load_weights(ref / f"checkpoint-{N_STEPS}"), load_weights(out / f"checkpoint-{N_STEPS}")
    assert a.keys() == b.keys() and len(a) > 5
    diff = [k for k in a if not (a[k] == b[k]).all()]
    assert not diff, f"weights differ after resume: {diff[:5]}"
    ra, rb = metric_records(ref), metric_records(out)
    assert [x["step"] for x in rb] == list(range(1, N_STEPS + 1))
    assert ra == rb


def test_metrics_record_model_flops(assets, reference_run):
    """Every step logs the model FLOPs it did (models/flops.py): at least a forward's 2 FLOPs per non-embedding
    weight for every token counted, at most a training pass's 6 plus attention; no MFU without a known GPU peak."""
    from transformers import AutoModelForCausalLM

    from models.flops import ModelFlops

    fl = ModelFlops.of(AutoModelForCausalLM.from_pretrained(assets[1]))
    recs = [json.loads(x) for x in (reference_run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in recs if "tflops_per_s" in r]
    assert len(steps) == N_STEPS
    for r in steps:
        per_token = r["tflops_per_s"] * 1e12 * r["step_seconds"] / r["tokens"]
        assert 2 * fl.non_embedding <= per_token <= 6 * fl.non_embedding + 12 * fl.layers * fl.attn_dim * 512
        assert "mfu" not in r


def test_validation_and_rl_diagnostics_are_logged(assets, reference_run):
    """Validation ranks --eval_K candidates (default 20, test.py's K) and says so in its name; the last step's
    validation (the final one) reaches metrics.jsonl and trainer_state.json; every step logs the RL diagnostics of
    docs/training.md, and no KL to a reference when there is none (--kl_coef 0)."""
    recs = [json.loads(x) for x in (reference_run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in recs if "val_NDCG@3_K20" in r] == [3, 6, N_STEPS]  # --eval_every 3, and the last
    assert not [k for r in recs for k in r if k.startswith("val_") and k != "val_NDCG@3_K20"]
    state = json.loads((reference_run / f"checkpoint-{N_STEPS}" / "trainer_state.json").read_text())
    assert state["validation"]["step"] == N_STEPS and state["validation"]["K"] == 20
    assert state["validation"]["NDCG@3"] == recs[-1]["val_NDCG@3_K20"] and state["validation"]["n"] == 6
    for r in recs:
        assert "kl" not in r and "kl_ref" not in r
        assert 0 <= r["clipfrac"] <= 1 and r["approx_kl"] >= 0 and r["grad_norm_max"] >= r["grad_norm"] > 0
        assert 0 < r["ratio_mean"] <= r["ratio_max"] and r["grad_norm_critic"] > 0
        # the Monte-Carlo estimate may exceed its bound log K! on a few samples; the exact first-pick one may not
        assert 0 < r["pl_entropy_top1"] <= math.log(4) + 1e-6 and r["pl_entropy_mc"] > 0
        assert r["explained_variance"] <= 1
    # the policy moves during the update: some step's ratios leave 1
    assert max(r["ratio_max"] for r in recs) > 1


def test_kill_and_resume_matches_uninterrupted_run(assets, reference_run, tmp_path):
    data, model = assets
    ref = reference_run

    out = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(data, model, out, *FAST), cwd=REPO, env=train_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(out / "checkpoint-2" / "COMPLETE", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / f"checkpoint-{N_STEPS}").exists(), "the run finished before it could be killed"

    r = run_train(train_cmd(data, model, out, *FAST, "--resume_from", "last"))
    assert r.returncode == 0, r.stderr[-3000:]

    _same_as_reference(ref, out)
    assert any("val_NDCG@3_K20" in x for x in metric_records(out))
    # rotation keeps the newest two complete checkpoints
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{N_STEPS - 2}", f"checkpoint-{N_STEPS}"]


def test_sigterm_saves_a_checkpoint_and_auto_resume_continues(assets, reference_run, tmp_path):
    """A preempted job: SIGTERM mid-run -> the step finishes, a complete checkpoint is written, exit 0 with one
    line; the same command with --resume_from auto then ends exactly like the uninterrupted run."""
    data, model = assets
    out = tmp_path / "preempted"
    cmd = train_cmd(data, model, out, *FAST, "--resume_from", "auto")  # auto: a fresh start the first time
    proc = subprocess.Popen(cmd, cwd=REPO, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoint-2" / "COMPLETE", proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert "stopped by SIGTERM" in stdout and "--resume_from auto" in stdout
    stopped_at = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert 2 <= stopped_at < N_STEPS, "the run finished before the signal"
    assert (out / f"checkpoint-{stopped_at}" / "COMPLETE").is_file() and not (out / "final").exists()
    assert [r["step"] for r in metric_records(out)] == list(range(1, stopped_at + 1))
    r = run_train(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    _same_as_reference(reference_run, out)
    assert (out / "final" / "heads.safetensors").is_file()


def test_resume_refuses_changed_settings_and_damaged_checkpoints(assets, reference_run, tmp_path):
    from trainers.ppo_trainer import run_training

    data, model = assets
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    base = [*FAST, "--resume_from", "last"]
    # a different learning rate or dataset seed would silently change the trajectory
    for flag, value in (("--lr_actor", "5e-4"), ("--seed", "6"), ("--K", "5")):
        args = list(base)
        args[args.index(flag) + 1] = value
        with pytest.raises(UserInputError, match=f"changes settings.*{flag}.*--allow_changed_settings"):
            run_training(_args(data, model, run, *args))
    # ... unless named; the new learning rate is then the one used (not the optimizer state's)
    args = list(base)
    args[args.index("--lr_actor") + 1] = "5e-4"
    args[args.index("--max_steps") + 1] = str(N_STEPS + 1)
    run_training(_args(data, model, run, *args, "--allow_changed_settings", "lr_actor,max_steps"))
    from trainers.utils import lr_lambda_factory

    last = metric_records(run)[-1]
    schedule = lr_lambda_factory(2, N_STEPS + 1, "cosine")  # --warmup_steps 2, the new --max_steps
    assert last["step"] == N_STEPS + 1 and last["lr"] == pytest.approx(5e-4 * schedule(N_STEPS))
    assert json.loads((run / "args.json").read_text())["lr_actor"] == 5e-4
    # damaged checkpoints: a missing value head, an empty optimizer file, optimizer state of another shape
    ck = run / f"checkpoint-{N_STEPS + 1}"
    for name, damage in (("heads.safetensors", "delete"), ("optimizer.pt", "truncate")):
        broken = run / "checkpoint-99"
        shutil.copytree(ck, broken)
        f = broken / name
        f.unlink() if damage == "delete" else f.write_bytes(b"")
        with pytest.raises(UserInputError, match=name):
            run_training(_args(data, model, run, *FAST, "--resume_from", str(broken),
                               "--allow_changed_settings", "lr_actor,max_steps"))
        shutil.rmtree(broken)
    import torch

    broken = run / "checkpoint-99"
    shutil.copytree(ck, broken)
    state = torch.load(broken / "optimizer.pt", weights_only=True)
    first = state["state"][0]
    first["exp_avg"] = first["exp_avg"][:1].clone()
    torch.save(state, broken / "optimizer.pt")
    with pytest.raises(UserInputError, match="optimizer.pt has .* bytes but was written with"):  # the manifest
        run_training(_args(data, model, run, *FAST, "--resume_from", str(broken),
                           "--allow_changed_settings", "lr_actor,max_steps"))
    from foundation.checkpoints import write_complete_marker

    write_complete_marker(broken, N_STEPS + 1)  # as if written so: the shape check at load time still refuses it
    with pytest.raises(UserInputError, match="optimizer.pt state 'exp_avg' has shape"):
        run_training(_args(data, model, run, *FAST, "--resume_from", str(broken),
                           "--allow_changed_settings", "lr_actor,max_steps"))


def test_one_run_per_output_dir(assets, tmp_path):
    import os
    import socket

    from foundation.files import RunLock

    data, model = assets
    out = tmp_path / "locked"
    out.mkdir()
    # a live owner (this test process) holds the lock: a second run is refused before touching anything
    with RunLock(out):
        r = run_train(train_cmd(data, model, out, *FAST, "--resume_from", "auto"))
        assert r.returncode == 2 and "in use by another run" in r.stderr and f"pid {os.getpid()}" in r.stderr
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    assert not (out / ".lock").exists()
    # a stale lock of a dead process on this host is taken over
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    r = run_train(train_cmd(data, model, out, *FAST, "--max_steps", "1", "--resume_from", "auto"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (out / ".lock").exists() and (out / "checkpoint-1" / "COMPLETE").is_file()


def test_original_readme_example_shares_outputs_with_other_scripts(assets, tmp_path):
    """The original README's `python train.py --model_name_or_path M --dataset_path D --dataset_type other
    --output_dir ./outputs` (issue 28) runs although other scripts wrote into ./outputs (their run directories,
    test.py's results.json): only another training run's files collide, and the refusal names them."""
    from trainers.ppo_trainer import run_training

    data, model = assets
    clone = tmp_path / "clone"
    foreign = {"demo/train/checkpoint-5/COMPLETE": "{}", "test_tiny-qwen/results.json": "{}", "results.json": "{}",
               "notes.txt": "mine"}
    for rel, text in foreign.items():
        (clone / "outputs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (clone / "outputs" / rel).write_text(text)
    readme = [sys.executable, str(REPO / "train.py"), "--model_name_or_path", str(model), "--dataset_path", str(data),
              "--dataset_type", "other", "--output_dir", "./outputs"]
    fast = ["--device", "cpu", "--K", "4", "--K_eval", "3", "--batch_size", "2", "--max_len_per_item", "4",
            "--user_window_size", "3", "--max_steps", "1", "--num_valid_samples", "2", "--no_plot"]
    r = subprocess.run([*readme, *fast], cwd=clone, env=train_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    outputs = clone / "outputs"
    assert (outputs / "checkpoint-1" / "COMPLETE").is_file() and (outputs / "final").is_dir()
    assert all((outputs / rel).read_text() == text for rel, text in foreign.items())
    # the same command again collides with the run it made: refused, naming that run's files and no others
    with pytest.raises(UserInputError) as e:
        run_training(_args(data, model, outputs))
    msg = str(e.value)
    assert msg.startswith(f"--output_dir {outputs}: holds another training run's checkpoint-1/, args.json, final/, "
                          "metrics.jsonl; pass --resume_from auto to continue it, --overwrite_output_dir")
    assert "results.json" not in msg and "demo" not in msg and "notes.txt" not in msg


def test_train_sh_rerun_continues_instead_of_overwriting(assets, tmp_path):
    """bash train.sh passes --resume_from auto: rerunning the same command after it finished (or was killed)
    keeps the checkpoints and has nothing left to do."""
    data, model = assets
    out = tmp_path / "sh"
    env = {**train_env(), "dataset_path": str(data), "model_name_or_path": str(model), "output_dir": str(out),
           "max_steps": "2", "save_every": "1", "K": "4", "K_eval": "3", "batch_size": "2", "max_len_per_item": "4",
           "user_window_size": "3", "device": "cpu", "PYTHON": __import__("sys").executable}
    extra = ["--num_valid_samples", "4", "--no_plot", "--ppo_epochs", "1"]
    r = subprocess.run(["bash", "train.sh", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    before = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoint-2").iterdir()}
    r = subprocess.run(["bash", "train.sh", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nothing left to train" in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoint-2").iterdir()} == before
    assert [x["step"] for x in metric_records(out)] == [1, 2]


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
        (["--eval_K", "1000"], "--eval_K 1000: larger than the catalogue"),
        (["--eval_K", "2"], "--eval_K 2: must be >= 2 and >= --K_eval"),
        (["--user_window_size", "0"], "--user_window_size"),
        (["--max_len_per_item", "0"], "--max_len_per_item"),
        (["--dataset_type", "books"], "--dataset_type"),
        (["--resume_from", "last"], "no complete checkpoint"),
    ]
    for extra, needle in cases:
        with pytest.raises(UserInputError) as e:
            run_training(_args(data, model, out, *extra))
        assert needle in cli_message(e.value), (extra, str(e.value))  # the line train.py prints
    with pytest.raises(UserInputError, match="does not exist"):
        run_training(_args(tmp_path / "missing", model, out))

    # A finished one-step run: the dir is now non-empty, an incomplete checkpoint is refused.
    run_training(_args(data, model, out, "--batch_size", "1", "--num_valid_samples", "2"))
    with pytest.raises(UserInputError, match="holds another training run's checkpoint-1/, args.json, final/"):
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
