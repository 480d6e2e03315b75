"""Amazon Reviews 2023 interactions, columnar: raw file -> integer-coded arrays -> filtered sequences.

The engine is pyarrow (CSV/JSON readers, hashing, string sorting) plus numpy on integer codes (sorting,
duplicates, K-core, windows); tools/benchmark_preprocess.py --compare_engines measured it against polars
and DuckDB (README, Performance). No Python object is made per interaction.

Decisions not fixed by the design:
- every field is read as a string: user and item ids are taken verbatim ("NA", "null", "0" are ids);
  an empty id (or a JSON null) is a missing id and the row is dropped and counted;
- a rating or timestamp is a decimal or scientific number, surrounding blanks allowed; anything else
  (text, "nan", "inf", empty) drops the row and is counted (bad_rating, bad_timestamp);
- a rating is a number of stars, 1..5 (RATING_RANGE, Amazon's scale; fractions such as 4.5 are kept): a number
  outside it (0, -1, 99, 1e308) drops the row, counted as rating_out_of_range (it would reach the prompts);
- timestamp units are decided per row (--timestamp_unit auto): a value below 1e11 is seconds (1e11 ms is
  1973-03-03, 1e11 s is the year 5138) and is multiplied by 1000; converted rows are counted. A timestamp
  outside 1970-01-01..9999-12-31 is an error naming the file and the row;
- each user's interactions are ordered by timestamp, ties by parent_asin; exact duplicate
  (user, item, timestamp) rows keep the first line of the file;
- user and item codes are ranks in sorted string order, so sorting codes sorts the strings.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainers.data.amazon_files import CORRUPT_ERRORS, ByteBar, corrupt_file_error, is_gzip, iter_lines, open_text
from foundation.errors import UserInputError
from foundation.files import loads_json

RATING_COLUMNS = ["user_id", "parent_asin", "rating", "timestamp"]
REPEAT_POLICIES = ("first_only", "drop_example", "keep")
TIMESTAMP_UNITS = ("auto", "s", "ms")
SECONDS_BELOW = 1e11
MAX_MS = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp() * 1000) + 999
# Reasons a raw row is dropped while reading, in the order they are checked (one reason per row).
READ_DROP_REASONS = ("malformed_line", "missing_user_id", "missing_item_id", "bad_rating", "rating_out_of_range",
                     "bad_timestamp")
RATING_RANGE = (1.0, 5.0)  # stars, both ends included
_NUMBER = r"^\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*$"


@dataclass
class Interactions:
    """Interactions as parallel arrays; `users`/`items` map codes back to the id strings."""
    user: np.ndarray      # int64 code: rank of the user id in sorted order
    item: np.ndarray      # int64 code: rank of the parent_asin in sorted order
    rating: np.ndarray    # float64
    ts: np.ndarray        # int64 milliseconds
    users: pa.Array       # sorted distinct user ids (string)
    items: pa.Array       # sorted distinct parent_asins (string)
    rows_read: int = 0
    dropped: Counter = field(default_factory=Counter)
    seconds_converted: int = 0

    def __len__(self) -> int:
        return len(self.user)

    def take(self, idx: np.ndarray) -> Interactions:
        return Interactions(self.user[idx], self.item[idx], self.rating[idx], self.ts[idx], self.users, self.items,
                            self.rows_read, self.dropped, self.seconds_converted)


# ----------------------------------------------------------------------------- reading

def _ranked_codes(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(code per row, sorted distinct strings): codes are ranks in sorted string order."""
    enc = pc.dictionary_encode(col)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks() if enc.num_chunks != 1 else enc.chunk(0)
    dictionary = enc.dictionary
    order = pc.sort_indices(dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return rank[idx], dictionary.take(pa.array(order))


def parse_numbers(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """float64 of each string; NaN where it is not a finite number (see the module docstring)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
        x = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    else:
        try:  # fast path: every value is a plain number ("inf"/"nan" become non-finite, dropped below)
            x = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            ok = pc.fill_null(pc.match_substring_regex(col, _NUMBER), False)
            clean = pc.if_else(ok, pc.utf8_trim_whitespace(col), pa.scalar("nan"))
            x = pc.cast(clean, pa.float64()).to_numpy(zero_copy_only=False)
    x = np.array(x, dtype=np.float64)
    x[~np.isfinite(x)] = np.nan
    return x


def _read_arrow_stream(path: Path, open_reader) -> pa.Table:
    """The table of a pyarrow streaming reader (open_reader(stream)) over the file, gunzipped when it ends
    in .gz, with a bar over the file's bytes. A corrupt or truncated file is a UserInputError naming it;
    other parse errors (pa.ArrowInvalid) are the caller's. Native Arrow files only: the reader's read-ahead
    thread must never call back into Python (a Python file object aborts the interpreter at exit after a
    read error)."""
    batches = []
    try:
        with pa.OSFile(str(path), "rb") as raw, ByteBar(raw, path, f"reading {path.name}") as bar:
            reader = open_reader(pa.CompressedInputStream(raw, "gzip") if is_gzip(path) else raw)
            for batch in reader:
                batches.append(batch)
                bar.update()
    except pa.ArrowInvalid as e:
        if any(w in str(e).lower() for w in ("gzip", "zlib", "compress")):
            raise corrupt_file_error(path, e) from None
        raise
    except CORRUPT_ERRORS as e:
        raise corrupt_file_error(path, e) from None
    return pa.Table.from_batches(batches, schema=reader.schema)


def _check_csv_header(path: Path) -> None:
    try:
        with open_text(path) as f:
            header = f.readline().strip()
    except CORRUPT_ERRORS as e:
        raise corrupt_file_error(path, e) from None
    cols = [c.strip() for c in header.split(",")]
    if not set(RATING_COLUMNS) <= set(cols):
        raise UserInputError(f"{path}: unknown column layout: found columns {cols[:8]}, expected header "
                             f"{','.join(RATING_COLUMNS)}")


def read_rating_csv(path: Path) -> tuple[dict[str, pa.ChunkedArray], int, int]:
    """The four columns of the rating-only CSV as strings, the number of data rows read and the number of
    malformed lines (wrong field count) skipped."""
    import pyarrow.csv as pacsv

    _check_csv_header(path)
    malformed = 0

    def skip(_row) -> str:
        nonlocal malformed
        malformed += 1
        return "skip"

    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in RATING_COLUMNS},
                                   include_columns=RATING_COLUMNS, strings_can_be_null=False, null_values=[],
                                   quoted_strings_can_be_null=False)
    try:
        table = _read_arrow_stream(path, lambda stream: pacsv.open_csv(
            stream, read_options=pacsv.ReadOptions(block_size=8 << 20),
            parse_options=pacsv.ParseOptions(invalid_row_handler=skip), convert_options=convert))
    except pa.ArrowInvalid as e:
        raise UserInputError(f"{path}: cannot parse CSV ({str(e).splitlines()[0]})") from None
    cols = {c: table[c] for c in RATING_COLUMNS}
    return cols, table.num_rows + malformed, malformed


def _review_columns_python(path: Path) -> tuple[dict[str, pa.Array], int, int]:
    """Line-by-line reader for review files whose JSON types vary (the typed reader refuses them)."""
    ids: dict[str, list] = {"user_id": [], "parent_asin": []}
    nums: dict[str, list] = {"rating": [], "timestamp": []}
    rows = malformed = 0
    for n, line in iter_lines(path, f"reading {path.name} (mixed JSON types: line by line)"):
        if not line.strip():
            continue
        rows += 1
        try:
            r = loads_json(line)
        except ValueError:
            r = None
        if not isinstance(r, dict):
            malformed += 1
            continue
        uid = r.get("user_id")
        asin = r.get("parent_asin") or r.get("asin")
        ids["user_id"].append(uid if isinstance(uid, str) else ("" if uid is None else json.dumps(uid)))
        ids["parent_asin"].append(asin if isinstance(asin, str) else ("" if asin is None else json.dumps(asin)))
        for k, values in nums.items():
            v = r.get(k)
            values.append(str(v) if isinstance(v, (int, float, str)) and not isinstance(v, bool) else "")
    cols = {k: pa.array(v, pa.string()) for k, v in {**ids, **nums}.items()}
    return cols, rows, malformed


def read_reviews_jsonl(path: Path) -> tuple[dict[str, pa.Array], int, int]:
    """user_id, parent_asin (asin when parent_asin is missing), rating, timestamp of the raw review JSONL."""
    import pyarrow.json as pajson

    first = None
    try:
        with open_text(path) as f:
            for line in f:
                if line.strip():
                    first = loads_json(line)
                    break
    except CORRUPT_ERRORS as e:
        raise corrupt_file_error(path, e) from None
    except ValueError as e:
        raise UserInputError(f"{path}: the first line is not JSON ({e})") from None
    if not isinstance(first, dict) or any(c not in first for c in ("user_id", "rating", "timestamp")) or (
            "parent_asin" not in first and "asin" not in first):
        found = sorted(first)[:10] if isinstance(first, dict) else type(first).__name__
        raise UserInputError(f"{path}: unknown column layout: found fields {found}, expected "
                             f"user_id, parent_asin, rating, timestamp")
    schema = pa.schema([("user_id", pa.string()), ("parent_asin", pa.string()), ("asin", pa.string()),
                        ("rating", pa.float64()), ("timestamp", pa.float64())])
    try:
        t = _read_arrow_stream(path, lambda stream: pajson.open_json(
            stream, read_options=pajson.ReadOptions(block_size=8 << 20),
            parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")))
    except pa.ArrowInvalid:
        return _review_columns_python(path)  # a field changed type (e.g. "5" next to 5.0): slow but exact
    parent = pc.fill_null(t["parent_asin"], "")
    asin = pc.if_else(pc.equal(parent, ""), pc.fill_null(t["asin"], ""), parent)
    cols = {"user_id": pc.fill_null(t["user_id"], ""), "parent_asin": asin,
            "rating": t["rating"], "timestamp": t["timestamp"]}
    return cols, t.num_rows, 0


def _row_error(path: Path, row: int, what: str) -> UserInputError:
    return UserInputError(f"{path}: data row {row + 1}: {what}")


def load_interactions(path: Path, reviews_jsonl: bool, timestamp_unit: str = "auto") -> Interactions:
    """Read a rating CSV or review JSONL into coded arrays; drop (and count) rows without valid ids and
    numbers; convert timestamps to ms (see the module docstring)."""
    path = Path(path)
    cols, rows, malformed = read_reviews_jsonl(path) if reviews_jsonl else read_rating_csv(path)
    user, users = _ranked_codes(cols["user_id"])
    item, items = _ranked_codes(cols["parent_asin"])
    rating = parse_numbers(cols["rating"])
    ts = parse_numbers(cols["timestamp"])
    dropped = Counter({"malformed_line": malformed})
    keep = np.ones(len(user), dtype=bool)
    for reason, bad in (("missing_user_id", _empty_code(users, user)), ("missing_item_id", _empty_code(items, item)),
                        ("bad_rating", np.isnan(rating)),
                        ("rating_out_of_range", (rating < RATING_RANGE[0]) | (rating > RATING_RANGE[1])),
                        ("bad_timestamp", np.isnan(ts))):
        bad = bad & keep
        dropped[reason] += int(bad.sum())
        keep &= ~bad
    idx = np.flatnonzero(keep)
    ts = ts[idx]
    if timestamp_unit == "auto":
        secs = ts < SECONDS_BELOW
    else:
        secs = np.full(len(ts), timestamp_unit == "s")
    ts = np.where(secs, ts * 1000.0, ts)
    out_of_range = (ts < 0) | (ts > MAX_MS)
    if out_of_range.any():
        k = int(np.flatnonzero(out_of_range)[0])
        raw_v = cols["timestamp"][int(idx[k])].as_py()
        unit = "seconds" if secs[k] else "milliseconds"
        raise _row_error(path, int(idx[k]), f"timestamp {raw_v} read as {unit} is outside 1970-01-01..9999-12-31 "
                         f"({int(out_of_range.sum())} such rows); fix the file or pass --timestamp_unit")
    return Interactions(user[idx], item[idx], rating[idx], np.trunc(ts).astype(np.int64), users, items,
                        rows_read=rows, dropped=dropped, seconds_converted=int(secs.sum()))


def _empty_code(dictionary: pa.Array, codes: np.ndarray) -> np.ndarray:
    """Rows whose id is the empty string."""
    empty = np.flatnonzero(pc.equal(dictionary, "").to_numpy(zero_copy_only=False))
    if not len(empty):
        return np.zeros(len(codes), dtype=bool)
    return codes == int(empty[0])


# ----------------------------------------------------------------------------- ordering and filters

def present_codes(codes: np.ndarray, n: int) -> np.ndarray:
    """The distinct codes that occur, sorted (so in sorted string order)."""
    return np.flatnonzero(np.bincount(codes, minlength=n))


def sort_order(x: Interactions) -> np.ndarray:
    """Stable order by (user, timestamp, item): one argsort of a packed int64 key when the three fit
    (twice as fast as lexsort at 10M rows), else lexsort."""
    ts_values, ts_rank = np.unique(x.ts, return_inverse=True)
    if len(x.users) * len(ts_values) * len(x.items) < 2 ** 63:
        return np.argsort((x.user * len(ts_values) + ts_rank) * len(x.items) + x.item, kind="stable")
    return np.lexsort((x.item, x.ts, x.user))


def sort_and_dedupe(x: Interactions) -> Interactions:
    """Order by (user, timestamp, parent_asin); drop exact duplicate rows (the first line is kept)."""
    x = x.take(sort_order(x))  # stable: among duplicates the earliest line comes first
    dup = np.zeros(len(x), dtype=bool)
    if len(x) > 1:
        dup[1:] = (x.user[1:] == x.user[:-1]) & (x.ts[1:] == x.ts[:-1]) & (x.item[1:] == x.item[:-1])
    x.dropped["duplicate"] += int(dup.sum())
    return x.take(np.flatnonzero(~dup)) if dup.any() else x


def kcore_mask(user: np.ndarray, item: np.ndarray, K: int, n_users: int, n_items: int) -> np.ndarray:
    """Rows kept by the iterated K-core: every remaining user and item has >= K rows (K <= 1: all)."""
    keep = np.ones(len(user), dtype=bool)
    if K <= 1:
        return keep
    while True:
        idx = np.flatnonzero(keep)
        uc = np.bincount(user[idx], minlength=n_users)
        ic = np.bincount(item[idx], minlength=n_items)
        bad = (uc[user[idx]] < K) | (ic[item[idx]] < K)
        if not bad.any():
            return keep
        keep[idx[bad]] = False


def first_purchase_mask(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """For rows sorted by (user, time): True on the first row of each (user, item) pair."""
    key = user * np.int64(n_items) + item
    _, first = np.unique(key, return_index=True)
    keep = np.zeros(len(key), dtype=bool)
    keep[first] = True
    return keep


def month_start_ms(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp() * 1000)


def month_end_ms(year: int, month: int) -> int:
    """Last millisecond of the month (windows include whole months)."""
    y, m = (year + 1, 1) if month == 12 else (year, month + 1)
    return month_start_ms(y, m) - 1


def shift_months(year: int, month: int, delta: int) -> tuple[int, int]:
    k = year * 12 + (month - 1) + delta
    return k // 12, k % 12 + 1


def ms_to_date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


@dataclass
class WindowResult:
    x: Interactions
    st: tuple[int, int]
    extensions: int
    history: list[dict]
    dropped: dict[str, int]   # out_of_window, repeat_purchase, kcore (rows of the final attempt)


def select_window(x: Interactions, st: tuple[int, int], ed: tuple[int, int], K: int, min_items: int,
                  repeat_policy: str = "keep") -> WindowResult:
    """Rows in [st, ed] (whole months); with first_only only each user's first purchase of an item;
    K-cored; the start moves back 3 months while fewer than min_items items remain, stopping at January
    of the data's first year. Raises if [st, ed] holds no row. x must be sorted by (user, time)."""
    if not len(x):
        raise UserInputError("no reviews left after keeping reviews of valid items")
    first_year = datetime.fromtimestamp(int(x.ts.min()) / 1000, tz=timezone.utc).year
    hi = month_end_ms(*ed)
    n_users, n_items = len(x.users), len(x.items)
    extensions, history = 0, []
    while True:
        lo = month_start_ms(*st)
        win = np.flatnonzero((x.ts >= lo) & (x.ts <= hi))
        if extensions == 0 and not len(win):
            raise UserInputError(
                f"empty time window: no reviews between {st[0]}-{st[1]:02d} and {ed[0]}-{ed[1]:02d} "
                f"(--st_year/--st_month/--ed_year/--ed_month); the data spans {ms_to_date(int(x.ts.min()))} "
                f"to {ms_to_date(int(x.ts.max()))}")
        rows = win
        if repeat_policy == "first_only":
            rows = win[first_purchase_mask(x.user[win], x.item[win], n_items)]
        core = rows[kcore_mask(x.user[rows], x.item[rows], K, n_users, n_items)]
        n_core_items = int(np.count_nonzero(np.bincount(x.item[core], minlength=n_items)))
        attempt = {"start": f"{st[0]}-{st[1]:02d}", "reviews": len(win), "after_kcore": len(core),
                   "items": n_core_items}
        if repeat_policy == "first_only":
            attempt["repeat_purchases_removed"] = int(len(win) - len(rows))
        history.append(attempt)
        print(f"window {st[0]}-{st[1]:02d}..{ed[0]}-{ed[1]:02d}: {len(win)} reviews, "
              f"{len(core)} after {K}-core, {n_core_items} items")
        if n_core_items >= min_items or st <= (first_year, 1):
            if n_core_items < min_items:
                print(f"warning: only {n_core_items} items (< --min_items {min_items}) even from the first "
                      f"year of the data ({first_year}); keeping them")
            dropped = {"out_of_window": int(len(x) - len(win)), "repeat_purchase": int(len(win) - len(rows)),
                       "kcore": int(len(rows) - len(core))}
            return WindowResult(x.take(core), st, extensions, history, dropped)
        st = max(shift_months(*st, -3), (first_year, 1))
        extensions += 1
