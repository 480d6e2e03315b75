"""Filter API responses into LLaMA-Factory SFT data (DESIGN.md section 7).

Reads the response JSONL of get_response_by_deepseek.py (rows {id, prompt, label, response,
reasoning_content, model, error?}), keeps rows whose final Yes/No (the last "Answer: Yes|No", else the
last Yes/No word, <think> blocks ignored) equals the label, and writes a JSON list in LLaMA-Factory's
alpaca (instruction/input/output[/system]) or sharegpt (conversations of from/value human/gpt) format.
Field names agree with sft_train/dataset_info.json (entries ourrec_sft_alpaca / ourrec_sft_sharegpt,
whose file_name defaults to this script's default outputs). Dropped rows are counted by reason:
api_error, empty, unparseable, wrong.

python sft_train/process_sft_data.py --input_file sft_train/responses.jsonl \
    --output_file sft_train/ourrec_sft_alpaca.json --format alpaca
"""
from __future__ import annotations

import argparse
import json
import os

from trainers.foundation.errors import UserInputError, die


def default_output(fmt: str) -> str:
    """sft_train/ourrec_sft_{fmt}.json: the file_name dataset_info.json registers for that format."""
    return os.path.join("sft_train", f"ourrec_sft_{fmt}.json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_file", default="sft_train/responses.jsonl",
                   help="response JSONL of get_response_by_deepseek.py (default: sft_train/responses.jsonl)")
    p.add_argument("--output_file", default=None,
                   help="default: sft_train/ourrec_sft_{format}.json (the file dataset_info.json registers)")
    p.add_argument("--format", default="alpaca", choices=["alpaca", "sharegpt"],
                   help="LLaMA-Factory record format to write (default: alpaca)")
    p.add_argument("--keep_reasoning", action="store_true",
                   help="prepend the API's reasoning_content as <think>...</think> to the output")
    p.add_argument("--canonical_answer", action="store_true",
                   help='append "Answer: Yes|No" to kept outputs that lack the tag (what the judge reads)')
    p.add_argument("--system", default=None, help="system prompt stored with every record")
    p.add_argument("--skip_bad_lines", action="store_true", help="skip malformed JSONL lines instead of failing")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out = args.output_file or default_output(args.format)
    try:
        from trainers.data.sft import DROP_REASONS, filter_sft_rows
        from trainers.foundation.files import atomic_write_json, iter_jsonl

        rows = iter_jsonl(args.input_file, flag="--input_file", skip_bad_lines=args.skip_bad_lines)
        records, counts = filter_sft_rows(rows, args.format, args.keep_reasoning, args.canonical_answer,
                                          args.system)
        atomic_write_json(out, records, indent=1)
    except UserInputError as e:
        die(str(e))
    total = sum(counts.values())
    dropped = total - counts["kept"]
    why = ", ".join(f"{r} {counts[r]}" for r in DROP_REASONS)
    print(f"read {total} responses: kept {counts['kept']}, dropped {dropped} ({why})")
    print(f"wrote {len(records)} {args.format} records to {out}")
    print(json.dumps({"kept": counts["kept"], **{r: counts[r] for r in DROP_REASONS}}))


if __name__ == "__main__":
    main()
