"""A newcomer's first steps with the original README's interface (its script names, variables and flags):

* train.sh and test.sh take every variable the original README names ("RL 训练", "测试流程") and hand each to its
  flag. A stand-in interpreter (PYTHON=...) records the command line instead of running it, so this checks exactly
  the variable -> flag mapping in milliseconds;
* test.py fills the prompt settings test.sh leaves unset from the checkpoint's training args;
* what the documented steps write with their default paths is git-ignored (a fresh clone stays clean).
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# the original README's variables and the flag each must reach
TRAIN_SH = {"dataset_path": "--dataset_path", "dataset_type": "--dataset_type",
            "model_name_or_path": "--model_name_or_path", "output_dir": "--output_dir",
            "max_len_per_item": "--max_len_per_item", "user_window_size": "--user_window_size",
            "print_every": "--print_every", "save_every": "--save_every", "token_log_path": "--token_log_path"}
TEST_SH = {"device": "--device", "output_dir": "--output_dir", "dataset_path": "--dataset_path",
           "dataset_type": "--dataset_type", "model_name_or_path": "--model_name_or_path",
           "resume_from": "--resume_from", "num_samples": "--num_samples", "gen_mode": "--gen_mode",
           "max_len_per_item": "--max_len_per_item", "user_window_size": "--user_window_size",
           "print_every_text": "--print_every_text"}
VALUES = {"dataset_path": "/data/x", "dataset_type": "movies", "model_name_or_path": "/models/m", "output_dir": "/o/run",
          "max_len_per_item": "17", "user_window_size": "7", "print_every": "13", "save_every": "11",
          "token_log_path": "/o/tok.jsonl", "device": "cpu", "resume_from": "/o/run/checkpoint-3",
          "num_samples": "23", "gen_mode": "all", "print_every_text": "5"}


def _argv_of(script: str, env_vars: dict, tmp_path: Path) -> list[str]:
    """The argv the launcher hands to the interpreter, recorded by a stand-in PYTHON."""
    return _run_launcher(script, env_vars, tmp_path)[0]


def _run_launcher(script: str, env_vars: dict, tmp_path: Path, *args: str) -> tuple[list[str], str]:
    """(the argv of the launcher's last interpreter call, its stderr) for `bash SCRIPT ARGS...`, the interpreter a
    recording stand-in."""
    record = tmp_path / "argv.json"
    shim = tmp_path / "python"
    shim.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {record}\n")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHON": str(shim), "CUDA_VISIBLE_DEVICES": "",
           **env_vars}
    r = subprocess.run(["bash", script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return record.read_text().splitlines(), r.stderr


def _flag_values(argv: list[str]) -> dict[str, str]:
    return {a: b for a, b in zip(argv, argv[1:]) if a.startswith("--")}


def test_train_sh_passes_every_original_readme_variable(tmp_path):
    argv = _argv_of("train.sh", {k: VALUES[k] for k in TRAIN_SH} | {"device": "cpu"}, tmp_path)
    assert argv[0] == "train.py"
    got = _flag_values(argv)
    assert {flag: got.get(flag) for flag in TRAIN_SH.values()} == {flag: VALUES[k] for k, flag in TRAIN_SH.items()}
    assert got["--resume_from"] == "auto" and got["--device"] == "cpu"


def test_train_sh_passes_the_estimator_and_seed(tmp_path):
    """What a seed sweep (tools/seed_sweep.sh) sets: ADVANTAGE_ESTIMATOR and SEED reach train.py; by default the
    critic, seed 42, and validation on test.py's 20 candidates."""
    got = _flag_values(_argv_of("train.sh", {"dataset_path": "/d", "ADVANTAGE_ESTIMATOR": "rloo", "SEED": "7"},
                                tmp_path))
    assert (got["--advantage_estimator"], got["--seed"]) == ("rloo", "7")
    got = _flag_values(_argv_of("train.sh", {"dataset_path": "/d"}, tmp_path))
    assert (got["--advantage_estimator"], got["--seed"], got["--eval_K"]) == ("critic", "42", "20")


def test_train_sh_real_run_learning_rates_are_the_readmes(tmp_path):
    """A real run (dataset_path set) gets the README's recommended actor learning rate: 1e-6 for a full fine-tune,
    1e-5 with --use_lora (the two disagreed before: the README's 1-GPU example said 1e-6, train.sh gave 1e-5);
    the variable lr_actor overrides either. The demo keeps its own 3e-4."""
    def lr(env, *extra):
        argv = _run_launcher("train.sh", env, tmp_path, *extra)[0]
        return [b for a, b in zip(argv, argv[1:]) if a == "--lr_actor"]

    assert lr({"dataset_path": "/d"}) == ["1e-6"]
    assert lr({"dataset_path": "/d"}, "--use_lora", "--lora_r", "16")[0] == "1e-5"
    assert lr({"dataset_path": "/d", "lr_actor": "2e-6"}, "--use_lora") == ["2e-6"]
    assert lr({}) == ["3e-4"]


def test_launchers_default_to_scoring_auto(tmp_path):
    """Fast by default (issue 28): train.sh (demo and real runs) and test.sh pass --scoring auto; the variable
    `scoring` overrides it."""
    for script, env in (("train.sh", {}), ("train.sh", {"dataset_path": "/d"}), ("test.sh", {"dataset_path": "/d"})):
        assert _flag_values(_argv_of(script, env, tmp_path))["--scoring"] == "auto", (script, env)
        assert _flag_values(_argv_of(script, env | {"scoring": "naive"}, tmp_path))["--scoring"] == "naive"


def test_test_sh_evaluates_the_demos_trained_checkpoint(tmp_path):
    """`bash setup.sh demo` then `bash test.sh` (issue 28): test.sh evaluates the newest complete checkpoint of the
    demo's training run ($OUT/train, demo.sh's), says so in one line, and says so when it falls back to the base
    model. The repository's own outputs/ may hold a train.sh run: the demo run here is saved "later" than it."""
    out = tmp_path / "demo_out"
    old, new, partial = (out / "train" / f"checkpoint-{s}" for s in (100, 200, 300))
    for d in (old, new, partial):
        d.mkdir(parents=True)
    (old / "COMPLETE").write_text("{}")
    (new / "COMPLETE").write_text("{}")  # checkpoint-300 has no COMPLETE: a save that was cut off
    future = 4_000_000_000  # 2096: newer than anything a real run left in the repository's outputs/
    os.utime(old / "COMPLETE", (future - 10, future - 10))
    os.utime(new / "COMPLETE", (future, future))
    argv, err = _run_launcher("test.sh", {"OUT": str(out)}, tmp_path)
    assert _flag_values(argv)["--resume_from"] == str(new)
    (line,) = [ln for ln in err.splitlines() if ln.startswith("test.sh:")]
    assert line.startswith(f"test.sh: evaluating {new}, the newest complete checkpoint of the demo's training runs")

    default_run = REPO / "outputs" / "ppo_tiny-qwen_Video_Games_5_2021-1-2023-12"
    if not list(default_run.glob("checkpoint-*/COMPLETE")):  # a clean clone: nothing trained -> the base model
        argv, err = _run_launcher("test.sh", {"OUT": str(tmp_path / "no_demo_run")}, tmp_path)
        assert "--resume_from" not in argv and "--checkpoint_dir" not in argv
        assert "evaluating the untrained base model demo/tiny-qwen" in err
    # a model of one's own, no checkpoint: evaluated as given, said so
    argv, err = _run_launcher("test.sh", {"dataset_path": "/d", "model_name_or_path": "/m"}, tmp_path)
    assert "--resume_from" not in argv and "test.sh: evaluating /m as it is" in err


def test_test_sh_passes_every_original_readme_variable(tmp_path):
    argv = _argv_of("test.sh", {k: VALUES[k] for k in TEST_SH}, tmp_path)
    assert argv[0] == "test.py"
    got = _flag_values(argv)
    assert {flag: got.get(flag) for flag in TEST_SH.values()} == {flag: VALUES[k] for k, flag in TEST_SH.items()}
    # the original README's bare GPU index
    assert _flag_values(_argv_of("test.sh", {"dataset_path": "/d", "device": "1"}, tmp_path))["--device"] == "cuda:1"


def test_test_sh_leaves_prompt_settings_to_the_checkpoint(tmp_path):
    """Unset, the prompt settings are not passed: test.py then reads them from the checkpoint's training args."""
    got = _flag_values(_argv_of("test.sh", {"dataset_path": "/d", "resume_from": "/ckpt"}, tmp_path))
    assert not {"--dataset_type", "--max_len_per_item", "--user_window_size"} & set(got)
    assert got["--resume_from"] == "/ckpt"


def test_test_py_takes_unset_prompt_settings_from_the_checkpoint(tmp_path, capsys):
    """What test.sh relies on: an unset prompt setting comes from the checkpoint's training args (train.py's
    args.json, or final/'s training_args.json); an explicit different value wins with a warning on stderr."""
    from foundation.config import config_from_args
    from tests.fixtures.scripts import load_script
    from trainers.evaluation.options import JudgeEvalOptions

    test_py = load_script("test.py")

    def options(argv):
        return config_from_args(JudgeEvalOptions, test_py.build_parser().parse_args(argv), validate=False)

    for name in ("args.json", "training_args.json"):
        ckpt = tmp_path / name.split(".")[0]
        ckpt.mkdir()
        (ckpt / name).write_text('{"max_len_per_item": 1, "user_window_size": 3, "dataset_type": "movies"}')
        opts = options(["--user_window_size", "5"])
        used = opts.apply_trained_settings(str(ckpt))
        assert (opts.max_len_per_item, opts.dataset_type, opts.user_window_size) == (1, "movies", 5)
        assert used == {"max_len_per_item": 1, "dataset_type": "movies"}
        err = capsys.readouterr().err
        assert "--user_window_size 5 differs from the checkpoint's training setting 3" in err
    opts = options([])
    opts.apply_trained_settings(None)  # no checkpoint: test.py's own defaults
    assert (opts.max_len_per_item, opts.user_window_size) == (64, 10)


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_default_outputs_of_the_documented_steps_are_ignored():
    from paths import DEFAULT_MODEL_ROOT
    from tests.fixtures.scripts import load_script

    outputs = [load_script("sft_train/generate_prompts.py").build_parser().get_default("output_file"),
               load_script("sft_train/get_response_by_deepseek.py").build_parser().get_default("output_file"),
               *(load_script("sft_train/process_sft_data.py").default_output(f) for f in ("alpaca", "sharegpt")),
               "sft_train/dataset_info.json", "sft_train/sft.yaml",  # shipped: must stay tracked (below)
               f"{DEFAULT_MODEL_ROOT}/Qwen2.5-3B-Instruct/model.safetensors", "demo/tiny-qwen/config.json",
               "outputs/ppo_tiny-qwen_Video_Games_5_2021-1-2023-12/checkpoint-100/COMPLETE", "data/raw/x.csv.gz"]
    r = subprocess.run(["git", "check-ignore", "--no-index", *outputs], cwd=REPO, capture_output=True, text=True)
    ignored = set(r.stdout.split())
    assert ignored == set(outputs) - {"sft_train/dataset_info.json", "sft_train/sft.yaml"}, ignored
