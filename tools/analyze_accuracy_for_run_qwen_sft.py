"""Accuracy of a response JSONL (tools/run_qwen_sft.py, run_qwen_baseline.py or the API responses) against labels.

Prints accuracy (unparseable = wrong) and accuracy over parsed answers, precision/recall of "Yes", the
predicted-Yes rate, the confusion matrix (label x prediction Yes/No/unparseable) and the unparseable count.
Answers are parsed by prompters.answer_parsing.parse_yes_no (the parser process_sft_data.py uses).

python tools/analyze_accuracy_for_run_qwen_sft.py --input_file outputs/sft_responses.jsonl
"""
from __future__ import annotations

import argparse
import json

from foundation.config import HelpFormatter
from foundation.errors import UserInputError, exit_on_user_error


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--input_file", default="outputs/sft_responses.jsonl",
                   help="response JSONL of run_qwen_sft.py / run_qwen_baseline.py (default: outputs/sft_responses.jsonl)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object instead of a table")
    p.add_argument("--skip_bad_lines", action="store_true", help="skip malformed JSONL lines instead of failing")
    args = p.parse_args(argv)
    with exit_on_user_error():
        from trainers.data.sft import accuracy_report, format_accuracy_report
        from foundation.files import iter_jsonl

        rep = accuracy_report(iter_jsonl(args.input_file, skip_bad_lines=args.skip_bad_lines))
        if rep["n"] == 0:
            raise UserInputError(f"--input_file {args.input_file}: no rows")
    print(json.dumps(rep) if args.json else format_accuracy_report(rep))
    return rep


if __name__ == "__main__":
    main()
