"""Loading a processed dataset directory (the DatasetDict preprocess.py writes, or upstream R2ec's preprocess.py).

Both item_info layouts are read: ours has the pad item (item_id 0) as row 0, so row i is item id i; upstream
R2ec appends the pad item as the LAST row (item ids 1..N in rows 0..N-1). Rows are mapped by their item_id
column, so every consumer sees row i = item id i whichever layout is on disk; an upstream directory is
announced with one line on stderr.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from trainers.foundation.errors import UserInputError

SPLITS = ("train", "valid", "test")
LAYOUTS = ("ours", "upstream", "by item_id")  # pad item first / pad item last / any other row order
DATASET_TYPES = ("movies", "other")


@dataclass
class ProcessedDataset:
    """Splits as `datasets.Dataset`s plus the item table indexed by item id (row i = item id i)."""

    path: str
    splits: dict
    item_info: object  # row i = item id i (reordered on load if the directory stores another order)
    layout: str = "ours"  # which item_info layout the directory has on disk (LAYOUTS)

    @property
    def n_items(self) -> int:
        """Number of real items (ids 1..n_items); row 0 is the pad item."""
        return len(self.item_info) - 1

    @cached_property
    def item_rows(self) -> list[dict]:
        return self.item_info.to_list()

    @cached_property
    def titles(self) -> list[str]:
        return list(self.item_info["title"])

    @cached_property
    def popularity(self) -> np.ndarray:
        """Train interactions per item id: each (user, item, timestamp) counted once, whether it is a train target,
        in the shown history of train examples, or both (a train target reappears in the histories of that user's
        later examples; counting both would count it twice). Valid and test targets never count."""
        import pyarrow.compute as pc

        tr = self.splits["train"]
        if getattr(tr, "_indices", None) is not None:  # a select()ed split: read the selected rows only
            tr = tr.flatten_indices()
        pop = np.zeros(len(self.item_info), dtype=np.float64)
        if len(tr) == 0:
            return pop
        table = tr.data.table if hasattr(tr.data, "table") else tr.data
        user_col = table.column("user_id")  # users as integer codes (one code per distinct id, across chunks)
        users = pc.index_in(user_col, value_set=pc.unique(user_col)).to_numpy(zero_copy_only=False)
        hist_len = pc.list_value_length(table.column("history_item_id")).to_numpy(zero_copy_only=False)
        hist_len = np.nan_to_num(hist_len.astype(np.float64)).astype(np.int64)  # a null list has no items
        flat = lambda col: pc.list_flatten(table.column(col)).to_numpy()  # noqa: E731
        u = np.concatenate([users, np.repeat(users, hist_len)]).astype(np.int64)
        i = np.concatenate([table.column("item_id").to_numpy(), flat("history_item_id")]).astype(np.int64)
        t = np.concatenate([table.column("timestamp").to_numpy(), flat("history_timestamp")]).astype(np.int64)
        once = np.unique(np.stack([u, i, t], axis=1), axis=0)[:, 1]
        once = once[(once >= 0) & (once < len(pop))]
        pop += np.bincount(once, minlength=len(pop))[: len(pop)]
        return pop

    @cached_property
    def _interaction_index(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Per split: (name, sorted interaction ids, their row numbers), for histories_of."""
        out = []
        for name, ds in self.splits.items():
            ids = np.asarray(ds["interaction_id"], dtype=np.int64) if len(ds) else np.zeros(0, dtype=np.int64)
            order = np.argsort(ids, kind="stable")
            out.append((name, ids[order], order))
        return out

    def histories_of(self, interaction_ids: Sequence[int]) -> list[list[int]]:
        """The stored history_item_id list of each interaction id (any split; [] for an unknown id)."""
        want = np.asarray([int(i) for i in interaction_ids], dtype=np.int64)
        out: list[list[int]] = [[] for _ in range(len(want))]
        for name, ids, rows in self._interaction_index:
            if not len(ids):
                continue
            pos = np.clip(np.searchsorted(ids, want), 0, len(ids) - 1)
            hit = np.nonzero(ids[pos] == want)[0]
            if len(hit):
                hist = self.splits[name].select([int(rows[pos[h]]) for h in hit])["history_item_id"]
                for h, lst in zip(hit, hist):
                    out[int(h)] = [int(x) for x in lst]
        return out

    def longest_history(self) -> int:
        """The longest history_item_id list over all splits (Arrow compute, no Python rows)."""
        import pyarrow.compute as pc

        longest = 0
        for ds in self.splits.values():
            if len(ds):
                col = ds.data.column("history_item_id")
                m = pc.max(pc.list_value_length(col)).as_py()
                longest = max(longest, int(m or 0))
        return longest

    def check_K(self, K: int, flag: str = "--K") -> None:
        """K candidates need K-1 negatives outside every user's history and target: compare K with the items
        left for the user with the longest history (checked up front, not at the step that meets that user)."""
        if K > self.n_items:
            raise UserInputError(f"{flag} {K}: larger than the catalogue of {self.path} ({self.n_items} items)")
        eligible = self.n_items - self.longest_history() - 1
        if K - 1 > eligible:
            raise UserInputError(f"{flag} {K} needs {K - 1} negatives but a user with {self.longest_history()} history "
                                 f"items leaves only {eligible} of the {self.n_items} items eligible; lower {flag}")

    def split(self, name: str):
        if name not in self.splits:
            raise UserInputError(f"--split {name!r} not in dataset {self.path} (has {sorted(self.splits)})")
        return self.splits[name]


def load_processed_dataset(path: str | os.PathLike, flag: str = "--dataset_path") -> ProcessedDataset:
    """Load a DatasetDict saved by preprocess.py, with one-line errors naming the flag."""
    from datasets import DatasetDict, load_from_disk

    p = Path(path)
    if not p.exists():
        raise UserInputError(f"{flag} {path}: directory does not exist; run preprocess.py first")
    if not (p / "dataset_dict.json").exists():
        raise UserInputError(f"{flag} {path}: not a saved DatasetDict (no dataset_dict.json); point it at preprocess.py's output")
    dd = load_from_disk(str(p))
    if not isinstance(dd, DatasetDict):
        raise UserInputError(f"{flag} {path}: expected a DatasetDict with train/valid/test/item_info")
    missing = [s for s in (*SPLITS, "item_info") if s not in dd]
    if missing:
        raise UserInputError(f"{flag} {path}: missing split(s) {missing}; expected train, valid, test, item_info")
    info, layout = item_info_by_id(dd["item_info"], f"{flag} {path}")
    if layout != "ours":
        import sys

        found = "upstream R2ec item_info layout (pad item in the last row)" if layout == "upstream" else \
            "item_info rows not in item id order"
        print(f"note: {flag} {path}: {found}; rows are mapped by their item_id column", file=sys.stderr)
    return ProcessedDataset(path=str(p), splits={s: dd[s] for s in SPLITS}, item_info=info, layout=layout)


def item_info_by_id(info, where: str = "item_info"):
    """(item_info with row i = item id i, the layout found on disk). Ours stores it that way already; upstream
    R2ec stores ids 1..N in rows 0..N-1 and the pad item (id 0) last; any other permutation is reordered too.
    Ids that are not a permutation of 0..N-1 are an error: a silent misalignment would give items other items'
    text."""
    if "item_id" not in info.column_names:
        raise UserInputError(f"{where}: item_info has no item_id column")
    try:
        ids = np.asarray(info["item_id"], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise UserInputError(f"{where}: item_info item_id column holds non-integer values ({e})")
    n = len(ids)
    if n == 0:
        raise UserInputError(f"{where}: item_info is empty (it needs at least the pad item with item_id 0)")
    if np.array_equal(ids, np.arange(n)):
        return info, "ours"
    if ids[-1] == 0 and np.array_equal(ids[:-1], np.arange(1, n)):
        return info.select([n - 1, *range(n - 1)]), "upstream"
    if np.array_equal(np.sort(ids), np.arange(n)):  # some other row order: the item_id column still decides
        return info.select([int(i) for i in np.argsort(ids)]), "by item_id"
    raise UserInputError(f"{where}: item_info item_id column is not 0..{n - 1} (duplicates or gaps); the item ids "
                         "of the examples cannot be mapped to items")


def check_dataset_type(value: str) -> str:
    if value not in DATASET_TYPES:
        raise UserInputError(f"--dataset_type {value!r}: must be one of {'|'.join(DATASET_TYPES)}")
    return value
