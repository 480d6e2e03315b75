"""prompters/answer_parsing.py: the API ranking parser (numbers, arrows, JSON, fences, titles, think blocks, partial
and unparseable answers ranked with the target last) and the judge's Yes/No parser."""
from __future__ import annotations

import pytest

from prompters.answer_parsing import fallback_ranking, parse_ranking, parse_yes_no, strip_think

TITLES = ["Turbo Racing Quest", "Puzzle World", "Super Mario 64", "Puzzle World Deluxe", "3 Kings"]


@pytest.mark.parametrize("text,expected,status", [
    ("3, 1, 2, 5, 4", [2, 0, 1, 4, 3], "ok"),
    ("3 > 1 > 2 > 5 > 4", [2, 0, 1, 4, 3], "ok"),
    ("3\n1\n2\n5\n4", [2, 0, 1, 4, 3], "ok"),
    ("[3,1,2,5,4]", [2, 0, 1, 4, 3], "ok"),
    ("My ranking: [3, 1, 2, 5, 4] because ...", [2, 0, 1, 4, 3], "ok"),
    ('{"ranking": [5, 4, 3, 2, 1]}', [4, 3, 2, 1, 0], "ok"),
    ('```json\n{"ranking": [2, 1, 3, 4, 5]}\n```', [1, 0, 2, 3, 4], "ok"),
    ("```\n4, 3, 2, 1, 5\n```", [3, 2, 1, 0, 4], "ok"),
    ("1. Candidate 3: Super Mario 64\n2. Candidate 1\n3. [5] 3 Kings\n4. 2\n5. 4", [2, 0, 4, 1, 3], "ok"),
    ("1. Puzzle World Deluxe\n2. Puzzle World\n3. Super Mario 64\n4. 3 Kings\n5. Turbo Racing Quest",
     [3, 1, 2, 4, 0], "ok"),
    ("1. **Super Mario 64** (candidate 3)\n2. **3 Kings**", [2, 4, 0, 1, 3], "partial"),
    ('["Super Mario 64", "Puzzle World", "Turbo Racing Quest", "3 Kings", "Puzzle World Deluxe"]',
     [2, 1, 0, 4, 3], "ok"),
    ("<think>maybe 1, 2, 3, 4, 5</think>\nRanking: 5 > 4 > 3 > 2 > 1", [4, 3, 2, 1, 0], "ok"),
    ("The user rated 10 items, mostly 4.5 stars.\nFinal ranking: 4, 2, 1, 3, 5.", [3, 1, 0, 2, 4], "ok"),
    ("5.\n3.\n1.\n2.\n4.", [4, 2, 0, 1, 3], "ok"),
    ("2, 2, 1, 2", [1, 0, 2, 3, 4], "partial"),            # repeats keep the first
    ("7, 3, 0, 1, 9", [2, 0, 1, 3, 4], "partial"),         # out of range ignored
    ("I think Puzzle World is best, then Turbo Racing Quest.", [1, 0, 2, 3, 4], "partial"),
])
def test_parser_cases(text, expected, status):
    assert parse_ranking(text, TITLES) == (expected, status)


@pytest.mark.parametrize("text", ["no idea", "", None, "9, 8, 7", "<think>3, 1, 2</think>", "<think>1, 2, 3, 4"])
def test_unparseable_ranks_target_last(text):
    assert parse_ranking(text, TITLES, target_index=1) == ([0, 2, 3, 4, 1], "unparseable")
    assert parse_ranking(text, TITLES) == ([0, 1, 2, 3, 4], "unparseable")


def test_partial_appends_missing_in_order_target_last():
    assert parse_ranking("4, 2", TITLES) == ([3, 1, 0, 2, 4], "partial")
    assert parse_ranking("4, 2", TITLES, target_index=0) == ([3, 1, 2, 4, 0], "partial")
    assert parse_ranking("4, 2", TITLES, target_index=3) == ([3, 1, 0, 2, 4], "partial")


def test_duplicate_titles_map_to_distinct_candidates():
    titles = ["Same Game", "Other", "Same Game"]
    assert parse_ranking('["Same Game", "Same Game", "Other"]', titles) == ([0, 2, 1], "ok")


def test_strip_think_and_fallback():
    assert strip_think("a<think>x</think>b").replace(" ", "") == "ab"
    assert strip_think("reasoning...</think>3, 1") == "3, 1"
    assert fallback_ranking(4, 0) == [1, 2, 3, 0]


@pytest.mark.parametrize("text,expected", [
    ("Answer: Yes", "Yes"), ("answer:no", "No"), ("**Answer:** Yes.", "Yes"), ("No", "No"), ("yes!", "Yes"),
    ("The user might say yes, but overall... Answer: No", "No"),
    ("Yes, they like racing. No doubt.\nAnswer: Yes", "Yes"),
    ("<think>Answer: No? no...</think>\nAnswer: Yes", "Yes"), ("<think>yes yes yes", None),
    ("reasoning</think> No", "No"), ("I cannot tell.", None), ("", None), (None, None),
    ("Yesterday's nonsense; nobody knows", None), ("yes... actually no", "No"),
])
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected
