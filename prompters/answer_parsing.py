"""Answer parsing: reading model and API answers back in the formats our prompts ask for (prompters/prompts.py).

strip_think     drop <think>...</think> reasoning blocks (the one implementation every parser uses)
parse_yes_no    the final Yes/No of a binary-judge answer ("Answer: Yes", else the last Yes/No word)
parse_ranking   a listwise ranking answer (API baselines): numbers, enumerations, JSON, titles

`parse_ranking(text, titles)` reads a free-text answer into candidate indices. It accepts numbers ("3, 1, 2",
"3 > 1 > 2", one per line), enumerated lists ("1. Candidate 3 ...", "1. <title>"), JSON (a list, or an object
with a "ranking" list) also inside ```code fences```, candidate titles instead of numbers, and strips <think>
blocks. Out-of-range numbers are ignored and repeats keep their first position. Missing candidates are
appended in their original order ("partial"); with `target_index` given the target goes last among them
(ties are broken against the target, docs/evaluation.md). An answer with nothing usable is "unparseable" and
ranks every candidate in original order with the target last.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from foundation.files import loads_json

ANSWER_TAG_RE = re.compile(r"answer\s*[:：]?\s*\**\s*(yes|no)\b", re.I)
_WORD_RE = re.compile(r"\b(yes|no)\b", re.I)
STATUSES = ("ok", "partial", "unparseable")

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE = re.compile(r"```[^\n`]*\n?(.*?)```", re.S)
_ANSWER_HEAD = re.compile(r"(?:final\s+)?(?:ranking|ranked\s+list|answer|order)\s*(?:is)?\s*[:：]", re.I)
_ENUM_LINE = re.compile(r"^\s*(?:[-*•]\s*)?(?:(?:rank|no\.?|#)\s*)?(\d+)\s*[.):：](?!\d)\s*(.*)$", re.I)
_BRACKETED = re.compile(r"^\s*[\[(]\s*(\d+)\s*[\])]")
_PREFIXED = re.compile(r"^\s*(?:candidate|item|option|#)\s*(?:no\.?|number|#)?\s*[\[(]?\s*(\d+)\b", re.I)
_BARE = re.compile(r"^\s*(\d+)\s*(?:$|[:.\-–—,)\]|(])", re.I)
_CAND_REF = re.compile(r"(?:candidate|item|option)\s*(?:no\.?|number|#)?\s*[\[(]?\s*(\d+)\b|#\s*(\d+)\b", re.I)
_NUMBER = re.compile(r"(?<![\d.])\d+(?!\.\d|\d)")
_RUN_SEP = re.compile(r"^[\s\[\](),;>|/→=\-–—]*(?:(?:and|then)[\s\[\](),;>|/→=\-–—]*)?$", re.I)
_JSON_LIST = re.compile(r"\[[^\[\]]*\]")
_JSON_KEYS = ("ranking", "rankings", "ranked", "rank", "order", "result", "answer", "recommendations", "items")


def strip_think(text: str) -> str:
    """Drop <think>...</think> blocks; keep what follows a stray </think>; cut an unclosed <think> off."""
    text = _THINK_BLOCK.sub(" ", text)
    low = text.lower()
    if "</think>" in low:
        text = text[low.rindex("</think>") + len("</think>"):]
        low = text.lower()
    if "<think>" in low:
        text = text[:low.index("<think>")]
    return text


def _norm(s: str) -> str:
    return " " + " ".join(re.sub(r"[^0-9a-z]+", " ", str(s).lower()).split()) + " "


class _Matcher:
    """Maps numbers and titles to 0-based candidate indices; a repeated title maps to its next unused twin."""

    def __init__(self, K: int, titles: Sequence[str] | None) -> None:
        self.K = K
        self.titles = [_norm(t) for t in titles] if titles else []
        # Longest first, so a title that contains another wins over it.
        self.by_len = sorted({t for t in self.titles if t.strip()}, key=len, reverse=True)

    def num(self, n: int | str) -> int | None:
        n = int(n)
        return n - 1 if 1 <= n <= self.K else None

    def title_index(self, title_norm: str, used: set[int]) -> int:
        idxs = [i for i, t in enumerate(self.titles) if t == title_norm]
        return next((i for i in idxs if i not in used), idxs[0])

    def title_in(self, text: str, used: set[int]) -> int | None:
        """The candidate whose (longest) title occurs in text."""
        t = _norm(text)
        for title in self.by_len:
            if title in t:
                return self.title_index(title, used)
        return None

    def titles_in_order(self, text: str) -> list[int]:
        """All candidate titles occurring in text, by position (longest title wins at one position)."""
        t = _norm(text)
        hits: list[tuple[int, int, str]] = []
        for title in self.by_len:
            start = t.find(title)
            while start != -1:
                hits.append((start, -len(title), title))
                start = t.find(title, start + 1)
        hits.sort()
        out: list[int] = []
        used: set[int] = set()
        covered_to = -1
        for start, neg_len, title in hits:
            if start < covered_to:  # inside a longer title already taken
                continue
            i = self.title_index(title, used)
            used.add(i)
            out.append(i)
            covered_to = start - neg_len - 1
        return out

    def element(self, x: Any, used: set[int]) -> int | None:
        """One JSON list element: a number, a numeric string, a title, or an object naming one of those."""
        if isinstance(x, bool):
            return None
        if isinstance(x, int):
            return self.num(x)
        if isinstance(x, float):
            return self.num(int(x)) if x.is_integer() else None
        if isinstance(x, str):
            m = _BRACKETED.match(x) or _PREFIXED.match(x) or re.match(r"^\s*(\d+)\s*$", x)
            if m:
                return self.num(m.group(1))
            return self.title_in(x, used)
        if isinstance(x, dict):
            for k in ("candidate", "index", "number", "id", "item", "candidate_number", "title", "name"):
                if k in x:
                    return self.element(x[k], used)
        return None


def _collect(values: Iterable[int | None]) -> list[int]:
    return [v for v in values if v is not None]


def _from_json(obj: Any, m: _Matcher) -> list[int]:
    if isinstance(obj, dict):
        lower = {str(k).lower(): v for k, v in obj.items()}
        lst = next((lower[k] for k in _JSON_KEYS if isinstance(lower.get(k), list)), None)
        if lst is None:
            lst = next((v for v in obj.values() if isinstance(v, list)), None)
        obj = lst
    if not isinstance(obj, list):
        return []
    out: list[int] = []
    used: set[int] = set()
    for x in obj:
        i = m.element(x, used)
        if i is not None:
            used.add(i)
            out.append(i)
    return out


def _loads(s: str) -> Any:
    try:
        return loads_json(s)  # bounded nesting: an answer is whatever a server sent
    except ValueError:
        return None


def _line_item(rest: str, m: _Matcher, used: set[int]) -> int | None:
    """The candidate named by the text of one enumerated line."""
    for rx in (_BRACKETED, _PREFIXED, _BARE):
        hit = rx.match(rest)
        if hit:
            return m.num(hit.group(1))
    i = m.title_in(rest, used)
    if i is not None:
        return i
    ref = _CAND_REF.search(rest)
    return m.num(ref.group(1) or ref.group(2)) if ref else None


def _from_enumeration(text: str, m: _Matcher) -> list[int]:
    lines = [_ENUM_LINE.match(line) for line in text.splitlines()]
    enum = [(int(x.group(1)), x.group(2)) for x in lines if x]
    if len(enum) < 2:
        return []
    markers = [k for k, _ in enum]
    if markers == list(range(1, len(markers) + 1)):
        # "1. <item>", "2. <item>": the markers are positions, the line text names the candidate.
        used: set[int] = set()
        out: list[int] = []
        for _, rest in enum:
            i = _line_item(rest, m, used)
            if i is not None:
                used.add(i)
                out.append(i)
        if out or any(rest.strip() for _, rest in enum):
            return out
    # Non-sequential markers ("7. Title 7", "3. Title 3") or bare numbered lines: the markers are candidates.
    return _collect(m.num(k) for k in markers)


def _from_number_runs(text: str, m: _Matcher) -> list[int]:
    nums = list(_NUMBER.finditer(text))
    if not nums:
        return []
    runs: list[list[re.Match]] = [[nums[0]]]
    for prev, cur in zip(nums, nums[1:]):
        if _RUN_SEP.match(text[prev.end():cur.start()]):
            runs[-1].append(cur)
        else:
            runs.append([cur])
    best = max(runs[::-1], key=len)  # the longest run; among equals the last (answers come last)
    if len(best) == 1 and len(text.strip()) > 40:
        return []  # one number inside prose is more likely a count than an answer
    return _collect(m.num(x.group()) for x in best)


def _parse_body(text: str, m: _Matcher) -> list[int]:
    stripped = text.strip().strip("`").strip()
    if stripped[:1] in "[{":
        obj = _loads(stripped)
        if obj is not None:
            got = _from_json(obj, m)
            if got:
                return got
    got = _from_enumeration(text, m)
    if got:
        return got
    # JSON embedded in prose: the longest flat list that parses, then a whole {...} object.
    lists = [_from_json(_loads(x.group()), m) for x in _JSON_LIST.finditer(text)]
    lists = [x for x in lists if x]
    if lists:
        return max(lists, key=len)
    brace = text.find("{")
    if brace != -1 and "}" in text:
        got = _from_json(_loads(text[brace:text.rindex("}") + 1]), m)
        if got:
            return got
    refs = [m.num(x.group(1) or x.group(2)) for x in _CAND_REF.finditer(text)]
    if len(refs) >= 2:
        return _collect(refs)
    got = _from_number_runs(text, m)
    if got:
        return got
    return m.titles_in_order(text)


def fallback_ranking(K: int, target_index: int | None = None) -> list[int]:
    """Original order with the target (if known) last: what an unusable answer earns."""
    order = [i for i in range(K) if i != target_index]
    return order + ([target_index] if target_index is not None and 0 <= target_index < K else [])


def parse_ranking(text: str | None, titles: Sequence[str] | None = None, K: int | None = None,
                  target_index: int | None = None) -> tuple[list[int], str]:
    """(a full ranking as 0-based candidate indices, status in ok|partial|unparseable). See the module doc."""
    if K is None:
        if not titles:
            raise ValueError("parse_ranking needs K or the candidate titles")
        K = len(titles)
    m = _Matcher(K, titles)
    body = strip_think(text or "")
    parsed: list[int] = []
    fences = [f.group(1) for f in _FENCE.finditer(body)]
    for chunk in fences:
        parsed = _parse_body(chunk, m)
        if parsed:
            break
    if not parsed:
        plain = _FENCE.sub(lambda f: "\n" + f.group(1) + "\n", body)
        # Prefer what follows the last "Ranking:"/"Answer:" heading when it holds a ranking.
        heads = list(_ANSWER_HEAD.finditer(plain))
        if heads:
            parsed = _parse_body(plain[heads[-1].end():], m)
        if not parsed:
            parsed = _parse_body(plain, m)
    seen: set[int] = set()
    ranking = [i for i in parsed if 0 <= i < K and not (i in seen or seen.add(i))]
    if not ranking:
        return fallback_ranking(K, target_index), "unparseable"
    if len(ranking) == K:
        return ranking, "ok"
    missing = [i for i in range(K) if i not in seen]
    if target_index in missing:
        missing = [i for i in missing if i != target_index] + [target_index]
    return ranking + missing, "partial"


# ---- binary judge answers ----------------------------------------------------------------------
def parse_yes_no(text: str | None) -> str | None:
    """The final answer of a response: the last "Answer: Yes|No" tag, else the last standalone Yes/No word,
    ignoring <think> blocks. Returns "Yes", "No" or None (unparseable)."""
    if not text:
        return None
    body = strip_think(text)
    tags = ANSWER_TAG_RE.findall(body)
    if tags:
        return tags[-1].capitalize()
    words = _WORD_RE.findall(body)
    return words[-1].capitalize() if words else None
