"""Filter API responses into LLaMA-Factory SFT data (docs/sft.md).

Reads the response JSONL of get_response_by_deepseek.py (rows {id, prompt, label, response,
reasoning_content, model, error?}), keeps rows whose final Yes/No (the last "Answer: Yes|No", else the
last Yes/No word, <think> blocks ignored) equals the label, and writes a JSON list in LLaMA-Factory's
alpaca (instruction/input/output/system) or sharegpt (conversations of from/value human/gpt, system) format.
Every record has every column of its format (system is "" without --system), so LLaMA-Factory reads it with
the registration in sft_train/dataset_info.json whatever the flags. Dropped rows are counted by reason:
api_error, empty, unparseable, wrong.

Next to the output file it also writes (or updates, keeping other entries) a dataset_info.json registering
it: dataset ourrec_sft_{format} for the default file name ourrec_sft_{format}.json, else the file's stem. So
LLaMA-Factory can read the output where it is: `dataset_dir` = the output's directory, `dataset` = that
name (the command it prints). With the default --output_file (sft_train/ourrec_sft_alpaca.json) the entry is
the shipped one and sft_train/sft.yaml works as it is.

python sft_train/process_sft_data.py --input_file sft_train/responses.jsonl \
    --output_file sft_train/ourrec_sft_alpaca.json --format alpaca
"""
from __future__ import annotations

import argparse
import json
import os

from foundation.config import HelpFormatter
from foundation.errors import UserInputError, exit_on_user_error


def default_output(fmt: str) -> str:
    """sft_train/ourrec_sft_{fmt}.json: the file_name dataset_info.json registers for that format."""
    from trainers.data.sft import default_data_file

    return os.path.join("sft_train", default_data_file(fmt))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
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
    p.add_argument("--system", default=None, help="system prompt stored with every record (default: none, \"\")")
    p.add_argument("--skip_bad_lines", action="store_true", help="skip malformed JSONL lines instead of failing")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out = args.output_file or default_output(args.format)
    with exit_on_user_error():
        from trainers.data.sft import (
            DATASET_INFO_FILE,
            DROP_REASONS,
            check_sft_output,
            dataset_info_entry,
            default_data_file,
            default_dataset_name,
            filter_sft_rows,
            read_dataset_info,
            render_dataset_info,
        )
        from foundation.files import atomic_write_json, atomic_write_text, iter_jsonl

        if os.path.abspath(out) == os.path.abspath(args.input_file):
            raise UserInputError("--output_file must differ from --input_file")
        if os.path.isdir(out):
            raise UserInputError(f"--output_file {out}: is a directory; give a file path")
        # Validate everything this run will replace before reading the responses or writing anything.
        check_sft_output(out)
        info_path = os.path.join(os.path.dirname(os.path.abspath(out)), DATASET_INFO_FILE)
        info = read_dataset_info(info_path, flag=f"--output_file {out}")
        file_name = os.path.basename(out)
        name = (default_dataset_name(args.format) if file_name == default_data_file(args.format)
                else os.path.splitext(file_name)[0])
        rows = iter_jsonl(args.input_file, flag="--input_file", skip_bad_lines=args.skip_bad_lines)
        records, counts = filter_sft_rows(rows, args.format, args.keep_reasoning, args.canonical_answer,
                                          args.system)
        atomic_write_json(out, records, indent=1)
        new_info = {**info, name: dataset_info_entry(args.format, file_name)}
        if new_info != info:  # the shipped sft_train/dataset_info.json is left untouched when it already agrees
            atomic_write_text(info_path, render_dataset_info(new_info))
    total = sum(counts.values())
    dropped = total - counts["kept"]
    why = ", ".join(f"{r} {counts[r]}" for r in DROP_REASONS)
    print(f"read {total} responses: kept {counts['kept']}, dropped {dropped} ({why})")
    print(f"wrote {len(records)} {args.format} records to {out}")
    print(f"LLaMA-Factory: dataset_dir: {os.path.dirname(out) or '.'}  dataset: {name}  (registered in {info_path})")
    print(json.dumps({"kept": counts["kept"], **{r: counts[r] for r in DROP_REASONS}}))


if __name__ == "__main__":
    main()
