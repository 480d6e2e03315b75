"""DeepSeek-R1 (or any reasoning model behind an OpenAI-compatible API), in one of two modes.

Dataset evaluation (the original README's run_r1.py): rank the candidates of the test split, exactly as
compare_model/deepseek.py does (same prompt, parser, metrics, resume; reasoning_content kept in the answers):

    DEEPSEEK_API_KEY=sk-... python tools/run_r1.py --dataset_dir data/Musical_Instruments_0_2022-10-2023-10 \
        --test_samples 200 --output_dir outputs/r1
    # on the identical candidates test.py ranked:
    python tools/run_r1.py --dataset_dir ... --candidate_json_path outputs/test/results.json --output_dir outputs/r1

Prompt file: answer every prompt of a JSONL, keeping the reasoning:

    python tools/run_r1.py --input_file prompts.jsonl --output_file r1_out.jsonl --concurrency 8

Input rows: {"prompt": str} or {"messages": [...]}, optional "id" (default: the row's index), other fields kept.
Output rows: {id, ..., content, reasoning_content, model, finish_reason, usage, attempts, request_hash, error?},
appended as answers arrive; a rerun resumes (answered ids skipped, failed ones asked again unless
--no_retry_errors, answers saved for another prompt refused unless --redo_changed).
"""
from __future__ import annotations

import argparse

from foundation.errors import UserInputError


def build_parser() -> argparse.ArgumentParser:
    from trainers.cli import add_client_args, add_dataset_eval_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("prompt-file mode")
    g.add_argument("--input_file", default=None, help="prompt JSONL to answer (prompt-file mode)")
    g.add_argument("--output_file", default=None, help="answer JSONL (appended, resumable; prompt-file mode)")
    g.add_argument("--skip_bad_lines", action="store_true", help="skip malformed input lines instead of failing")
    add_dataset_eval_args(p, output_default="outputs/r1", required=False)
    add_client_args(p, model_default="deepseek-reasoner", model_flag="--model_name", concurrency=8)
    return p


def answer_prompt_file(args: argparse.Namespace) -> None:
    from models.api_client import prompt_jobs_from_jsonl, resolve_api_key
    from trainers.cli import answer_jobs

    resolve_api_key(args.api_key)
    jobs = prompt_jobs_from_jsonl(args.input_file, skip_bad_lines=args.skip_bad_lines, system_prompt=args.system_prompt)
    rows = answer_jobs(args, jobs, args.model_name)
    n_err = sum(1 for r in rows.values() if r.get("error"))
    print(f"{len(rows) - n_err} answered, {n_err} failed -> {args.output_file}")


def main(argv: list[str] | None = None) -> None:
    from trainers.cli import api_script_errors, run_dataset_eval

    args = build_parser().parse_args(argv)
    with api_script_errors(args):
        prompt_mode = args.input_file is not None or args.output_file is not None
        if args.dataset_dir and prompt_mode:
            raise UserInputError("--dataset_dir (dataset evaluation) and --input_file/--output_file (prompt file) "
                                 "are two modes; give one")
        if args.dataset_dir:
            run_dataset_eval(args, "tools/run_r1.py", with_valid_pass=False)
        elif args.input_file and args.output_file:
            answer_prompt_file(args)
        else:
            raise UserInputError("give --dataset_dir (evaluate a dataset's test split) or --input_file and "
                                 "--output_file (answer a prompt file)")


if __name__ == "__main__":
    main()
