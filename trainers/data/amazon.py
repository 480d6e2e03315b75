"""Amazon Reviews 2023 -> our processed DatasetDict (docs/data.md): the pipeline.

Raw files are the host's rating-only 5-core CSV (`user_id,parent_asin,rating,timestamp`, ms) or the raw
review JSONL, plus the metadata JSONL, gzipped or not. preprocess.py is the front end; the stages live in
amazon_files (locating, downloading, reading), amazon_items (metadata -> item rows), amazon_interactions
(columnar interactions, filters, K-core, window) and amazon_examples (examples, splits, writing). Bad
input raises `UserInputError` with a one-line message, before anything is written.

Order of the stages (each drop is counted under its reason in stats.json["dropped"]): read rows (malformed
line, missing user/item id, non-numeric rating, rating outside 1..5 stars, non-numeric timestamp) -> exact
duplicates -> items without usable metadata (not in the metadata file, no valid title, a title without a visible
character, no valid price) -> time window -> repeat purchases
(--repeat_policy first_only) -> iterated K-core -> examples (--repeat_policy drop_example).

Repeat purchases (--repeat_policy): candidate negatives exclude the user's shown history
(trainers/data/candidates.py), so an example whose target also appears in its shown history gives the
answer away: the one candidate that is in the history is the target. `first_only` (default) keeps only
each user's first purchase of an item inside the window (before the K-core, so every kept user and item
still has >= K interactions): no target is ever in its history and histories hold no duplicates.
`drop_example` keeps the interactions (histories show re-purchases) but drops examples whose target is in
their shown history. `keep` keeps everything (upstream R2ec's behaviour) and warns with the count.

Item ids are assigned in sorted parent_asin order over the items left after the K-core (pad item 0).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainers.data.amazon_examples import EXAMPLE_COLUMNS, SPLITS, index_examples, split_sizes, write_dataset
from trainers.data.amazon_files import download, locate_raw_files
from trainers.data.amazon_interactions import (
    READ_DROP_REASONS,
    REPEAT_POLICIES,
    TIMESTAMP_UNITS,
    load_interactions,
    ms_to_date,
    present_codes,
    select_window,
    sort_and_dedupe,
)
from trainers.data.amazon_items import ITEM_COLUMNS, ITEM_DROP_REASONS, clean_text, load_items, parse_price, valid_title
from foundation.errors import UserInputError
from foundation.files import RunLock, atomic_write_json, check_output_path, require_dir, writing

__all__ = ["EXAMPLE_COLUMNS", "ITEM_COLUMNS", "PreprocessConfig", "clean_text", "download", "format_summary",
           "output_dir", "parse_price", "run_preprocess", "split_sizes", "valid_title", "validate_config"]

MIN_YEAR, MAX_YEAR = 1970, 9999
# Interaction drop reasons in stage order (see the module docstring).
DROP_REASONS = (*READ_DROP_REASONS, "duplicate", "item_not_in_metadata", *(f"item_{r}" for r in ITEM_DROP_REASONS),
                "out_of_window", "repeat_purchase", "kcore")


@dataclass
class PreprocessConfig:
    category: str
    K: int = 5
    st_year: int = 2017
    st_month: int = 1
    ed_year: int = 2023
    ed_month: int = 12
    window_size: int = 10
    data_root_dir: str = "data"
    raw_dir: str | None = None
    min_items: int = 10000
    keep_items_without_price: bool = False
    repeat_policy: str = "first_only"
    timestamp_unit: str = "auto"


def output_dir(cfg: PreprocessConfig) -> Path:
    return Path(cfg.data_root_dir) / f"{cfg.category}_{cfg.K}_{cfg.st_year}-{cfg.st_month}-{cfg.ed_year}-{cfg.ed_month}"


def validate_config(cfg: PreprocessConfig) -> None:
    """Flag errors (one line naming the flag) before any file is read."""
    for flag in ("st_year", "ed_year"):
        v = getattr(cfg, flag)
        if not MIN_YEAR <= v <= MAX_YEAR:
            raise UserInputError(f"--{flag} {v}: out of range, must be {MIN_YEAR}..{MAX_YEAR}")
    for flag in ("st_month", "ed_month"):
        v = getattr(cfg, flag)
        if not 1 <= v <= 12:
            raise UserInputError(f"--{flag} {v}: invalid month, must be 1..12")
    if (cfg.st_year, cfg.st_month) > (cfg.ed_year, cfg.ed_month):
        raise UserInputError(f"start {cfg.st_year}-{cfg.st_month} is after end {cfg.ed_year}-{cfg.ed_month} "
                             f"(--st_year/--st_month vs --ed_year/--ed_month)")
    if cfg.K < 0:
        raise UserInputError(f"--K {cfg.K}: must be >= 0")
    if cfg.window_size < 1:
        raise UserInputError(f"--window_size {cfg.window_size}: must be >= 1")
    if cfg.min_items < 0:
        raise UserInputError(f"--min_items {cfg.min_items}: must be >= 0")
    if not re.fullmatch(r"[A-Za-z0-9_]+", cfg.category):
        raise UserInputError(f"--category {cfg.category!r}: expected a name like Video_Games")
    if cfg.repeat_policy not in REPEAT_POLICIES:
        raise UserInputError(f"--repeat_policy {cfg.repeat_policy!r}: expected one of {', '.join(REPEAT_POLICIES)}")
    if cfg.timestamp_unit not in TIMESTAMP_UNITS:
        raise UserInputError(f"--timestamp_unit {cfg.timestamp_unit!r}: expected one of {', '.join(TIMESTAMP_UNITS)}")
    root = Path(cfg.data_root_dir)
    for p in (root, output_dir(cfg)):
        if p.exists() and not p.is_dir():
            raise UserInputError(f"--data_root_dir {cfg.data_root_dir}: {p} is a file, expected a directory")
    check_output_path(root, "--data_root_dir", kind="dir")


def _drops_so_far(x) -> str:
    """'rows read N; dropped: reason n, ...' for an error that ends the pipeline early (the summary never comes)."""
    drops = ", ".join(f"{r} {int(x.dropped.get(r, 0))}" for r in DROP_REASONS if x.dropped.get(r, 0)) or "none"
    return f"{x.rows_read} rows read; dropped: {drops}"


def _stage(msg: str, t0: float) -> None:
    print(f"{msg} ({time.time() - t0:.1f} s)", flush=True)


def run_preprocess(cfg: PreprocessConfig) -> tuple[Path, dict]:
    """The whole pipeline; returns (output dir, stats). Raises UserInputError on bad input, always before
    the output directory is touched. One run per output directory at a time (a lock next to it): two would
    download into and assemble the same temporary directories."""
    validate_config(cfg)
    with RunLock(cfg.data_root_dir, flag="--data_root_dir", name=f".{output_dir(cfg).name}.lock"):
        return _run_preprocess(cfg)


def _run_preprocess(cfg: PreprocessConfig) -> tuple[Path, dict]:
    if cfg.raw_dir is not None:
        require_dir(cfg.raw_dir, "--raw_dir")
        files = locate_raw_files(cfg.raw_dir, cfg.category, allow_download=False)
    else:
        files = locate_raw_files(Path(cfg.data_root_dir) / "raw", cfg.category, allow_download=True)
    print(f"raw files: interactions={files.interactions} meta={files.meta}")

    t0 = time.time()
    # Interactions first: a bad rating file fails before the long metadata read, and only the metadata
    # of items that occur in it is parsed.
    x = load_interactions(files.interactions, reviews_jsonl=files.ratings is None, timestamp_unit=cfg.timestamp_unit)
    _stage(f"interactions: {x.rows_read} rows read, {len(x)} with valid ids and numbers, "
           f"{x.seconds_converted} timestamps converted from seconds", t0)
    wanted = set(x.items.take(present_codes(x.item, len(x.items))).to_pylist())
    items, item_drops, item_counts = load_items(files.meta, cfg.keep_items_without_price, wanted)
    _stage(f"items: {item_counts['meta_rows']} in metadata, {item_counts['not_in_interactions']} never rated, "
           f"{item_counts['kept']} kept ({item_counts['bad_title']} bad title, {item_counts['invisible_title']} "
           f"invisible title, {item_counts['bad_price']} "
           f"no valid price)", t0)
    n_valid = len(x)
    x = sort_and_dedupe(x)
    n_dedup = len(x)
    # Item filter: each distinct parent_asin's status, then one gather per row.
    status_names = ("kept", "item_not_in_metadata", *(f"item_{r}" for r in ITEM_DROP_REASONS))
    code_of = {n: i for i, n in enumerate(status_names)}
    present = present_codes(x.item, len(x.items))
    status = np.zeros(len(x.items), dtype=np.int8)
    for code, asin in zip(present.tolist(), x.items.take(present).to_pylist()):
        if asin not in items:
            reason = f"item_{item_drops[asin]}" if asin in item_drops else "item_not_in_metadata"
            status[code] = code_of[reason]
    per_row = status[x.item]
    for name, count in zip(status_names[1:], np.bincount(per_row, minlength=len(status_names))[1:]):
        x.dropped[name] += int(count)
    x = x.take(np.flatnonzero(per_row == 0))
    _stage(f"reviews: {n_valid} valid, {n_valid - n_dedup} duplicates removed, {len(x)} of kept items", t0)
    if not len(x):
        raise UserInputError(f"no reviews left after keeping the valid rows of items with usable metadata "
                             f"({_drops_so_far(x)}); check the raw files (--raw_dir) and --keep_items_without_price")

    win = select_window(x, (cfg.st_year, cfg.st_month), (cfg.ed_year, cfg.ed_month), cfg.K, cfg.min_items,
                        cfg.repeat_policy)
    x = win.x
    x.dropped.update(win.dropped)
    if not len(x):
        raise UserInputError(f"no interactions left after the {cfg.K}-core filter ({_drops_so_far(x)}); lower --K or "
                             "widen the window, or fix the rows the raw files lose")
    index = index_examples(x, cfg.window_size, drop_target_in_history=cfg.repeat_policy == "drop_example")
    n = len(index.target)
    sizes = dict(zip(SPLITS, split_sizes(n)))
    empty = [s for s in SPLITS if sizes[s] == 0]
    if empty:
        raise UserInputError(
            f"only {n} examples, so the {'/'.join(empty)} split would be empty (train {sizes['train']}, valid "
            f"{sizes['valid']}, test {sizes['test']}; {_drops_so_far(x)}); lower --K or --min_items, widen the window "
            f"(--st_year/--ed_year) or use a larger category")
    _stage(f"examples: {n} from {len(x)} interactions", t0)
    if cfg.repeat_policy == "keep" and index.in_history:
        print(f"warning: --repeat_policy keep leaves {index.in_history} examples whose target is in their shown "
              f"history; candidate negatives exclude the history, so in those examples the candidate that is also "
              f"in the history is the target (a leak); use first_only or drop_example for honest numbers",
              file=sys.stderr)

    kept_codes = present_codes(x.item, len(x.items))  # sorted codes = sorted parent_asin order
    item_code_to_id = np.zeros(len(x.items), dtype=np.int64)
    item_code_to_id[kept_codes] = np.arange(1, len(kept_codes) + 1)
    item_rows = [items[a] for a in x.items.take(kept_codes).to_pylist()]

    out = output_dir(cfg)
    # Assemble in a hidden sibling dir and rename into place: a kill mid-write never leaves a half dataset
    # under the real name, and the previous one is replaced only once the new one is complete. A write the OS
    # refuses (disk full, ...) is one OutputError naming the file; the temp dir goes, the previous dataset stays.
    tmp = out.parent / f".tmp-{out.name}"
    try:
        with writing(tmp):
            out.parent.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            stats = _write_output(cfg, files, x, win, index, n, n_valid, n_dedup, item_counts, item_rows,
                                  item_code_to_id, kept_codes, tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _stage(f"saved {out}", t0)
    return out, stats


def _write_output(cfg: PreprocessConfig, files, x, win, index, n: int, n_valid: int, n_dedup: int, item_counts: dict,
                  item_rows: list[dict], item_code_to_id: np.ndarray, kept_codes: np.ndarray, tmp: Path,
                  out: Path) -> dict:
    """The dataset and its stats.json into tmp, then renamed to out (replacing an older one); returns the stats."""
    fingerprint = json.dumps(asdict(cfg), sort_keys=True)
    splits = write_dataset(tmp, x, index, item_rows, item_code_to_id, fingerprint)

    ts = x.ts
    ex_ts = x.ts[index.target]
    bounds = {"train": (0, splits["train"]), "valid": (splits["train"], splits["train"] + splits["valid"]),
              "test": (splits["train"] + splits["valid"], n)}
    n_users, n_items = int(np.count_nonzero(np.bincount(x.user))), len(kept_codes)
    dropped = {r: int(x.dropped.get(r, 0)) for r in DROP_REASONS}
    stats = {
        "category": cfg.category, "K": cfg.K, "window_size": cfg.window_size,
        "users": n_users, "items": n_items, "interactions": len(x),
        "density": float(len(x) / (n_users * n_items)) if n_users and n_items else 0.0,
        "requested_window": {"st_year": cfg.st_year, "st_month": cfg.st_month,
                             "ed_year": cfg.ed_year, "ed_month": cfg.ed_month},
        "used_window": {"st_year": win.st[0], "st_month": win.st[1],
                        "ed_year": cfg.ed_year, "ed_month": cfg.ed_month},
        "start_extensions": win.extensions,
        "window_attempts": win.history,
        "date_range": [ms_to_date(int(ts.min())), ms_to_date(int(ts.max()))],
        "examples": n,
        "splits": splits,
        "split_date_ranges": {s: [ms_to_date(int(ex_ts[a])), ms_to_date(int(ex_ts[b - 1]))]
                              for s, (a, b) in bounds.items()},
        "min_items": cfg.min_items, "keep_items_without_price": cfg.keep_items_without_price,
        "raw_files": {"interactions": str(files.interactions), "meta": str(files.meta)},
        "raw_reviews": n_valid, "duplicates_removed": n_valid - n_dedup, "item_filter": item_counts,
        "repeat_policy": cfg.repeat_policy,
        "repeats": {"examples_with_target_in_shown_history": index.in_history,
                    "examples_dropped": index.dropped,
                    "repeat_purchases_removed": dropped["repeat_purchase"]},
        "timestamp_unit": cfg.timestamp_unit,
        "timestamps_converted_from_seconds": x.seconds_converted,
        "rows_read": x.rows_read,
        "dropped": {"interactions": dropped, "examples": {"target_in_shown_history": index.dropped}},
    }
    atomic_write_json(tmp / "stats.json", stats, indent=2)
    if out.exists():
        old = out.parent / f".old-{out.name}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out)
    return stats


def format_summary(out: Path, stats: dict) -> str:
    uw, s = stats["used_window"], stats["splits"]
    drops = ", ".join(f"{k} {v}" for k, v in stats["dropped"]["interactions"].items() if v) or "none"
    rep = stats["repeats"]
    return "\n".join([
        f"saved {out}",
        (f"  users {stats['users']}  items {stats['items']}  interactions {stats['interactions']}  "
         f"density {stats['density']:.5f}"),
        (f"  window used {uw['st_year']}-{uw['st_month']:02d}..{uw['ed_year']}-{uw['ed_month']:02d} "
         f"({stats['start_extensions']} start extension(s)); data {stats['date_range'][0]}..{stats['date_range'][1]}"),
        (f"  rows read {stats['rows_read']}; dropped: {drops}; "
         f"{stats['timestamps_converted_from_seconds']} timestamps converted from seconds"),
        (f"  repeats (--repeat_policy {stats['repeat_policy']}): {rep['repeat_purchases_removed']} repeat purchases "
         f"removed, {rep['examples_with_target_in_shown_history']} examples with the target in the shown history, "
         f"{rep['examples_dropped']} of them dropped"),
        f"  examples train {s['train']}  valid {s['valid']}  test {s['test']}",
    ])
