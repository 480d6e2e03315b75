"""preprocess.py / trainers.amazon_data on synthetic Amazon Reviews 2023 raw files."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest

from trainers.data.amazon import (
    EXAMPLE_COLUMNS,
    ITEM_COLUMNS,
    PreprocessConfig,
    clean_text,
    kcore,
    parse_price,
    run_preprocess,
    valid_title,
)
from trainers.data.synthetic import SUBCATEGORIES, synthetic_corpus, title_subcategory, write_amazon_raw

REPO = Path(__file__).resolve().parents[1]
CAT = "Video_Games"
SMALL = dict(n_users=150, n_items=90, n_subcats=3)


def _cfg(raw: Path, out: Path, **kw) -> PreprocessConfig:
    base = dict(category=CAT, K=5, st_year=2021, st_month=1, ed_year=2023, ed_month=12,
                data_root_dir=str(out), raw_dir=str(raw), min_items=10)
    base.update(kw)
    return PreprocessConfig(**base)


def _run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "preprocess.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def raw_flat(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("raw_flat")
    write_amazon_raw(d, CAT, **SMALL)
    return d


@pytest.fixture(scope="module")
def processed(raw_flat, tmp_path_factory):
    from datasets import load_from_disk

    out, stats = run_preprocess(_cfg(raw_flat, tmp_path_factory.mktemp("data")))
    return load_from_disk(str(out)), stats, out


def _raw_interactions(raw: Path) -> pd.DataFrame:
    df = pd.read_csv(raw / f"{CAT}.csv.gz", dtype={"user_id": str, "parent_asin": str})
    return df.drop_duplicates(["user_id", "parent_asin", "timestamp"])


# ----------------------------------------------------------------------------- generator

def test_generator_deterministic(tmp_path):
    a = write_amazon_raw(tmp_path / "a", CAT, seed=3, reviews_jsonl=True, **SMALL)
    b = write_amazon_raw(tmp_path / "b", CAT, seed=3, reviews_jsonl=True, **SMALL)
    c = write_amazon_raw(tmp_path / "c", CAT, seed=4, **SMALL)
    for k in ("ratings", "meta", "reviews"):
        assert gzip.decompress(a[k].read_bytes()) == gzip.decompress(b[k].read_bytes())
        assert a[k].read_bytes() == b[k].read_bytes()
    assert gzip.decompress(a["ratings"].read_bytes()) != gzip.decompress(c["ratings"].read_bytes())


def test_generator_formats(raw_flat):
    with gzip.open(raw_flat / f"{CAT}.csv.gz", "rt") as f:
        assert f.readline().strip() == "user_id,parent_asin,rating,timestamp"
        uid, asin, rating, ts = f.readline().strip().split(",")
    assert len(uid) == 28 and uid.isalnum() and uid.isupper()
    assert asin.startswith("B0") and len(asin) == 10
    assert 1 <= float(rating) <= 5 and int(ts) > 1_600_000_000_000
    with gzip.open(raw_flat / f"meta_{CAT}.jsonl.gz", "rt") as f:
        metas = [json.loads(line) for line in f]
    keys = {"main_category", "title", "average_rating", "rating_number", "features", "description", "price",
            "images", "videos", "store", "categories", "details", "parent_asin", "bought_together"}
    assert all(set(m) == keys for m in metas)
    titles = [m["title"] for m in metas]
    assert any(t is None or not str(t).strip() for t in titles)
    assert any(isinstance(t, str) and "&amp;" in t for t in titles)
    assert any(isinstance(t, str) and "<span>" in t for t in titles)
    assert any(isinstance(t, str) and len(t.split()) > 20 for t in titles)
    assert any(m["price"] in (None, "None", "\u2014") for m in metas)
    words = set(" ".join(synthetic_corpus()).split())
    for t in titles:
        if valid_title(t):
            assert set(clean_text(t).split()) <= words | {"&", "-"}


def test_planted_preference(raw_flat):
    with gzip.open(raw_flat / f"meta_{CAT}.jsonl.gz", "rt") as f:
        sub = {m["parent_asin"]: title_subcategory(valid_title(m["title"]) or "") for m in map(json.loads, f)}
    # Titles that survive cleaning carry the word; dropped ones may not.
    df = _raw_interactions(raw_flat)
    df = df[df["parent_asin"].map(sub).notna()]
    per_user: dict[str, Counter] = defaultdict(Counter)
    for u, a in zip(df["user_id"], df["parent_asin"]):
        per_user[u][sub[a]] += 1
    big = [c for c in per_user.values() if sum(c.values()) >= 5]
    shares = [c.most_common(1)[0][1] / sum(c.values()) for c in big]
    assert sum(s >= 0.7 for s in shares) >= 0.85 * len(shares)
    # Balanced sub-categories: popularity by sub-category is uninformative.
    totals = Counter(sub[a] for a in df["parent_asin"])
    assert set(totals) <= set(SUBCATEGORIES[:3])
    assert max(totals.values()) < 1.4 * min(totals.values())
    assert df.groupby("user_id").size().min() == 1  # some single-interaction users


# ----------------------------------------------------------------------------- helpers

def test_cleaning_helpers():
    assert clean_text("  <span>Racing</span>&amp;Co<br>Turbo \n 3 ") == "Racing &Co Turbo 3"
    assert valid_title(None) is None and valid_title("<span></span>") is None
    assert valid_title(" ".join(["w"] * 21)) is None and valid_title(" ".join(["w"] * 20))
    assert parse_price(12) == 12.0 and parse_price("$1,299.00") == 1299.0
    assert parse_price("None") is None and parse_price("\u2014") is None and parse_price(None) is None
    assert parse_price(float("nan")) is None and parse_price(True) is None


def test_kcore_cascades():
    rows = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "a"), ("u3", "c")]
    df = pd.DataFrame(rows, columns=["user_id", "parent_asin"])
    out = kcore(df, 2)  # c has 1 -> u3 drops to 1 -> u3 goes -> a, b still 2
    assert sorted(map(tuple, out.to_numpy())) == [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]
    assert len(kcore(df, 0)) == len(df)
    assert kcore(df, 3).empty


# ----------------------------------------------------------------------------- output

def test_columns_ids_and_pad(processed):
    dd, stats, out = processed
    assert set(dd) == {"train", "valid", "test", "item_info"}
    for s in ("train", "valid", "test"):
        assert dd[s].column_names == EXAMPLE_COLUMNS
    info = dd["item_info"]
    assert info.column_names == ITEM_COLUMNS
    assert info[0]["parent_asin"] == "pad_asin" and info[0]["title"] == "pad_title"
    assert info["item_id"] == list(range(len(info)))
    row = info[1]
    assert isinstance(row["features"], list) and isinstance(row["description"], list)
    assert isinstance(row["categories"], list) and isinstance(json.loads(row["details"]), dict)
    assert all(p is None or isinstance(p, float) for p in info["price"][1:])
    assert all(p is not None for p in info["price"][1:])  # no --keep_items_without_price
    assert all(t and "<" not in t and "&amp;" not in t and len(t.split()) <= 20 for t in info["title"])
    ids = [i for s in ("train", "valid", "test") for i in dd[s]["interaction_id"]]
    assert sorted(ids) == list(range(len(ids)))
    asin_of = dict(zip(info["item_id"], info["parent_asin"]))
    for ex in dd["train"].select(range(50)):
        assert 1 <= ex["item_id"] < len(info) and asin_of[ex["item_id"]] == ex["item_asin"]
        assert [asin_of[i] for i in ex["history_item_id"]] == ex["item_asins"]
        n = len(ex["history_item_id"])
        assert 1 <= n <= 10 and len(ex["history_rating"]) == len(ex["history_timestamp"]) == n
        assert ex["history_item_title"] == [info[i]["title"] for i in ex["history_item_id"]]
        assert max(ex["history_timestamp"]) <= ex["timestamp"]
    assert stats["items"] == len(info) - 1 and (out / "stats.json").exists()


def test_chronological_split(processed):
    dd, stats, _ = processed
    tr, va, te = (dd[s]["timestamp"] for s in ("train", "valid", "test"))
    assert max(tr) <= min(va) and max(va) <= min(te)
    n = len(tr) + len(va) + len(te)
    assert len(tr) == int(0.8 * n) and len(va) == int(0.1 * n)
    assert stats["splits"] == {"train": len(tr), "valid": len(va), "test": len(te)}
    for s in ("train", "valid", "test"):
        assert dd[s]["timestamp"] == sorted(dd[s]["timestamp"])


def test_histories_match_raw(processed, raw_flat):
    dd, _, _ = processed
    items = set(dd["item_info"]["parent_asin"][1:])
    raw = _raw_interactions(raw_flat)
    # Rows of surviving users on surviving items are exactly the K-cored interactions.
    raw = raw[raw["parent_asin"].isin(items)]
    examples = defaultdict(list)
    for s in ("train", "valid", "test"):
        for ex in dd[s]:
            examples[ex["user_id"]].append(ex)
    for uid in sorted(examples)[:6]:
        seq = raw[raw["user_id"] == uid].sort_values(["timestamp", "parent_asin"])
        asins, ts = list(seq["parent_asin"]), list(seq["timestamp"])
        exs = sorted(examples[uid], key=lambda e: e["timestamp"])
        assert len(exs) == len(seq) - 1
        for j, ex in enumerate(exs, start=1):
            assert ex["item_asin"] == asins[j] and ex["timestamp"] == ts[j]
            assert ex["item_asins"] == asins[max(0, j - 10):j]
            assert ex["history_timestamp"] == ts[max(0, j - 10):j]


def test_kcore_property(processed):
    dd, stats, _ = processed
    inter = set()
    for s in ("train", "valid", "test"):
        for u, i, t, hi, ht in zip(dd[s]["user_id"], dd[s]["item_id"], dd[s]["timestamp"],
                                   dd[s]["history_item_id"], dd[s]["history_timestamp"]):
            inter.add((u, i, t))
            inter.update((u, a, b) for a, b in zip(hi, ht))
    users = Counter(u for u, _, _ in inter)
    items = Counter(i for _, i, _ in inter)
    assert min(users.values()) >= 5 and min(items.values()) >= 5
    assert len(inter) == stats["interactions"] and len(users) == stats["users"]
    assert len(items) == stats["items"]


def test_window_extension(raw_flat, tmp_path):
    _, stats = run_preprocess(_cfg(raw_flat, tmp_path, st_year=2023, st_month=7, min_items=10_000))
    assert stats["start_extensions"] == 10  # 2023-07 back to 2021-01, the data's first year
    assert (stats["used_window"]["st_year"], stats["used_window"]["st_month"]) == (2021, 1)
    assert stats["requested_window"]["st_year"] == 2023
    # Stops as soon as enough items remain (3-month steps: 2023-07, 2023-04, ...).
    out, stats = run_preprocess(_cfg(raw_flat, tmp_path, st_year=2023, st_month=7, min_items=30))
    n = stats["start_extensions"]
    assert 0 < n < 10 and out.name == f"{CAT}_5_2023-7-2023-12"
    used = (stats["used_window"]["st_year"], stats["used_window"]["st_month"])
    assert used == [(2023, 7), (2023, 4), (2023, 1), (2022, 10), (2022, 7), (2022, 4)][n]
    assert stats["items"] >= 30 and stats["window_attempts"][-2]["items"] < 30
    _, stats = run_preprocess(_cfg(raw_flat, tmp_path, st_year=2022, st_month=1, min_items=1))
    assert stats["start_extensions"] == 0


def test_keep_items_without_price(raw_flat, tmp_path, processed):
    _, stats = run_preprocess(_cfg(raw_flat, tmp_path, keep_items_without_price=True))
    assert stats["items"] > processed[1]["items"]


# ----------------------------------------------------------------------------- layouts (real script)

def test_script_mirror_layout(tmp_path):
    raw = tmp_path / "raw"
    paths = write_amazon_raw(raw, CAT, layout="mirror", **SMALL)
    assert paths["ratings"] == raw / "benchmark/5core/rating_only" / f"{CAT}.csv.gz"
    r = _run_script("--category", CAT, "--K", "5", "--st_year", "2021", "--st_month", "1", "--ed_year", "2023",
                    "--ed_month", "12", "--raw_dir", str(raw), "--data_root_dir", str(tmp_path / "data"),
                    "--min_items", "10")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "data" / f"{CAT}_5_2021-1-2023-12"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["users"] > 100 and "test" in r.stdout and str(out) in r.stdout


def test_review_jsonl_layouts(tmp_path, processed):
    from datasets import load_from_disk

    dd_csv = processed[0]
    for layout in ("flat", "mirror"):
        raw = tmp_path / layout
        paths = write_amazon_raw(raw, CAT, reviews_jsonl=True, layout=layout, **SMALL)
        paths["ratings"].unlink()
        out, stats = run_preprocess(_cfg(raw, tmp_path / f"data_{layout}"))
        assert stats["raw_files"]["interactions"] == str(paths["reviews"])
        dd = load_from_disk(str(out))
        assert dd["test"]["item_asin"] == dd_csv["test"]["item_asin"]
        assert dd["item_info"]["parent_asin"] == dd_csv["item_info"]["parent_asin"]


# ----------------------------------------------------------------------------- errors (real script)

def _expect_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("preprocess.py: error:"), r.stderr
    for n in needles:
        assert n in last, last


def _args(raw: Path, out: Path, *extra: str) -> list[str]:
    return ["--category", CAT, "--K", "5", "--raw_dir", str(raw), "--data_root_dir", str(out),
            "--st_year", "2021", "--ed_year", "2023", "--min_items", "10", *extra]


def test_error_missing_raw_file(tmp_path):
    (tmp_path / "empty").mkdir()
    _expect_error(_run_script(*_args(tmp_path / "empty", tmp_path)), f"{CAT}.csv.gz", "--raw_dir")


def test_error_unknown_columns_and_corrupt_gzip(tmp_path, raw_flat):
    raw = tmp_path / "raw"
    shutil.copytree(raw_flat, raw)
    csv = raw / f"{CAT}.csv.gz"
    csv.write_bytes(gzip.compress(b"item,user,rating,timestamp\nB0X,AE1,5.0,1600000000000\n"))
    _expect_error(_run_script(*_args(raw, tmp_path)), "unknown column layout", "item", "parent_asin")
    good = (raw_flat / f"{CAT}.csv.gz").read_bytes()
    csv.write_bytes(good[: len(good) // 2])
    _expect_error(_run_script(*_args(raw, tmp_path)), "corrupt", str(csv))


def test_error_empty_window_and_bad_month(tmp_path, raw_flat):
    r = _run_script("--category", CAT, "--raw_dir", str(raw_flat), "--data_root_dir", str(tmp_path),
                    "--st_year", "2010", "--st_month", "1", "--ed_year", "2010", "--ed_month", "6")
    _expect_error(r, "empty time window", "2021-01-01")
    r = _run_script(*_args(raw_flat, tmp_path, "--st_month", "13"))
    _expect_error(r, "--st_month 13")
