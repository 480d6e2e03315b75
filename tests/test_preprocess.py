"""preprocess.py (the script, in a child process) and the synthetic Amazon Reviews 2023 raw files it is tested on;
the unit tests of trainers.data.amazon* are in tests/trainers/data/test_amazon*.py."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainers.data.amazon import (
    PreprocessConfig,
    clean_text,
    run_preprocess,
    valid_title,
)
from fixtures.synthetic_amazon import SUBCATEGORIES, synthetic_corpus, title_subcategory, write_amazon_raw

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


def test_synonyms_preference_is_planted(tmp_path):
    """preference="synonyms": a title names its family with one of the family's words (all of them in use), the
    description and features name none, users stick to a family (not to a word), families are balanced."""
    from fixtures.synthetic_amazon import SYNONYMS

    raw = tmp_path / "raw"
    write_amazon_raw(raw, CAT, n_users=300, n_items=120, n_subcats=4, preference="synonyms")
    family = {w: f for f, words in enumerate(SYNONYMS) for w in words}
    with gzip.open(raw / f"meta_{CAT}.jsonl.gz", "rt") as f:
        metas = [json.loads(line) for line in f]
    word = {m["parent_asin"]: title_subcategory(valid_title(m["title"]) or "") for m in metas}
    assert set(word.values()) - {None} == set(family)  # every synonym of every family is used
    for m in metas:
        text = " ".join(m["description"] + m["features"]).replace(".", " ").split()
        assert not {w.capitalize() for w in text} & set(SUBCATEGORIES)
    df = _raw_interactions(raw)
    df = df[df["parent_asin"].map(word).notna()]
    per_user: dict[str, Counter] = defaultdict(Counter)
    words_of_user: dict[str, set] = defaultdict(set)
    for u, a in zip(df["user_id"], df["parent_asin"]):
        per_user[u][family[word[a]]] += 1
        words_of_user[u].add(word[a])
    big = [u for u, c in per_user.items() if sum(c.values()) >= 8]
    shares = [per_user[u].most_common(1)[0][1] / sum(per_user[u].values()) for u in big]
    assert np.mean(shares) == pytest.approx(0.87, abs=0.05)
    # loyal to a family but not to a word: the favourite family shows up with all three of its words
    fav_words = [sum(1 for w in words_of_user[u] if family[w] == per_user[u].most_common(1)[0][0]) for u in big]
    assert np.mean([n == 3 for n in fav_words]) > 0.8
    totals = Counter(family[word[a]] for a in df["parent_asin"])
    assert len(totals) == 4 and max(totals.values()) < 1.4 * min(totals.values())


def test_synonyms_defeat_word_overlap_but_not_a_reader_of_the_history(tmp_path):
    """What the demo table relies on, with no model: on the demo's data (preference="synonyms", histories of 3)
    popularity and the TF-IDF content row stay far below a rule that reads the history and knows the families,
    and even below one that counts the history titles sharing the candidate's exact word."""
    from trainers.data.dataset import load_processed_dataset
    from fixtures.synthetic_amazon import SYNONYMS
    from trainers.evaluation.metrics import metrics_from_ranks, target_rank
    from trainers.evaluation.protocol import build_eval_items, sanity_rows

    raw = tmp_path / "raw"
    write_amazon_raw(raw, CAT, n_users=400, n_items=240, n_subcats=4, preference="synonyms")
    out, _ = run_preprocess(_cfg(raw, tmp_path / "data", window_size=3, min_items=50))
    ds = load_processed_dataset(out)
    family = {w: f for f, words in enumerate(SYNONYMS) for w in words}
    word = [title_subcategory(t or "") for t in ds.titles]
    rng, samples, ranks = np.random.default_rng(0), [], {"family": [], "exact word": []}
    for ex, cands in build_eval_items(ds, "test", None, 20, seed=0):
        hist, t = ex["history_item_id"], cands.index(ex["item_id"])
        ties = rng.random(len(cands))  # ties in random order, like the sanity rows
        for name, key in (("family", lambda i: family.get(word[i])), ("exact word", lambda i: word[i])):
            score = [sum(key(c) is not None and key(c) == key(h) for h in hist) for c in cands]
            ranks[name].append(target_rank(score, t, ties))
        samples.append({"interaction_id": ex["interaction_id"], "target_item_id": ex["item_id"], "candidates": cands})
    rows = sanity_rows(samples, ds, seed=0)
    reader = {name: metrics_from_ranks(r)["NDCG@10"] for name, r in ranks.items()}
    assert len(samples) > 400 and reader["family"] > reader["exact word"] + 0.04
    for name in ("random", "popularity", "content-tfidf"):
        assert reader["family"] > rows[name]["NDCG@10"] + 0.15, name
        assert reader["exact word"] > rows[name]["NDCG@10"] + 0.08, name


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
    # the script's stats.json and summary report the repeat purchases (none planted here)
    assert stats["repeats"] == {"repeat_purchases_removed": 0, "examples_with_target_in_shown_history": 0,
                                "examples_dropped": 0} and "repeats (--repeat_policy first_only)" in r.stdout


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
    _expect_error(r, "--st_month", "must be in 1..12, got 13")  # refused by argparse (foundation.config.int_range)


# ----------------------------------------------------------------------------- every dropped row, by reason

T0 = 1_650_000_000_000  # 2022-04-15 in ms


def _write_raw(raw: Path, rating_lines: list[str], items: dict[str, dict]) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / f"{CAT}.csv").write_text("user_id,parent_asin,rating,timestamp\n" + "".join(l + "\n" for l in rating_lines))
    with open(raw / f"meta_{CAT}.jsonl", "w") as f:
        f.writelines(json.dumps({"title": f"Game {asin}", "price": 9.99, "parent_asin": asin, **m}) + "\n"
                     for asin, m in items.items())


def test_error_out_of_range_timestamp_script(tmp_path):
    raw = tmp_path / "raw"
    _write_raw(raw, [f"U1,A,5.0,{T0}", "U1,B,5.0,99999999999999999"], {"A": {}, "B": {}})
    _expect_error(_run_script(*_args(raw, tmp_path)), "data row 2", "--timestamp_unit")


# ----------------------------------------------------------------------------- the scaling benchmark

def test_benchmark_preprocess_small(tmp_path):
    """tools/benchmark_preprocess.py end to end on 3k generated ratings: the exact Amazon formats, the real
    preprocess.py in a child process, a figures row; its work dir is removed afterwards."""
    work = tmp_path / "work"
    r = subprocess.run([sys.executable, "tools/benchmark_preprocess.py", "--sizes", "3k", "--work_dir", str(work)],
                       cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    row = next(line for line in r.stdout.splitlines() if line.startswith("| 0.003M | new |"))
    wall, cpu, rss, _rate, examples = (c.strip() for c in row.strip("|").split("|")[2:])
    assert float(wall.split()[0]) > 0 and float(cpu.split()[0]) > 0 and 0 < float(rss.split()[0]) < 8
    assert int(examples.replace(",", "")) > 500
    assert not work.exists()
