"""models/api_client.py against a real loopback OpenAI-compatible HTTP server (models/loopback_server.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from models.api_client import ApiJob, ChatClient, load_done, resolve_api_key, run_jobs
from models.loopback_server import LoopbackAPI
from trainers.cli import public_args
from trainers.foundation.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]

KEY = "sk-test-SECRET123"
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch):
    # A CI proxy setting must not route 127.0.0.1 requests away from the loopback server.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def client(api: LoopbackAPI, **kw) -> ChatClient:
    kw = {"max_retries": 3, "timeout": 5.0, "backoff_base": 0.01, "backoff_max": 0.05, "model": "m", **kw}
    return ChatClient(api_base=api.url, api_key=KEY, **kw)


def test_answer_reasoning_usage_and_auth_header():
    def responder(req, n):
        assert req["model"] == "m" and req["messages"] == MSG
        return {"content": "Answer: Yes", "reasoning_content": "the user likes it"}

    with LoopbackAPI(responder) as api:
        res = client(api).chat(MSG)
    assert (res.content, res.reasoning_content, res.error, res.attempts) == ("Answer: Yes", "the user likes it", None, 1)
    assert res.usage["total_tokens"] == res.usage["prompt_tokens"] + res.usage["completion_tokens"] > 0
    assert api.auth_headers == [f"Bearer {KEY}"]


def test_no_reasoning_field_gives_none():
    with LoopbackAPI(lambda req, n: "plain") as api:
        res = client(api).chat(MSG)
    assert res.content == "plain" and res.reasoning_content is None


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_status_is_retried(status):
    with LoopbackAPI(lambda req, n: "ok").fail_first(2, status) as api:
        res = client(api).chat(MSG)
    assert res.content == "ok" and res.error is None and res.attempts == 3 and api.calls == 3


def test_client_error_is_not_retried():
    with LoopbackAPI(lambda req, n: {"status": 400, "content": "bad request"}) as api:
        res = client(api).chat(MSG)
    assert res.content is None and api.calls == 1 and res.attempts == 1
    assert "400" in res.error and "BadRequestError" in res.error


def test_hang_times_out_then_retry_succeeds():
    with LoopbackAPI(lambda req, n: "late but fine").hang_first(1, 2.0) as api:
        t0 = time.time()
        res = client(api, timeout=0.4).chat(MSG)
        took = time.time() - t0
    assert res.content == "late but fine" and res.attempts == 2 and api.calls == 2
    assert took < 1.9  # the first attempt was abandoned at the timeout, not waited out


def test_exhausted_retries_give_a_redacted_error_not_an_exception():
    # The server echoes the key in its error body: the recorded error must not contain it.
    with LoopbackAPI(lambda req, n: {"status": 500, "content": f"invalid key {KEY}"}) as api:
        res = client(api, max_retries=2).chat(MSG)
    assert res.content is None and res.attempts == 3 and api.calls == 3
    assert res.error and KEY not in res.error and "***" in res.error and "InternalServerError" in res.error


def test_connection_refused_is_an_error_row():
    api = LoopbackAPI().start()
    url = api.url
    api.stop()
    c = ChatClient(api_base=url, api_key=KEY, max_retries=1, timeout=1.0, backoff_base=0.01)
    res = c.chat(MSG)
    assert res.error and "APIConnectionError" in res.error and res.attempts == 2


def test_backoff_is_exponential_with_jitter_and_capped():
    with LoopbackAPI() as api:
        c = client(api, backoff_base=1.0, backoff_max=5.0, rng_seed=0)
    for attempt, full in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 5.0)]:
        ds = [c.backoff_delay(attempt) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in ds) and len(set(ds)) > 1


def test_key_from_env_and_missing_key(monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", KEY)
    assert resolve_api_key(None) == KEY
    assert resolve_api_key("explicit") == "explicit"
    monkeypatch.delenv("DEEPSEEK_API_KEY")
    with pytest.raises(UserInputError, match="DEEPSEEK_API_KEY"):
        resolve_api_key(None)
    with pytest.raises(UserInputError):
        ChatClient(api_base="http://127.0.0.1:9/v1", api_key=None)


def test_public_args_drops_the_key():
    import argparse

    ns = argparse.Namespace(api_key=KEY, model_name="m", max_tokens=5)
    assert public_args(ns) == {"model_name": "m", "max_tokens": 5}


def test_run_jobs_concurrent_resume_and_errors(tmp_path):
    """Every job gets exactly one row; failures are rows; a rerun asks only for the failed/missing ones."""
    fail_ids = {"3", "7"}

    def responder(req, n):
        text = req["messages"][0]["content"]
        if text in fail_ids:
            return {"status": 500, "content": "boom"}
        return {"content": f"answer {text}", "reasoning_content": f"why {text}", "delay": 0.02}

    out = tmp_path / "rows.jsonl"
    jobs = [ApiJob(id=i, messages=[{"role": "user", "content": str(i)}], extra={"label": i % 2}) for i in range(12)]
    with LoopbackAPI(responder) as api:
        c = client(api, max_retries=1)
        rows = run_jobs(c, jobs, out, concurrency=4, progress=False)
        assert api.calls == 10 + 2 * 2
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert sorted(r["id"] for r in lines) == list(range(12))
        for r in lines:
            assert r["label"] == r["id"] % 2
            if str(r["id"]) in fail_ids:
                assert r["error"] and r["content"] is None
            else:
                assert r["content"] == f"answer {r['id']}" and r["reasoning_content"] == f"why {r['id']}"
                assert "error" not in r
        assert set(rows) == {str(i) for i in range(12)}

        # A kill mid-write leaves a partial last line; the failures are asked again, nothing else is.
        with open(out, "a") as f:
            f.write('{"id": 99, "content": "half')
        fail_ids.clear()
        calls_before = api.calls
        rows = run_jobs(c, jobs, out, concurrency=4, progress=False)
        assert api.calls - calls_before == 2
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == list(range(12))  # one row per id, no error rows left
    assert all("error" not in r for r in lines) and rows["3"]["content"] == "answer 3"
    # no_retry: error rows are kept and not asked again
    assert load_done(out, retry_errors=False).keys() == {str(i) for i in range(12)}


def test_run_jobs_rejects_duplicate_ids(tmp_path):
    with LoopbackAPI() as api:
        jobs = [ApiJob(id=1, messages=MSG), ApiJob(id="1", messages=MSG)]
        with pytest.raises(UserInputError, match="duplicate"):
            run_jobs(client(api), jobs, tmp_path / "x.jsonl", progress=False)
