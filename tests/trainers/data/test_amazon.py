"""trainers/data/amazon.py: run_preprocess on synthetic Amazon Reviews 2023 raw files (columns, ids, the
chronological split, K-core, the window extension, repeat purchases), the frozen output of the pandas pipeline it
replaced (tests/data/preprocess), and hand-written files for every kind of dropped row."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures.synthetic_amazon import write_amazon_raw
from foundation.errors import UserInputError
from tests.test_preprocess import (
    CAT,
    SMALL,
    T0,
    _cfg,
    _raw_interactions,
    _write_raw,
    raw_flat,  # noqa: F401 (a fixture)
)
from trainers.data.amazon import (
    DROP_REASONS,
    EXAMPLE_COLUMNS,
    ITEM_COLUMNS,
    PreprocessConfig,
    format_summary,
    run_preprocess,
)
from trainers.data.candidates import sample_candidates

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def processed(raw_flat, tmp_path_factory):  # noqa: F811 (fixture)
    from datasets import load_from_disk

    out, stats = run_preprocess(_cfg(raw_flat, tmp_path_factory.mktemp("data")))
    return load_from_disk(str(out)), stats, out


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


def test_histories_match_raw(processed, raw_flat):  # noqa: F811 (fixture)
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


def test_window_extension(raw_flat, tmp_path):  # noqa: F811 (fixture)
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


def test_keep_items_without_price(raw_flat, tmp_path, processed):  # noqa: F811 (fixture)
    _, stats = run_preprocess(_cfg(raw_flat, tmp_path, keep_items_without_price=True))
    assert stats["items"] > processed[1]["items"]


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
