"""Amazon Reviews 2023 category -> train/valid/test/item_info DatasetDict (docs/data.md).

Without --raw_dir the rating CSV and metadata are downloaded (resumable) into
{data_root_dir}/raw; with --raw_dir nothing is downloaded and the files are looked up
there, flat or in the file host's folder layout (raw review JSONL accepted instead of
the rating CSV). Output: {data_root_dir}/{category}_{K}_{st_year}-{st_month}-{ed_year}-{ed_month}
(named after the requested window; the window actually used is in its stats.json).
"""
from __future__ import annotations

import argparse

from trainers.data.amazon_interactions import REPEAT_POLICIES, TIMESTAMP_UNITS
from foundation.config import HelpFormatter, int_range, nonnegative_int, positive_int
from foundation.errors import UserInputError, exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    from trainers.data.amazon import MAX_YEAR, MIN_YEAR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--category", default="Video_Games", help="Amazon Reviews 2023 category, e.g. Video_Games")
    p.add_argument("--K", type=nonnegative_int, default=5,
                   help="iterated K-core threshold on users and items (0 = none)")
    p.add_argument("--st_year", type=int_range(MIN_YEAR, MAX_YEAR), default=2017,
                   help="first year of the review time window (moved back if --min_items is not met)")
    p.add_argument("--st_month", type=int_range(1, 12), default=1, help="first month (1-12) of the time window")
    p.add_argument("--ed_year", type=int_range(MIN_YEAR, MAX_YEAR), default=2023,
                   help="year of the last month of the time window; that month is included (upstream R2ec stops "
                        "at the 1st day of the end month, excluding it: pass the month before to match it)")
    p.add_argument("--ed_month", type=int_range(1, 12), default=12,
                   help="last month (1-12) of the time window, included up to its last millisecond (upstream "
                        "R2ec excludes the end month)")
    p.add_argument("--window_size", type=positive_int, default=10,
                   help="history length of each example (upstream R2ec: 20, the RRec user prompt's window; with "
                        "10 its prompt shows at most 10 items)")
    p.add_argument("--data_root_dir", default="data", help="output root (and download dir {root}/raw)")
    p.add_argument("--raw_dir", default=None,
                   help="use raw files already here (flat or mirrored host layout); never downloads")
    p.add_argument("--min_items", type=nonnegative_int, default=10000,
                   help="move the start back 3 months while fewer items remain after K-core")
    p.add_argument("--keep_items_without_price", action="store_true",
                   help="keep items whose price is missing/invalid (upstream drops them)")
    p.add_argument("--repeat_policy", choices=REPEAT_POLICIES, default="first_only",
                   help="re-purchases of an item the user already bought in the window. Candidate negatives exclude "
                        "the user's history, so a target that also appears in its shown history is given away. "
                        "first_only (default): keep each user's first purchase of an item only (no target is in its "
                        "history, histories hold no duplicates); drop_example: keep the interactions but drop "
                        "examples whose target is in their shown history; keep: keep all (upstream's behaviour; "
                        "leaks, warns with the count)")
    p.add_argument("--timestamp_unit", choices=TIMESTAMP_UNITS, default="auto",
                   help="unit of the raw timestamps: auto decides per row (below 1e11 = seconds, else ms; the "
                        "number converted is reported), or s / ms for all rows")
    p.add_argument("--overwrite_output_dir", action="store_true",
                   help="replace an existing output directory (otherwise it is refused)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    overwrite = args.__dict__.pop("overwrite_output_dir")
    with exit_on_user_error():  # bad input (2), a refused write (1), Ctrl-C or SIGTERM (130/143): one line
        from trainers.data.amazon import PreprocessConfig, format_summary, output_dir, run_preprocess, validate_config
        from foundation.files import require_dir

        cfg = PreprocessConfig(**vars(args))
        validate_config(cfg)  # flag errors first, then the output check, then the (long) work
        if cfg.raw_dir is not None:
            require_dir(cfg.raw_dir, "--raw_dir")
        out = output_dir(cfg)
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise UserInputError(f"output directory {out} (from --data_root_dir and the window flags) already exists; "
                                 "pass --overwrite_output_dir to replace it")
        out, stats = run_preprocess(cfg)
        print(format_summary(out, stats))


if __name__ == "__main__":
    main()
