"""One client for any OpenAI-compatible chat API (DeepSeek by default), shared by every API script.

- `ChatClient.chat(messages)` sends one request with our own retry loop (the `openai` client's retries are off,
  max_retries=0, so every attempt is counted and bounded by --max_retries):
  * an attempt has a wall-clock deadline of --timeout seconds, however the server behaves: a server that
    trickles keep-alive bytes or never finishes is abandoned at the deadline (the request runs in a helper
    thread; the caller stops waiting, the helper drops the connection at its next byte or its read timeout);
  * retried: timeouts, connection errors, 408/409/429/5xx, and a 200 whose body is not a usable answer
    (malformed JSON, no choice, content null); a server's `x-should-retry: true|false` overrides the status
    rule, as the openai client does; not retried: other 4xx (400, 401, 403, ...);
  * the wait before a retry is exponential backoff with jitter, or what the server asks for with
    `retry-after-ms`, `Retry-After: <seconds>` or `Retry-After: <HTTP date>` (the headers the openai client
    knows), capped by --backoff_max;
  * it returns the answer's `content` and, for DeepSeek-R1-style models, `reasoning_content`.
- `run_jobs(client, jobs, output_file)` answers many (id, messages) jobs with bounded concurrency (threads),
  appends each finished row to a JSONL at once (durable, so a kill loses at most the requests in flight) and
  records failures as rows with an "error" field instead of crashing. Resume: rows are keyed by (id, hash of
  the request): a saved row whose request (prompt) or copied fields (label, candidates, ...) differ from the
  job is refused (or, with redo_changed, asked again), failed rows are asked again (unless retry_errors is
  off). The output file is validated as ours before anything in it is repaired or dropped. A run whose
  requests fail authentication (401/403) before any succeeds stops with AuthenticationFailed.

The API key comes from an explicit argument or an environment variable (DEEPSEEK_API_KEY by default). Every
text the server sends back (answers, reasoning, errors, model names) passes the one redaction
(foundation.errors.redact: the key and its masked forms) before anything can store or print it.
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import math
import os
import random
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from foundation.errors import SettingError, UserInputError, redact, redact_json
from foundation.files import atomic_write_text, loads_json, parse_json_lines, read_answer_rows

DEFAULT_API_BASE = "https://api.deepseek.com"
DEFAULT_KEY_ENV = "DEEPSEEK_API_KEY"
RETRY_STATUS = {408, 409, 429}  # plus every 5xx
AUTH_STATUS = {401, 403}

Messages = list[dict[str, str]]


def resolve_api_key(api_key: str | None, env_var: str = DEFAULT_KEY_ENV, flag: str = "--api_key") -> str:
    """The key from the flag, else from the environment; a clear error (without any key text) if neither."""
    key = (api_key or "").strip() or os.environ.get(env_var, "").strip()
    if not key:
        raise UserInputError(f"no API key: pass {flag} or set the environment variable {env_var}")
    return key


def request_hash(messages: Messages) -> str:
    """A short stable hash of a request's messages: a saved answer belongs to exactly this prompt."""
    text = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class ChatResult:
    """One answered (or failed) request. `error` is set (and redacted) when every attempt failed;
    `error_status` is the HTTP status of the last failed attempt, if it got one."""

    content: str | None = None
    reasoning_content: str | None = None
    finish_reason: str | None = None
    usage: dict | None = None
    model: str | None = None
    attempts: int = 0
    error: str | None = None
    error_status: int | None = None


@dataclass
class ApiJob:
    """One request: `id` (unique within a run), the chat messages, and fields copied into the output row."""

    id: Any
    messages: Messages
    extra: dict = field(default_factory=dict)


class InvalidAnswerError(RuntimeError):
    """The server answered 200 with a body that is not a usable chat completion (retried: usually transient)."""


class AttemptTimeout(RuntimeError):
    """No complete answer within the attempt's wall-clock deadline (--timeout)."""


class AuthenticationFailed(UserInputError):
    """The API rejected the key (401/403) and no request of this run has succeeded."""


def retry_after_seconds(headers: Any) -> float | None:
    """The server-directed wait: retry-after-ms, else Retry-After as seconds or as an HTTP date; None if absent."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            delay = float(value) / divisor
        except (TypeError, ValueError):
            continue
        if math.isfinite(delay):
            return max(0.0, delay)
    value = headers.get("retry-after")
    if value:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is not None:
            return max(0.0, when.timestamp() - time.time())
    return None


def parse_chat_body(body: bytes) -> ChatResult:
    """A ChatResult from the raw body of a 200 answer; InvalidAnswerError if it is not a usable completion."""
    try:
        data = loads_json(body)  # bounded nesting: a hostile body must not raise RecursionError
    except ValueError as e:
        snippet = body.strip()[:120].decode("utf-8", "replace")
        raise InvalidAnswerError(f"the API answered 200 with a body that is not JSON ({e}): {snippet!r}")
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) \
            or not isinstance(choices[0].get("message"), dict):
        raise InvalidAnswerError("the API answered 200 without any choice")
    choice, msg = choices[0], choices[0]["message"]
    content = msg.get("content")
    if not isinstance(content, str):
        why = "null" if content is None else f"a {type(content).__name__}, not text"
        raise InvalidAnswerError(f"the API answered 200 with content {why} (finish_reason "
                                 f"{choice.get('finish_reason')!r})")
    reasoning = msg.get("reasoning_content")
    usage = data.get("usage")
    return ChatResult(content=content, reasoning_content=reasoning if isinstance(reasoning, str) else None,
                      finish_reason=choice.get("finish_reason"), usage=usage if isinstance(usage, dict) else None,
                      model=data.get("model") if isinstance(data.get("model"), str) else None)


class ChatClient:
    """A thread-safe wrapper around `openai.OpenAI(base_url=...)` with our retry/backoff/deadline policy."""

    def __init__(
        self,
        api_base: str = DEFAULT_API_BASE,
        api_key: str | None = None,
        model: str = "deepseek-chat",
        max_retries: int = 5,
        timeout: float = 120.0,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        temperature: float | None = None,
        max_tokens: int | None = None,
        key_env: str = DEFAULT_KEY_ENV,
        extra_body: dict | None = None,
        rng_seed: int | None = None,
    ) -> None:
        import openai

        if max_retries < 0:
            raise SettingError("max_retries", max_retries, "must be >= 0")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise SettingError("timeout", timeout, "must be a positive number of seconds")
        for name, seconds in (("backoff_base", backoff_base), ("backoff_max", backoff_max)):
            if not (seconds >= 0 and math.isfinite(seconds)):
                raise SettingError(name, seconds, "must be >= 0 seconds")
        if temperature is not None and not (0 <= temperature < math.inf):
            raise SettingError("temperature", temperature, "must be a number >= 0")
        if max_tokens is not None and max_tokens < 1:
            raise SettingError("max_tokens", max_tokens, "must be >= 1")
        self.api_key = resolve_api_key(api_key, key_env)
        self.api_base = api_base
        self.model = model
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = extra_body
        self._rng = random.Random(rng_seed)
        self._rng_lock = threading.Lock()
        # max_retries=0: the client's built-in retries would hide attempts from our backoff, counters and deadline.
        self._client = openai.OpenAI(api_key=self.api_key, base_url=api_base, timeout=timeout, max_retries=0)

    def redact(self, text: str) -> str:
        return redact(str(text), self.api_key)

    def backoff_delay(self, attempt: int, exc: BaseException | None = None) -> float:
        """The wait before retry `attempt + 1`: what the server asked for (retry-after-ms / Retry-After), else
        exponential backoff with 'equal jitter' (half the capped delay fixed, half random); capped by backoff_max."""
        server = retry_after_seconds(getattr(getattr(exc, "response", None), "headers", None)) if exc else None
        if server is not None:
            return min(server, self.backoff_max)
        d = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        with self._rng_lock:
            return d / 2 + self._rng.uniform(0, d / 2)

    @staticmethod
    def is_retryable(exc: BaseException) -> bool:
        import openai

        if isinstance(exc, openai.APIStatusError):
            should = (exc.response.headers.get("x-should-retry") or "").strip().lower()
            if should in ("true", "false"):  # the server's explicit word wins, as in the openai client
                return should == "true"
            return exc.status_code in RETRY_STATUS or exc.status_code >= 500
        return isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.APIResponseValidationError,
                                InvalidAnswerError, AttemptTimeout))

    def _request_kwargs(self, messages: Messages) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        return kwargs

    def _request(self, messages: Messages, cancelled: threading.Event) -> ChatResult | None:
        """One HTTP attempt. The body is read chunk by chunk so an abandoned attempt (cancelled) lets go of its
        connection at the next chunk; status errors raise openai.APIStatusError before any body is read."""
        chunks = []
        with self._client.chat.completions.with_streaming_response.create(**self._request_kwargs(messages)) as resp:
            for chunk in resp.iter_bytes():
                if cancelled.is_set():
                    return None
                chunks.append(chunk)
        return parse_chat_body(b"".join(chunks))

    def _attempt(self, messages: Messages) -> ChatResult:
        """_request under a wall-clock deadline of self.timeout seconds, covering everything done with the body:
        receiving, parsing and redacting it (a hostile 30 MB answer is abandoned at the deadline like a slow one)."""
        cancelled, box = threading.Event(), {}

        def work() -> None:
            try:
                res = self._request(messages, cancelled)
                box["result"] = None if res is None else ChatResult(**redact_json(vars(res), self.api_key))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = e

        worker = threading.Thread(target=work, name="api-attempt", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            cancelled.set()
            raise AttemptTimeout(f"no complete answer within --timeout {self.timeout:g} s")
        if "error" in box:
            raise box["error"]
        return box["result"]

    def chat(self, messages: Messages) -> ChatResult:
        """Send one chat request, retrying transient failures; never raises for API errors (see .error).
        Every text of the result is redacted (inside the attempt, under its deadline)."""
        import openai

        for attempt in range(self.max_retries + 1):
            try:
                res = self._attempt(messages)
                res.attempts = attempt + 1
                res.model = res.model or self.model
                return res
            except Exception as e:  # noqa: BLE001 - every failure is recorded, none may crash a long run
                error = self.redact(f"{type(e).__name__}: {e}")
                status = e.status_code if isinstance(e, openai.APIStatusError) else None
                if not self.is_retryable(e) or attempt == self.max_retries:
                    return ChatResult(error=error, attempts=attempt + 1, model=self.model, error_status=status)
                time.sleep(self.backoff_delay(attempt, e))
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._client.close()


# ------------------------------------------------------------------------------------------ the answer file
def rows_by_id(rows: Sequence[dict], retry_errors: bool = True) -> dict[str, dict]:
    """One row per str(id): a successful row wins over a failed one, else the later one; with retry_errors,
    failed rows are left out (they are asked again)."""
    done: dict[str, dict] = {}
    for row in rows:
        key = str(row["id"])
        if key not in done or done[key].get("error") or not row.get("error"):
            done[key] = row
    return {k: r for k, r in done.items() if not (retry_errors and r.get("error"))}


def load_done(output_file: str | os.PathLike, retry_errors: bool = True, content_key: str = "content",
              flag: str = "--output_file") -> dict[str, dict]:
    """Saved rows of an answer file by str(id) (validated; the file is not changed); see rows_by_id."""
    return rows_by_id(read_answer_rows(output_file, content_key, flag)[0], retry_errors)


def _plain(v: Any) -> Any:
    return json.loads(json.dumps(v, ensure_ascii=False))


def row_mismatch(job: ApiJob, row: dict) -> str | None:
    """Why a saved row does not answer this job (None if it does): another request, or another value of a field
    the job copies into its row (label, candidates, ...)."""
    if "request_hash" in row and row["request_hash"] != request_hash(job.messages):
        return "the prompt (request) changed"
    for k, v in job.extra.items():
        if k in row and _plain(row[k]) != _plain(v):
            return f"'{k}' changed"
    return None


def run_jobs(
    client: ChatClient,
    jobs: Sequence[ApiJob],
    output_file: str | os.PathLike,
    concurrency: int = 4,
    content_key: str = "content",
    retry_errors: bool = True,
    redo_changed: bool = False,
    on_row: Callable[[dict], Any] | None = None,
    on_resume: Callable[[dict[str, dict]], Any] | None = None,
    desc: str = "API",
    progress: bool = True,
    flag: str = "--output_file",
) -> dict[str, dict]:
    """Answer every job not yet in output_file and return all rows by str(id), old and new.

    Rows are {"id", **job.extra, content_key, "reasoning_content", "model", "finish_reason", "usage", "attempts",
    "request_hash"} plus "error" on failure; each is appended (fsynced) the moment its request finishes, from this
    thread only, so lines never interleave. on_resume(rows) is called once with the saved rows kept (before any
    request), on_row(row) for every new row. Saved rows of jobs whose
    request or copied fields changed are refused (UserInputError) unless redo_changed (then asked again).
    """
    from tqdm.auto import tqdm

    from foundation.files import append_jsonl

    if concurrency < 1:
        raise SettingError("concurrency", concurrency, "must be >= 1")
    ids = [str(j.id) for j in jobs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserInputError(f"duplicate job id {dup!r}: every prompt needs a unique id")
    path = Path(output_file)
    saved, partial_tail = read_answer_rows(path, content_key, flag)
    saved_by_id = rows_by_id(saved, retry_errors=False)
    changed = [(str(j.id), why) for j in jobs  # in job order, so the message names the first changed job
               if str(j.id) in saved_by_id and (why := row_mismatch(j, saved_by_id[str(j.id)]))]
    if changed and not redo_changed:
        k, why = changed[0]
        raise UserInputError(f"{flag} {path}: {len(changed)} saved answer(s) belong to other requests than this run's "
                             f"(id {k}: {why}); pass --redo_changed to ask them again, or use another {flag}")
    drop = {k for k, _ in changed}
    kept = [r for r in saved if str(r["id"]) not in drop and not (retry_errors and r.get("error"))]
    if partial_tail or len(kept) != len(saved):
        # Validated above as ours: now drop the partial tail, the failed rows to ask again and the changed ones.
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    rows = rows_by_id(kept, retry_errors)
    if on_resume is not None:
        on_resume(dict(rows))
    todo = [j for j in jobs if str(j.id) not in rows]
    n_err = n_ok = 0
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="req", disable=not progress,
               dynamic_ncols=True)

    def make_row(job: ApiJob, res: ChatResult) -> dict:
        row = {"id": job.id, **job.extra, content_key: res.content, "reasoning_content": res.reasoning_content,
               "model": res.model, "finish_reason": res.finish_reason, "usage": res.usage, "attempts": res.attempts,
               "request_hash": request_hash(job.messages)}
        if res.error:
            row["error"] = client.redact(res.error)
        return row

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="api")
    pending: dict[Future, ApiJob] = {}
    it = iter(todo)
    try:
        while True:
            # Keep at most 2x concurrency requests queued: memory stays flat for huge job lists.
            while len(pending) < 2 * concurrency:
                job = next(it, None)
                if job is None:
                    break
                pending[pool.submit(client.chat, job.messages)] = job
            if not pending:
                break
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in finished:
                job = pending.pop(fut)
                res = fut.result()
                if res.error_status in AUTH_STATUS and n_ok == 0:
                    # A rejected key fails every request the same way: stop instead of recording N error rows.
                    raise AuthenticationFailed(f"the API at {client.api_base} rejected the key ({res.error}); "
                                               f"check --api_key or {DEFAULT_KEY_ENV}; nothing was recorded")
                row = make_row(job, res)
                append_jsonl(path, [row])
                rows[str(job.id)] = row
                if row.get("error"):
                    n_err += 1
                    bar.write(f"warning: request {job.id!r} failed after {row['attempts']} attempt(s): {row['error']}",
                              file=sys.stderr)
                else:
                    n_ok += 1
                if on_row is not None:
                    on_row(row)
                bar.update(1)
                bar.set_postfix(errors=n_err)
    finally:
        bar.close()
        pool.shutdown(wait=False, cancel_futures=True)
    return rows


def prompt_jobs_from_jsonl(
    input_file: str | os.PathLike,
    id_min: int | None = None,
    id_max: int | None = None,
    skip_bad_lines: bool = False,
    system_prompt: str | None = None,
    keep_fields: bool = True,
    required_fields: Sequence[str] = (),
) -> list[ApiJob]:
    """Jobs from a prompt JSONL (rows with "prompt": str or "messages": [...], optional "id", other fields kept).

    A row without "id" gets its 0-based line index among the valid rows. id_min/id_max (inclusive) keep rows
    whose integer id lies in the range. Malformed rows (bad JSON, no prompt, a missing required field) are
    errors naming the line, unless skip_bad_lines.
    """
    path = Path(input_file)
    if not path.is_file():
        raise UserInputError(f"--input_file {input_file}: file not found")
    jobs: list[ApiJob] = []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()

    def bad(n: int, why: str) -> None:
        if skip_bad_lines:
            print(f"warning: {path}:{n}: skipping bad line ({why})", file=sys.stderr)
            return
        raise UserInputError(f"--input_file {path}:{n}: {why}; fix the line or pass --skip_bad_lines")

    n_valid = 0
    for n, row, e in parse_json_lines(lines):
        if e is not None:
            bad(n, f"malformed JSON ({e})")
            continue
        if not isinstance(row, dict):
            bad(n, "not a JSON object")
            continue
        if isinstance(row.get("messages"), list) and row["messages"] and all(
                isinstance(m, dict) and "role" in m and "content" in m for m in row["messages"]):
            messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in row["messages"]]
        elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
            messages = [{"role": "user", "content": row["prompt"]}]
        else:
            bad(n, "needs a non-empty string 'prompt' or a 'messages' list of {role, content}")
            continue
        missing = [k for k in required_fields if k not in row]
        if missing:
            bad(n, f"lacks field(s) {missing}")
            continue
        if system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}] + messages
        rid = row.get("id", n_valid)
        n_valid += 1
        if id_min is not None or id_max is not None:
            try:
                iv = int(rid)
            except (TypeError, ValueError):
                raise UserInputError(f"--input_file {path}:{n}: id {rid!r} is not an integer, so "
                                     "--prompt_id_min/--prompt_id_max cannot select it")
            if (id_min is not None and iv < id_min) or (id_max is not None and iv > id_max):
                continue
        extra = {k: v for k, v in row.items() if k != "id"} if keep_fields else {}
        jobs.append(ApiJob(id=rid, messages=messages, extra=extra))
    return jobs
