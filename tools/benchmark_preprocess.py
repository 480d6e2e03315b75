"""Scaling benchmark of preprocess.py on synthetic Amazon Reviews 2023 raw files of N ratings.

For each N (--sizes) it writes, under --work_dir (default a fresh folder in /tmp, removed at the end
unless --keep_files), a gzipped rating-only CSV and a gzipped metadata JSONL in the exact Amazon Reviews
2023 formats, shaped like a 5-core category: every user has >= 5 ratings with a heavy tail (~10.7 per
user on average, the issue's 3M-rating file had 280k users), item popularity is Zipf, ~1% of
(user, item) pairs are bought again later, ~0.5% of lines are exact duplicates, timestamps span
2012..2023 (the default window 2017-01..2023-12 drops the older ones), and every item has a metadata line
(title, features, description, price, images, details, ...), a few of them messy (html, missing price).
Then it runs the real `preprocess.py` in a child process per N and prints wall time, the child's peak
RSS (ru_maxrss from wait4) and examples/s.

    python tools/benchmark_preprocess.py --sizes 1M 3M 10M
    python tools/benchmark_preprocess.py --sizes 200k --compare_engines     # pyarrow vs polars vs DuckDB

--compare_engines times the relational core (read the gzipped CSV, parse, drop exact duplicates, keep
reviews of items with metadata, time window, 5-core, sort each user's interactions, history windows as
list columns, examples in target-time order) with each engine that is installed, each in its own child
process on the same file, so the choice of engine in trainers/data/amazon_engine.py is a measured one.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CATEGORY = "Video_Games"
_ALNUM = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", dtype=np.uint8)
WORDS = ("Ultimate Deluxe Classic Edition Legends Quest World Arena Saga Tales Kingdom Rush Heroes Empire Origins "
         "Frontier Racing Puzzle Strategy Horror Sports Fantasy Shooter Farming Rhythm Stealth Pirate Space Turbo "
         "Super Mega Royal Hyper Golden Silent Crystal Shadow Iron Neon Wild Lost Final Grand Controller Headset "
         "Charging Station Wireless Gaming Mouse Keyboard Case Bundle").split()


def parse_size(s: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{s!r}: expected a count like 200k, 3M or 1500000")
    return int(float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()])


def _ids(rng: np.random.Generator, n: int, prefix: bytes, length: int) -> np.ndarray:
    """n distinct ids `prefix + random [A-Z0-9]` of the given length, as a numpy bytes array."""
    out = np.empty(0, dtype=f"S{length}")
    while len(out) < n:
        body = _ALNUM[rng.integers(0, len(_ALNUM), size=(n - len(out), length - len(prefix)))]
        pre = np.broadcast_to(np.frombuffer(prefix, dtype=np.uint8), (len(body), len(prefix)))
        new = np.ascontiguousarray(np.concatenate([pre, body], axis=1)).view(f"S{length}").ravel()
        out = np.unique(np.concatenate([out, new]))
    return rng.permutation(out[:n]) if len(out) > n else rng.permutation(out)


def _ms(year: int, month: int = 1) -> int:
    return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp() * 1000)


def write_raw(raw_dir: Path, n_ratings: int, seed: int = 0) -> dict[str, Path]:
    """The rating CSV and metadata JSONL (gzipped) of about n_ratings ratings; see the module docstring."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    raw_dir.mkdir(parents=True, exist_ok=True)
    # Users: 5 + a heavy (Lomax) tail, mean ~10.7 ratings per user.
    counts = 5 + np.minimum(np.floor(rng.pareto(1.8, size=n_ratings // 5) * 4.5), 3000).astype(np.int64)
    counts = counts[: int(np.searchsorted(np.cumsum(counts), n_ratings)) + 1]
    n_users = len(counts)
    user = np.repeat(np.arange(n_users), counts)[:n_ratings]
    n = len(user)
    # Items: Zipf popularity (s = 0.9); a user rarely rates the same item twice.
    n_items = max(50, n // 33)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    cdf = np.cumsum(p / p.sum())
    item = np.minimum(np.searchsorted(cdf, rng.random(n)), n_items - 1)
    for _ in range(8):  # redraw (user, item) repeats, then plant ~1% on purpose below
        key = user * n_items + item
        _, first = np.unique(key, return_index=True)
        dup = np.ones(n, dtype=bool)
        dup[first] = False
        if not dup.any():
            break
        item[dup] = np.minimum(np.searchsorted(cdf, rng.random(int(dup.sum()))), n_items - 1)
    # Timestamps: each user active over a span inside 2012-01..2023-09 (ms).
    lo, hi = _ms(2012), _ms(2023, 9)
    start = rng.integers(lo, hi, size=n_users)
    span = np.minimum(rng.exponential(2 * 365 * 86_400_000.0, size=n_users).astype(np.int64), hi - start)
    ts = start[user] + (rng.random(n) * (span[user] + 1)).astype(np.int64)
    rating = rng.choice(np.array([5.0, 4.0, 3.0, 2.0, 1.0]), p=[0.55, 0.2, 0.1, 0.06, 0.09], size=n)
    rep = rng.choice(n, size=n // 100, replace=False)  # re-purchases: same user and item, later
    dup = rng.choice(n, size=n // 200, replace=False)  # exact duplicate lines
    user = np.concatenate([user, user[rep], user[dup]])
    item = np.concatenate([item, item[rep], item[dup]])
    ts = np.concatenate([ts, np.minimum(ts[rep] + rng.integers(86_400_000, 400 * 86_400_000, size=len(rep)), hi),
                         ts[dup]])
    rating = np.concatenate([rating, rng.choice(np.array([5.0, 4.0]), size=len(rep)), rating[dup]])
    order = rng.permutation(len(user))
    uids = _ids(rng, n_users, b"A", 28)
    asins = _ids(rng, n_items, b"B0", 10)
    table = pa.table({
        "user_id": pa.array(uids[user[order]].astype(object).astype(str)),
        "parent_asin": pa.array(asins[item[order]].astype(object).astype(str)),
        "rating": pa.array(np.char.mod("%.1f", rating[order])),
        "timestamp": pa.array(ts[order]),
    })
    ratings_path = raw_dir / f"{CATEGORY}.csv.gz"
    with gzip.open(ratings_path, "wb", compresslevel=6) as f:
        f.write(b"user_id,parent_asin,rating,timestamp\n")
        pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style="none",
                                                      batch_size=1 << 16))
    del table
    meta_path = raw_dir / f"meta_{CATEGORY}.jsonl.gz"
    prng = np.random.default_rng(seed + 1)
    words = np.array(WORDS)
    with gzip.open(meta_path, "wt", encoding="utf-8", compresslevel=6) as f:
        for k, a in enumerate(asins.astype(str)):
            w = words[prng.integers(0, len(words), size=40)]
            title = " ".join(w[: 3 + k % 6])
            u = prng.random()
            if u < 0.02:
                title = None
            elif u < 0.05:
                title = title.replace(" ", " &amp; ", 1)
            elif u < 0.07:
                title = f"<span>{title}</span>"
            price = None if prng.random() < 0.04 else round(float(prng.uniform(4.99, 79.99)), 2)
            row = {
                "main_category": "Video Games", "title": title,
                "average_rating": round(float(prng.uniform(2.5, 5.0)), 1), "rating_number": int(prng.integers(1, 9000)),
                "features": [" ".join(w[5 + 6 * j: 11 + 6 * j]) for j in range(k % 4)],
                "description": [" ".join(w[20:36]) + "."] if k % 3 else [],
                "price": price if price is not None or k % 2 else "None",
                "images": [{"thumb": f"https://m.media-amazon.com/images/I/{a}._SS40_.jpg",
                            "large": f"https://m.media-amazon.com/images/I/{a}.jpg", "variant": "MAIN",
                            "hi_res": f"https://m.media-amazon.com/images/I/{a}._SL1500_.jpg"}],
                "videos": [], "store": str(w[36]), "categories": ["Video Games", str(w[37]), "Games"],
                "details": {"Release date": f"March {1 + k % 28}, {2005 + k % 18}",
                            "Best Sellers Rank": {"Video Games": int(prng.integers(1, 100000))}},
                "parent_asin": a, "bought_together": None,
            }
            f.write(json.dumps(row) + "\n")
    return {"ratings": ratings_path, "meta": meta_path, "n_lines": len(user), "n_users": n_users,
            "n_items": n_items}
