"""trainers/data/amazon_interactions.py: the K-core filter and the rules for reading ratings, timestamps and
review files (through run_preprocess on hand-written raw files)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from foundation.errors import UserInputError
from tests.test_preprocess import CAT, T0, _cfg, _write_raw
from trainers.data.amazon import run_preprocess
from trainers.data.amazon_interactions import kcore_mask


def test_kcore_cascades():
    # users u1 u1 u2 u2 u3 u3, items a b a b a c
    user, item = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 0, 1, 0, 2])
    keep = kcore_mask(user, item, 2, 3, 3)  # c has 1 -> u3 drops to 1 -> u3 goes -> a, b still 2
    assert keep.tolist() == [True, True, True, True, False, False]
    assert kcore_mask(user, item, 0, 3, 3).all()
    assert not kcore_mask(user, item, 3, 3, 3).any()


def test_ratings_at_the_ends_of_the_range_and_fractions_are_kept(tmp_path):
    """1 and 5 stars (written any way: 1, 1.0, 5e0, " 5 ") and fractions inside (4.5) are ratings."""
    lines = [f"U{u},{a},{r},{T0 + 3_600_000 * (3 * u + j)}"
             for u in range(4) for j, (a, r) in enumerate(zip("ABC", ("1", " 5e0 ", "4.5")))]
    raw = tmp_path / "raw"
    _write_raw(raw, lines, {a: {} for a in "ABC"})
    _, stats = run_preprocess(_cfg(raw, tmp_path / "data", K=2, st_year=2021, min_items=0))
    assert stats["interactions"] == 12 and stats["dropped"]["interactions"]["rating_out_of_range"] == 0


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
