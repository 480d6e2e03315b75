"""The local inference tools over models/local_inference.py: a SIGKILLed run resumes without duplicates,
run_qwen_sft_once loads a checkpoint subdir, analyze_accuracy's numbers (batched generation = one-at-a-time greedy:
tests/models/test_local_inference.py)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.scripts import load_script

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from tests.fixtures.assets import build_tiny_qwen

    return build_tiny_qwen(tmp_path_factory.mktemp("tiny") / "tiny-qwen")


def _prompts(path: Path, n: int) -> Path:
    words = ["Racing", "Puzzle", "Strategy", "Horror", "Sports", "Fantasy"]
    rows = [{"id": i, "label": "Yes" if i % 3 else "No",
             "prompt": f"The user bought {' '.join(words[: 1 + i % 6])} games. Will the user like item {i}? "
                       'Answer with "Yes" or "No".'} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tool(name: str):
    """Import tools/<name>.py; its main(argv) runs in-process (no second interpreter start-up)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_baseline_script_in_process(tiny, tmp_path, capsys):
    from foundation.files import read_jsonl

    inp, out = _prompts(tmp_path / "p.jsonl", 3), tmp_path / "o.jsonl"
    s = _tool("run_qwen_baseline").main(["--model_path", str(tiny), "--input_file", str(inp), "--output_file",
                                         str(out), "--device", "cpu", "--max_new_tokens", "3", "--temperature", "0.7"])
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [0, 1, 2] and all(isinstance(r["response"], str) for r in rows)
    assert all(set(r) >= {"id", "prompt", "label", "response", "answer", "model"} for r in rows)
    assert "0 already done, 3 written" in capsys.readouterr().out


def test_kill_and_resume_no_duplicates(tiny, tmp_path):
    script = "tools/run_qwen_sft.py"
    n = 16
    inp, out = _prompts(tmp_path / "p.jsonl", n), tmp_path / "out.jsonl"
    cmd = [sys.executable, script, "--model_path", str(tiny), "--input_file", str(inp), "--output_file", str(out),
           "--device", "cpu", "--dtype", "fp32", "--batch_size", "1", "--max_new_tokens", "16"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished (or failed) before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = out.read_text().count("\n")
    assert 3 <= done_before < n
    with open(out, "a") as f:  # what a kill in the middle of a write leaves behind
        f.write('{"id": 999, "prompt": "half a li')
    p = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"{done_before} already done" in p.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == list(range(n))  # every id exactly once, the partial line gone


def test_bad_input_is_one_line_error(tiny, tmp_path):
    p = subprocess.run([sys.executable, "tools/run_qwen_sft.py", "--model_path", str(tmp_path / "nope"),
                        "--input_file", str(_prompts(tmp_path / "p.jsonl", 2)), "--output_file",
                        str(tmp_path / "o.jsonl")], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--model_path" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_run_once_with_checkpoint_subdir(tiny, tmp_path, capsys):
    """--resume_from a checkpoint subdir without tokenizer files: weights from it, tokenizer from --model_dir."""
    model_dir = tmp_path / "sft"
    shutil.copytree(tiny, model_dir)
    ck = model_dir / "checkpoint-3"
    ck.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(tiny / f, ck / f)
    args = ["--model_dir", str(model_dir), "--device", "cpu", "--dtype", "fp32", "--max_new_tokens", "5",
            "--prompt", 'Will the user like Racing games? Answer with "Yes" or "No".']
    tool = _tool("run_qwen_sft_once")
    capsys.readouterr()
    tool.main([*args, "--resume_from", "checkpoint-3"])
    out = capsys.readouterr().out
    assert "[parsed answer:" in out
    # same weights -> same greedy answer as the base directory
    from models.local_inference import LocalGenerator

    base = LocalGenerator(str(model_dir), device="cpu", dtype="fp32").generate(
        [[{"role": "user", "content": args[-1]}]], max_new_tokens=5)[0]
    assert out.rsplit("[parsed answer:", 1)[0] == base + "\n"
    with pytest.raises(SystemExit) as e:
        tool.main([*args, "--resume_from", "checkpoint-9"])
    assert e.value.code == 2 and "--resume_from checkpoint-9" in capsys.readouterr().err


def test_analyze_accuracy_numbers(tmp_path, capsys):
    rows = [
        {"id": 0, "label": "Yes", "response": "Answer: Yes"},         # TP
        {"id": 1, "label": "Yes", "response": "<think>no</think>Yes"},  # TP
        {"id": 2, "label": "Yes", "response": "No."},                 # FN
        {"id": 3, "label": "Yes", "response": "hmm"},                 # unparseable (FN)
        {"id": 4, "label": "No", "response": "Answer: No"},           # TN
        {"id": 5, "label": "No", "response": "Answer: Yes"},          # FP
        {"id": 6, "label": "No", "response": "no"},                   # TN
        {"id": 7, "label": "No", "response": None, "error": "APIStatusError 400"},  # unparseable
    ]
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tool = load_script("tools/analyze_accuracy_for_run_qwen_sft.py")

    rep = tool.main(["--input_file", str(f)])
    assert (rep["n"], rep["parsed"], rep["unparseable"]) == (8, 6, 2)
    assert rep["accuracy"] == pytest.approx(4 / 8) and rep["accuracy_parsed"] == pytest.approx(4 / 6)
    assert rep["precision_yes"] == pytest.approx(2 / 3) and rep["recall_yes"] == pytest.approx(2 / 4)
    assert rep["confusion"] == {"Yes": {"Yes": 2, "No": 1, "unparseable": 1},
                                "No": {"Yes": 1, "No": 2, "unparseable": 1}}
    out = capsys.readouterr().out
    assert "unparseable 2" in out and "accuracy 0.5000" in out and "precision(Yes) 0.6667" in out
    (tmp_path / "bad.jsonl").write_text('{"id": 0, "label": "maybe", "response": "Yes"}\n')
    with pytest.raises(SystemExit) as e:
        tool.main(["--input_file", str(tmp_path / "bad.jsonl")])
    assert e.value.code == 2


def test_run_once_resume_from_last_and_example_prompt(tiny, tmp_path, capsys):
    """The original README's `run_qwen_sft_once.py --model_dir M --resume_from last` with no prompt: the newest
    checkpoint with weights (not one without, not an interrupted train.py one) answers the built-in example."""
    from safetensors.torch import load_file, save_file

    model_dir = tmp_path / "sft"
    shutil.copytree(tiny, model_dir)
    weights = load_file(str(tiny / "model.safetensors"))
    for step, scale in ((3, 1.0), (5, 3.0)):
        ck = model_dir / f"checkpoint-{step}"
        ck.mkdir()
        shutil.copy(tiny / "config.json", ck / "config.json")
        save_file({k: (v * scale if v.dim() == 2 else v).contiguous() for k, v in weights.items()},
                  str(ck / "model.safetensors"))
    (model_dir / "checkpoint-7").mkdir()  # no weights: skipped
    interrupted = model_dir / "checkpoint-9"  # train.py's layout without its COMPLETE marker: skipped
    shutil.copytree(model_dir / "checkpoint-3", interrupted)
    for f in ("trainer_state.json", "args.json"):
        (interrupted / f).write_text("{}")
    tool = _tool("run_qwen_sft_once")
    capsys.readouterr()
    tool.main(["--model_dir", str(model_dir), "--resume_from", "last", "--device", "cpu", "--dtype", "fp32",
               "--max_new_tokens", "6"])
    out, err = capsys.readouterr()
    assert "checkpoint-5" in err and tool.example_prompt() in err
    from models.local_inference import LocalGenerator

    expected = LocalGenerator(str(model_dir / "checkpoint-5"), device="cpu", dtype="fp32",
                              tokenizer_path=str(model_dir)).generate(
        [[{"role": "user", "content": tool.example_prompt()}]], max_new_tokens=6)[0]
    other = LocalGenerator(str(model_dir), device="cpu", dtype="fp32").generate(
        [[{"role": "user", "content": tool.example_prompt()}]], max_new_tokens=6)[0]
    assert out.rsplit("[parsed answer:", 1)[0] == expected + "\n" and expected != other
    assert "Golden Racing Saga" in tool.example_prompt() and "Answer with" in tool.example_prompt()
    with pytest.raises(SystemExit) as e:
        tool.main(["--model_dir", str(tiny), "--resume_from", "last", "--device", "cpu"])
    assert e.value.code == 2 and "--resume_from last" in capsys.readouterr().err
