"""Answer SFT prompts through an OpenAI-compatible API (DeepSeek-R1 by default) (docs/sft.md).

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

from foundation.config import build_parser as options_parser
from foundation.config import config_from_args
from foundation.errors import UserInputError
from trainers.evaluation.options import GetResponseOptions


def build_parser():
    """The flags: one per GetResponseOptions field (trainers/evaluation/options.py)."""
    return options_parser(GetResponseOptions, description=__doc__)


def main(argv: list[str] | None = None) -> None:
    from models.api_client import prompt_jobs_from_jsonl, resolve_api_key
    from trainers.evaluation.api import answer_prompt_jobs

    opts = config_from_args(GetResponseOptions, build_parser().parse_args(argv), validate=False)
    with opts.script_errors():
        resolve_api_key(opts.api_key)
        opts.validate()
        jobs = prompt_jobs_from_jsonl(opts.input_file, opts.prompt_id_min, opts.prompt_id_max,
                                      skip_bad_lines=opts.skip_bad_lines, system_prompt=opts.system_prompt,
                                      required_fields=("label",))
        if not jobs:
            raise UserInputError(f"--input_file {opts.input_file}: no prompts with ids in "
                                 f"[{opts.prompt_id_min}, {opts.prompt_id_max}]")
        for j in jobs:
            # The row keeps the prompt as text when the input had one, else the messages.
            j.extra.setdefault("prompt", j.messages[-1]["content"])
        rows = answer_prompt_jobs(opts, jobs, opts.output_file, opts.model_name, content_key="response")
    wanted = {str(j.id) for j in jobs}
    n_err = sum(1 for k, r in rows.items() if k in wanted and r.get("error"))
    print(f"{len(wanted) - n_err} of {len(wanted)} prompts answered ({n_err} failed; rerun to retry them) "
          f"-> {opts.output_file}")


if __name__ == "__main__":
    main()
