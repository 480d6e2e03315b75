"""Amazon Reviews 2023 metadata -> the cleaned rows of item_info.

Decisions not fixed by the design:
- text is cleaned by html-unescaping twice (some fields are double-escaped, `&amp;amp;`), replacing
  tags by a space and collapsing whitespace. A tag is `<` directly followed by a letter, `/letter` or `!`
  and running to the next `>` without another `<`: "<span id=x>", "</b>", "<br/>", "<!-- -->" go,
  while a literal "<" or ">" in text stays ("3 < 5 > 2", "I <3 it");
- an item is dropped if its cleaned title is empty or longer than 20 words (no_title), or holds no visible
  character: only zero-width spaces, joiners, other format or control characters, or combining marks, which
  whitespace collapsing keeps (invisible_title);
- a price is valid if it is a finite non-negative number or a string that parses as one after
  removing "$" and ","; "None", "—", null, "from 12.99" are invalid (the item is dropped unless
  --keep_items_without_price);
- when a parent_asin has several valid metadata lines the last one wins.

Only metadata lines of items that occur in the interactions are parsed: a cheap scan of each line
for its `"parent_asin": "..."` / `"asin": "..."` values skips the others (real metadata files hold
many more items than the 5-core rating files). A line whose asin the scan cannot read exactly (escapes,
no such key) is always parsed, so the skip never loses a needed item.
"""
from __future__ import annotations

import html
import json
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path

from trainers.data.amazon_files import iter_lines
from foundation.errors import UserInputError
from foundation.files import loads_json

MAX_TITLE_WORDS = 20
ITEM_COLUMNS = [
    "parent_asin", "item_id", "title", "main_category", "average_rating", "rating_number",
    "features", "description", "price", "store", "categories", "details",
]
PAD_ASIN, PAD_TITLE = "pad_asin", "pad_title"
# Drop reasons of an item, in the order they are checked; also the per-interaction reasons "item_<reason>".
ITEM_DROP_REASONS = ("no_title", "invisible_title", "no_price")
# Unicode categories that show something: letters, numbers, punctuation, symbols (not marks, separators, Cc/Cf/Co/Cn)
_VISIBLE_CATEGORIES = ("L", "N", "P", "S")

_TAG_RE = re.compile(r"<(?:/?[A-Za-z][^<>]*|![^<>]*)>")
_ASIN_VALUE_RE = re.compile(r'"(?:parent_asin|asin)"\s*:\s*"([^"\\]*)"')


def clean_text(s) -> str:
    """html unescape (twice), tags -> space, collapse whitespace; non-strings become ''."""
    if not isinstance(s, str):
        return ""
    if "&" in s:
        s = html.unescape(html.unescape(s))
    if "<" in s:
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


def has_visible_character(text: str) -> bool:
    """Whether text shows anything: a letter, number, punctuation mark or symbol (a title of zero-width spaces
    does not)."""
    return any(unicodedata.category(c)[0] in _VISIBLE_CATEGORIES for c in text)


def title_problem(raw) -> tuple[str, str | None]:
    """(cleaned title, None) or (cleaned title, the item drop reason: no_title, invisible_title)."""
    t = clean_text(raw)
    if not t or len(t.split()) > MAX_TITLE_WORDS:
        return t, "no_title"
    if not has_visible_character(t):
        return t, "invisible_title"
    return t, None


def valid_title(raw) -> str | None:
    """The cleaned title, or None if missing/empty/over MAX_TITLE_WORDS words/without a visible character."""
    t, problem = title_problem(raw)
    return None if problem else t


def _str_list(v) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        return []
    return [c for c in (clean_text(x) for x in v) if c]


def _opt_float(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return x if math.isfinite(x) else None


def _opt_int(v) -> int | None:
    x = _opt_float(v)
    return int(x) if x is not None else None


def item_row(m: dict, asin: str, title: str, price: float | None) -> dict:
    """The item_info row (without item_id) of one metadata record."""
    details = m.get("details")
    return {
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


def pad_item() -> dict:
    return {"parent_asin": PAD_ASIN, "item_id": 0, "title": PAD_TITLE, "main_category": "",
            "average_rating": None, "rating_number": None, "features": [], "description": [],
            "price": None, "store": "", "categories": [], "details": "{}"}


def _needed(line: str, wanted: set[str] | None) -> bool:
    """False only when the line's asin values are all readable by the scan and none is wanted."""
    if wanted is None:
        return True
    values = _ASIN_VALUE_RE.findall(line)
    if len(values) != line.count('"parent_asin"') + line.count('"asin"'):
        return True
    return not values or any(v in wanted for v in values)


def load_items(path: str | Path, keep_items_without_price: bool = False,
               wanted: set[str] | None = None) -> tuple[dict[str, dict], dict[str, str], dict]:
    """Read the metadata JSONL.

    Returns ({parent_asin: cleaned row} of kept items, {parent_asin: drop reason} of dropped items,
    counts). With `wanted` (the asins that occur in the interactions) other lines are skipped and
    counted as "not_in_interactions". counts: meta_rows = not_in_interactions + no_asin + bad_title +
    invisible_title + bad_price + duplicate_asin + kept.
    """
    path = Path(path)
    items: dict[str, dict] = {}
    dropped: dict[str, str] = {}
    counts = Counter({k: 0 for k in ("meta_rows", "not_in_interactions", "no_asin", "bad_title", "invisible_title",
                                     "bad_price", "duplicate_asin")})
    checked_layout = False
    for n, line in iter_lines(path, f"reading {path.name}"):
        if not line.strip():
            continue
        counts["meta_rows"] += 1
        if checked_layout and not _needed(line, wanted):
            counts["not_in_interactions"] += 1
            continue
        try:
            m = loads_json(line)
        except ValueError as e:
            raise UserInputError(f"{path}: line {n} is not JSON ({e})") from None
        if not isinstance(m, dict) or (not checked_layout and "title" not in m):
            found = sorted(m)[:10] if isinstance(m, dict) else type(m).__name__
            raise UserInputError(f"{path}: unknown metadata layout: found {found}, expected "
                                 f"parent_asin, title, price, ... (Amazon Reviews 2023 meta)")
        checked_layout = True
        asin = m.get("parent_asin") or m.get("asin")
        if not isinstance(asin, str) or not asin:
            counts["no_asin"] += 1
            continue
        if wanted is not None and asin not in wanted:
            counts["not_in_interactions"] += 1
            continue
        title, problem = title_problem(m.get("title"))
        if problem is not None:
            counts["bad_title" if problem == "no_title" else problem] += 1
            dropped.setdefault(asin, problem)
            continue
        price = parse_price(m.get("price"))
        if price is None and not keep_items_without_price:
            counts["bad_price"] += 1
            dropped.setdefault(asin, "no_price")
            continue
        if asin in items:
            counts["duplicate_asin"] += 1
        items[asin] = item_row(m, asin, title, price)
    counts["kept"] = len(items)
    for asin in items:
        dropped.pop(asin, None)
    return items, dropped, dict(counts)
