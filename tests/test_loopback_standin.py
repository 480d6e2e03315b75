"""tools/loopback_llm_server.py, the offline stand-in for an API model: a taken port is one line naming it (exit 2);
prompts that are not rankings get a well-formed answer; what it answers is labelled as the stand-in's, not as the
model the client asked for."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.scripts import run_main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1,localhost"}


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The real tool, listening on a free port: its base URL."""
    port_file = tmp_path_factory.mktemp("standin") / "port"
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "loopback_llm_server.py"), "--port", "0",
                             "--port_file", str(port_file)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (port_file.is_file() and port_file.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port_file.read_text()}/v1"
    proc.terminate()
    proc.wait(10)


def test_a_taken_port_is_one_line_naming_it():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, str(REPO / "tools" / "loopback_llm_server.py"), "--port", str(port)],
                           env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"--port {port}: 127.0.0.1:{port} is already in use" in r.stderr


def test_prompts_that_are_not_rankings_get_a_well_formed_answer(standin, monkeypatch, capsys):
    code, out, err = run_main("tools/run_r1_once.py", [
        "--prompt", "Which is larger, 9.11 or 9.9?", "--api_base", standin, "--max_retries", "0"],
        monkeypatch, capsys, key="local")
    assert code == 0 and "loopback stand-in" in out and "Answer: No" in out, err

    # the binary judge's Yes/No prompt (sft_train/generate_prompts.py renders it): a parseable answer
    from prompters import prompts
    from prompters.answer_parsing import parse_yes_no
    from tests.fixtures.scripts import load_script

    word_overlap_answer = load_script("tools/loopback_llm_server.py").word_overlap_answer

    def ask(history: str, candidate: str) -> str | None:
        text = prompts.BINARY_PROMPT_TMPL_OTHER.format(history=history, candidate=candidate,
                                                       answer_instruction=prompts.DIRECT_ANSWER_INSTRUCTION)
        return parse_yes_no(word_overlap_answer({"messages": [{"role": "user", "content": text}]}, 1))

    assert ask("1. Turbo Racing Quest (rating: 5)", "Neon Racing Saga") == "Yes"
    assert ask("1. Turbo Racing Quest (rating: 5)", "Haunted Castle") == "No"


def test_answers_through_the_standin_are_labelled_as_such(standin, tmp_path, monkeypatch, capsys):
    from fixtures.synthetic_amazon import build_processed_dataset

    data = build_processed_dataset(tmp_path / "raw", tmp_path / "data", "Video_Games", n_users=40, n_items=30,
                                   n_subcats=3, min_items=10)
    out = tmp_path / "api"
    code, stdout, err = run_main("compare_model/deepseek.py", [  # --model_name left at its default, deepseek-chat
        "--dataset_dir", str(data), "--api_base", standin, "--output_dir", str(out), "--K", "5", "--K_eval", "3",
        "--test_samples", "4", "--test_only", "--no_progress"], monkeypatch, capsys, key="local")
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["model"] == "deepseek-chat" and res["meta"]["served_model"] == ["loopback-standin"]
    assert {s["outputs"]["served_model"] for s in res["samples"]} == {"loopback-standin"}
    assert "deepseek-chat (served as loopback-standin)" in stdout
    code, table, err = run_main("tools/compare_results.py", [str(out / "results.json")], monkeypatch, capsys)
    assert code == 0 and "(deepseek-chat (served as loopback-standin))" in table, err
