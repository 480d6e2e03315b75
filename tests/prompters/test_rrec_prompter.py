"""prompters/rrec_prompter.py: RRec's user and item prompts byte for byte against upstream's (golden strings), the
user sequence cut at <answer>, and upstream's time-ago and description rules."""
from __future__ import annotations

from tests.test_rrec import CAT, DAY_MS, HOUR_MS, MIN_MS, SYSTEM, _example, _item_rows, tiny_model  # noqa: F401

GOLDEN_USER = (
    SYSTEM + "<|im_start|>user\n"
    "Analyze in depth and finally recommend next video game I might purchase inside <answer> and </answer>.\n"
    "For example, <answer>a product</answer>.\n"
    "\n"
    "Below is my historical video games purchases and ratings (out of 5):\n"
    "3d 4.5h ago: [Zelda] (5.0)\n"
    "2h 30.5min ago: [Mario Kart] (4.0)\n"
    "1.5min ago: [Tetris] (3.0)<|im_end|>\n"
    "<|im_start|>assistant\n")
GOLDEN_ITEM_ZELDA = (
    SYSTEM + "<|im_start|>user\n"
    "Summarize key attributes of the following video game inside <answer> and </answer>.\n"
    "\n"
    "Title: Zelda\nUser Rating: 4.5\nNumber of Buyers: 120\nDescription: second part. first part.<|im_end|>\n"
    "<|im_start|>assistant\n<answer>")


def test_golden_prompts(tiny_model):  # noqa: F811 (fixture)
    from models.abstract_models import load_tokenizer
    from prompters.rrec_prompter import RRecPrompter

    tok = load_tokenizer(tiny_model)
    p = RRecPrompter(tok, _item_rows(), CAT, user_window_size=3)
    ex = _example()
    assert p.user_prompt(ex) == GOLDEN_USER
    assert p.item_prompt(1) == GOLDEN_ITEM_ZELDA
    assert p.item_prompt(2).endswith("Number of Buyers: 7\nDescription: <|im_end|>\n<|im_start|>assistant\n<answer>")
    long = " ".join([f"v{i}" for i in range(60)] + [f"w{i}" for i in range(40)]) + "..."  # reversed, 100 words
    assert p.item_prompt(3).endswith(f"Description: {long}<|im_end|>\n<|im_start|>assistant\n<answer>")
    assert "Description: a\nb<|im_end|>" in p.item_prompt(4)  # under 100 words the text is kept verbatim
    # --no-item_rating_stats: the same prompt without the crawl-time rating totals
    bare = RRecPrompter(tok, _item_rows(), CAT, user_window_size=3, item_rating_stats=False)
    assert bare.item_prompt(1) == GOLDEN_ITEM_ZELDA.replace("User Rating: 4.5\nNumber of Buyers: 120\n", "")
    assert bare.user_prompt(ex) == GOLDEN_USER
    # the user vector is read after the reasoning, cut at (and including) its first <answer>, or after an
    # appended <answer> when the model never wrote one
    assert p.user_sequence(ex, "I like RPGs. <answer>Zelda</answer>") == GOLDEN_USER + "I like RPGs. <answer>"
    assert p.user_sequence(ex, "no tag") == GOLDEN_USER + "no tag<answer>"
    ids, start = p.user_sequence_ids(ex, "I like RPGs. <answer>more")
    assert ids[:start] == p.user_ids(ex) and tok.decode(ids[start:]) == "I like RPGs. <answer>"
    # a category upstream does not name falls back to generic words; the window keeps the newest items
    q = RRecPrompter(tok, _item_rows(), "Toys_and_Games", user_window_size=1)
    assert "recommend next product I might" in q.user_prompt(ex)
    assert "(out of 5):\n1.5min ago: [Tetris] (3.0)<|im_end|>" in q.user_prompt(ex)


def test_time_ago_and_description_rules():
    from prompters.rrec_prompter import format_description, format_time_ago

    assert format_time_ago(3 * DAY_MS + 4 * HOUR_MS + 30 * MIN_MS) == "3d 4.5h ago"
    assert format_time_ago(DAY_MS) == "1d 0.0h ago"
    assert format_time_ago(2 * HOUR_MS + 30 * MIN_MS + 30_000) == "2h 30.5min ago"
    assert format_time_ago(90_000) == "1.5min ago"
    assert format_time_ago(999) == "0.0min ago"  # whole seconds only, as timedelta.seconds
    assert format_time_ago(-HOUR_MS) == "23h 0.0min ago"  # upstream's timedelta arithmetic on a negative gap
    assert format_description(["b", "a"]) == "a b" and format_description([]) == "" and format_description(None) == ""
    assert format_description([" ".join(["x"] * 101)]) == " ".join(["x"] * 100) + "..."
    assert format_description([" ".join(["x"] * 100)]) == " ".join(["x"] * 100)
