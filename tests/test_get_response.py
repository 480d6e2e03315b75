"""sft_train/get_response_by_deepseek.py, tools/run_r1.py and tools/run_r1_once.py against a loopback API server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.loopback_server import LoopbackAPI, prompt_text
from tests.fixtures.scripts import run_main

REPO = Path(__file__).resolve().parents[1]

KEY = "sk-test-SECRET123"
FAST = ["--backoff_base", "0.01", "--backoff_max", "0.05", "--timeout", "10"]


def run(script: str, args: list[str], key: str | None = KEY) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DEEPSEEK_API_KEY"}
    env.update({"PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "NO_PROXY": "127.0.0.1,localhost"})
    if key:
        env["DEEPSEEK_API_KEY"] = key
    return subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=120)


def write_prompts(path: Path, n: int = 8, bad_line: bool = False) -> list[dict]:
    """Rows as generate_prompts.py writes them; odd ids carry only "messages", even ids only "prompt"."""
    rows = []
    for i in range(n):
        row = {"id": i, "label": "Yes" if i % 2 == 0 else "No", "user_id": f"U{i}", "item_id": 100 + i}
        if i % 2:
            row["messages"] = [{"role": "user", "content": f"question {i}"}]
        else:
            row["prompt"] = f"question {i}"
        rows.append(row)
    lines = [json.dumps(r) for r in rows]
    if bad_line:
        lines.insert(3, '{"id": 77, "prompt": "broken')
    path.write_text("\n".join(lines) + "\n")
    return rows


def responder(req, n):
    q = prompt_text(req)
    return {"content": f"The user would like it. Answer: {'Yes' if q.endswith(('0', '2', '4', '6')) else 'No'}",
            "reasoning_content": f"reasoning about {q}"}


def read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_range_fields_resume_and_retries(tmp_path):
    inp, out = tmp_path / "prompts.jsonl", tmp_path / "out" / "responses.jsonl"
    write_prompts(inp)
    with LoopbackAPI(responder).fail_first(2, 500) as api:
        r = run("sft_train/get_response_by_deepseek.py", ["--input_file", str(inp), "--output_file", str(out),
                "--prompt_id_min", "2", "--prompt_id_max", "5", "--api_base", api.url, "--concurrency", "2", *FAST])
        assert r.returncode == 0, r.stderr[-3000:]
        assert api.calls == 4 + 2  # ids 2..5 plus the two 500s retried
        rows = read_rows(out)
        assert sorted(x["id"] for x in rows) == [2, 3, 4, 5]
        for x in rows:
            assert {"id", "prompt", "label", "response", "reasoning_content", "model"} <= set(x)
            assert x["prompt"] == f"question {x['id']}" and x["reasoning_content"] == f"reasoning about question {x['id']}"
            assert x["response"].endswith(x["label"]) and x["model"] == "deepseek-reasoner" and "error" not in x
        odd = next(x for x in rows if x["id"] == 3)
        assert odd["messages"] == [{"role": "user", "content": "question 3"}]  # input fields are kept
        # Resume over the whole range: only the 4 missing ids are asked.
        calls = api.calls
        r = run("sft_train/get_response_by_deepseek.py", ["--input_file", str(inp), "--output_file", str(out),
                "--api_base", api.url, "--model", "other-model", *FAST])
        assert r.returncode == 0, r.stderr[-3000:]
        assert api.calls - calls == 4
        assert {x["json"]["model"] for x in api.requests[-4:]} == {"other-model"}
        assert set(api.auth_headers) == {f"Bearer {KEY}"}
    rows = read_rows(out)
    assert sorted(x["id"] for x in rows) == list(range(8))
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert KEY not in p.read_text()
    assert KEY not in r.stdout + r.stderr and "8 of 8 prompts answered" in r.stdout


def test_failures_are_rows_and_are_retried_on_rerun(tmp_path):
    inp, out = tmp_path / "prompts.jsonl", tmp_path / "responses.jsonl"
    write_prompts(inp, n=3)
    state = {"down": True}

    def flaky(req, n):
        return {"status": 502, "content": f"gateway down, key={KEY}"} if state["down"] else responder(req, n)

    with LoopbackAPI(flaky) as api:
        args = ["--input_file", str(inp), "--output_file", str(out), "--api_base", api.url, "--max_retries", "1", *FAST]
        r = run("sft_train/get_response_by_deepseek.py", args)
        assert r.returncode == 0, r.stderr[-3000:]
        rows = read_rows(out)
        assert len(rows) == 3 and all(x["error"] and x["response"] is None for x in rows)
        assert KEY not in out.read_text() and KEY not in r.stderr and "***" in out.read_text()
        state["down"] = False
        r = run("sft_train/get_response_by_deepseek.py", args)
        assert r.returncode == 0, r.stderr[-3000:]
    rows = read_rows(out)
    assert sorted(x["id"] for x in rows) == [0, 1, 2] and all("error" not in x for x in rows)


def test_bad_lines_and_missing_key(tmp_path):
    inp, out = tmp_path / "prompts.jsonl", tmp_path / "responses.jsonl"
    write_prompts(inp, n=4, bad_line=True)
    with LoopbackAPI(responder) as api:
        args = ["--input_file", str(inp), "--output_file", str(out), "--api_base", api.url, *FAST]
        r = run("sft_train/get_response_by_deepseek.py", args)
        assert r.returncode == 2 and ":4:" in r.stderr and "--skip_bad_lines" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and api.calls == 0 and not out.exists()
        r = run("sft_train/get_response_by_deepseek.py", args + ["--skip_bad_lines"])
        assert r.returncode == 0, r.stderr[-3000:]
        assert ":4:" in r.stderr and api.calls == 4 and len(read_rows(out)) == 4
    # a row without label is reported too
    inp.write_text(json.dumps({"id": 0, "prompt": "x"}) + "\n")
    r = run("sft_train/get_response_by_deepseek.py", ["--input_file", str(inp), "--output_file", str(out)])
    assert r.returncode == 2 and ":1:" in r.stderr and "label" in r.stderr
    r = run("sft_train/get_response_by_deepseek.py", ["--input_file", str(inp), "--output_file", str(out)], key=None)
    assert r.returncode == 2 and "DEEPSEEK_API_KEY" in r.stderr


def test_run_r1_batch_and_once(tmp_path):
    inp, out = tmp_path / "p.jsonl", tmp_path / "r1.jsonl"
    inp.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(3)))
    with LoopbackAPI(lambda req, n: {"content": "42", "reasoning_content": "because " + prompt_text(req)}) as api:
        r = run("tools/run_r1.py", ["--input_file", str(inp), "--output_file", str(out), "--api_base", api.url,
                                    "--api_key", KEY, "--concurrency", "2", *FAST], key=None)
        assert r.returncode == 0, r.stderr[-3000:]
        rows = read_rows(out)
        assert sorted(x["id"] for x in rows) == [0, 1, 2]
        assert all(x["reasoning_content"] == f"because q{x['id']}" and x["content"] == "42" for x in rows)
        assert {x["json"]["model"] for x in api.requests} == {"deepseek-reasoner"}
        pf = tmp_path / "prompt.txt"
        pf.write_text("why?")
        r = run("tools/run_r1_once.py", ["--prompt_file", str(pf), "--api_base", api.url, *FAST])
        assert r.returncode == 0, r.stderr[-3000:]
        assert "because why?" in r.stdout and "=== answer ===\n42" in r.stdout
        assert set(api.auth_headers) == {f"Bearer {KEY}"}
    assert KEY not in out.read_text() + r.stdout + r.stderr


@pytest.mark.parametrize("script", ["sft_train/get_response_by_deepseek.py", "tools/run_r1.py", "tools/run_r1_once.py"])
def test_help(script):
    r = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--api_base" in r.stdout and "--concurrency" in r.stdout


def test_resume_refuses_answers_of_regenerated_prompts(tmp_path, monkeypatch, capsys):
    """Issue 14: after the prompt file is regenerated with other prompts or labels, a rerun must not report the old
    answers as this file's answers: it refuses (one line, file untouched) or, with --redo_changed, asks again."""
    inp, out = tmp_path / "prompts.jsonl", tmp_path / "responses.jsonl"
    rows = write_prompts(inp, n=4)
    with LoopbackAPI(responder) as api:
        args = ["--input_file", str(inp), "--output_file", str(out), "--api_base", api.url, *FAST]
        assert run_main("sft_train/get_response_by_deepseek.py", args, monkeypatch, capsys, key=KEY)[0] == 0
        before = out.read_bytes()
        rows[2]["prompt"] = "question 2, regenerated"  # other prompt for id 2
        rows[3]["label"] = "Yes"                       # other label for id 3
        inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        code, _, err = run_main("sft_train/get_response_by_deepseek.py", args, monkeypatch, capsys, key=KEY)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--redo_changed" in err and "id 2" in err
        assert out.read_bytes() == before and api.calls == 4
        code, stdout, err = run_main("sft_train/get_response_by_deepseek.py", args + ["--redo_changed"], monkeypatch,
                                     capsys, key=KEY)
        assert code == 0, err
        assert api.calls == 6 and {prompt_text(r["json"]) for r in api.requests[-2:]} == {
            "question 2, regenerated", "question 3"}
    saved = {x["id"]: x for x in read_rows(out)}
    assert sorted(saved) == [0, 1, 2, 3]
    assert saved[2]["prompt"] == "question 2, regenerated" and saved[3]["label"] == "Yes"


def test_rejected_key_exits_nonzero_and_records_nothing(tmp_path, monkeypatch, capsys):
    inp, out = tmp_path / "prompts.jsonl", tmp_path / "responses.jsonl"
    write_prompts(inp, n=6)
    with LoopbackAPI(responder, require_key="another-key") as api:
        for script, args in (("sft_train/get_response_by_deepseek.py", ["--input_file", str(inp), "--output_file",
                                                                        str(out)]),
                             ("tools/run_r1.py", ["--input_file", str(inp), "--output_file", str(out)])):
            code, stdout, err = run_main(script, [*args, "--api_base", api.url, "--concurrency", "1", "--no_progress",
                                                  *FAST], monkeypatch, capsys, key=KEY)
            assert code == 2 and len(err.strip().splitlines()) == 1 and "rejected the key" in err, err
            assert "401" in err and KEY not in err + stdout and not out.exists()
        assert api.calls <= 4
        code, stdout, err = run_main("tools/run_r1_once.py", ["--prompt", "hi", "--api_base", api.url, *FAST],
                                     monkeypatch, capsys, key=KEY)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--api_key" in err and KEY not in err + stdout


def test_echoed_key_never_reaches_disk_or_output(tmp_path, monkeypatch, capsys):
    """A server echoing the Authorization header (and a masked form of the key) into content, reasoning_content,
    the model name and error bodies: no file and no printed text may contain the key or its masked form."""
    key = "sk-adv-0123456789SECRETabc777"
    masked = "sk-adv-****777"

    def echo(req, n):
        auth = req["_headers"]["authorization"]
        if n % 3 == 0:
            return {"status": 400, "content": f"bad request from {auth} ({masked})"}
        return {"content": f"Answer: Yes. You sent {auth}, i.e. {masked}", "reasoning_content": f"{auth} {masked}",
                "model": f"echo-{auth}"}

    inp = tmp_path / "prompts.jsonl"
    write_prompts(inp, n=6)
    texts = []
    with LoopbackAPI(echo) as api:
        common = ["--api_base", api.url, "--concurrency", "2", "--max_retries", "0", *FAST]
        for script, args in (
                ("sft_train/get_response_by_deepseek.py", ["--input_file", str(inp), "--output_file",
                                                           str(tmp_path / "out" / "responses.jsonl")]),
                ("tools/run_r1.py", ["--input_file", str(inp), "--output_file", str(tmp_path / "out" / "r1.jsonl")]),
                ("tools/run_r1_once.py", ["--prompt", "hello"])):
            code, stdout, err = run_main(script, [*args, *common], monkeypatch, capsys, key=key)
            assert code in (0, 1), err
            texts += [stdout, err]
        assert {r["headers"]["authorization"] for r in api.requests} == {f"Bearer {key}"}  # the server saw it
    saved = (tmp_path / "out" / "responses.jsonl").read_text()
    assert "You sent Bearer ***" in saved and "bad request from" in saved  # answers and errors were stored
    for p in tmp_path.rglob("*"):
        if p.is_file():
            texts.append(p.read_text())
    for t in texts:
        assert key not in t and masked not in t and "SECRET" not in t


@pytest.mark.parametrize("script", ["sft_train/get_response_by_deepseek.py", "tools/run_r1.py"])
def test_second_run_on_the_same_output_file_is_refused(script, tmp_path, monkeypatch, capsys):
    """A run appending answers to --output_file holds a lock beside it: a second run on that file (another
    shell, a resubmitted job) would ask and pay for every request again, so it is refused with one line."""
    from foundation.files import RunLock

    inp, out = tmp_path / "prompts.jsonl", tmp_path / "responses.jsonl"
    write_prompts(inp, n=4)
    with LoopbackAPI(responder) as api:
        args = ["--input_file", str(inp), "--output_file", str(out), "--api_base", api.url, "--no_progress", *FAST]
        with RunLock(out.parent, flag="--output_file", name=f".{out.name}.lock", label=out):  # the other run
            code, _, err = run_main(script, args, monkeypatch, capsys, key=KEY)
            assert code == 2 and len(err.strip().splitlines()) == 1, err
            assert f"--output_file {out}: in use by another run" in err and not out.exists() and api.calls == 0
        code, _, err = run_main(script, args, monkeypatch, capsys, key=KEY)  # the lock is gone: it runs
        assert code == 0, err
        assert api.calls == 4 and len(read_rows(out)) == 4 and not (tmp_path / f".{out.name}.lock").exists()
