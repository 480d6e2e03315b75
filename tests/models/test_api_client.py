"""models/api_client.py against a real loopback OpenAI-compatible HTTP server (fixtures/loopback_server.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from models.api_client import ApiJob, ChatClient, load_done, resolve_api_key, run_jobs
from fixtures.loopback_server import LoopbackAPI
from trainers.evaluation.options import ApiClientOptions
from foundation.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]

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


def test_public_settings_drop_the_key():
    opts = ApiClientOptions(api_key=KEY, model_name="m", max_tokens=5)
    public = opts.public_dict()
    assert "api_key" not in public and KEY not in str(public)
    assert public["model_name"] == "m" and public["max_tokens"] == 5 and public["concurrency"] == 8


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


# ------------------------------------------------------------------------ retries the server directs
def test_retry_after_headers_are_parsed():
    from email.utils import formatdate

    from models.api_client import retry_after_seconds

    assert retry_after_seconds({"retry-after-ms": "250"}) == pytest.approx(0.25)
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == pytest.approx(0.25)  # ms first
    assert retry_after_seconds({"retry-after": "1.5"}) == pytest.approx(1.5)
    assert retry_after_seconds({"retry-after": formatdate(time.time() + 30, usegmt=True)}) == pytest.approx(30, abs=1.5)
    assert retry_after_seconds({"retry-after": formatdate(time.time() - 30, usegmt=True)}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None


def test_server_directed_wait_and_x_should_retry_over_http():
    # retry-after-ms from a real response decides the wait: 0.2 s instead of the ~20 s exponential backoff
    with LoopbackAPI(lambda req, n: {"status": 429, "headers": {"retry-after-ms": "200"}} if n == 1 else "ok") as api:
        t0 = time.time()
        res = client(api, backoff_base=40.0, backoff_max=60.0).chat(MSG)
        took = time.time() - t0
    assert res.content == "ok" and res.attempts == 2 and 0.2 <= took < 3.0
    # an HTTP-date Retry-After in the past: retry at once
    from email.utils import formatdate

    past = formatdate(time.time() - 60, usegmt=True)
    with LoopbackAPI(lambda req, n: {"status": 503, "headers": {"Retry-After": past}} if n == 1 else "ok") as api:
        t0 = time.time()
        res = client(api, backoff_base=40.0, backoff_max=60.0).chat(MSG)
        assert res.content == "ok" and time.time() - t0 < 3.0
    # x-should-retry overrides the status rule both ways
    with LoopbackAPI(lambda req, n: {"status": 500, "headers": {"x-should-retry": "false"}}) as api:
        res = client(api).chat(MSG)
    assert res.error and api.calls == 1 and res.error_status == 500
    with LoopbackAPI(lambda req, n: {"status": 400, "headers": {"x-should-retry": "true"}} if n < 3 else "ok") as api:
        res = client(api).chat(MSG)
    assert res.content == "ok" and api.calls == 3


@pytest.mark.parametrize("bad", [{"raw_body": "{\"choices\": [{\"message\": "}, {"content": None},
                                 {"raw_body": "{\"object\": \"chat.completion\", \"choices\": []}"}])
def test_unusable_200_is_retried_then_an_error(bad):
    with LoopbackAPI(lambda req, n: bad if n < 3 else "fine") as api:
        res = client(api).chat(MSG)
    assert res.content == "fine" and res.attempts == 3 and api.calls == 3
    with LoopbackAPI(lambda req, n: bad) as api:
        res = client(api, max_retries=1).chat(MSG)
    assert res.content is None and res.attempts == 2 and "InvalidAnswerError" in res.error


def test_timeout_is_a_wall_clock_deadline_per_attempt():
    """A server trickling keep-alive newlines (forever, or past the deadline) cannot hold an attempt longer than
    --timeout: each attempt is abandoned at the deadline and retried; a slow but in-time answer is kept."""
    with LoopbackAPI(lambda req, n: {"content": "never", "trickle": 0.05, "trickle_for": float("inf")}) as api:
        t0 = time.time()
        res = client(api, timeout=0.6, max_retries=1).chat(MSG)
        took = time.time() - t0
    assert res.error and "AttemptTimeout" in res.error and res.attempts == 2 and api.calls == 2
    assert 1.2 <= took < 4.0  # two 0.6 s attempts; without the deadline this never returns
    with LoopbackAPI(lambda req, n: {"content": "padded", "trickle": 0.05, "trickle_for": 0.3}) as api:
        res = client(api, timeout=3.0).chat(MSG)
    assert res.content == "padded" and res.attempts == 1


def test_model_list_answers_get():
    with LoopbackAPI(model="stand-in") as api:
        c = client(api)
        assert [m.id for m in c._client.models.list().data] == ["stand-in"]
    assert api.model_list_calls == 1


# ------------------------------------------------------------------------ resume keyed by (id, request)
def _jobs(prompts: dict[int, str], label: str = "Yes") -> list[ApiJob]:
    return [ApiJob(id=i, messages=[{"role": "user", "content": p}], extra={"label": label}) for i, p in prompts.items()]


def test_saved_answers_of_other_requests_are_refused_or_redone(tmp_path):
    out = tmp_path / "rows.jsonl"
    with LoopbackAPI(lambda req, n: "answer to " + req["messages"][0]["content"]) as api:
        c = client(api)
        run_jobs(c, _jobs({0: "a", 1: "b", 2: "c"}), out, progress=False)
        before = out.read_bytes()
        for jobs, first, why in ((_jobs({0: "a", 1: "B!", 2: "c"}), "id 1", "prompt"),
                                 (_jobs({0: "a", 1: "b", 2: "c"}, "No"), "id 0", "'label' changed")):
            with pytest.raises(UserInputError) as e:
                run_jobs(c, jobs, out, progress=False)
            assert "--redo_changed" in str(e.value) and why in str(e.value) and first in str(e.value)
            assert out.read_bytes() == before and api.calls == 3  # refused before anything was asked or touched
        rows = run_jobs(c, _jobs({0: "a", 1: "B!", 2: "c"}), out, redo_changed=True, progress=False)
        assert api.calls == 4 and rows["1"]["content"] == "answer to B!"
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == [0, 1, 2] and all(r["request_hash"] for r in lines)


def test_a_file_that_is_not_ours_is_refused_untouched(tmp_path):
    with LoopbackAPI() as api:
        c = client(api)
        for text in ("some notes\nwithout json", '{"name": "x"}\n', '{"id": 1, "content": "ok"}\nnot ours at the end'):
            f = tmp_path / "other.jsonl"
            f.write_text(text)
            with pytest.raises(UserInputError, match="--output_file"):
                run_jobs(c, _jobs({1: "a"}), f, progress=False)
            assert f.read_text() == text
        assert api.calls == 0


def test_rejected_key_stops_the_run_recording_nothing(tmp_path):
    from models.api_client import AuthenticationFailed

    out = tmp_path / "rows.jsonl"
    with LoopbackAPI(require_key="the-right-key") as api:
        with pytest.raises(AuthenticationFailed, match="rejected the key") as e:
            run_jobs(client(api), _jobs({i: str(i) for i in range(20)}), out, concurrency=2, progress=False)
        assert api.calls <= 4  # the queued requests (2 x concurrency) at most, not all 20
    assert KEY not in str(e.value) and not out.exists()


# ------------------------------------------------------------------------------ issue 27: hostile answers
def test_timeout_bounds_redaction_and_parsing():
    """--timeout bounds everything an attempt does with the body: a slow post-processing step (here a redaction
    made slow on purpose) ends the attempt at the deadline like a slow server does, instead of running past it."""
    import models.api_client as api_client

    real = api_client.redact_json

    def slow_redact(obj, *secrets):
        time.sleep(3.0)
        return real(obj, *secrets)

    api_client.redact_json = slow_redact
    try:
        with LoopbackAPI(lambda req, n: "ok") as api:
            t0 = time.time()
            res = client(api, timeout=0.5, max_retries=0).chat(MSG)
            took = time.time() - t0
    finally:
        api_client.redact_json = real
    assert res.content is None and "AttemptTimeout" in (res.error or "")
    assert took < 2.5  # the attempt was abandoned at its deadline, not after the 3 s step


def test_deeply_nested_body_is_an_invalid_answer_not_a_recursion_error():
    deep = "[" * 100_000 + "]" * 100_000
    with LoopbackAPI(lambda req, n: {"raw_body": deep} if n == 1 else "fine") as api:
        res = client(api).chat(MSG)
    assert res.content == "fine" and res.attempts == 2  # the first answer was retried as unusable
    from models.api_client import InvalidAnswerError, parse_chat_body

    with pytest.raises(InvalidAnswerError, match="nested deeper than"):
        parse_chat_body(deep.encode())
