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

from foundation.config import build_parser as options_parser
from foundation.config import config_from_args
from trainers.evaluation.options import RunR1Options


def build_parser():
    """The flags: one per RunR1Options field (trainers/evaluation/options.py)."""
    return options_parser(RunR1Options, description=__doc__)


def answer_prompt_file(opts: RunR1Options) -> None:
    from models.api_client import prompt_jobs_from_jsonl, resolve_api_key
    from trainers.evaluation.api import answer_prompt_jobs

    resolve_api_key(opts.api_key)
    jobs = prompt_jobs_from_jsonl(opts.input_file, skip_bad_lines=opts.skip_bad_lines, system_prompt=opts.system_prompt)
    rows = answer_prompt_jobs(opts, jobs, opts.output_file, opts.model_name)
    n_err = sum(1 for r in rows.values() if r.get("error"))
    print(f"{len(rows) - n_err} answered, {n_err} failed -> {opts.output_file}")


def main(argv: list[str] | None = None) -> None:
    opts = config_from_args(RunR1Options, build_parser().parse_args(argv), validate=False)
    with opts.script_errors():
        opts.validate()  # one of the two modes
        if opts.dataset_dir:
            from trainers.evaluation.api import run_api_evaluation

            run_api_evaluation(opts, "tools/run_r1.py", with_valid_pass=False)
        else:
            answer_prompt_file(opts)


if __name__ == "__main__":
    main()
