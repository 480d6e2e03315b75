"""Examples of the processed DatasetDict, built and written as Arrow columns in bounded chunks.

Every interaction after a user's first is one example; its history is the user's previous
`window_size` interactions. Examples are ordered by (target timestamp, user_id, parent_asin) and numbered
0..n-1 (interaction_id) in that order, then split chronologically. A split is written chunk by chunk
(list columns built by gathering the rows of each history window) into the shards of the
`save_to_disk` layout, so memory stays bounded whatever the number of examples.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from trainers.data.amazon_interactions import Interactions
from trainers.data.amazon_items import ITEM_COLUMNS, pad_item

EXAMPLE_COLUMNS = [
    "user_id", "item_asins", "item_asin", "history_item_id", "item_id", "history_item_title",
    "item_title", "history_rating", "rating", "history_timestamp", "timestamp", "interaction_id",
]
SPLITS = ("train", "valid", "test")
CHUNK_EXAMPLES = 65_536
MAX_SHARD_BYTES = 500 << 20  # datasets' default max_shard_size for save_to_disk


def split_sizes(n: int) -> tuple[int, int, int]:
    """Upstream R2ec's chronological split: train int(0.8 n), valid int(0.9 n) - int(0.8 n), test the rest."""
    n_train, n_train_valid = int(n * 0.8), int(n * 0.9)
    return n_train, n_train_valid - n_train, n - n_train_valid


def features():
    """(example features, item_info features) of the saved DatasetDict."""
    from datasets import Features, List, Value

    ex = Features({
        "user_id": Value("string"), "item_asins": List(Value("string")), "item_asin": Value("string"),
        "history_item_id": List(Value("int64")), "item_id": Value("int64"),
        "history_item_title": List(Value("string")), "item_title": Value("string"),
        "history_rating": List(Value("float64")), "rating": Value("float64"),
        "history_timestamp": List(Value("int64")), "timestamp": Value("int64"),
        "interaction_id": Value("int64"),
    })
    info = Features({
        "parent_asin": Value("string"), "item_id": Value("int64"), "title": Value("string"),
        "main_category": Value("string"), "average_rating": Value("float64"),
        "rating_number": Value("int64"), "features": List(Value("string")),
        "description": List(Value("string")), "price": Value("float64"), "store": Value("string"),
        "categories": List(Value("string")), "details": Value("string"),
    })
    return ex, info


@dataclass
class ExampleIndex:
    """Which rows of the (user, time)-sorted interactions are targets, in example order."""
    target: np.ndarray        # row of each example's target, in interaction_id order
    hist_start: np.ndarray    # first row of its history window (same order)
    in_history: int           # examples whose target is in their shown history (before any drop)
    dropped: int              # of those, dropped by --repeat_policy drop_example


def index_examples(x: Interactions, window_size: int, drop_target_in_history: bool) -> ExampleIndex:
    """Targets and history windows of x (sorted by user, time); see the module docstring for the order."""
    n = len(x)
    rows = np.arange(n, dtype=np.int64)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = x.user[1:] != x.user[:-1]
    seg_start = np.maximum.accumulate(np.where(new_user, rows, 0)) if n else rows
    target = rows[~new_user]
    hist_start = np.maximum(seg_start[target], target - window_size)
    repeat = np.zeros(len(target), dtype=bool)
    for d in range(1, window_size + 1):
        prev = target - d
        ok = prev >= hist_start
        repeat[ok] |= x.item[prev[ok]] == x.item[target[ok]]
    in_history = int(repeat.sum())
    dropped = 0
    if drop_target_in_history and in_history:
        target, hist_start, dropped = target[~repeat], hist_start[~repeat], in_history
    order = np.lexsort((x.item[target], x.user[target], x.ts[target]))
    return ExampleIndex(target[order], hist_start[order], in_history, dropped)


def _list_column(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def example_batch(x: Interactions, target: np.ndarray, hist_start: np.ndarray, first_id: int,
                  item_id: np.ndarray, asins: pa.Array, titles: pa.Array, users: pa.Array) -> pa.Table:
    """The example rows of these targets. item_id maps item codes to ids; asins/titles are indexed by
    item id (row 0 the pad item); users by user code."""
    lengths = target - hist_start
    offsets = np.zeros(len(target) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    hist = np.repeat(hist_start - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    hist_ids = item_id[x.item[hist]]
    tgt_ids = item_id[x.item[target]]
    cols = {
        "user_id": users.take(pa.array(x.user[target])),
        "item_asins": _list_column(offsets, asins.take(pa.array(hist_ids))),
        "item_asin": asins.take(pa.array(tgt_ids)),
        "history_item_id": _list_column(offsets, pa.array(hist_ids)),
        "item_id": pa.array(tgt_ids),
        "history_item_title": _list_column(offsets, titles.take(pa.array(hist_ids))),
        "item_title": titles.take(pa.array(tgt_ids)),
        "history_rating": _list_column(offsets, pa.array(x.rating[hist])),
        "rating": pa.array(x.rating[target]),
        "history_timestamp": _list_column(offsets, pa.array(x.ts[hist])),
        "timestamp": pa.array(x.ts[target]),
        "interaction_id": pa.array(np.arange(first_id, first_id + len(target), dtype=np.int64)),
    }
    return pa.table(cols)


def _write_state(split_dir: Path, feats, n_shards: int, fingerprint: str) -> None:
    """state.json and dataset_info.json exactly as Dataset.save_to_disk writes them (the fingerprint, a
    cache key of `datasets`, is a hash of the run's settings and the split name)."""
    from datasets.info import DatasetInfo
    from datasets.utils.py_utils import asdict

    state = {"_data_files": [{"filename": f"data-{i:05d}-of-{n_shards:05d}.arrow"} for i in range(n_shards)],
             "_fingerprint": hashlib.sha256(fingerprint.encode()).hexdigest()[:16], "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}
    with open(split_dir / "state.json", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)
    info = asdict(DatasetInfo(features=feats))
    with open(split_dir / "dataset_info.json", "w", encoding="utf-8") as f:
        json.dump({k: info[k] for k in sorted(info)}, f, indent=2)


class SplitWriter:
    """Appends Arrow tables to the shards of one split directory (save_to_disk layout)."""

    def __init__(self, split_dir: Path, feats) -> None:
        self.dir, self.feats = Path(split_dir), feats
        self.dir.mkdir(parents=True)
        self.parts: list[Path] = []
        self.writer = None
        self.shard_bytes = 0

    def write(self, table: pa.Table) -> None:
        from datasets.arrow_writer import ArrowWriter

        if self.writer is None or self.shard_bytes >= MAX_SHARD_BYTES:
            self._close_shard()
            self.parts.append(self.dir / f"part-{len(self.parts):05d}.arrow")
            self.writer = ArrowWriter(features=self.feats, path=str(self.parts[-1]))
            self.shard_bytes = 0
        self.writer.write_table(table)
        self.shard_bytes += table.nbytes

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()
            self.writer = None

    def close(self, fingerprint: str) -> None:
        if not self.parts:  # an empty table still gets one shard with the schema
            self.write(self.feats.arrow_schema.empty_table())
        self._close_shard()
        n = len(self.parts)
        for i, p in enumerate(self.parts):
            os.rename(p, self.dir / f"data-{i:05d}-of-{n:05d}.arrow")
        _write_state(self.dir, self.feats, n, fingerprint)


def write_dataset(out: Path, x: Interactions, index: ExampleIndex, item_rows: list[dict], item_code_to_id: np.ndarray,
                  fingerprint: str) -> dict[str, int]:
    """Write train/valid/test/item_info (and dataset_dict.json) under out; returns the split sizes.
    item_rows are the kept items' rows in item id order (without the pad row)."""
    ex_feat, info_feat = features()
    rows = [pad_item()] + [{**r, "item_id": i + 1} for i, r in enumerate(item_rows)]
    info = pa.table({c: [r[c] for r in rows] for c in ITEM_COLUMNS}, schema=info_feat.arrow_schema)
    asins, titles = info["parent_asin"].combine_chunks(), info["title"].combine_chunks()
    n = len(index.target)
    n_train, n_valid, n_test = split_sizes(n)
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid), "test": (n_train + n_valid, n)}
    out.mkdir(parents=True)
    with tqdm(total=n, unit=" ex", desc="writing examples", mininterval=1) as bar:
        for split in SPLITS:
            w = SplitWriter(out / split, ex_feat)
            lo, hi = bounds[split]
            for a in range(lo, hi, CHUNK_EXAMPLES):
                b = min(hi, a + CHUNK_EXAMPLES)
                w.write(example_batch(x, index.target[a:b], index.hist_start[a:b], a, item_code_to_id, asins, titles,
                                      x.users))
                bar.update(b - a)
            w.close(f"{fingerprint}/{split}")
    w = SplitWriter(out / "item_info", info_feat)
    w.write(info)
    w.close(f"{fingerprint}/item_info")
    with open(out / "dataset_dict.json", "w", encoding="utf-8") as f:
        json.dump({"splits": [*SPLITS, "item_info"]}, f)
    return {"train": n_train, "valid": n_valid, "test": n_test}
