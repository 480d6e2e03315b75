"""argparse pieces shared by the API scripts (compare_model/deepseek.py, tools/run_r1*.py,
sft_train/get_response_by_deepseek.py): the client flags, building a client from them, error handling."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Sequence

from models.api_client import DEFAULT_API_BASE, DEFAULT_KEY_ENV, ApiJob, ChatClient, run_jobs
from trainers.foundation.errors import UserInputError, die, redact


def add_client_args(parser, model_default: str = "deepseek-chat", model_flag: str = "--model_name",
                    concurrency: int = 8) -> None:
    """The API flags every API script shares."""
    g = parser.add_argument_group("API")
    g.add_argument("--api_base", default=DEFAULT_API_BASE, help="OpenAI-compatible base URL (default: %(default)s)")
    g.add_argument("--api_key", default=None,
                   help=f"API key; default: the {DEFAULT_KEY_ENV} environment variable (never written to any file)")
    g.add_argument(model_flag, dest=model_flag.lstrip("-"), default=model_default, help="model name (default: %(default)s)")
    g.add_argument("--concurrency", type=int, default=concurrency, help="parallel requests (default: %(default)s)")
    g.add_argument("--max_retries", type=int, default=5,
                   help="retries per request on 429/5xx/timeouts/connection errors (default: %(default)s)")
    g.add_argument("--timeout", type=float, default=300.0, help="seconds per request attempt (default: %(default)s)")
    g.add_argument("--backoff_base", type=float, default=1.0,
                   help="first retry waits ~this many seconds, doubling each retry (default: %(default)s)")
    g.add_argument("--backoff_max", type=float, default=60.0, help="cap on one backoff wait (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the API's)")
    g.add_argument("--max_tokens", type=int, default=None, help="answer token limit (default: the API's)")
    g.add_argument("--no_retry_errors", action="store_true",
                   help="on a rerun, keep rows that failed earlier instead of asking again")


def add_prompt_file_args(parser) -> None:
    """The flags of the scripts that answer a prompt JSONL (tools/run_r1.py, sft_train/get_response_by_deepseek.py)."""
    parser.add_argument("--system_prompt", default=None, help="optional system message put before each prompt")
    parser.add_argument("--skip_bad_lines", action="store_true", help="skip malformed input lines instead of failing")
    parser.add_argument("--no_progress", action="store_true", help="no tqdm bar")


@contextmanager
def api_script_errors(args) -> Iterator[None]:
    """An API script's main body: a UserInputError ends it through die() (one line, exit 2) with the API key
    (from --api_key or the environment) redacted from the message."""
    try:
        yield
    except UserInputError as e:
        key = (args.api_key or "").strip() or os.environ.get(DEFAULT_KEY_ENV, "").strip() or None
        die(redact(str(e), key, args.api_key))


def answer_jobs(args, jobs: Sequence[ApiJob], model: str, content_key: str = "content") -> dict[str, dict]:
    """run_jobs with a client built from the add_client_args/add_prompt_file_args flags (then closed)."""
    client = client_from_args(args, model)
    try:
        return run_jobs(client, jobs, args.output_file, concurrency=args.concurrency, content_key=content_key,
                        retry_errors=not args.no_retry_errors, desc=model, progress=not args.no_progress)
    finally:
        client.close()


def client_from_args(args, model: str) -> ChatClient:
    return ChatClient(api_base=args.api_base, api_key=args.api_key, model=model, max_retries=args.max_retries,
                      timeout=args.timeout, backoff_base=args.backoff_base, backoff_max=args.backoff_max,
                      temperature=args.temperature, max_tokens=args.max_tokens)


def public_args(args) -> dict:
    """argparse namespace as a dict without secrets (for result-JSON meta and logs)."""
    return {k: v for k, v in vars(args).items() if not (k.endswith("key") or "secret" in k or "password" in k)}
