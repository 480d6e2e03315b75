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

from foundation.errors import UserInputError
from foundation.files import read_json, require_dir
from prompters.abstract_prompter import DATASET_TYPES, check_dataset_type  # noqa: F401 (one home: the prompts)

SPLITS = ("train", "valid", "test")
LAYOUTS = ("ours", "upstream", "by item_id")  # pad item first / pad item last / any other row order


@dataclass
class ProcessedDataset:
    """Splits as `datasets.Dataset`s plus the item table indexed by item id (row i = item id i)."""

    path: str
    splits: dict
    item_info: object  # row i = item id i (reordered on load if the directory stores another order)
    layout: str = "ours"  # which item_info layout the directory has on disk (LAYOUTS)
    flag: str = "--dataset_path"  # the flag that named it, for messages

    def require_columns(self, columns: dict[str, str]) -> None:
        """Example columns beyond EXAMPLE_COLUMNS that a consumer reads (name -> type family, e.g. "string",
        "number", "list of string"): a one-line error when a split lacks one."""
        for s in SPLITS:
            _check_columns(self.splits[s], s, columns, f"{self.flag} {self.path}")

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
    def train_interactions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The train split's interactions, each (user, item, timestamp) once whether it is a train target, in the
        shown history of train examples, or both (a train target reappears in the histories of that user's later
        examples): (user codes, item ids, timestamps), int64 arrays sorted by user, then time, then item id (items
        with one timestamp have no other order). Valid and test targets never appear. Arrow compute and numpy over
        the columns, no Python rows: the one source of the popularity row and of the ID-based sequential models'
        training sequences (trainers/data/sequences.py)."""
        import pyarrow.compute as pc

        tr = self.splits["train"]
        if getattr(tr, "_indices", None) is not None:  # a select()ed split: read the selected rows only
            tr = tr.flatten_indices()
        if len(tr) == 0:
            return tuple(np.zeros(0, dtype=np.int64) for _ in range(3))  # type: ignore[return-value]
        table = tr.data.table if hasattr(tr.data, "table") else tr.data
        user_col = table.column("user_id")  # users as integer codes (one code per distinct id, across chunks)
        users = pc.index_in(user_col, value_set=pc.unique(user_col)).to_numpy(zero_copy_only=False)
        hist_len = pc.list_value_length(table.column("history_item_id")).to_numpy(zero_copy_only=False)
        hist_len = np.nan_to_num(hist_len.astype(np.float64)).astype(np.int64)  # a null list has no items
        flat = lambda col: pc.list_flatten(table.column(col)).to_numpy()  # noqa: E731
        u = np.concatenate([users, np.repeat(users, hist_len)]).astype(np.int64)
        i = np.concatenate([table.column("item_id").to_numpy(), flat("history_item_id")]).astype(np.int64)
        t = np.concatenate([table.column("timestamp").to_numpy(), flat("history_timestamp")]).astype(np.int64)
        order = np.lexsort((i, t, u))
        u, i, t = u[order], i[order], t[order]
        first = np.ones(len(u), dtype=bool)  # drop repeats of the row before: each (user, item, time) once
        first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1]) | (t[1:] != t[:-1])
        return u[first], i[first], t[first]

    @cached_property
    def popularity(self) -> np.ndarray:
        """Train interactions per item id (train_interactions: each (user, item, timestamp) counted once, whether
        it is a train target, in the shown history of train examples, or both). Valid and test targets never
        count."""
        pop = np.zeros(len(self.item_info), dtype=np.float64)
        items = self.train_interactions[1]
        items = items[(items >= 0) & (items < len(pop))]
        pop += np.bincount(items, minlength=len(pop))[: len(pop)]
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
    """Load a DatasetDict saved by preprocess.py (or upstream R2ec's), with one-line errors naming the flag and
    the damaged file: a missing or unreadable dataset_dict.json / split folder / state.json / dataset_info.json /
    Arrow file, a split without examples, a missing or mistyped column, null values, item ids outside the
    catalogue, history lists of different lengths, repeated interaction ids (check_examples)."""
    p = Path(path)
    where = f"{flag} {path}"
    require_dir(p, flag, hint="point it at preprocess.py's output directory (run preprocess.py first)")
    if not (p / "dataset_dict.json").exists():
        raise UserInputError(f"{where}: not a saved DatasetDict (no dataset_dict.json); point it at preprocess.py's "
                             "output")
    listed = _read_json(p / "dataset_dict.json", where, "dataset_dict.json")
    names = listed.get("splits") if isinstance(listed, dict) else None
    if not isinstance(names, list):
        raise UserInputError(f"{where}: dataset_dict.json does not list the splits (damaged?); rebuild the dataset "
                             "with preprocess.py")
    missing = [s for s in (*SPLITS, "item_info") if s not in names]
    if missing:
        raise UserInputError(f"{where}: missing split(s) {missing}; expected train, valid, test, item_info")
    loaded = {s: _load_split(p, s, where) for s in (*SPLITS, "item_info")}
    _check_columns(loaded["item_info"], "item_info", ITEM_INFO_COLUMNS, where, nullable=("title",))
    info, layout = item_info_by_id(loaded["item_info"], where)
    raw = loaded["item_info"].data  # the pad item (id 0) may have no title; every other item needs one
    ids = raw.column("item_id").to_numpy()
    no_title = ids[raw.column("title").is_null().to_numpy(zero_copy_only=False) & (ids != 0)]
    if len(no_title):
        raise UserInputError(f"{where}: item_info has {len(no_title)} item(s) without a title (item id "
                             f"{int(no_title[0])}, ...); every item shown in a prompt needs one")
    for s in SPLITS:
        if len(loaded[s]) == 0:
            raise UserInputError(f"{where}: the {s} split holds no examples; every split needs some (rebuild it with "
                                 "preprocess.py: a wider window, a lower --K or a larger category)")
        check_examples(loaded[s], s, len(info) - 1, where)
    if layout != "ours":
        import sys

        found = "upstream R2ec item_info layout (pad item in the last row)" if layout == "upstream" else \
            "item_info rows not in item id order"
        print(f"note: {where}: {found}; rows are mapped by their item_id column", file=sys.stderr)
    return ProcessedDataset(path=str(p), splits={s: loaded[s] for s in SPLITS}, item_info=info, layout=layout,
                            flag=flag)


# Columns every consumer reads, with the Arrow type family each must have (other columns are optional).
EXAMPLE_COLUMNS = {"user_id": "string", "item_id": "integer", "history_item_id": "list of integer",
                   "history_rating": "list of number", "history_timestamp": "list of number", "timestamp": "number",
                   "interaction_id": "integer"}
ITEM_INFO_COLUMNS = {"item_id": "integer", "title": "string"}


def _read_json(f: Path, where: str, name: str):
    try:
        return read_json(f)
    except FileNotFoundError:
        raise UserInputError(f"{where}: {name} is missing; the dataset directory is damaged (rebuild it with "
                             "preprocess.py)")
    except (OSError, ValueError) as e:
        raise UserInputError(f"{where}: {name} is damaged ({type(e).__name__}: {e}); rebuild the dataset with "
                             "preprocess.py")


def _load_split(root: Path, name: str, where: str):
    """One split folder as a datasets.Dataset; every way it can be damaged is a one-line error naming the file."""
    from datasets import Dataset

    d = root / name
    if not d.is_dir():
        raise UserInputError(f"{where}: the {name} split folder is missing; the dataset directory is damaged "
                             "(rebuild it with preprocess.py)")
    state = _read_json(d / "state.json", where, f"{name}/state.json")
    _read_json(d / "dataset_info.json", where, f"{name}/dataset_info.json")
    files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("filename"), str)
                                              for f in files):
        raise UserInputError(f"{where}: {name}/state.json does not list the split's Arrow files (damaged?)")
    for f in files:
        if not (d / f["filename"]).is_file():
            raise UserInputError(f"{where}: {name}/{f['filename']} is missing; the dataset directory is damaged "
                                 "(rebuild it with preprocess.py)")
    try:
        return Dataset.load_from_disk(str(d))
    except Exception as e:  # noqa: BLE001 - datasets/pyarrow raise many types; name the file that causes it
        rows = 0
        for f in files:
            rows += _arrow_rows(d / f["filename"], f"{where}: {name}/{f['filename']}")
        if rows == 0:
            raise UserInputError(f"{where}: the {name} split holds no rows; every split needs some (rebuild it "
                                 "with preprocess.py: a wider window, a lower --K or a larger category)")
        raise UserInputError(f"{where}: cannot load the {name} split ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); rebuild the dataset with preprocess.py")


def _arrow_rows(f: Path, what: str) -> int:
    """Rows of an Arrow stream file (as datasets writes them), or a one-line error if it is truncated/damaged."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(f)) as src:
            return pa.ipc.open_stream(src).read_all().num_rows
    except Exception as e:  # noqa: BLE001
        raise UserInputError(f"{what} is damaged or truncated ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); rebuild the dataset with preprocess.py")


def _type_ok(t, kind: str) -> bool:
    import pyarrow as pa

    if kind.startswith("list of "):
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _type_ok(t.value_type, kind[len("list of "):])
    return {"string": lambda: pa.types.is_string(t) or pa.types.is_large_string(t),
            "integer": lambda: pa.types.is_integer(t),
            "number": lambda: pa.types.is_integer(t) or pa.types.is_floating(t)}[kind]()


def _check_columns(ds, split: str, columns: dict[str, str], where: str, nullable: Sequence[str] = ()) -> None:
    schema = ds.data.schema
    for col, kind in columns.items():
        if col not in schema.names:
            raise UserInputError(f"{where}: the {split} split has no {col!r} column (has {schema.names}); not a "
                                 "dataset preprocess.py wrote, or damaged")
        if not _type_ok(schema.field(col).type, kind):
            raise UserInputError(f"{where}: column {split}.{col} is {schema.field(col).type}, expected {kind}")
        column = ds.data.column(col)
        if column.null_count and col not in nullable:
            raise UserInputError(f"{where}: column {split}.{col} holds {column.null_count} null value(s)")


def check_examples(ds, split: str, n_items: int, where: str) -> None:
    """The example columns every consumer reads exist with usable types and no nulls; item ids (targets and
    histories) are real items 1..n_items; the three history lists of a row have one length; interaction ids are
    unique. Arrow compute over the columns (no Python rows)."""
    import pyarrow.compute as pc

    _check_columns(ds, split, EXAMPLE_COLUMNS, where)
    table = ds.data
    for col in ("item_id", "history_item_id"):
        values = table.column(col)
        if col == "history_item_id":
            values = pc.list_flatten(values)
            if values.null_count:
                raise UserInputError(f"{where}: column {split}.{col} holds null item ids")
        if len(values) == 0:
            continue
        lo, hi = pc.min_max(values).values()
        lo, hi = lo.as_py(), hi.as_py()
        if lo < 1 or hi > n_items:
            bad = lo if lo < 1 else hi
            raise UserInputError(f"{where}: {split}.{col} holds item id {bad}, outside the catalogue 1..{n_items} of "
                                 "item_info; the examples and the item table do not belong together")
    lengths = pc.list_value_length(table.column("history_item_id"))
    for col in ("history_rating", "history_timestamp"):
        if not pc.all(pc.equal(lengths, pc.list_value_length(table.column(col)))).as_py():
            raise UserInputError(f"{where}: {split}.{col} and {split}.history_item_id have different lengths in some "
                                 "rows; the dataset is damaged")
    ids = table.column("interaction_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        raise UserInputError(f"{where}: {split}.interaction_id repeats values; every example needs its own id "
                             "(results are keyed by it)")


def item_info_by_id(info, where: str = "item_info"):
    """(item_info with row i = item id i, the layout found on disk). Ours stores it that way already; upstream
    R2ec stores ids 1..N in rows 0..N-1 and the pad item (id 0) last; any other permutation is reordered too.
    Ids that are not a permutation of 0..N-1 are an error: a silent misalignment would give items other items'
    text."""
    if "item_id" not in info.column_names:
        raise UserInputError(f"{where}: item_info has no item_id column")
    try:  # through Arrow: a Python object per row would cost seconds on a large catalogue
        column = info.data.column("item_id") if info._indices is None else info.with_format("arrow")["item_id"]
        ids = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)
    except (TypeError, ValueError, AttributeError) as e:
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
