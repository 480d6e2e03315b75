"""preprocess.py / trainers.data.amazon* on synthetic Amazon Reviews 2023 raw files, the frozen output of the
pandas pipeline it replaced (tests/data/preprocess), and hand-written files for every kind of dropped row."""
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
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainers.data.amazon import (
    DROP_REASONS,
    EXAMPLE_COLUMNS,
    ITEM_COLUMNS,
    PreprocessConfig,
    clean_text,
    format_summary,
    parse_price,
    run_preprocess,
    valid_title,
)
from trainers.data.amazon_interactions import kcore_mask
from trainers.data.candidates import sample_candidates
from fixtures.synthetic_amazon import SUBCATEGORIES, synthetic_corpus, title_subcategory, write_amazon_raw
from foundation.errors import UserInputError

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


# ----------------------------------------------------------------------------- helpers

def test_cleaning_helpers():
    assert clean_text("  <span>Racing</span>&amp;Co<br>Turbo \n 3 ") == "Racing &Co Turbo 3"
    # tags go, literal "<" and ">" stay (the old `<[^>]*>` turned "3 < 5 > 2" into "3 2")
    assert clean_text("3 < 5 > 2") == "3 < 5 > 2" and clean_text("Kids &lt;3 it") == "Kids <3 it"
    assert clean_text('<span id="t">Zelda</span> <br/>&lt;b&gt;BOTW&lt;/b&gt; <!-- x -->a>b') == "Zelda BOTW a>b"
    assert valid_title(None) is None and valid_title("<span></span>") is None
    assert valid_title(" ".join(["w"] * 21)) is None and valid_title(" ".join(["w"] * 20))
    assert parse_price(12) == 12.0 and parse_price("$1,299.00") == 1299.0
    assert parse_price("None") is None and parse_price("\u2014") is None and parse_price(None) is None
    assert parse_price(float("nan")) is None and parse_price(True) is None


def test_kcore_cascades():
    # users u1 u1 u2 u2 u3 u3, items a b a b a c
    user, item = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 0, 1, 0, 2])
    keep = kcore_mask(user, item, 2, 3, 3)  # c has 1 -> u3 drops to 1 -> u3 goes -> a, b still 2
    assert keep.tolist() == [True, True, True, True, False, False]
    assert kcore_mask(user, item, 0, 3, 3).all()
    assert not kcore_mask(user, item, 3, 3, 3).any()


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
    assert len(tr) == int(0.8 * n) and len(va) == int(0.9 * n) - int(0.8 * n)  # upstream R2ec's sizes
    assert stats["splits"] == {"train": len(tr), "valid": len(va), "test": len(te)}
    for s in ("train", "valid", "test"):
        assert dd[s]["timestamp"] == sorted(dd[s]["timestamp"])


def test_histories_match_raw(processed, raw_flat):
    dd, stats, _ = processed
    items = set(dd["item_info"]["parent_asin"][1:])
    raw = _raw_interactions(raw_flat)
    # Rows of surviving users on surviving items are exactly the K-cored interactions, each user's first
    # purchase of an item only (--repeat_policy first_only, the default).
    raw = raw[raw["parent_asin"].isin(items)].sort_values(["timestamp", "parent_asin"])
    n_repeats = int(raw.duplicated(["user_id", "parent_asin"]).sum())
    raw = raw.drop_duplicates(["user_id", "parent_asin"])
    assert stats["repeats"]["repeat_purchases_removed"] >= n_repeats
    examples = defaultdict(list)
    for s in ("train", "valid", "test"):
        for ex in dd[s]:
            examples[ex["user_id"]].append(ex)
    for uid in sorted(examples)[:12]:
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
    # the script's stats.json and summary report the repeat purchases (none planted here)
    assert stats["repeats"] == {"repeat_purchases_removed": 0, "examples_with_target_in_shown_history": 0,
                                "examples_dropped": 0} and "repeats (--repeat_policy first_only)" in r.stdout


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
    _expect_error(r, "--st_month", "must be in 1..12, got 13")  # refused by argparse (foundation.config.int_range)


# ----------------------------------------------------------------------------- regression: frozen output

FROZEN = REPO / "tests" / "data" / "preprocess"
FROZEN_WINDOWS = {"synthetic": (2021, 1), "real_format": (2017, 1)}
# Deliberate changes since the freeze (tests/data/preprocess/README.md), applied to the frozen copy:
# the tag regex `<[^>]*>` ate literal "<"/">" text; tags are now `<letter...>`, `</...>`, `<!...>` only.
FROZEN_TITLE_FIXES = {"Math Blaster: 3 2 Edition (PC)": "Math Blaster: 3 < 5 > 2 Edition (PC)"}
# stats.json keys that did not exist then; `item_filter` now counts only metadata lines of items that occur
# in the interactions (the others are skipped unparsed: "not_in_interactions") and has two more reasons.
NEW_STATS_KEYS = {"repeat_policy", "repeats", "timestamp_unit", "timestamps_converted_from_seconds", "rows_read",
                  "dropped"}


def _fix_titles(table: pa.Table) -> pa.Table:
    def fix(v):
        return [FROZEN_TITLE_FIXES.get(t, t) for t in v] if isinstance(v, list) else FROZEN_TITLE_FIXES.get(v, v)

    for c in ("title", "item_title", "history_item_title"):
        if c in table.column_names:
            col = pa.array([fix(v) for v in table[c].to_pylist()], table.schema.field(c).type)
            table = table.set_column(table.schema.get_field_index(c), c, col)
    return table


@pytest.mark.parametrize("name", sorted(FROZEN_WINDOWS))
def test_matches_frozen_pandas_output(name, tmp_path):
    """With --repeat_policy keep (the old behaviour) the columnar engine reproduces the frozen output of the
    pandas pipeline: same examples in the same order, same histories, titles, item ids and stats, except
    the documented changes above and the split boundaries (upstream's formula; equal for these n)."""
    from datasets import load_from_disk

    st_year, st_month = FROZEN_WINDOWS[name]
    out, stats = run_preprocess(PreprocessConfig(
        category=CAT, K=5, st_year=st_year, st_month=st_month, ed_year=2023, ed_month=12, window_size=10,
        data_root_dir=str(tmp_path), raw_dir=str(FROZEN / name / "raw"), min_items=10, repeat_policy="keep"))
    dd = load_from_disk(str(out))
    frozen = {s: _fix_titles(pq.read_table(FROZEN / name / "frozen" / f"{s}.parquet"))
              for s in ("train", "valid", "test", "item_info")}
    new_all = pa.concat_tables([dd[s].data.table for s in ("train", "valid", "test")])
    old_all = pa.concat_tables([frozen[s] for s in ("train", "valid", "test")])
    assert new_all.schema.equals(old_all.schema, check_metadata=False)
    for c in EXAMPLE_COLUMNS:
        assert new_all[c].equals(old_all[c]), (name, c)
    assert dd["item_info"].data.table.equals(frozen["item_info"], check_metadata=False)
    n = new_all.num_rows
    assert [len(dd[s]) for s in ("train", "valid", "test")] == [
        int(n * 0.8), int(n * 0.9) - int(n * 0.8), n - int(n * 0.9)]
    old_stats = json.loads((FROZEN / name / "frozen" / "stats.json").read_text())
    assert set(stats) == set(old_stats) | NEW_STATS_KEYS
    for k in set(old_stats) - {"raw_files", "item_filter", "splits", "split_date_ranges"}:
        assert stats[k] == old_stats[k], k
    assert stats["splits"] == {s: len(dd[s]) for s in ("train", "valid", "test")}
    old_f, new_f = old_stats["item_filter"], stats["item_filter"]
    assert new_f["meta_rows"] == old_f["meta_rows"] and new_f["no_asin"] == old_f["no_asin"]
    assert new_f["meta_rows"] == sum(v for k, v in new_f.items() if k != "meta_rows")
    # the skipped lines are exactly the items with no rating (all of them valid in the real-format sample)
    assert new_f["kept"] + new_f["not_in_interactions"] == old_f["kept"]
    if name == "real_format":
        assert new_f["not_in_interactions"] == 6 and stats["repeats"]["examples_with_target_in_shown_history"] > 0
        assert "Math Blaster: 3 < 5 > 2 Edition (PC)" in dd["item_info"]["title"]


def test_chunks_and_shards_do_not_change_the_data(processed, raw_flat, tmp_path, monkeypatch):
    """Large outputs are written in chunks and several shards per split; the loaded data is the same."""
    import trainers.data.amazon_examples as ex

    monkeypatch.setattr(ex, "CHUNK_EXAMPLES", 50)
    monkeypatch.setattr(ex, "MAX_SHARD_BYTES", 20_000)
    out, _ = run_preprocess(_cfg(raw_flat, tmp_path))
    assert len(list((out / "train").glob("data-*-of-*.arrow"))) > 3
    dd, ref = _load(out), processed[0]
    for s in ("train", "valid", "test", "item_info"):
        assert dd[s].data.table.equals(ref[s].data.table), s


# ----------------------------------------------------------------------------- repeat purchases

def _examples(dd) -> list[dict]:
    return [ex for s in ("train", "valid", "test") for ex in dd[s]]


def test_repeat_policies(tmp_path, capsys):
    """Planted re-purchases: keep leaks (the one candidate also in the history is the target) and warns;
    drop_example and first_only leave no example whose target is in its shown history."""
    from datasets import load_from_disk

    raw = tmp_path / "raw"
    write_amazon_raw(raw, CAT, repeat_rate=0.08, **SMALL)
    res = {}
    for policy in ("keep", "drop_example", "first_only"):
        out, stats = run_preprocess(_cfg(raw, tmp_path / policy, repeat_policy=policy))
        res[policy] = (_examples(load_from_disk(str(out))), stats)
        err = capsys.readouterr().err
        assert ("--repeat_policy keep leaves" in err) == (policy == "keep")
    keep, keep_stats = res["keep"]
    leaks = [ex for ex in keep if ex["item_id"] in ex["history_item_id"]]
    assert len(leaks) == keep_stats["repeats"]["examples_with_target_in_shown_history"] > 20
    n_items = keep_stats["items"]
    for ex in leaks[:20]:  # the evaluation protocol's candidates: negatives exclude the history
        cands = sample_candidates(ex["item_id"], ex["history_item_id"], n_items, 10, 0, ex["interaction_id"])
        assert set(cands) & set(ex["history_item_id"]) == {ex["item_id"]}

    drop, drop_stats = res["drop_example"]
    assert all(ex["item_id"] not in ex["history_item_id"] for ex in drop)
    assert len(drop) == len(keep) - len(leaks) == drop_stats["examples"]
    assert drop_stats["repeats"]["examples_dropped"] == drop_stats["dropped"]["examples"]["target_in_shown_history"]
    assert drop_stats["repeats"]["examples_dropped"] == len(leaks)
    assert drop_stats["interactions"] == keep_stats["interactions"]  # sequences keep the re-purchases
    assert any(len(set(ex["history_item_id"])) < len(ex["history_item_id"]) for ex in drop)

    first, first_stats = res["first_only"]
    assert all(ex["item_id"] not in ex["history_item_id"] for ex in first)
    assert all(len(set(ex["history_item_id"])) == len(ex["history_item_id"]) for ex in first)
    pairs = [(ex["user_id"], ex["item_id"]) for ex in first]
    assert len(pairs) == len(set(pairs))
    assert first_stats["repeats"]["repeat_purchases_removed"] == first_stats["dropped"]["interactions"][
        "repeat_purchase"] > 0
    assert first_stats["repeats"]["examples_with_target_in_shown_history"] == 0


# ----------------------------------------------------------------------------- every dropped row, by reason

T0 = 1_650_000_000_000  # 2022-04-15 in ms


def _write_raw(raw: Path, rating_lines: list[str], items: dict[str, dict]) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / f"{CAT}.csv").write_text("user_id,parent_asin,rating,timestamp\n" + "".join(l + "\n" for l in rating_lines))
    with open(raw / f"meta_{CAT}.jsonl", "w") as f:
        f.writelines(json.dumps({"title": f"Game {asin}", "price": 9.99, "parent_asin": asin, **m}) + "\n"
                     for asin, m in items.items())


def test_every_dropped_row_counted_by_reason(tmp_path):
    # Four users who rate items A, B, C (K=2 keeps them); ids "NA" and "null" are ids like any other.
    good = []
    for k, u in enumerate(["NA", "null", "U3", "U4"]):
        for j, a in enumerate("ABC"):
            ts = T0 + 86_400_000 * (10 * k + j)
            good.append(f"{u},{a},{5 - j}.0,{ts // 1000 if (k, j) == (2, 1) else ts}")  # one row in seconds
    bad = {
        "malformed_line": ["U3,A,5.0,1650000000000,extra"],
        "missing_user_id": [f",A,5.0,{T0}", f",,5.0,{T0}"],  # the first reason wins
        "missing_item_id": [f"U3,,5.0,{T0}"],
        "bad_rating": [f"U3,A,five,{T0}", f"U3,A,nan,{T0}"],
        "rating_out_of_range": [f"U3,A,{r},{T0}" for r in ("0", "-1", "99", "1e308", "5.01")],
        "bad_timestamp": ["U3,A,5.0,soon", "U3,A,5.0,"],
        "duplicate": [good[0]],
        "item_not_in_metadata": [f"U3,Z,5.0,{T0}"],
        "item_no_title": [f"U3,T,5.0,{T0}"],
        "item_invisible_title": [f"U3,V,5.0,{T0}", f"U4,W,4.0,{T0}"],
        "item_no_price": [f"U3,P,5.0,{T0}"],
        "out_of_window": [f"U3,A,4.0,{T0 - 86_400_000 * 800}"],
        "repeat_purchase": [f"U4,A,5.0,{T0 + 86_400_000 * 300}"],
        "kcore": [f"U5,A,5.0,{T0}", f"U4,D,5.0,{T0 + 86_400_000 * 33}"],
    }
    raw = tmp_path / "raw"
    _write_raw(raw, good + [line for lines in bad.values() for line in lines],
               {"A": {}, "B": {}, "C": {}, "D": {}, "T": {"title": None}, "P": {"price": "None"},
                "V": {"title": "\u200b\u200b \u200b"}, "W": {"title": "\u2060\ufeff\u200d\u0301\x07"}})
    out, stats = run_preprocess(_cfg(raw, tmp_path / "data", K=2, st_year=2021, min_items=0))
    dropped = stats["dropped"]["interactions"]
    assert list(dropped) == list(DROP_REASONS)
    assert dropped == {reason: len(bad.get(reason, [])) for reason in DROP_REASONS}
    assert stats["rows_read"] == len(good) + sum(map(len, bad.values())) == sum(dropped.values()) + stats[
        "interactions"]
    assert stats["interactions"] == len(good) and stats["timestamps_converted_from_seconds"] == 1
    assert {"NA", "null"} <= {ex["user_id"] for ex in _examples(_load(out))}
    summary = format_summary(out, stats)
    assert "malformed_line 1" in summary and "repeat_purchase 1" in summary and "kcore 2" in summary
    assert "rating_out_of_range 5" in summary and "item_invisible_title 2" in summary
    assert stats["item_filter"]["invisible_title"] == 2
    ratings = [r for ex in _examples(_load(out)) for r in ex["history_rating"]]
    assert ratings and min(ratings) >= 1 and max(ratings) <= 5  # only ratings of the documented range reach prompts


def test_ratings_at_the_ends_of_the_range_and_fractions_are_kept(tmp_path):
    """1 and 5 stars (written any way: 1, 1.0, 5e0, " 5 ") and fractions inside (4.5) are ratings."""
    lines = [f"U{u},{a},{r},{T0 + 3_600_000 * (3 * u + j)}"
             for u in range(4) for j, (a, r) in enumerate(zip("ABC", ("1", " 5e0 ", "4.5")))]
    raw = tmp_path / "raw"
    _write_raw(raw, lines, {a: {} for a in "ABC"})
    _, stats = run_preprocess(_cfg(raw, tmp_path / "data", K=2, st_year=2021, min_items=0))
    assert stats["interactions"] == 12 and stats["dropped"]["interactions"]["rating_out_of_range"] == 0


def test_a_byte_order_mark_is_read_as_nothing(tmp_path):
    """A UTF-8 BOM at the start of the rating CSV (an Excel export) or of the metadata JSONL changes nothing: the
    same dataset as without it (it used to make the header an unknown column layout)."""
    lines = [f"U{u},{a},5.0,{T0 + 3_600_000 * (3 * u + j)}" for u in range(4) for j, a in enumerate("ABC")]
    plain, bom = tmp_path / "plain", tmp_path / "bom"
    for raw in (plain, bom):
        _write_raw(raw, lines, {a: {} for a in "ABC"})
    for name in (f"{CAT}.csv", f"meta_{CAT}.jsonl"):
        (bom / name).write_bytes(b"\xef\xbb\xbf" + (bom / name).read_bytes())
    _, want = run_preprocess(_cfg(plain, tmp_path / "d1", K=2, st_year=2021, min_items=0))
    _, got = run_preprocess(_cfg(bom, tmp_path / "d2", K=2, st_year=2021, min_items=0))
    assert got["interactions"] == want["interactions"] == 12 and got["dropped"] == want["dropped"]


def _load(out):
    from datasets import load_from_disk

    return load_from_disk(str(out))


def test_timestamp_units(tmp_path):
    """auto decides per row (the old per-file rule kept only the ms rows of a mixed file); s / ms force one unit."""
    lines = [f"U{u},{a},5.0,{(T0 + 3_600_000 * (3 * u + j)) // (1000 if u % 2 else 1)}"
             for u in range(10) for j, a in enumerate("ABC")]
    raw = tmp_path / "raw"
    _write_raw(raw, lines, {a: {} for a in "ABC"})
    _, stats = run_preprocess(_cfg(raw, tmp_path / "auto", K=2, st_year=2021, min_items=0))
    assert stats["interactions"] == 30 and stats["timestamps_converted_from_seconds"] == 15
    _, stats = run_preprocess(_cfg(raw, tmp_path / "ms", K=2, st_year=2021, min_items=0, timestamp_unit="ms"))
    assert stats["interactions"] == 15 and stats["dropped"]["interactions"]["out_of_window"] == 15  # 1970
    with pytest.raises(UserInputError, match=r"Video_Games.csv: data row 1: timestamp \d+ read as seconds"):
        run_preprocess(_cfg(raw, tmp_path / "s", K=2, st_year=2021, min_items=0, timestamp_unit="s"))


def test_reviews_jsonl_with_mixed_types(tmp_path):
    """A review file whose JSON types vary is read line by line, with the same rules as the CSV."""
    raw = tmp_path / "raw"
    rows = [{"user_id": f"U{u}", "parent_asin": a, "rating": 5.0, "timestamp": T0 + 3_600_000 * (3 * u + j),
             "text": "Great<br />"} for u in range(4) for j, a in enumerate("ABC")]
    rows[0]["rating"] = "4"            # a string rating: the typed reader refuses the file
    rows[1]["user_id"] = None          # missing id
    rows[2]["parent_asin"] = None      # falls back to asin
    rows[2]["asin"] = "C"
    rows.append({"user_id": "U0", "parent_asin": "A", "rating": "n/a", "timestamp": T0})
    _write_raw(raw, [], {a: {} for a in "ABC"})
    (raw / f"{CAT}.csv").unlink()
    (raw / f"{CAT}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, stats = run_preprocess(_cfg(raw, tmp_path / "data", K=2, st_year=2021, min_items=0))
    d = stats["dropped"]["interactions"]
    assert stats["rows_read"] == 13 and d["missing_user_id"] == 1 and d["bad_rating"] == 1
    assert stats["interactions"] == 11


def test_empty_split_is_refused_before_writing(tmp_path):
    """5 examples: valid = int(4.5) - int(4) = 0 -> one-line error, and an existing output stays untouched."""
    lines = [f"U{u},{a},5.0,{T0 + 3_600_000 * (3 * u + j)}" for u in range(2) for j, a in enumerate("ABC")]
    raw = tmp_path / "raw"
    _write_raw(raw, lines[:-1], {a: {} for a in "ABC"})
    cfg = _cfg(raw, tmp_path / "data", K=0, st_year=2021, min_items=0)
    existing = tmp_path / "data" / f"{CAT}_0_2021-1-2023-12"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("earlier run")
    with pytest.raises(UserInputError, match="only 3 examples, so the valid split would be empty") as e:
        run_preprocess(cfg)
    assert "\n" not in str(e.value)
    assert (existing / "keep.txt").read_text() == "earlier run" and len(list(existing.parent.iterdir())) == 1


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
