"""Answer SFT prompts through an OpenAI-compatible API (DeepSeek-R1 by default) (DESIGN.md section 7).

    DEEPSEEK_API_KEY=sk-... python sft_train/get_response_by_deepseek.py --input_file sft_train/prompts.jsonl \
        --output_file sft_train/responses.jsonl --prompt_id_min 0 --prompt_id_max 999 --concurrency 8

Input: the prompt JSONL of sft_train/generate_prompts.py, rows with at least "id", a "prompt" string or a
"messages" list, and "label". Only rows with prompt_id_min <= id <= prompt_id_max (inclusive; default: all)
are asked. Output: one row per id, {id, prompt, label, response, reasoning_content, model, request_hash,
error?} plus the input row's other fields, appended as each answer arrives. A rerun with the same
--output_file resumes: answered ids are skipped, failed ones (rows with "error") are asked again unless
--no_retry_errors. A saved answer counts only for the same prompt and label: after the prompt file was
regenerated with other prompts or labels, the rerun refuses to mix them (one line naming the first changed
id) unless --redo_changed, which asks the changed ones again. An --output_file that is not an answer file of
this script is refused before anything in it is touched. A key the API rejects (401/403) stops the run with
one line, recording nothing. sft_train/process_sft_data.py turns the file into LLaMA-Factory data.

Malformed input lines are errors naming the line number; --skip_bad_lines reports and skips them instead.
The key comes from --api_key or DEEPSEEK_API_KEY and is never written to any file or log.
"""
from __future__ import annotations

import argparse
import os

from foundation.config import HelpFormatter
from foundation.errors import UserInputError


def build_parser() -> argparse.ArgumentParser:
    from trainers.cli import add_client_args, add_prompt_file_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--input_file", default="sft_train/prompts.jsonl", help="prompt JSONL (default: %(default)s)")
    p.add_argument("--output_file", default="sft_train/responses.jsonl", help="response JSONL (default: %(default)s)")
    p.add_argument("--prompt_id_min", type=int, default=None, help="first prompt id to ask (inclusive)")
    p.add_argument("--prompt_id_max", type=int, default=None, help="last prompt id to ask (inclusive)")
    add_prompt_file_args(p)
    add_client_args(p, model_default="deepseek-reasoner", model_flag="--model", concurrency=8)
    return p


def main(argv: list[str] | None = None) -> None:
    from models.api_client import prompt_jobs_from_jsonl, resolve_api_key
    from trainers.cli import answer_jobs, api_script_errors

    args = build_parser().parse_args(argv)
    with api_script_errors(args):
        resolve_api_key(args.api_key)
        if args.prompt_id_min is not None and args.prompt_id_max is not None and args.prompt_id_min > args.prompt_id_max:
            raise UserInputError(f"--prompt_id_min {args.prompt_id_min} > --prompt_id_max {args.prompt_id_max}")
        if os.path.abspath(args.input_file) == os.path.abspath(args.output_file):
            raise UserInputError("--output_file must differ from --input_file")
        jobs = prompt_jobs_from_jsonl(args.input_file, args.prompt_id_min, args.prompt_id_max,
                                      skip_bad_lines=args.skip_bad_lines, system_prompt=args.system_prompt,
                                      required_fields=("label",))
        if not jobs:
            raise UserInputError(f"--input_file {args.input_file}: no prompts with ids in "
                                 f"[{args.prompt_id_min}, {args.prompt_id_max}]")
        for j in jobs:
            # The row keeps the prompt as text when the input had one, else the messages.
            j.extra.setdefault("prompt", j.messages[-1]["content"])
        rows = answer_jobs(args, jobs, args.model, content_key="response")
    wanted = {str(j.id) for j in jobs}
    n_err = sum(1 for k, r in rows.items() if k in wanted and r.get("error"))
    print(f"{len(wanted) - n_err} of {len(wanted)} prompts answered ({n_err} failed; rerun to retry them) "
          f"-> {args.output_file}")


if __name__ == "__main__":
    main()
