"""Batch-run prompts through a reasoning model behind an OpenAI-compatible API, keeping its reasoning.

    DEEPSEEK_API_KEY=sk-... python tools/run_r1.py --input_file prompts.jsonl --output_file r1_out.jsonl \
        --model_name deepseek-reasoner --concurrency 8

Input rows: {"prompt": str} or {"messages": [...]}, optional "id" (default: the row's index), other fields kept.
Output rows: {id, ..., content, reasoning_content, model, finish_reason, usage, attempts, error?}, appended as
answers arrive; a rerun resumes (answered ids skipped, failed ones asked again unless --no_retry_errors).
"""
from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    from trainers.cli import add_client_args, add_prompt_file_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_file", required=True, help="prompt JSONL")
    p.add_argument("--output_file", required=True, help="answer JSONL (appended, resumable)")
    add_prompt_file_args(p)
    add_client_args(p, model_default="deepseek-reasoner", model_flag="--model_name", concurrency=8)
    return p


def main(argv: list[str] | None = None) -> None:
    from models.api_client import prompt_jobs_from_jsonl, resolve_api_key
    from trainers.cli import answer_jobs, api_script_errors

    args = build_parser().parse_args(argv)
    with api_script_errors(args):
        resolve_api_key(args.api_key)
        jobs = prompt_jobs_from_jsonl(args.input_file, skip_bad_lines=args.skip_bad_lines,
                                      system_prompt=args.system_prompt)
        rows = answer_jobs(args, jobs, args.model_name)
    n_err = sum(1 for r in rows.values() if r.get("error"))
    print(f"{len(rows) - n_err} answered, {n_err} failed -> {args.output_file}")


if __name__ == "__main__":
    main()
