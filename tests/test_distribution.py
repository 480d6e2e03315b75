"""The shipped accelerate configs do what they say on a CPU (2 processes, gloo, tiny model, fp32):
configs/accelerate/fsdp.yaml runs FSDP2 for real (each rank holds half of every sharded parameter, sharded
checkpoints, the same losses and weights as DDP, kill-and-resume ends where an uninterrupted run does, the final
model loads with from_pretrained); DeepSpeed (zero2/zero3) is refused in one line instead of running as DDP; the
distribution a run got is printed and recorded in args.json."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from tests.fixtures.ppo_train import (REPO, load_weights, metric_records, ppo_assets, run_train,  # noqa: F401
                                     train_cmd, train_env)

N_STEPS = 6
FAST = ["--K", "4", "--K_eval", "3", "--max_len_per_item", "4", "--user_window_size", "3", "--lr_actor", "1e-3",
        "--lr_critic", "1e-3", "--num_valid_samples", "6", "--print_every", "0", "--seed", "3", "--batch_size", "2",
        "--save_every", "2"]


@pytest.fixture(scope="module")
def assets(ppo_assets):
    return ppo_assets


@pytest.fixture(scope="module")
def fsdp_run(assets, tmp_path_factory):
    """An uninterrupted N_STEPS FSDP run (constant learning rate), checkpoints every 2 steps."""
    data, model = assets
    out = tmp_path_factory.mktemp("fsdp") / "run"
    r = run_train(train_cmd(data, model, out, *FAST, "--max_steps", str(N_STEPS), nproc=2, accelerate_config="fsdp"))
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


def _lm_and_heads(ckpt):
    """The LM as from_pretrained loads it (tied weights tied) and the value head, as one dict."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    sd = dict(AutoModelForCausalLM.from_pretrained(str(ckpt)).state_dict())
    if (ckpt / "heads.safetensors").is_file():
        sd.update({f"value_head.{k}": v for k, v in load_file(str(ckpt / "heads.safetensors")).items()})
    return sd


def test_fsdp_shards_parameters_and_matches_ddp(assets, fsdp_run, tmp_path):
    import torch.distributed.checkpoint as dcp

    data, model = assets
    fsdp, stdout = fsdp_run
    ddp = tmp_path / "ddp"
    r = run_train(train_cmd(data, model, ddp, *FAST, "--max_steps", "2", nproc=2, accelerate_config="ddp"))
    assert r.returncode == 0, r.stderr[-3000:]

    # what each run says it got, on one line and in args.json
    said = [ln for ln in stdout.splitlines() if ln.startswith("distribution:")]
    assert len(said) == 1 and said[0].startswith("distribution: FSDP2 (fully_shard on 2 Qwen2DecoderLayer + root")
    assert "2 processes (gloo on cpu)" in said[0] and "attention prefix_split" in said[0]  # --scoring auto: shared
    assert "distribution: DDP, 2 processes (gloo on cpu)" in r.stdout
    assert json.loads((fsdp / "args.json").read_text())["distribution"]["mode"] == "FSDP2"
    assert json.loads((ddp / "args.json").read_text())["distribution"]["mode"] == "DDP"

    # each rank wrote (so held) its own half of every parameter with at least 2 rows
    meta = dcp.FileSystemReader(str(fsdp / "checkpoint-2" / "accelerate_state" / "pytorch_model_fsdp_0")
                                ).read_metadata()
    files_of = {}
    for idx, info in meta.storage_data.items():
        files_of.setdefault(idx.fqn, set()).add(info.relative_path)
    params = {k: v for k, v in meta.state_dict_metadata.items() if len(getattr(v, "size", ())) >= 1}
    sharded = {k: v for k, v in params.items() if v.size[0] >= 2}
    assert len(sharded) >= 20 and any("layers.1." in k for k in sharded)
    for name, md in sharded.items():
        rows = sorted(int(c.sizes[0]) for c in md.chunks)
        assert len(rows) == 2 and sum(rows) == md.size[0] and rows[1] - rows[0] <= 1, (name, rows)
        assert files_of[name] == {"__0_0.distcp", "__1_0.distcp"}, name
    assert not (fsdp / "checkpoint-2" / "optimizer.pt").exists()  # optimiser state: sharded only

    # the same losses and weights as DDP after 2 steps (fp32)
    rf, rd = metric_records(fsdp)[:2], metric_records(ddp)[:2]
    assert [x["step"] for x in rf] == [x["step"] for x in rd] == [1, 2]
    loss_diff = max(abs(a[k] - b[k]) for a, b in zip(rf, rd) for k in ("policy_loss", "value_loss", "reward",
                                                                        "grad_norm"))
    wf, wd = _lm_and_heads(fsdp / "checkpoint-2"), _lm_and_heads(ddp / "checkpoint-2")
    assert wf.keys() == wd.keys()
    w_diff = max(float((wf[k] - wd[k]).abs().max()) for k in wf)
    moved = max(float((wd[k] - w).abs().max()) for k, w in _lm_and_heads(model).items() if k in wd)
    print(f"FSDP vs DDP after 2 steps: max |loss diff| {loss_diff:.2e}, max |weight diff| {w_diff:.2e} "
          f"(largest weight change from init {moved:.2e})")
    assert loss_diff <= 1e-5 and w_diff <= 1e-5 and moved > 1e-3

    # the finished model is a plain transformers model
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(str(fsdp / "final"))
    assert final.lm_head.weight is final.model.embed_tokens.weight  # tied, as the base model
    assert (final.state_dict()["model.layers.0.mlp.up_proj.weight"] != wd["model.layers.0.mlp.up_proj.weight"]).any()


def test_fsdp_kill_and_resume_matches_uninterrupted_run(assets, fsdp_run, tmp_path):
    data, model = assets
    ref, _ = fsdp_run
    out = tmp_path / "killed"
    cmd = train_cmd(data, model, out, *FAST, "--max_steps", str(N_STEPS), nproc=2, accelerate_config="fsdp")
    proc = subprocess.Popen(cmd, cwd=REPO, env=train_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while not (out / "checkpoint-2" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before checkpoint-2"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
    proc.wait()
    assert not (out / f"checkpoint-{N_STEPS}").exists(), "the run finished before it could be killed"

    r = run_train(train_cmd(data, model, out, *FAST, "--max_steps", str(N_STEPS), "--resume_from", "last", nproc=2,
                            accelerate_config="fsdp"))  # a fresh port
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_weights(ref / f"checkpoint-{N_STEPS}"), load_weights(out / f"checkpoint-{N_STEPS}")
    assert a.keys() == b.keys() and len(a) > 5
    assert not [k for k in a if not torch.equal(a[k], b[k])], "weights differ after resume"
    assert metric_records(ref) == metric_records(out)

    # its sharded optimiser state does not fit a run without FSDP: one line, not a crash
    r = run_train(train_cmd(data, model, tmp_path / "plain", *FAST, "--max_steps", str(N_STEPS), "--resume_from",
                            str(out / "checkpoint-2")))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "sharded optimiser state" in lines[-1] and "single process" in lines[-1], r.stderr


def test_deepspeed_off_cuda_is_refused_in_one_line(assets, tmp_path):
    """What `accelerate launch --config_file configs/accelerate/zero3.yaml` tells each process (its environment),
    on a CPU: one line naming DeepSpeed, exit 2, nothing written. train.sh refuses the config before launching."""
    data, model = assets
    out = tmp_path / "zero3"
    env = {**train_env(), "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    r = subprocess.run(train_cmd(data, model, out, *FAST, "--max_steps", "1"), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert "DeepSpeed ZeRO-3" in lines[0] and "cpu" in lines[0] and "refused" in lines[0]
    assert not out.exists()

    env = {**train_env(), "device": "cpu", "ACCELERATE_CONFIG": "zero2", "output_dir": str(out)}
    r = subprocess.run(["bash", str(REPO / "train.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "DeepSpeed" in r.stderr, r.stderr
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (accelerate "
                    "launch then stops before train.py with its own ImportError)")
def test_accelerate_launch_with_a_zero_config_on_cpu_is_refused(assets, tmp_path):
    """The real launch: each process stops with the one-line refusal (torchrun then reports the failed children)."""
    data, model = assets
    out = tmp_path / "zero2"
    r = run_train(train_cmd(data, model, out, *FAST, "--max_steps", "1", nproc=2, accelerate_config="zero2"))
    assert r.returncode != 0 and not out.exists()
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("train.py: error:")]
    assert len(ours) == 1 and "DeepSpeed ZeRO-2" in ours[0] and "refused" in ours[0], r.stderr[-3000:]
