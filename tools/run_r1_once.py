"""Ask a reasoning model one prompt through an OpenAI-compatible API and print its reasoning and answer.

    DEEPSEEK_API_KEY=sk-... python tools/run_r1_once.py --prompt "Which is larger, 9.11 or 9.9?"
    python tools/run_r1_once.py --prompt_file my_prompt.txt --model_name deepseek-reasoner
"""
from __future__ import annotations

import os

from foundation.config import build_parser as options_parser
from foundation.config import config_from_args
from foundation.errors import UserInputError, die
from trainers.evaluation.options import RunR1OnceOptions


def build_parser():
    """The flags: one per RunR1OnceOptions field (trainers/evaluation/options.py)."""
    return options_parser(RunR1OnceOptions, description=__doc__)


def main(argv: list[str] | None = None) -> None:
    from models.api_client import AUTH_STATUS, resolve_api_key

    opts = config_from_args(RunR1OnceOptions, build_parser().parse_args(argv), validate=False)
    with opts.script_errors():
        opts.validate()
        resolve_api_key(opts.api_key)
        if opts.prompt_file:
            if not os.path.isfile(opts.prompt_file):
                raise UserInputError(f"--prompt_file {opts.prompt_file}: file not found")
            with open(opts.prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        else:
            prompt = opts.prompt
        if not prompt.strip():
            raise UserInputError("the prompt is empty")
        messages = [{"role": "user", "content": prompt}]
        if opts.system_prompt:
            messages.insert(0, {"role": "system", "content": opts.system_prompt})
        client = opts.client()
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
