"""Ask a reasoning model one prompt through an OpenAI-compatible API and print its reasoning and answer.

    DEEPSEEK_API_KEY=sk-... python tools/run_r1_once.py --prompt "Which is larger, 9.11 or 9.9?"
    python tools/run_r1_once.py --prompt_file my_prompt.txt --model_name deepseek-reasoner
"""
from __future__ import annotations

import argparse
import os

from foundation.config import HelpFormatter
from foundation.errors import UserInputError, die


def build_parser() -> argparse.ArgumentParser:
    from trainers.cli import add_client_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text")
    src.add_argument("--prompt_file", help="a file holding the prompt text")
    p.add_argument("--system_prompt", default=None, help="optional system message")
    add_client_args(p, model_default="deepseek-reasoner", model_flag="--model_name", concurrency=1)
    return p


def main(argv: list[str] | None = None) -> None:
    from models.api_client import AUTH_STATUS, resolve_api_key
    from trainers.cli import api_script_errors, client_from_args

    args = build_parser().parse_args(argv)
    with api_script_errors(args):
        resolve_api_key(args.api_key)
        if args.prompt_file:
            if not os.path.isfile(args.prompt_file):
                raise UserInputError(f"--prompt_file {args.prompt_file}: file not found")
            with open(args.prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        else:
            prompt = args.prompt
        if not prompt.strip():
            raise UserInputError("the prompt is empty")
        messages = [{"role": "user", "content": prompt}]
        if args.system_prompt:
            messages.insert(0, {"role": "system", "content": args.system_prompt})
        client = client_from_args(args, args.model_name)
        res = client.chat(messages)
        client.close()
    if res.error:  # a rejected key is bad input (exit 2, as in every API script); anything else a failed request
        auth = res.error_status in AUTH_STATUS
        die(f"request failed after {res.attempts} attempt(s): {res.error}"
            + ("; check --api_key or DEEPSEEK_API_KEY" if auth else ""), status=2 if auth else 1)
    print("=== reasoning ===")
    print(res.reasoning_content if res.reasoning_content else "(the model returned no reasoning_content)")
    print("=== answer ===")
    print(res.content or "")
    if res.usage:
        print(f"=== usage: {res.usage.get('prompt_tokens')} prompt + {res.usage.get('completion_tokens')} "
              f"completion tokens ===")


if __name__ == "__main__":
    main()
