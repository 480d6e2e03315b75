"""Scaling benchmark of preprocess.py on synthetic Amazon Reviews 2023 raw files of N ratings.

For each N (--sizes) it writes, under --work_dir (default a fresh folder in /tmp, removed at the end
unless --keep_files), a gzipped rating-only CSV and a gzipped metadata JSONL in the exact Amazon Reviews
2023 formats, shaped like a 5-core category: every user has >= 5 ratings with a heavy tail (~10.7 per
user on average, the issue's 3M-rating file had 280k users), item popularity is Zipf, ~1% of
(user, item) pairs are bought again later, ~0.5% of lines are exact duplicates, timestamps span
2014..2023 (the default window 2017-01..2023-12 drops the older ones), and every item has a metadata line
(title, features, description, price, images, details, ...), a few of them messy (html, missing price).
Then it runs the real `preprocess.py` in a child process per N and prints wall time, the child's peak
RSS (ru_maxrss from wait4) and examples/s.

    python tools/benchmark_preprocess.py --sizes 1M 3M 10M
    python tools/benchmark_preprocess.py --sizes 200k --compare_engines     # pyarrow vs polars vs DuckDB

--compare_engines times the relational core (read the gzipped CSV, parse, drop exact duplicates, keep
reviews of items with metadata, time window, 5-core, sort each user's interactions, history windows as
list columns, examples in target-time order) with each engine that is installed, each in its own child
process on the same file, so the engine of trainers/data/amazon_interactions.py is a measured choice.
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
import pyarrow as pa

from foundation.config import HelpFormatter, seed_int
from foundation.errors import exit_on_user_error
from foundation.files import read_json

REPO = Path(__file__).resolve().parents[1]
CATEGORY = "Video_Games"
_ALNUM = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", dtype=np.uint8)
WORDS = ("Ultimate", "Deluxe", "Classic", "Edition", "Legends", "Quest", "World", "Arena", "Saga", "Tales",
         "Kingdom", "Rush", "Heroes", "Empire", "Origins", "Frontier", "Racing", "Puzzle", "Strategy", "Horror",
         "Sports", "Fantasy", "Shooter", "Farming", "Rhythm", "Stealth", "Pirate", "Space", "Turbo", "Super",
         "Mega", "Royal", "Hyper", "Golden", "Silent", "Crystal", "Shadow", "Iron", "Neon", "Wild", "Lost",
         "Final", "Grand", "Controller", "Headset", "Charging", "Station", "Wireless", "Gaming", "Mouse",
         "Keyboard", "Case", "Bundle")


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
    n_items = max(50, n // 30)
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
    # Timestamps: each user active over a span inside 2014-01..2023-09 (ms).
    lo, hi = _ms(2014), _ms(2023, 9)
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


# ============================================================================ child processes

def run_measured(cmd: list[str], env: dict | None = None, log: Path | None = None) -> dict:
    """Run cmd as a child; its wall time, peak RSS (wait4's ru_maxrss) and exit status."""
    t0 = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.perf_counter() - t0, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
            "rc": proc.returncode, "cpu_s": usage.ru_utime + usage.ru_stime}


def _env(pythonpath: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(pythonpath), "TQDM_DISABLE": "1"}


def preprocess_cmd(raw: Path, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "preprocess.py", "--category", CATEGORY, "--K", "5", "--st_year", "2017", "--st_month",
            "1", "--ed_year", "2023", "--ed_month", "12", "--raw_dir", str(raw), "--data_root_dir", str(out),
            "--min_items", "0", *extra]


def export_commit(ref: str, dest: Path) -> Path:
    """The tree of git commit `ref` of this repository, extracted under dest (for a side-by-side run)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


# ============================================================================ engine comparison (--compare_engines)

WINDOW_MS = (_ms(2017), _ms(2024) - 1)
CORE_K, CORE_WINDOW = 5, 10


def core_pyarrow(csv: Path, valid_items: list[str]) -> pa.Table:
    import pyarrow.compute as pc

    from trainers.data.amazon_examples import index_examples
    from trainers.data.amazon_interactions import load_interactions, select_window, sort_and_dedupe

    x = sort_and_dedupe(load_interactions(csv, reviews_jsonl=False))
    ok = pc.is_in(x.items, pa.array(valid_items)).to_numpy(zero_copy_only=False)
    x = x.take(np.flatnonzero(ok[x.item]))
    x = select_window(x, (2017, 1), (2023, 12), CORE_K, 0).x
    idx = index_examples(x, CORE_WINDOW, drop_target_in_history=False)
    kept = np.unique(x.item)
    item_id = np.zeros(len(x.items), dtype=np.int64)
    item_id[kept] = np.arange(1, len(kept) + 1)
    lengths = idx.target - idx.hist_start
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    hist = np.repeat(idx.hist_start - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    return pa.table({"user_id": x.users.take(pa.array(x.user[idx.target])),
                     "item_id": item_id[x.item[idx.target]], "timestamp": x.ts[idx.target],
                     "history_item_id": pa.ListArray.from_arrays(pa.array(offsets), pa.array(item_id[x.item[hist]]))})


def core_polars(csv: Path, valid_items: list[str]) -> pa.Table:
    import polars as pl

    lf = pl.scan_csv(csv, schema={c: pl.String for c in ("user_id", "parent_asin", "rating", "timestamp")})
    df = (lf.with_row_index("row")
          .with_columns(pl.col("rating").cast(pl.Float64, strict=False),
                        pl.col("timestamp").cast(pl.Float64, strict=False).cast(pl.Int64).alias("ts"))
          .filter(pl.col("rating").is_not_null() & pl.col("ts").is_not_null())
          .unique(subset=["user_id", "parent_asin", "ts"], keep="first", maintain_order=True)
          .filter(pl.col("parent_asin").is_in(pl.Series(valid_items).implode()))
          .filter(pl.col("ts").is_between(*WINDOW_MS))
          .select("user_id", "parent_asin", "ts")
          .collect(engine="streaming"))
    while True:
        n = df.height
        df = df.filter((pl.len().over("user_id") >= CORE_K) & (pl.len().over("parent_asin") >= CORE_K))
        if df.height == n:
            break
    ids = df.select(pl.col("parent_asin").unique().sort()).with_row_index("item_id", offset=1)
    df = (df.join(ids, on="parent_asin").sort(["user_id", "ts", "parent_asin"])
          .with_columns(pl.int_range(pl.len()).over("user_id").alias("pos")))
    hist = pl.concat_list([pl.when(pl.col("pos") >= k).then(pl.col("item_id").shift(k))
                           for k in range(CORE_WINDOW, 0, -1)]).list.drop_nulls()
    ex = (df.with_columns(hist.alias("history_item_id")).filter(pl.col("pos") > 0)
          .sort(["ts", "user_id", "parent_asin"])
          .select("user_id", pl.col("item_id").cast(pl.Int64), pl.col("ts").alias("timestamp"),
                  pl.col("history_item_id").cast(pl.List(pl.Int64))))
    return ex.to_arrow()


def core_duckdb(csv: Path, valid_items: list[str]) -> pa.Table:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads={os.cpu_count()}")
    con.register("valid_items", pa.table({"parent_asin": valid_items}))
    con.execute(f"""CREATE TABLE r AS SELECT user_id, parent_asin, TRY_CAST(rating AS DOUBLE) AS rating,
        CAST(TRY_CAST("timestamp" AS DOUBLE) AS BIGINT) AS ts, row_number() OVER () AS rn
        FROM read_csv('{csv}', header=true, all_varchar=true)""")
    con.execute(f"""CREATE TABLE w AS SELECT user_id, parent_asin, ts FROM (
        SELECT * FROM r WHERE rating IS NOT NULL AND ts IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY user_id, parent_asin, ts ORDER BY rn) = 1)
        WHERE parent_asin IN (SELECT parent_asin FROM valid_items) AND ts BETWEEN {WINDOW_MS[0]} AND {WINDOW_MS[1]}""")
    while True:
        deleted = con.execute(f"""DELETE FROM w
            WHERE user_id IN (SELECT user_id FROM w GROUP BY user_id HAVING count(*) < {CORE_K})
            OR parent_asin IN (SELECT parent_asin FROM w GROUP BY parent_asin HAVING count(*) < {CORE_K})""")
        if deleted.fetchone()[0] == 0:
            break
    res = con.execute(f"""WITH ids AS (SELECT parent_asin, row_number() OVER (ORDER BY parent_asin) AS item_id
            FROM (SELECT DISTINCT parent_asin FROM w)),
        s AS (SELECT w.user_id, w.parent_asin, w.ts, ids.item_id,
            row_number() OVER u AS pos,
            list(ids.item_id) OVER (u ROWS BETWEEN {CORE_WINDOW} PRECEDING AND 1 PRECEDING) AS history_item_id
            FROM w JOIN ids USING (parent_asin)
            WINDOW u AS (PARTITION BY w.user_id ORDER BY w.ts, w.parent_asin))
        SELECT user_id, item_id, ts AS "timestamp", history_item_id FROM s WHERE pos > 1
        ORDER BY ts, user_id, parent_asin""")
    return res.to_arrow_table() if hasattr(res, "to_arrow_table") else res.fetch_arrow_table()


ENGINES = {"pyarrow": core_pyarrow, "polars": core_polars, "duckdb": core_duckdb}


def _engine_child(engine: str, csv: Path, items_file: Path) -> None:
    """Run one engine's core and print its result checksum as JSON (in a child process)."""
    import pyarrow.compute as pc

    valid = items_file.read_text().split()
    t = ENGINES[engine](csv, valid)
    lens = pc.list_value_length(t["history_item_id"])
    flat = pc.list_flatten(t["history_item_id"])
    print(json.dumps({"examples": t.num_rows, "history_len_sum": int(pc.sum(lens).as_py()),
                      "history_id_sum": int(pc.sum(flat).as_py()),
                      "order_checksum": int(pc.sum(pc.multiply(pc.cast(t["item_id"], "int64"),
                                                               np.arange(t.num_rows) % 1000)).as_py())}))


def compare_engines(raw: Path, work: Path) -> None:
    import importlib.util

    from trainers.data.amazon_items import load_items

    items, _, _ = load_items(raw / f"meta_{CATEGORY}.jsonl.gz")
    items_file = work / "valid_items.txt"
    items_file.write_text("\n".join(items))
    rows = []
    for engine in ENGINES:
        mod = "pyarrow" if engine == "pyarrow" else engine
        if importlib.util.find_spec(mod) is None:
            print(f"{engine}: not installed, skipped")
            continue
        log = work / f"engine_{engine}.log"
        r = run_measured([sys.executable, str(Path(__file__).resolve()), "--engine_child", engine,
                          str(raw / f"{CATEGORY}.csv.gz"), str(items_file)], env=_env(REPO), log=log)
        out = log.read_text().strip().splitlines()
        if r["rc"] != 0:
            print(f"{engine}: failed (exit {r['rc']}): {out[-1] if out else ''}")
            continue
        r.update(json.loads(out[-1]))
        rows.append((engine, r))
    print("\nengine core: read csv.gz -> duplicates -> item filter -> window -> 5-core -> sorted histories "
          "(list column)")
    print(f"{'engine':10s} {'wall s':>8s} {'cpu s':>8s} {'peak RSS GB':>12s} {'examples':>10s}  same result as pyarrow")
    base = rows[0][1] if rows else {}
    for engine, r in rows:
        same = all(r[k] == base.get(k) for k in ("examples", "history_len_sum", "history_id_sum", "order_checksum"))
        print(f"{engine:10s} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r['peak_rss_gb']:12.2f} {r['examples']:10d}  {same}")


# ============================================================================ main

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[1_000_000, 3_000_000, 10_000_000],
                   help="numbers of ratings to generate and preprocess (e.g. 1M 3M 10M, 200k)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the generated files")
    p.add_argument("--work_dir", default=None,
                   help="where generated raw files and outputs go (default: a new folder in /tmp, removed at "
                        "the end); raw files already there for a size and seed are reused")
    p.add_argument("--keep_files", action="store_true", help="keep the work dir (raw files) at the end")
    p.add_argument("--compare_engines", action="store_true",
                   help="also time the relational core with pyarrow, polars and DuckDB (those installed) on each "
                        "size's file, side by side")
    p.add_argument("--compare_commit", default=None,
                   help="also run preprocess.py of this git commit (e.g. abb866c, the pandas pipeline) on the "
                        "same files and print the ratios; needs memory for the old pipeline (~2.7 GB/M ratings)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="remaining arguments are passed to preprocess.py (e.g. --extra --repeat_policy keep)")
    p.add_argument("--engine_child", nargs=3, metavar=("ENGINE", "CSV", "ITEMS"),
                   help="internal: run one engine's core on CSV with the valid item list ITEMS and print its "
                        "result checksum (the child process of --compare_engines)")
    args = p.parse_args(argv)
    if args.engine_child:
        _engine_child(args.engine_child[0], Path(args.engine_child[1]), Path(args.engine_child[2]))
        return
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_preprocess_", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    old_tree = export_commit(args.compare_commit, work / "old_tree") if args.compare_commit else None
    results = []
    try:
        for n in args.sizes:
            raw = work / f"raw_{n}_{args.seed}"
            if not (raw / "done.json").exists():
                t0 = time.perf_counter()
                info = write_raw(raw, n, args.seed)
                (raw / "done.json").write_text(json.dumps({k: v for k, v in info.items() if not isinstance(v, Path)}))
                print(f"generated {n:,} ratings in {time.perf_counter() - t0:.0f} s: {raw}", flush=True)
            info = read_json(raw / "done.json")
            runs = [("new", REPO)] + ([(f"{args.compare_commit}", old_tree)] if old_tree else [])
            for label, tree in runs:
                out = work / f"out_{n}_{label}"
                shutil.rmtree(out, ignore_errors=True)
                log = work / f"preprocess_{n}_{label}.log"
                cmd = preprocess_cmd(raw, out, args.extra if label == "new" else [])
                cmd[1] = str(tree / "preprocess.py")
                r = run_measured(cmd, env=_env(tree), log=log)
                stats_files = list(out.glob("*/stats.json"))
                if r["rc"] != 0 or not stats_files:
                    tail = log.read_text().strip().splitlines()[-3:]
                    print(f"{label} at {n:,}: failed (exit {r['rc']}): {' | '.join(tail)}")
                    continue
                stats = read_json(stats_files[0])
                r.update(label=label, n=n, lines=info["n_lines"], examples=stats["examples"],
                         users=stats["users"], items=stats["items"], out_gb=_du(out) / 1e9)
                results.append(r)
                print(f"{label:>8s} {n:>11,} ratings: {r['wall_s']:7.1f} s  peak RSS {r['peak_rss_gb']:5.2f} GB  "
                      f"{r['examples'] / r['wall_s']:10,.0f} examples/s  ({r['examples']:,} examples, "
                      f"{r['users']:,} users, {r['items']:,} items, output {r['out_gb']:.1f} GB)", flush=True)
                shutil.rmtree(out, ignore_errors=True)
            if args.compare_engines:
                compare_engines(raw, work)
        _table(results, args.compare_commit)
    finally:
        if not args.keep_files:
            shutil.rmtree(work, ignore_errors=True)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _table(results: list[dict], ref: str | None) -> None:
    print("\n| ratings | pipeline | wall | CPU | peak RSS | examples/s | examples |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n'] / 1e6:g}M | {r['label']} | {r['wall_s']:.1f} s | {r['cpu_s']:.1f} s | "
              f"{r['peak_rss_gb']:.2f} GB | {r['examples'] / r['wall_s']:,.0f} | {r['examples']:,} |")
    if ref:
        for n in sorted({r["n"] for r in results}):
            new = next((r for r in results if r["n"] == n and r["label"] == "new"), None)
            old = next((r for r in results if r["n"] == n and r["label"] == ref), None)
            if new and old:
                print(f"{n / 1e6:g}M: {ref} / new = {old['wall_s'] / new['wall_s']:.1f}x wall time, "
                      f"{old['peak_rss_gb'] / new['peak_rss_gb']:.1f}x peak RSS")


if __name__ == "__main__":
    with exit_on_user_error():  # bad input, a refused write, Ctrl-C: one line
        main()
