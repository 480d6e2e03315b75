"""One client for any OpenAI-compatible chat API (DeepSeek by default), shared by every API script.

- `ChatClient.chat(messages)` sends one request with our own retry loop: exponential backoff with jitter on
  429, 408/409, 5xx, timeouts and connection errors (the `openai` client's own retries are switched off with
  max_retries=0, so the policy is ours, bounded by --max_retries, and testable). Other errors (400, 401, ...)
  are not retried. It returns the answer's `content` and, for DeepSeek-R1-style models, `reasoning_content`.
- `run_jobs(client, jobs, output_file)` answers many (id, messages) jobs with bounded concurrency (threads),
  appends each finished row to a JSONL at once (durable, so a kill loses at most the request in flight),
  skips ids already answered on a rerun (resume) and records failures as rows with an "error" field instead of
  crashing.

The API key comes from an explicit argument or an environment variable (DEEPSEEK_API_KEY by default). It is
never written anywhere: every error text passes through trainers.errors.redact before it is logged or stored.
"""
from __future__ import annotations

import os
import random
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from trainers.foundation.errors import UserInputError, redact
from trainers.foundation.files import append_jsonl, atomic_write_text, iter_jsonl, repair_jsonl_tail

DEFAULT_API_BASE = "https://api.deepseek.com"
DEFAULT_KEY_ENV = "DEEPSEEK_API_KEY"
RETRY_STATUS = {408, 409, 429}  # plus every 5xx

Messages = list[dict[str, str]]


def resolve_api_key(api_key: str | None, env_var: str = DEFAULT_KEY_ENV, flag: str = "--api_key") -> str:
    """The key from the flag, else from the environment; a clear error (without any key text) if neither."""
    key = (api_key or "").strip() or os.environ.get(env_var, "").strip()
    if not key:
        raise UserInputError(f"no API key: pass {flag} or set the environment variable {env_var}")
    return key


@dataclass
class ChatResult:
    """One answered (or failed) request. `error` is set (and redacted) when every attempt failed."""

    content: str | None = None
    reasoning_content: str | None = None
    finish_reason: str | None = None
    usage: dict | None = None
    model: str | None = None
    attempts: int = 0
    error: str | None = None


@dataclass
class ApiJob:
    """One request: `id` (unique within a run), the chat messages, and fields copied into the output row."""

    id: Any
    messages: Messages
    extra: dict = field(default_factory=dict)


def _is_retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRY_STATUS or exc.status_code >= 500
    # A 200 whose body is not a chat completion (proxies, overloaded gateways) is usually transient too.
    return isinstance(exc, (openai.APIResponseValidationError, EmptyAnswerError))


class EmptyAnswerError(RuntimeError):
    """The server answered 200 but without any choice."""


def _retry_after(exc: BaseException) -> float | None:
    """Seconds from a Retry-After header (429/503), if the server sent a number."""
    resp = getattr(exc, "response", None)
    try:
        value = resp.headers.get("retry-after") if resp is not None else None
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


class ChatClient:
    """A thread-safe wrapper around `openai.OpenAI(base_url=...)` with our retry/backoff policy."""

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
            raise UserInputError(f"--max_retries {max_retries}: must be >= 0")
        if timeout <= 0:
            raise UserInputError(f"--timeout {timeout}: must be > 0 seconds")
        if backoff_base < 0 or backoff_max < 0:
            raise UserInputError("--backoff_base/--backoff_max: must be >= 0")
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
        # max_retries=0: the client's built-in retries would hide attempts from our backoff and counters.
        self._client = openai.OpenAI(api_key=self.api_key, base_url=api_base, timeout=timeout, max_retries=0)

    def redact(self, text: str) -> str:
        return redact(str(text), self.api_key)

    def backoff_delay(self, attempt: int, exc: BaseException | None = None) -> float:
        """Exponential backoff with 'equal jitter': half the capped delay fixed, half random; Retry-After wins
        when the server sends one (still capped by backoff_max)."""
        ra = _retry_after(exc) if exc is not None else None
        if ra is not None:
            return min(ra, self.backoff_max)
        d = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        with self._rng_lock:
            return d / 2 + self._rng.uniform(0, d / 2)

    def _request(self, messages: Messages) -> ChatResult:
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        resp = self._client.chat.completions.create(**kwargs)
        if not getattr(resp, "choices", None):
            raise EmptyAnswerError("the API answered without any choice")
        choice = resp.choices[0]
        msg = choice.message
        extra = getattr(msg, "model_extra", None) or {}
        reasoning = extra.get("reasoning_content", getattr(msg, "reasoning_content", None))
        usage = resp.usage.model_dump() if getattr(resp, "usage", None) is not None else None
        return ChatResult(content=msg.content, reasoning_content=reasoning, finish_reason=choice.finish_reason,
                          usage=usage, model=getattr(resp, "model", None) or self.model)

    def chat(self, messages: Messages) -> ChatResult:
        """Send one chat request, retrying transient failures; never raises for API errors (see .error)."""
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                res = self._request(messages)
                res.attempts = attempt + 1
                return res
            except Exception as e:  # noqa: BLE001 - every failure is recorded, none may crash a long run
                last = self.redact(f"{type(e).__name__}: {e}")
                if not _is_retryable(e) or attempt == self.max_retries:
                    return ChatResult(error=last, attempts=attempt + 1, model=self.model)
                time.sleep(self.backoff_delay(attempt, e))
        return ChatResult(error=last, attempts=self.max_retries + 1, model=self.model)  # pragma: no cover

    def close(self) -> None:
        self._client.close()


def load_done(output_file: str | os.PathLike, retry_errors: bool = True) -> dict[str, dict]:
    """Rows already in output_file, by str(id). With retry_errors, failed rows are dropped (from the file too,
    rewritten atomically) so the rerun asks again and the file keeps one row per id."""
    path = Path(output_file)
    if not path.is_file():
        return {}
    repair_jsonl_tail(path)
    done: dict[str, dict] = {}
    dropped = 0
    for row in iter_jsonl(path, flag="--output_file"):
        if "id" not in row:
            raise UserInputError(f"--output_file {path}: a row has no 'id'; is this an output of this script?")
        key = str(row["id"])
        if retry_errors and row.get("error"):
            dropped += 1
            continue
        if key not in done:
            done[key] = row
    if dropped:
        import json

        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values()))
    return done


def run_jobs(
    client: ChatClient,
    jobs: Sequence[ApiJob],
    output_file: str | os.PathLike,
    concurrency: int = 4,
    content_key: str = "content",
    retry_errors: bool = True,
    on_row: Callable[[dict], Any] | None = None,
    desc: str = "API",
    progress: bool = True,
) -> dict[str, dict]:
    """Answer every job not yet in output_file and return all rows by str(id), old and new.

    Rows are {"id", **job.extra, content_key, "reasoning_content", "model", "finish_reason", "usage",
    "attempts"} plus "error" on failure; each is appended (fsynced) the moment its request finishes, from this
    thread only, so lines never interleave. on_row(row) is called for every new row.
    """
    from tqdm.auto import tqdm

    if concurrency < 1:
        raise UserInputError(f"--concurrency {concurrency}: must be >= 1")
    ids = [str(j.id) for j in jobs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserInputError(f"duplicate job id {dup!r}: every prompt needs a unique id")
    rows = load_done(output_file, retry_errors=retry_errors)
    todo = [j for j in jobs if str(j.id) not in rows]
    n_err = 0
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="req", disable=not progress,
               dynamic_ncols=True)

    def make_row(job: ApiJob, res: ChatResult) -> dict:
        row = {"id": job.id, **job.extra, content_key: res.content, "reasoning_content": res.reasoning_content,
               "model": res.model, "finish_reason": res.finish_reason, "usage": res.usage, "attempts": res.attempts}
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
                row = make_row(job, fut.result())
                append_jsonl(output_file, [row])
                rows[str(job.id)] = row
                if row.get("error"):
                    n_err += 1
                    bar.write(f"warning: request {job.id!r} failed after {row['attempts']} attempt(s): {row['error']}",
                              file=sys.stderr)
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
    import json

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
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
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
