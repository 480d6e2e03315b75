"""Issue 7, bad input: every script, every kind of bad input -> one line naming the flag/file, exit 2.

Each row of CASES is (script, args, needle). The script runs as its own process; the checks are:
exit status 2, no traceback, the last non-empty stderr line is the only error line, starts with
`<script>: error:` (or `error:`) and contains the needle (the flag or file and what to do), and every
file that existed before (model, data, inputs, earlier outputs) is byte-identical afterwards.

Speed: starting a fresh interpreter that imports torch/transformers/datasets costs 3-5 s, too much for
~50 rows on CI's 2 cores. So a small fork server (`python tests/test_bad_input.py --serve`, a fresh
interpreter that only imports the heavy libraries, never runs a torch op) forks one child per row and
runs the script in it exactly as `python script.py args` would (runpy, `__main__`, sys.argv, its own
stdout/stderr files, the exit status from SystemExit). A few rows (fresh=True) also run as a plain
`python script.py` subprocess, so the real entry points are covered too.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-badinput-SECRET-0123456789"
SCRIPT_TIMEOUT_S = 240


# ============================================================================ the fork server
def _serve() -> None:  # pragma: no cover - runs in the server process
    """Read {"argv", "stdout", "stderr"} lines on stdin; fork, run the script, answer {"rc"}."""
    import runpy
    import signal
    import time
    import traceback

    os.chdir(REPO)
    # Started as `python tests/test_bad_input.py`, so sys.path[0] is tests/, whose tests/trainers/, tests/models/, ...
    # (the unit tests' mirrored folders) would shadow the project's packages: import from the repository root.
    sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "tests"]
    # Import the heavy libraries once (no torch op runs here, so forking stays safe for OpenMP).
    import datasets  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    for mod in ("trainers.data.dataset", "trainers.evaluation.results", "prompters.binary_prompter",
                "prompters.api_prompter", "models.abstract_models", "models.api_client", "foundation.checkpoints"):
        try:
            __import__(mod)
        except Exception:
            pass
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(out, 1)
                os.dup2(err, 2)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                for k, v in job.get("env", {}).items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
                script = job["argv"][0]
                sys.argv = list(job["argv"])
                sys.path[0] = os.path.dirname(os.path.abspath(script))
                try:
                    runpy.run_path(script, run_name="__main__")
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                    if not isinstance(e.code, (int, type(None))):
                        print(e.code, file=sys.stderr)
                except BaseException:
                    traceback.print_exc()
                    code = 1
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        deadline = time.time() + SCRIPT_TIMEOUT_S
        status = None
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        print(json.dumps({"rc": rc}), flush=True)


if __name__ == "__main__" and "--serve" in sys.argv:
    _serve()
    sys.exit(0)

# ============================================================================ the tests
import pytest


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DEEPSEEK_API_KEY"}
    env.update({"PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "NO_PROXY": "127.0.0.1,localhost",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""})
    return env


class ForkRunner:
    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.n = 0
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve"], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
        assert json.loads(self.proc.stdout.readline()).get("ready")

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        self.n += 1
        out, err = self.logdir / f"{self.n}.out", self.logdir / f"{self.n}.err"
        self.proc.stdin.write(json.dumps({"argv": argv, "stdout": str(out), "stderr": str(err)}) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self.proc.stdout.readline())["rc"]
        return rc, out.read_text(errors="replace"), err.read_text(errors="replace")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _tree_hashes(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> dict:
    """Tiny model, processed data and one of each kind of bad file, all under one root."""
    from tests.fixtures.assets import build_tiny_qwen
    from trainers.data.amazon import PreprocessConfig, run_preprocess
    from fixtures.synthetic_amazon import write_amazon_raw

    root = tmp_path_factory.mktemp("badinput")
    c: dict = {"root": root}
    c["model"] = build_tiny_qwen(root / "tiny")
    write_amazon_raw(root / "raw", category="Video_Games", n_users=120, n_items=60, n_subcats=3, seed=0)
    c["raw"] = root / "raw"
    c["data_root"] = root / "data"
    c["data"], _ = run_preprocess(PreprocessConfig(
        category="Video_Games", K=5, st_year=2021, st_month=1, ed_year=2023, ed_month=12,
        data_root_dir=str(c["data_root"]), raw_dir=str(root / "raw"), min_items=10))
    # a model directory without tokenizer files
    c["notok"] = root / "notok"
    c["notok"].mkdir()
    shutil.copy(c["model"] / "config.json", c["notok"] / "config.json")
    # checkpoints: one cut short while saving (train.py layout, no COMPLETE marker), one of another shape
    runs = root / "runs"
    c["ckpt_incomplete"] = runs / "checkpoint-4"
    shutil.copytree(c["model"], c["ckpt_incomplete"])
    (c["ckpt_incomplete"] / "trainer_state.json").write_text(json.dumps({"step": 4}))
    c["ckpt_shape"] = root / "other_shape" / "checkpoint-2"
    shutil.copytree(c["model"], c["ckpt_shape"])
    cfg = json.loads((c["ckpt_shape"] / "config.json").read_text())
    cfg["num_hidden_layers"] = cfg["num_hidden_layers"] + 1
    (c["ckpt_shape"] / "config.json").write_text(json.dumps(cfg))
    # complete in every file, so the only fault left is the shape
    import torch
    from safetensors.torch import save_file

    save_file({"net.0.bias": torch.zeros(1)}, str(c["ckpt_shape"] / "heads.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt"):
        torch.save({}, c["ckpt_shape"] / name)
    for name in ("trainer_state.json", "args.json", "COMPLETE"):
        (c["ckpt_shape"] / name).write_text('{"step": 2}')
    c["runs"] = runs
    _rrec_fixtures(c, root)
    # input files
    c["bad_template"] = root / "template.txt"
    c["bad_template"].write_text("Tell me whether the user likes it. Answer:")
    c["bad_jsonl"] = root / "bad.jsonl"
    c["bad_jsonl"].write_text('{"id": 1, "prompt": "hi", "label": "Yes", "response": "Yes"}\n'
                              '{"id": 2, "prompt": "half a rec\n'
                              '{"id": 3, "prompt": "ok", "label": "No", "response": "No"}\n')
    c["good_jsonl"] = root / "good.jsonl"
    c["good_jsonl"].write_text('{"id": 1, "prompt": "Will the user like it?", "label": "Yes"}\n')
    c["sft_data"] = root / "sft.json"
    c["sft_data"].write_text(json.dumps([{"instruction": "Will the user like it?", "input": "", "output": "Yes"}]))
    c["sft_null"] = root / "sft_null.json"
    c["sft_null"].write_text(json.dumps([{"instruction": None, "input": "", "output": "Yes", "system": ""}]))
    c["not_json"] = root / "results_broken.json"
    c["not_json"].write_text('{"meta": {}, "samples": [')
    # earlier outputs: a non-empty dir, and result files made with other settings (seed 999)
    c["full_out"] = root / "full_out"
    c["full_out"].mkdir()
    (c["full_out"] / "keep.txt").write_text("earlier run")
    (c["full_out"] / "metrics.jsonl").write_text('{"step": 3}\n')  # and another training run's files
    (c["full_out"] / "checkpoint-3").mkdir()
    other = {"meta": {"seed": 999, "K": 5, "split": "test"}, "metrics": {}, "samples": []}
    for d, name in (("test_out", "results.json"), ("ds_out", "results.json"), ("rrec_out", "results.json")):
        (root / d).mkdir()
        (root / d / name).write_text(json.dumps(other))
    _damaged_fixtures(c, root)
    c["logs"] = tmp_path_factory.mktemp("badinput_logs")
    return c


def _damaged_fixtures(c: dict, root: Path) -> None:
    """Issue 14: damaged datasets, model dirs and checkpoints (tests/test_damaged_artifacts.py generates every
    case in-process; these rows run one of each family through the real scripts), raw files that lose rows,
    output paths under a file."""
    import gzip

    from datasets import load_from_disk

    from foundation.checkpoints import write_complete_marker

    name = Path(c["data"]).name
    c["ds_truncated"] = root / "ds_truncated" / name
    shutil.copytree(c["data"], c["ds_truncated"])
    arrow = next((c["ds_truncated"] / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    for key, change in (("ds_empty_valid", lambda dd: dd.__setitem__("valid", dd["valid"].select([]))),
                        ("ds_no_column",
                         lambda dd: dd.__setitem__("test", dd["test"].remove_columns(["history_rating"]))),
                        ("ds_bad_ids", lambda dd: dd.__setitem__("test", dd["test"].map(lambda r: {"item_id": 9999})))):
        dd = load_from_disk(str(c["data"]))
        change(dd)
        c[key] = root / key / name
        dd.save_to_disk(str(c[key]))
    # a model directory whose weights were cut short, one whose chat template is damaged (no manifest: foreign)
    c["model_truncated"] = root / "model_truncated"
    shutil.copytree(c["model"], c["model_truncated"])
    w = c["model_truncated"] / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    c["model_bad_template"] = root / "model_bad_template"
    shutil.copytree(c["model"], c["model_bad_template"])
    (c["model_bad_template"] / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    # our checkpoints (with the COMPLETE manifest), a file truncated after they were written
    import torch

    c["ckpt_truncated"] = root / "truncated_run" / "checkpoint-3"
    shutil.copytree(c["model"], c["ckpt_truncated"])
    for n in ("heads.safetensors", "optimizer.pt", "scheduler.pt"):
        torch.save({}, c["ckpt_truncated"] / n)
    for n in ("trainer_state.json", "args.json"):
        (c["ckpt_truncated"] / n).write_text('{"step": 3}')
    write_complete_marker(c["ckpt_truncated"], 3)
    w = c["ckpt_truncated"] / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    c["rrec_ckpt_truncated"] = root / "rrec_ckpts" / "truncated" / "checkpoint-1"
    shutil.copytree(c["rrec_ckpt"], c["rrec_ckpt_truncated"])
    write_complete_marker(c["rrec_ckpt_truncated"], 1)
    t = c["rrec_ckpt_truncated"] / "item_table.pt"
    t.write_bytes(t.read_bytes()[:10])
    # raw files whose ratings are not numbers: preprocess.py names the drops in its error
    c["raw_bad_numbers"] = root / "raw_bad_numbers"
    shutil.copytree(c["raw"], c["raw_bad_numbers"])
    csv = next(c["raw_bad_numbers"].glob("*.csv.gz"))
    lines = gzip.open(csv, "rt").read().splitlines()
    lines = lines[:1] + [",".join(ln.split(",")[:2] + ["five"] + ln.split(",")[3:]) for ln in lines[1:]]
    with gzip.open(csv, "wt") as f:
        f.write("\n".join(lines) + "\n")
    c["a_file"] = root / "a_file"
    c["a_file"].write_text("not a directory")
    # an evaluation output another live run (this test process) is writing: test.py/rrec.py lock their result
    # file, the API scripts their output dir
    import socket

    c["eval_locked"] = root / "eval_locked"
    c["eval_locked"].mkdir()
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"})
    for name in (".results.json.lock", ".lock", f".{Path(c['data']).name}.lock"):
        (c["eval_locked"] / name).write_text(me)
    _issue27_fixtures(c, root)


def _issue27_fixtures(c: dict, root: Path) -> None:
    """Issue 27: weight files missing a tensor or holding a foreign one (the load would initialise at random),
    a checkpoint whose value head lacks a tensor (manifest consistent: only the tensor is wrong), JSON nested
    deeper than any parser stack."""
    import torch
    from safetensors.torch import load_file, save_file

    from foundation.checkpoints import write_complete_marker

    def copy_with(name: str, src: Path, weights: str, drop: str | None = None, add: str | None = None) -> Path:
        dest = root / name
        shutil.copytree(src, dest)
        state = load_file(str(src / weights))
        state.pop(drop, None)
        if add:
            state[add] = torch.zeros(2)
        save_file(state, str(dest / weights), metadata={"format": "pt"})
        return dest

    c["model_missing_tensor"] = copy_with("model_missing_tensor", c["model"], "model.safetensors",
                                          drop="model.norm.weight")
    c["model_extra_tensor"] = copy_with("model_extra_tensor", c["model"], "model.safetensors",
                                        add="model.layers.0.mlp.extra_proj.weight")
    heads = root / "heads_src"
    shutil.copytree(c["model"], heads)
    save_file({"net.0.weight": torch.zeros(64, 64), "net.0.bias": torch.zeros(64), "net.2.weight": torch.zeros(1, 64),
               "net.2.bias": torch.zeros(1)}, str(heads / "heads.safetensors"))
    ck = copy_with("heads_missing/checkpoint-2", heads, "heads.safetensors", drop="net.2.bias")
    for n in ("optimizer.pt", "scheduler.pt"):
        torch.save({}, ck / n)
    for n in ("trainer_state.json", "args.json"):
        (ck / n).write_text('{"step": 2}')
    write_complete_marker(ck, 2)
    c["ckpt_heads_missing"] = ck
    c["deep_json"] = root / "deep.json"
    c["deep_json"].write_text("[" * 100_000 + "]" * 100_000)
    c["deep_jsonl"] = root / "deep.jsonl"
    c["deep_jsonl"].write_text('{"id": 1, "prompt": "hi"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")


def _rrec_fixtures(c: dict, root: Path) -> None:
    """train_rrec.py checkpoints (full model; complete as far as files go) that fail one check each, an upstream-
    style adapter whose recorded base model is on someone else's disk, a live run lock, a dataset whose item ids
    cannot be mapped."""
    import torch

    base = root / "rrec_ckpts" / "base" / "checkpoint-1"
    shutil.copytree(c["model"], base)
    (base / "rrec_config.json").write_text("{}")
    torch.save({"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"params": [0], "lr": 1e-5}]},
               base / "optimizer.pt")
    torch.save({}, base / "scheduler.pt")
    torch.save(torch.zeros(3, 3), base / "item_table.pt")
    (base / "trainer_state.json").write_text(json.dumps({"step": 1}))
    (base / "args.json").write_text(json.dumps({"learning_rate": 0.5}))
    (base / "COMPLETE").write_text("1")
    c["rrec_ckpt"] = base
    c["rrec_ckpt_missing"] = root / "rrec_ckpts" / "missing" / "checkpoint-1"
    shutil.copytree(base, c["rrec_ckpt_missing"])
    (c["rrec_ckpt_missing"] / "item_table.pt").unlink()
    c["rrec_ckpt_shape"] = root / "rrec_ckpts" / "shape" / "checkpoint-1"
    shutil.copytree(base, c["rrec_ckpt_shape"])
    cfg = json.loads((base / "config.json").read_text())
    cfg["num_hidden_layers"] += 1
    (c["rrec_ckpt_shape"] / "config.json").write_text(json.dumps(cfg))
    adapter = root / "upstream_adapter"
    adapter.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(c["model"] / f, adapter / f)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path":
                                                             "/home/authors/Qwen2.5-3B-Instruct"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    c["upstream_adapter"] = adapter
    c["locked_out"] = root / "locked_out"
    c["locked_out"].mkdir()
    import socket

    (c["locked_out"] / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                       "started": "now"}))
    from datasets import load_from_disk

    dd = load_from_disk(str(c["data"]))
    dd["item_info"] = dd["item_info"].map(lambda r: {"item_id": min(r["item_id"], 3)})
    c["bad_ids_data"] = root / "bad_ids" / Path(c["data"]).name
    dd.save_to_disk(str(c["bad_ids_data"]))


@pytest.fixture(scope="module")
def runner(ctx):
    r = ForkRunner(ctx["logs"])
    yield r
    r.close()


TEST = ["test.py", "--model_name_or_path", "{model}", "--dataset_path", "{data}", "--dataset_type", "other",
        "--K", "5", "--K_eval", "3", "--num_samples", "2", "--device", "cpu", "--output_dir", "{fresh_out}",
        "--no_progress", "--max_len_per_item", "8", "--user_window_size", "3"]
DS = ["compare_model/deepseek.py", "--dataset_dir", "{data}", "--api_key", KEY, "--api_base",
      "http://127.0.0.1:9/v1", "--test_only", "--K", "5", "--K_eval", "3", "--test_samples", "2",
      "--output_dir", "{fresh_out}", "--no_progress", "--max_retries", "0", "--timeout", "1"]
RREC = ["compare_model/rrec.py", "--checkpoint_path", "{model}", "--dataset_dir", "{data}", "--K", "5",
        "--K_eval", "3", "--num_samples", "2", "--device", "cpu", "--output_dir", "{fresh_out}", "--no_progress",
        "--max_new_tokens", "2"]
TRREC = ["compare_model/train_rrec.py", "--model_name_or_path", "{model}", "--dataset_dir", "{data}",
         "--device", "cpu", "--max_steps", "1", "--K", "5", "--K_eval", "3", "--output_dir", "{fresh_out}",
         "--no-progress", "--num_eval_samples", "0"]
TRAIN = ["train.py", "--model_name_or_path", "{model}", "--dataset_path", "{data}", "--dataset_type", "other",
         "--K", "5", "--K_eval", "3", "--device", "cpu", "--max_steps", "1", "--batch_size", "2",
         "--max_len_per_item", "4", "--user_window_size", "3", "--output_dir", "{fresh_out}", "--no_plot"]
SASREC = ["compare_model/sasrec.py", "--dataset_dir", "{data}", "--K", "5", "--device", "cpu", "--num_epochs", "1",
          "--output_dir", "{fresh_out}", "--no_progress"]
GEN = ["sft_train/generate_prompts.py", "--dataset_dir", "{data}", "--tokenizer", "{model}", "--num_samples", "4",
       "--K", "5", "--max_len_per_item", "4", "--user_window_size", "3", "--output_file", "{fresh_out}/p.jsonl"]
PRE = ["preprocess.py", "--category", "Video_Games", "--K", "5", "--st_year", "2021", "--st_month", "1",
       "--ed_year", "2023", "--ed_month", "12", "--raw_dir", "{raw}", "--data_root_dir", "{data_root}",
       "--min_items", "10"]


def _set(base: list[str], **changes) -> list[str]:
    """base with --flag values replaced (or appended); a value of None drops the flag."""
    out = list(base)
    for flag, value in changes.items():
        flag = "--" + flag
        if flag in out:
            i = out.index(flag)
            if value is None:
                del out[i:i + 2]
            else:
                out[i + 1] = value
        elif value is not None:
            out += [flag, value]
    return out


# (id, argv, needle, fresh): fresh rows also run as a plain `python script.py` subprocess.
CASES = [
    # ---- preprocess.py
    ("pre-raw_dir", _set(PRE, raw_dir="{root}/nope"), "--raw_dir", False),
    ("pre-window", _set(PRE, window_size="0"), "--window_size", True),
    ("pre-month", _set(PRE, st_month="13"), "--st_month", False),
    ("pre-existing-output", PRE, "--overwrite_output_dir", False),
    ("pre-year", _set(PRE, st_year="0"), "--st_year", False),
    ("pre-ed-year", _set(PRE, ed_year="12345"), "--ed_year", False),
    ("pre-min-items", _set(PRE, min_items="-1"), "--min_items", False),
    ("pre-repeat-policy", _set(PRE, repeat_policy="sometimes"), "--repeat_policy", False),
    ("pre-timestamp-unit", _set(PRE, timestamp_unit="days"), "--timestamp_unit", False),
    ("pre-data-root-is-file", _set(PRE, data_root_dir="{not_json}"), "--data_root_dir", False),
    # ---- test.py
    ("test-dataset-missing", _set(TEST, dataset_path="{root}/nope"), "--dataset_path", False),
    ("test-dataset-wrong-dir", _set(TEST, dataset_path="{data}/train"), "--dataset_path", False),
    ("test-split", _set(TEST, split="dev"), "--split", False),
    ("test-dataset-type", _set(TEST, dataset_type="books"), "--dataset_type", True),
    ("test-K-catalogue", _set(TEST, K="500"), "--K", False),
    ("test-K_eval", _set(TEST, K_eval="9"), "--K_eval", False),
    ("test-window", _set(TEST, user_window_size="0"), "--user_window_size", False),
    ("test-max-len", _set(TEST, max_len_per_item="0"), "--max_len_per_item", False),
    ("test-no-tokenizer", _set(TEST, model_name_or_path="{notok}"), "tokenizer", False),
    ("test-ckpt-incomplete", _set(TEST, resume_from="{ckpt_incomplete}"), "--resume_from", False),
    ("test-ckpt-last-incomplete", _set(TEST, resume_from="last", checkpoint_dir="{runs}"), "no complete checkpoint",
     False),
    ("test-ckpt-shape", _set(TEST, resume_from="{ckpt_shape}"), "different model shape", False),
    ("test-template", _set(TEST, prompt_template="{bad_template}"), "--prompt_template", False),
    ("test-existing-other-settings", _set(TEST, output_dir="{root}/test_out"), "--overwrite_output_dir", False),
    ("test-reference-broken", _set(TEST, reference_json="{not_json}"), "--reference_json", False),
    # ---- train.py
    ("train-dataset-missing", _set(TRAIN, dataset_path="{root}/nope"), "--dataset_path", False),
    ("train-dataset-type", _set(TRAIN, dataset_type="books"), "--dataset_type", True),
    ("train-K-catalogue", _set(TRAIN, K="500"), "--K", False),
    ("train-K_eval", _set(TRAIN, K_eval="9"), "--K_eval", False),
    ("train-window", _set(TRAIN, user_window_size="0"), "--user_window_size", False),
    ("train-no-tokenizer", _set(TRAIN, model_name_or_path="{notok}"), "tokenizer", False),
    ("train-ckpt-incomplete", _set(TRAIN, resume_from="{ckpt_incomplete}"), "--resume_from", False),
    ("train-ckpt-shape", _set(TRAIN, resume_from="{ckpt_shape}"), "different model shape", False),
    ("train-template", _set(TRAIN, prompt_template="{bad_template}"), "--prompt_template", False),
    ("train-existing-output", _set(TRAIN, output_dir="{full_out}"),
     "holds another training run's checkpoint-3/, metrics.jsonl; pass --resume_from auto", False),
    # ---- compare_model/deepseek.py
    ("ds-dataset-missing", _set(DS, dataset_dir="{root}/nope"), "--dataset_dir", False),
    ("ds-dataset-type", _set(DS, dataset_type="books"), "--dataset_type", False),
    ("ds-K-catalogue", _set(DS, K="500"), "--K", False),
    ("ds-K_eval", _set(DS, K_eval="9"), "--K_eval", True),
    ("ds-window", _set(DS, user_window_size="0"), "--user_window_size", False),
    ("ds-template", _set(DS, prompt_template="{bad_template}"), "--prompt_template", False),
    ("ds-existing-other-settings", _set(DS, output_dir="{root}/ds_out"), "--overwrite_output_dir", False),
    ("ds-reference-broken", _set(DS, candidate_mode="json", candidate_json_path="{not_json}", K=None),
     "--candidate_json_path", False),
    # ---- compare_model/rrec.py
    ("rrec-dataset-missing", _set(RREC, dataset_dir="{root}/nope"), "--dataset_dir", True),
    ("rrec-split", _set(RREC, split="dev"), "--split", False),
    ("rrec-K-catalogue", _set(RREC, K="500"), "--K", False),
    ("rrec-K_eval", _set(RREC, K_eval="9"), "--K_eval", False),
    ("rrec-window", _set(RREC, user_window_size="0"), "--user_window_size", False),
    ("rrec-no-tokenizer", _set(RREC, checkpoint_path="{notok}"), "tokenizer", False),
    ("rrec-only-incomplete-ckpts", _set(RREC, checkpoint_path="{runs}"), "--checkpoint_path", False),
    ("rrec-existing-other-settings", _set(RREC, output_dir="{root}/rrec_out"), "--overwrite_output_dir", False),
    # ---- compare_model/sasrec.py
    ("sasrec-dataset-missing", _set(SASREC, dataset_dir="{root}/nope"), "--dataset_dir", True),
    ("sasrec-model", _set(SASREC, model="bert4rec"), "--model", False),
    ("sasrec-K-catalogue", _set(SASREC, K="500"), "--K", False),
    ("sasrec-dropout", _set(SASREC, dropout="1.5"), "--dropout", False),
    ("sasrec-reference-broken", _set(SASREC, reference_json="{not_json}"), "--reference_json", False),
    ("sasrec-existing-other-settings", _set(SASREC, output_dir="{root}/rrec_out"), "--overwrite_output_dir", False),
    ("sasrec-foreign-checkpoints", _set(SASREC, output_dir="{runs}"), "did not write", False),
    ("sasrec-output-in-use", _set(SASREC, output_dir="{eval_locked}"), "in use by another run", False),
    ("sasrec-dataset-bad-ids", _set(SASREC, dataset_dir="{ds_bad_ids}"), "test.item_id holds item id 9999", False),
    # ---- compare_model/train_rrec.py
    ("trrec-dataset-missing", _set(TRREC, dataset_dir="{root}/nope"), "--dataset_dir", False),
    ("trrec-K_eval", _set(TRREC, K_eval="9"), "--K_eval", True),
    ("trrec-K-catalogue", _set(TRREC, K="500"), "--K", False),
    ("trrec-window", _set(TRREC, user_window_size="0"), "--user_window_size", False),
    ("trrec-existing-output", _set(TRREC, output_dir="{full_out}"),
     "holds another training run's checkpoint-3/, metrics.jsonl; pass", False),
    ("trrec-no-tokenizer", _set(TRREC, model_name_or_path="{notok}"), "tokenizer", False),
    ("trrec-ckpt-shape", _set(TRREC, resume_from="{rrec_ckpt_shape}", use_lora=None) + ["--no-use_lora"],
     "different model shape", False),
    ("trrec-ckpt-incomplete", _set(TRREC, resume_from="{ckpt_incomplete}"), "--resume_from", False),
    ("trrec-ckpt-missing-file", _set(TRREC, resume_from="{rrec_ckpt_missing}"), "missing item_table.pt", False),
    ("trrec-changed-settings", _set(TRREC, resume_from="{rrec_ckpt}") + ["--no-use_lora"],
     "--allow_changed_settings learning_rate", False),
    ("trrec-optimizer-shape", _set(TRREC, resume_from="{rrec_ckpt}", allow_changed_settings="learning_rate")
     + ["--no-use_lora"], "optimizer.pt holds 1 parameters", False),
    ("trrec-locked", _set(TRREC, output_dir="{locked_out}"), "in use by another run", False),
    ("trrec-bad-item-ids", _set(TRREC, dataset_dir="{bad_ids_data}"), "item_id", False),
    ("rrec-adapter-base-elsewhere", _set(RREC, checkpoint_path="{upstream_adapter}"), "--base_model_name_or_path",
     False),
    ("rrec-bad-similarity", _set(RREC, similarity_type="jaccard"), "--similarity_type", False),
    # ---- tools and the SFT scripts that read JSONL: malformed lines are named with their line number
    ("run_r1-bad-jsonl", ["tools/run_r1.py", "--input_file", "{bad_jsonl}", "--output_file", "{fresh_out}/a.jsonl",
                          "--api_key", KEY, "--api_base", "http://127.0.0.1:9/v1"], "bad.jsonl:2", False),
    ("get_response-bad-jsonl", ["sft_train/get_response_by_deepseek.py", "--input_file", "{bad_jsonl}",
                                "--output_file", "{fresh_out}/r.jsonl", "--api_key", KEY, "--api_base",
                                "http://127.0.0.1:9/v1"], "bad.jsonl:2", False),
    ("analyze_acc-bad-jsonl", ["tools/analyze_accuracy_for_run_qwen_sft.py", "--input_file", "{bad_jsonl}"],
     "bad.jsonl:2", False),
    ("process_sft-bad-jsonl", ["sft_train/process_sft_data.py", "--input_file", "{bad_jsonl}", "--output_file",
                               "{fresh_out}/sft.json"], "bad.jsonl:2", False),
    ("run_qwen_sft-bad-jsonl", ["tools/run_qwen_sft.py", "--model_path", "{model}", "--input_file", "{bad_jsonl}",
                                "--output_file", "{fresh_out}/o.jsonl", "--device", "cpu"], "bad.jsonl:2", False),
    ("run_qwen_baseline-no-tokenizer", ["tools/run_qwen_baseline.py", "--model_path", "{notok}", "--input_file",
                                        "{good_jsonl}", "--output_file", "{fresh_out}/o.jsonl", "--device", "cpu"],
     "tokenizer", False),
    ("run_qwen_once-no-tokenizer", ["tools/run_qwen_sft_once.py", "--model_dir", "{notok}", "--prompt", "hi",
                                    "--device", "cpu"], "tokenizer", False),
    ("gen-dataset-missing", _set(GEN, dataset_dir="{root}/nope"), "--dataset_dir", False),
    ("gen-K-catalogue", _set(GEN, K="500"), "--K", False),
    ("gen-window", _set(GEN, user_window_size="0"), "--user_window_size", False),
    ("gen-template", _set(GEN, prompt_template="{bad_template}"), "--prompt_template", False),
    ("gen-no-tokenizer", _set(GEN, tokenizer="{notok}"), "tokenizer", False),
    ("train_sft-no-tokenizer", ["sft_train/train_sft.py", "--model_name_or_path", "{notok}", "--data_file",
                                "{bad_jsonl}", "--output_dir", "{fresh_out}", "--device", "cpu"], "tokenizer", False),
    ("train_sft-existing-output", ["sft_train/train_sft.py", "--model_name_or_path", "{model}", "--data_file",
                                   "{sft_data}", "--output_dir", "{full_out}", "--device", "cpu"],
     "holds checkpoint-3/, keep.txt, metrics.jsonl; pass --resume_from_checkpoint last", False),
    ("train_sft-null-instruction", ["sft_train/train_sft.py", "--model_name_or_path", "{model}", "--data_file",
                                    "{sft_null}", "--output_dir", "{fresh_out}", "--device", "cpu"],
     "record 0 'instruction' is missing or null", False),
    # ---- outputs that are not this script's: refused before anything in them is touched
    ("get_response-output-not-ours", ["sft_train/get_response_by_deepseek.py", "--input_file", "{good_jsonl}",
                                      "--output_file", "{bad_template}", "--api_key", KEY, "--api_base",
                                      "http://127.0.0.1:9/v1"], "not a row of an answer file", False),
    ("run_r1-output-not-ours", ["tools/run_r1.py", "--input_file", "{good_jsonl}", "--output_file", "{sft_data}",
                                "--api_key", KEY, "--api_base", "http://127.0.0.1:9/v1"], "answer file", False),
    ("run_qwen_sft-output-not-ours", ["tools/run_qwen_sft.py", "--model_path", "{model}", "--input_file",
                                      "{good_jsonl}", "--output_file", "{good_jsonl}", "--device", "cpu"],
     "answer file", False),
    ("process_sft-output-not-ours", ["sft_train/process_sft_data.py", "--input_file", "{bad_jsonl}", "--output_file",
                                     "{good_jsonl}"], "not SFT data", False),
    ("gen-output-not-ours", _set(GEN, output_file="{sft_data}"), "not a prompt file", False),
    # ---- the original README's flags that need a value to exist
    ("run_r1-no-mode", ["tools/run_r1.py", "--api_key", KEY, "--test_samples", "5"], "--dataset_dir", False),
    ("run_r1-dataset-missing", ["tools/run_r1.py", "--dataset_dir", "{root}/nope", "--api_key", KEY, "--api_base",
                                "http://127.0.0.1:9/v1"], "--dataset_dir", False),
    ("run_qwen_once-last-none", ["tools/run_qwen_sft_once.py", "--model_dir", "{model}", "--resume_from", "last",
                                 "--device", "cpu"], "--resume_from last", False),
    ("analyze_ds-missing", ["tools/analyze_processed_dataset.py", "--dataset_dir", "{root}/nope"], "--dataset_dir",
     False),
    ("common_user-missing", ["tools/check_common_user.py", "--dataset_dir", "{root}/nope"], "--dataset_dir", False),
    ("find_user-unknown", ["tools/find_user_history.py", "--dataset_dir", "{data}", "--user_id", "NOBODY"],
     "--user_id", False),
    ("compare_results-broken", ["tools/compare_results.py", "{not_json}"], "results_broken.json", False),
    # ---- issue 14: damaged datasets, models and checkpoints; non-finite numbers; outputs under a file
    ("test-dataset-truncated", _set(TEST, dataset_path="{ds_truncated}"), "train/data-00000-of-00001.arrow is damaged",
     True),
    ("train-dataset-empty-valid", _set(TRAIN, dataset_path="{ds_empty_valid}"), "the valid split holds no rows", False),
    ("ds-dataset-missing-column", _set(DS, dataset_dir="{ds_no_column}"), "no 'history_rating' column", False),
    ("rrec-dataset-bad-ids", _set(RREC, dataset_dir="{ds_bad_ids}"), "test.item_id holds item id 9999", False),
    ("gen-dataset-truncated", _set(GEN, dataset_dir="{ds_truncated}"), "is damaged or truncated", False),
    ("test-model-truncated", _set(TEST, model_name_or_path="{model_truncated}"), "cannot load the model", False),
    ("test-chat-template-broken", _set(TEST, model_name_or_path="{model_bad_template}"), "chat template", False),
    ("rrec-chat-template-broken", _set(RREC, checkpoint_path="{model_bad_template}"), "chat template", False),
    # --overwrite_output_dir removes the earlier results only once the model has loaded
    ("test-overwrite-then-damaged-model", _set(TEST, output_dir="{root}/test_out",
                                               model_name_or_path="{model_truncated}") + ["--overwrite_output_dir"],
     "cannot load the model", False),
    ("rrec-overwrite-then-damaged-template", _set(RREC, output_dir="{root}/rrec_out",
                                                  checkpoint_path="{model_bad_template}") + ["--no_resume"],
     "chat template", False),
    ("train-ckpt-truncated", _set(TRAIN, resume_from="{ckpt_truncated}"), "model.safetensors has 100 bytes", False),
    ("test-ckpt-truncated", _set(TEST, resume_from="{ckpt_truncated}"), "model.safetensors has 100 bytes", False),
    ("trrec-ckpt-truncated", _set(TRREC, resume_from="{rrec_ckpt_truncated}") + ["--no-use_lora"],
     "item_table.pt has 10 bytes", False),
    ("rrec-ckpt-truncated", _set(RREC, checkpoint_path="{rrec_ckpt_truncated}"), "item_table.pt has 10 bytes", False),
    ("train-lora-alpha-nan", _set(TRAIN, lora_alpha="nan") + ["--use_lora"], "--lora_alpha", True),
    ("run_qwen_sft-temperature-nan", ["tools/run_qwen_sft.py", "--model_path", "{model}", "--input_file",
                                      "{good_jsonl}", "--output_file", "{fresh_out}/o.jsonl", "--temperature", "nan"],
     "--temperature", False),
    ("ds-timeout-nan", _set(DS, timeout="nan"), "--timeout", False),
    # ---- issue 27: a missing or foreign tensor is never initialised at random
    ("test-model-missing-tensor", _set(TEST, model_name_or_path="{model_missing_tensor}"),
     "tensor model.norm.weight is missing from", True),
    ("rrec-model-foreign-tensor", _set(RREC, checkpoint_path="{model_extra_tensor}"), "which this model does not have",
     False),
    ("test-ckpt-value-head-missing-tensor", _set(TEST, resume_from="{ckpt_heads_missing}"),
     "tensor net.2.bias is missing from", False),
    # ---- issue 27: integer flags with a domain, refused at parse time
    ("test-seed-negative", _set(TEST, seed="-1"), "--seed", True),
    ("rrec-seed-too-large", _set(RREC, seed=str(2 ** 32)), "--seed", False),
    ("ds-seed-negative", _set(DS, seed="-5"), "--seed", False),
    ("train-seed-negative", _set(TRAIN, seed="-1"), "--seed", True),
    ("trrec-seed-too-large", _set(TRREC, seed=str(2 ** 32)), "--seed", False),
    ("gen-seed-negative", _set(GEN, seed="-1"), "--seed", False),
    ("train_sft-seed-negative", ["sft_train/train_sft.py", "--model_name_or_path", "{model}", "--data_file",
                                 "{sft_data}", "--output_dir", "{fresh_out}", "--device", "cpu", "--seed", "-1"],
     "--seed", False),
    ("run_qwen_sft-seed-negative", ["tools/run_qwen_sft.py", "--model_path", "{model}", "--input_file",
                                    "{good_jsonl}", "--output_file", "{fresh_out}/o.jsonl", "--seed", "-1"],
     "--seed", False),
    ("ds-concurrency-zero", _set(DS, concurrency="0"), "--concurrency", False),
    ("pre-K-negative", _set(PRE, K="-1"), "--K", False),
    # ---- issue 27: a file where a directory is expected says so
    ("test-dataset-is-file", _set(TEST, dataset_path="{a_file}"), "is a file, expected a directory", False),
    ("test-resume-is-file", _set(TEST, resume_from="{a_file}"), "is a file, expected a directory", False),
    ("pre-raw-dir-is-file", _set(PRE, raw_dir="{a_file}"), "is a file, expected a directory", False),
    ("rrec-checkpoint-is-file", _set(RREC, checkpoint_path="{a_file}"), "is a file, expected a directory", False),
    # ---- issue 27: JSON nested deeper than a parser stack is one line
    ("test-reference-deep", _set(TEST, reference_json="{deep_json}"), "nested deeper than", False),
    ("ds-reference-deep", _set(DS, candidate_mode="json", candidate_json_path="{deep_json}", K=None),
     "nested deeper than", False),
    ("run_r1-deep-jsonl", ["tools/run_r1.py", "--input_file", "{deep_jsonl}", "--output_file", "{fresh_out}/a.jsonl",
                           "--api_key", KEY, "--api_base", "http://127.0.0.1:9/v1"], "deep.jsonl:2", False),
    ("compare_results-deep", ["tools/compare_results.py", "{deep_json}"], "nested deeper than", False),
    ("pre-unreadable-numbers", _set(PRE, raw_dir="{raw_bad_numbers}", data_root_dir="{fresh_out}"), "bad_rating",
     False),
    ("pre-data-root-under-file", _set(PRE, data_root_dir="{a_file}/data"), "--data_root_dir", False),
    ("ds-output-is-file", _set(DS, output_dir="{a_file}"), "--output_dir", False),
    ("rrec-output-under-file", _set(RREC, output_dir="{a_file}/out"), "cannot be created", False),
    ("get_response-output-under-file", ["sft_train/get_response_by_deepseek.py", "--input_file", "{good_jsonl}",
                                        "--output_file", "{a_file}/r.jsonl", "--api_key", KEY, "--api_base",
                                        "http://127.0.0.1:9/v1"], "cannot be created", False),
    ("gen-output-under-file", _set(GEN, output_file="{a_file}/p.jsonl"), "cannot be created", False),
    ("pre-output-in-use", _set(PRE, data_root_dir="{eval_locked}"), "in use by another run", False),
    ("test-output-in-use", _set(TEST, output_dir="{eval_locked}"), "in use by another run", False),
    ("rrec-output-in-use", _set(RREC, output_dir="{eval_locked}"), "in use by another run", False),
    ("ds-output-in-use", _set(DS, output_dir="{eval_locked}"), "in use by another run", False),
    ("plot-output-is-dir", ["tools/plot_training.py", "--metrics_file", "{good_jsonl}", "--output", "{root}"],
     "--output", False),
]


def _fill(argv: list[str], c: dict) -> list[str]:
    return [a.format(**{k: str(v) for k, v in c.items()}) for a in argv]


def _check(name: str, rc: int, out: str, err: str, script: str, needle: str) -> None:
    where = f"[{name}] rc={rc}\nstderr:\n{err[-3000:]}\nstdout:\n{out[-1000:]}"
    assert rc == 2, where
    assert "Traceback" not in err, where
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, where
    last = lines[-1]
    prog = os.path.basename(script)
    assert last.startswith(f"{prog}: error:") or last.startswith("error:"), where
    assert needle in last, where
    assert sum(1 for ln in lines if ": error:" in ln or ln.startswith("error:")) == 1, where
    assert KEY not in err and KEY not in out, where


@pytest.mark.parametrize("name,argv,needle,fresh", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, argv, needle, fresh, ctx, runner):
    argv = _fill(argv, {**ctx, "fresh_out": ctx["root"] / "fresh" / name})
    before = _tree_hashes(ctx["root"])
    rc, out, err = runner.run(argv)
    _check(name, rc, out, err, argv[0], needle)
    if fresh:  # the real entry point, in a fresh interpreter
        r = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, env=_env(),
                           timeout=SCRIPT_TIMEOUT_S)
        _check(name + " (fresh)", r.returncode, r.stdout, r.stderr, argv[0], needle)
    after = _tree_hashes(ctx["root"])
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"[{name}] changed or removed existing files: {changed}"
    assert not list((ctx["root"] / "fresh" / name).glob("*.json")), f"[{name}] wrote results"


def test_skip_bad_lines_is_explicit(ctx, runner):
    """The same malformed file is accepted with --skip_bad_lines: the bad line is reported and skipped."""
    rc, out, err = runner.run(_fill(["tools/analyze_accuracy_for_run_qwen_sft.py", "--input_file", "{bad_jsonl}",
                                     "--skip_bad_lines", "--json"], ctx))
    assert rc == 0, err
    assert "bad.jsonl:2" in err
    assert json.loads(out.strip().splitlines()[-1])["n"] == 2
