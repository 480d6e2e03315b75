"""Amazon Reviews 2023 -> our processed DatasetDict (DESIGN.md section 2).

Raw files are the host's rating-only 5-core CSV (`user_id,parent_asin,rating,timestamp`,
ms) or the raw review JSONL, plus the metadata JSONL. preprocess.py is the front end;
everything reusable lives here. Bad input raises `UserInputError` with a one-line message.

Decisions not fixed by the design:
- titles are cleaned (html unescape, tags -> space, whitespace collapsed) and the item is
  dropped only if the cleaned title is empty or longer than 20 words;
- a price is valid if it is a finite non-negative number or a string that parses as one
  after removing "$" and ","; "None", "—", null are invalid;
- exact duplicate (user, item, timestamp) rows are removed before windowing;
- timestamps below 1e11 are taken as seconds and converted to ms;
- item ids are assigned in sorted parent_asin order over the items left after K-core;
- within one user, ties in timestamp are ordered by parent_asin.
"""
from __future__ import annotations

import gzip
import html
import json
import math
import os
import re
import shutil
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from trainers.foundation.errors import UserInputError

HOST = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023"
RATING_COLUMNS = ["user_id", "parent_asin", "rating", "timestamp"]
MAX_TITLE_WORDS = 20
PAD_ASIN, PAD_TITLE = "pad_asin", "pad_title"
EXAMPLE_COLUMNS = [
    "user_id", "item_asins", "item_asin", "history_item_id", "item_id", "history_item_title",
    "item_title", "history_rating", "rating", "history_timestamp", "timestamp", "interaction_id",
]
ITEM_COLUMNS = [
    "parent_asin", "item_id", "title", "main_category", "average_rating", "rating_number",
    "features", "description", "price", "store", "categories", "details",
]
_TAG_RE = re.compile(r"<[^>]*>")
_CORRUPT = (OSError, EOFError, zlib.error, UnicodeDecodeError)


# ----------------------------------------------------------------------------- files

def rating_url(category: str) -> str:
    return f"{HOST}/benchmark/5core/rating_only/{category}.csv.gz"


def meta_url(category: str) -> str:
    return f"{HOST}/raw/meta_categories/meta_{category}.jsonl.gz"


def download(url: str, dest: Path, chunk: int = 1 << 20, timeout: float = 60.0) -> Path:
    """Stream url to dest with a progress bar; resumes from `dest.part`; no-op if dest exists."""
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "our-rec-preprocess"})
    if done:
        req.add_header("Range", f"bytes={done}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and done:  # .part already complete
            part.rename(dest)
            return dest
        raise UserInputError(f"download of {url} failed: HTTP {e.code}; download it by hand and pass --raw_dir")
    except (urllib.error.URLError, OSError) as e:
        raise UserInputError(f"download of {url} failed ({e}); download it by hand and pass --raw_dir")
    with resp:
        if done and resp.status != 206:  # server ignored Range: start over
            done = 0
        length = resp.headers.get("Content-Length")
        total = int(length) + done if length else None
        with open(part, "ab" if done else "wb") as f, tqdm(
            total=total, initial=done, unit="B", unit_scale=True, desc=dest.name
        ) as bar:
            while True:
                buf = resp.read(chunk)
                if not buf:
                    break
                f.write(buf)
                bar.update(len(buf))
    part.rename(dest)
    return dest


@dataclass
class RawFiles:
    meta: Path
    ratings: Path | None = None
    reviews: Path | None = None

    @property
    def interactions(self) -> Path:
        return self.ratings if self.ratings is not None else self.reviews  # type: ignore[return-value]


def _first(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def candidate_paths(raw_dir: Path, category: str) -> dict[str, list[Path]]:
    """Where each raw file may live: flat in raw_dir or mirrored like the file host."""
    r = Path(raw_dir)
    return {
        "ratings": [r / f"{category}.csv.gz", r / f"{category}.csv",
                    r / "benchmark" / "5core" / "rating_only" / f"{category}.csv.gz",
                    r / "rating_only" / f"{category}.csv.gz"],
        "reviews": [r / f"{category}.jsonl.gz", r / f"{category}.jsonl",
                    r / "raw" / "review_categories" / f"{category}.jsonl.gz",
                    r / "raw" / "review_categories" / f"{category}.jsonl",
                    r / "review_categories" / f"{category}.jsonl.gz"],
        "meta": [r / f"meta_{category}.jsonl.gz", r / f"meta_{category}.jsonl",
                 r / "raw" / "meta_categories" / f"meta_{category}.jsonl.gz",
                 r / "raw" / "meta_categories" / f"meta_{category}.jsonl",
                 r / "meta_categories" / f"meta_{category}.jsonl.gz"],
    }


def locate_raw_files(raw_dir: str | Path, category: str, allow_download: bool = False) -> RawFiles:
    """Find the category's files under raw_dir (any layout); download missing ones if allowed."""
    raw_dir = Path(raw_dir)
    cand = candidate_paths(raw_dir, category)
    ratings, reviews, meta = (_first(cand[k]) for k in ("ratings", "reviews", "meta"))
    if allow_download:
        if ratings is None and reviews is None:
            ratings = download(rating_url(category), cand["ratings"][0])
        if meta is None:
            meta = download(meta_url(category), cand["meta"][0])
    if ratings is None and reviews is None:
        raise UserInputError(
            f"no rating file for {category} in {raw_dir}: expected {cand['ratings'][0]} "
            f"(or {cand['ratings'][2]}, or review file {cand['reviews'][0]}); "
            f"pass the right --raw_dir or omit --raw_dir to download it")
    if meta is None:
        raise UserInputError(
            f"no metadata file for {category} in {raw_dir}: expected {cand['meta'][0]} "
            f"(or {cand['meta'][2]}); pass the right --raw_dir or omit --raw_dir to download it")
    return RawFiles(meta=meta, ratings=ratings, reviews=None if ratings is not None else reviews)


def _open_text(path: Path):
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def _corrupt(path: Path, e: Exception) -> UserInputError:
    return UserInputError(f"cannot read {path}: corrupt or truncated file ({type(e).__name__}: {e}); "
                          f"delete it and download it again")


def _iter_json_lines(path: Path, unit: str):
    """(0-based line number, parsed value) of every non-blank line of a (gzipped) JSONL, with a tqdm bar.
    A line that is not JSON, or a corrupt/truncated file, is a UserInputError naming the file."""
    try:
        with _open_text(path) as f:
            for n, line in enumerate(tqdm(f, desc=f"reading {path.name}", unit=unit, mininterval=2)):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserInputError(f"{path}: line {n + 1} is not JSON ({e})") from None
                yield n, value
    except _CORRUPT as e:
        raise _corrupt(path, e) from None


# ----------------------------------------------------------------------------- interactions

def _normalise_interactions(df: pd.DataFrame) -> pd.DataFrame:
    df = df.dropna(subset=RATING_COLUMNS)
    out = pd.DataFrame({
        "user_id": df["user_id"].astype(str).to_numpy(dtype=object),
        "parent_asin": df["parent_asin"].astype(str).to_numpy(dtype=object),
        "rating": pd.to_numeric(df["rating"], errors="coerce").to_numpy(dtype=np.float64),
        "timestamp": pd.to_numeric(df["timestamp"], errors="coerce").to_numpy(dtype=np.float64),
    })
    out = out[np.isfinite(out["rating"]) & np.isfinite(out["timestamp"])]
    ts = out["timestamp"].to_numpy()
    if len(ts) and ts.max() < 1e11:  # seconds, not ms
        ts = ts * 1000
    out["timestamp"] = ts.astype(np.int64)
    return out.reset_index(drop=True)


def load_ratings_csv(path: str | Path) -> pd.DataFrame:
    """Read the rating-only CSV (header user_id,parent_asin,rating,timestamp)."""
    path = Path(path)
    try:
        with _open_text(path) as f:
            header = f.readline().strip()
        cols = [c.strip() for c in header.split(",")]
        if not set(RATING_COLUMNS) <= set(cols):
            raise UserInputError(
                f"{path}: unknown column layout: found columns {cols[:8]}, expected header "
                f"{','.join(RATING_COLUMNS)}")
        df = pd.read_csv(path, usecols=RATING_COLUMNS, dtype={"user_id": str, "parent_asin": str},
                         compression="gzip" if str(path).endswith(".gz") else None)
    except UserInputError:
        raise
    except _CORRUPT as e:
        raise _corrupt(path, e) from None
    except (pd.errors.ParserError, ValueError) as e:
        raise UserInputError(f"{path}: cannot parse CSV ({e})") from None
    return _normalise_interactions(df)


def load_reviews_jsonl(path: str | Path) -> pd.DataFrame:
    """Read the raw review JSONL (fields rating, parent_asin, user_id, timestamp, ...)."""
    path = Path(path)
    rows: dict[str, list] = {c: [] for c in RATING_COLUMNS}
    for n, r in _iter_json_lines(path, " reviews"):
        if n == 0:
            missing = [c for c in ("user_id", "rating", "timestamp") if c not in r]
            if missing or ("parent_asin" not in r and "asin" not in r):
                raise UserInputError(
                    f"{path}: unknown column layout: found fields {sorted(r)[:10]}, expected "
                    f"user_id, parent_asin, rating, timestamp")
        rows["user_id"].append(r.get("user_id"))
        rows["parent_asin"].append(r.get("parent_asin") or r.get("asin"))
        rows["rating"].append(r.get("rating"))
        rows["timestamp"].append(r.get("timestamp"))
    return _normalise_interactions(pd.DataFrame(rows))


def load_interactions(files: RawFiles) -> pd.DataFrame:
    if files.ratings is not None:
        return load_ratings_csv(files.ratings)
    return load_reviews_jsonl(files.interactions)


# ----------------------------------------------------------------------------- items

def clean_text(s) -> str:
    """html unescape, strip tags, collapse whitespace; non-strings become ''."""
    if not isinstance(s, str):
        return ""
    s = html.unescape(html.unescape(s))  # some fields are double-escaped (&amp;amp;)
    s = _TAG_RE.sub(" ", s)
    return " ".join(s.split())


def parse_price(v) -> float | None:
    """A float price, or None when missing/invalid ("None", "—", NaN, negative)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        x = float(v)
    elif isinstance(v, str):
        try:
            x = float(v.replace("$", "").replace(",", "").strip())
        except ValueError:
            return None
    else:
        return None
    return x if math.isfinite(x) and x >= 0 else None


def valid_title(raw) -> str | None:
    """The cleaned title, or None if missing/empty/over MAX_TITLE_WORDS words."""
    t = clean_text(raw)
    if not t or len(t.split()) > MAX_TITLE_WORDS:
        return None
    return t


def _str_list(v) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        return []
    return [c for c in (clean_text(x) for x in v) if c]


def _opt_float(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _opt_int(v) -> int | None:
    x = _opt_float(v)
    return int(x) if x is not None else None


def load_items(path: str | Path, keep_items_without_price: bool = False) -> tuple[dict[str, dict], dict]:
    """Read the metadata JSONL; return ({parent_asin: cleaned row}, drop counts)."""
    path = Path(path)
    items: dict[str, dict] = {}
    counts = {"meta_rows": 0, "bad_title": 0, "bad_price": 0, "no_asin": 0}
    for n, m in _iter_json_lines(path, " items"):
        if not isinstance(m, dict) or (n == 0 and "title" not in m):
            found = sorted(m)[:10] if isinstance(m, dict) else type(m).__name__
            raise UserInputError(f"{path}: unknown metadata layout: found {found}, expected "
                                 f"parent_asin, title, price, ... (Amazon Reviews 2023 meta)")
        counts["meta_rows"] += 1
        asin = m.get("parent_asin") or m.get("asin")
        if not isinstance(asin, str) or not asin:
            counts["no_asin"] += 1
            continue
        title = valid_title(m.get("title"))
        if title is None:
            counts["bad_title"] += 1
            continue
        price = parse_price(m.get("price"))
        if price is None and not keep_items_without_price:
            counts["bad_price"] += 1
            continue
        details = m.get("details")
        items[asin] = {
            "parent_asin": asin,
            "title": title,
            "main_category": clean_text(m.get("main_category")),
            "average_rating": _opt_float(m.get("average_rating")),
            "rating_number": _opt_int(m.get("rating_number")),
            "features": _str_list(m.get("features")),
            "description": _str_list(m.get("description")),
            "price": price,
            "store": clean_text(m.get("store")),
            "categories": _str_list(m.get("categories")),
            "details": json.dumps(details if isinstance(details, dict) else {}, ensure_ascii=False),
        }
    counts["kept"] = len(items)
    return items, counts


# ----------------------------------------------------------------------------- filtering

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


def dedupe(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop_duplicates(subset=["user_id", "parent_asin", "timestamp"]).reset_index(drop=True)


def kcore(df: pd.DataFrame, K: int) -> pd.DataFrame:
    """Iterate until every user and every item has >= K interactions (K <= 1: unchanged)."""
    if K <= 1:
        return df
    while True:
        uc = df["user_id"].map(df["user_id"].value_counts())
        ic = df["parent_asin"].map(df["parent_asin"].value_counts())
        keep = (uc >= K) & (ic >= K)
        if keep.all():
            return df
        df = df[keep.to_numpy()].reset_index(drop=True)


@dataclass
class WindowResult:
    df: pd.DataFrame
    st: tuple[int, int]
    extensions: int
    history: list[dict] = field(default_factory=list)


def select_window(df: pd.DataFrame, st: tuple[int, int], ed: tuple[int, int], K: int,
                  min_items: int) -> WindowResult:
    """Reviews in [st, ed] (whole months), K-cored; move st back 3 months while too few items.

    Stops at January of the first year present in df. Raises if [st, ed] holds no review.
    """
    if df.empty:
        raise UserInputError("no reviews left after keeping reviews of valid items")
    ts = df["timestamp"].to_numpy()
    first_year = datetime.fromtimestamp(ts.min() / 1000, tz=timezone.utc).year
    hi = month_end_ms(*ed)
    extensions, history = 0, []
    while True:
        lo = month_start_ms(*st)
        win = df[(ts >= lo) & (ts <= hi)]
        if extensions == 0 and win.empty:
            raise UserInputError(
                f"empty time window: no reviews between {st[0]}-{st[1]:02d} and {ed[0]}-{ed[1]:02d} "
                f"(--st_year/--st_month/--ed_year/--ed_month); the data spans {ms_to_date(ts.min())} "
                f"to {ms_to_date(ts.max())}")
        core = kcore(win, K)
        n_items = core["parent_asin"].nunique()
        history.append({"start": f"{st[0]}-{st[1]:02d}", "reviews": int(len(win)),
                        "after_kcore": int(len(core)), "items": int(n_items)})
        print(f"window {st[0]}-{st[1]:02d}..{ed[0]}-{ed[1]:02d}: {len(win)} reviews, "
              f"{len(core)} after {K}-core, {n_items} items")
        if n_items >= min_items or st <= (first_year, 1):
            if n_items < min_items:
                print(f"warning: only {n_items} items (< --min_items {min_items}) even from the first "
                      f"year of the data ({first_year}); keeping them")
            return WindowResult(core.reset_index(drop=True), st, extensions, history)
        st = max(shift_months(*st, -3), (first_year, 1))
        extensions += 1


# ----------------------------------------------------------------------------- examples

def build_examples(df: pd.DataFrame, item_ids: dict[str, int], titles: dict[str, str],
                   window_size: int) -> dict[str, list]:
    """One example per interaction after each user's first; sorted by target time, with ids."""
    df = df.sort_values(["user_id", "timestamp", "parent_asin"], kind="stable").reset_index(drop=True)
    users = df["user_id"].to_numpy()
    asins = df["parent_asin"].to_numpy()
    ratings = df["rating"].to_numpy(dtype=np.float64)
    tss = df["timestamp"].to_numpy(dtype=np.int64)
    ids = np.array([item_ids[a] for a in asins], dtype=np.int64)
    tit = [titles[a] for a in asins]
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    targets = []  # (row index, start of user's segment)
    for a, b in zip(bounds[:-1], bounds[1:]):
        targets.extend((j, a) for j in range(a + 1, b))
    tgt = np.array([j for j, _ in targets], dtype=np.int64)
    # Chronological order of examples; ties by user then position (deterministic).
    order = np.lexsort((tgt, users[tgt].astype(str), tss[tgt])) if len(tgt) else np.array([], dtype=np.int64)
    cols: dict[str, list] = {c: [] for c in EXAMPLE_COLUMNS}
    for n, k in enumerate(tqdm(order, desc="building examples", unit=" ex", mininterval=2)):
        j, a = targets[k]
        h = slice(max(a, j - window_size), j)
        cols["user_id"].append(str(users[j]))
        cols["item_asins"].append([str(x) for x in asins[h]])
        cols["item_asin"].append(str(asins[j]))
        cols["history_item_id"].append(ids[h].tolist())
        cols["item_id"].append(int(ids[j]))
        cols["history_item_title"].append(tit[h])
        cols["item_title"].append(tit[j])
        cols["history_rating"].append(ratings[h].tolist())
        cols["rating"].append(float(ratings[j]))
        cols["history_timestamp"].append(tss[h].tolist())
        cols["timestamp"].append(int(tss[j]))
        cols["interaction_id"].append(n)
    return cols


def split_sizes(n: int) -> tuple[int, int, int]:
    n_train, n_valid = int(n * 0.8), int(n * 0.1)
    return n_train, n_valid, n - n_train - n_valid


def _features():
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


def pad_item() -> dict:
    return {"parent_asin": PAD_ASIN, "item_id": 0, "title": PAD_TITLE, "main_category": "",
            "average_rating": None, "rating_number": None, "features": [], "description": [],
            "price": None, "store": "", "categories": [], "details": "{}"}


# ----------------------------------------------------------------------------- pipeline

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


def output_dir(cfg: PreprocessConfig) -> Path:
    return Path(cfg.data_root_dir) / f"{cfg.category}_{cfg.K}_{cfg.st_year}-{cfg.st_month}-{cfg.ed_year}-{cfg.ed_month}"


def validate_config(cfg: PreprocessConfig) -> None:
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
    if not re.fullmatch(r"[A-Za-z0-9_]+", cfg.category):
        raise UserInputError(f"--category {cfg.category!r}: expected a name like Video_Games")


def run_preprocess(cfg: PreprocessConfig) -> tuple[Path, dict]:
    """The whole pipeline; returns (output dir, stats). Raises UserInputError on bad input."""
    validate_config(cfg)
    if cfg.raw_dir is not None:
        if not Path(cfg.raw_dir).is_dir():
            raise UserInputError(f"--raw_dir {cfg.raw_dir}: not a directory")
        files = locate_raw_files(cfg.raw_dir, cfg.category, allow_download=False)
    else:
        files = locate_raw_files(Path(cfg.data_root_dir) / "raw", cfg.category, allow_download=True)
    print(f"raw files: interactions={files.interactions} meta={files.meta}")

    raw = load_interactions(files)  # first: a bad rating file fails before the long metadata read
    items, item_counts = load_items(files.meta, cfg.keep_items_without_price)
    print(f"items: {item_counts['meta_rows']} in metadata, {item_counts['kept']} kept "
          f"({item_counts['bad_title']} bad title, {item_counts['bad_price']} no valid price)")
    n_raw = len(raw)
    raw = dedupe(raw)
    n_dedup = len(raw)
    raw = raw[raw["parent_asin"].isin(items.keys()).to_numpy()].reset_index(drop=True)
    print(f"reviews: {n_raw} read, {n_raw - n_dedup} duplicates removed, {len(raw)} of kept items")

    win = select_window(raw, (cfg.st_year, cfg.st_month), (cfg.ed_year, cfg.ed_month), cfg.K, cfg.min_items)
    df = win.df
    if df.empty:
        raise UserInputError(f"no interactions left after the {cfg.K}-core filter; lower --K or widen the window")

    kept_asins = sorted(df["parent_asin"].unique())
    item_ids = {a: i + 1 for i, a in enumerate(kept_asins)}
    titles = {a: items[a]["title"] for a in kept_asins}
    cols = build_examples(df, item_ids, titles, cfg.window_size)
    n = len(cols["interaction_id"])
    if n == 0:
        raise UserInputError("no examples: every user has a single interaction; lower --K or widen the window")
    n_train, n_valid, n_test = split_sizes(n)
    from datasets import Dataset, DatasetDict

    ex_feat, info_feat = _features()
    full = Dataset.from_dict(cols, features=ex_feat)
    info_rows = [pad_item()] + [{**items[a], "item_id": item_ids[a]} for a in kept_asins]
    info = Dataset.from_dict({c: [r[c] for r in info_rows] for c in ITEM_COLUMNS}, features=info_feat)
    dd = DatasetDict({
        "train": full.select(range(0, n_train)),
        "valid": full.select(range(n_train, n_train + n_valid)),
        "test": full.select(range(n_train + n_valid, n)),
        "item_info": info,
    })

    out = output_dir(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Assemble in a hidden sibling dir and rename into place: a kill mid-save never leaves a half dataset
    # under the real name (and never destroys the previous one before the new one is complete).
    tmp = out.parent / f".tmp-{out.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    dd.save_to_disk(str(tmp))

    ts = df["timestamp"].to_numpy()
    ex_ts = np.asarray(cols["timestamp"], dtype=np.int64)

    def rng_of(a: int, b: int) -> list[str] | None:
        return [ms_to_date(int(ex_ts[a])), ms_to_date(int(ex_ts[b - 1]))] if b > a else None

    n_users, n_items = int(df["user_id"].nunique()), len(kept_asins)
    stats = {
        "category": cfg.category, "K": cfg.K, "window_size": cfg.window_size,
        "users": n_users, "items": n_items, "interactions": int(len(df)),
        "density": float(len(df) / (n_users * n_items)) if n_users and n_items else 0.0,
        "requested_window": {"st_year": cfg.st_year, "st_month": cfg.st_month,
                             "ed_year": cfg.ed_year, "ed_month": cfg.ed_month},
        "used_window": {"st_year": win.st[0], "st_month": win.st[1],
                        "ed_year": cfg.ed_year, "ed_month": cfg.ed_month},
        "start_extensions": win.extensions,
        "window_attempts": win.history,
        "date_range": [ms_to_date(int(ts.min())), ms_to_date(int(ts.max()))],
        "examples": n,
        "splits": {"train": n_train, "valid": n_valid, "test": n_test},
        "split_date_ranges": {"train": rng_of(0, n_train), "valid": rng_of(n_train, n_train + n_valid),
                              "test": rng_of(n_train + n_valid, n)},
        "min_items": cfg.min_items, "keep_items_without_price": cfg.keep_items_without_price,
        "raw_files": {"interactions": str(files.interactions), "meta": str(files.meta)},
        "raw_reviews": n_raw, "duplicates_removed": n_raw - n_dedup, "item_filter": item_counts,
    }
    with open(tmp / "stats.json", "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2)
    if out.exists():
        old = out.parent / f".old-{out.name}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out)
    return out, stats


def format_summary(out: Path, stats: dict) -> str:
    uw, s = stats["used_window"], stats["splits"]
    return "\n".join([
        f"saved {out}",
        f"  users {stats['users']}  items {stats['items']}  interactions {stats['interactions']}  "
        f"density {stats['density']:.5f}",
        f"  window used {uw['st_year']}-{uw['st_month']:02d}..{uw['ed_year']}-{uw['ed_month']:02d} "
        f"({stats['start_extensions']} start extension(s)); data {stats['date_range'][0]}..{stats['date_range'][1]}",
        f"  examples train {s['train']}  valid {s['valid']}  test {s['test']}",
    ])
