"""prompters/api_prompter.py: the ranking prompt sent to an API model (history window, numbered candidates, item
text, the movies wording, a system prompt, a template file)."""
from __future__ import annotations

import pytest


def test_api_prompter_renders_window_candidates_and_text(tmp_path):
    from prompters.api_prompter import ApiRankingPrompter
    from foundation.errors import UserInputError

    rows = [{"title": "pad"}] + [{"title": f"Game {i}", "description": [f"desc {i} one two three"], "features": []}
                                 for i in range(1, 8)]
    ex = {"history_item_id": [1, 2, 3, 4], "history_rating": [5.0, 4.0, 3.5, 2.0]}
    p = ApiRankingPrompter(rows, user_window_size=2)
    text = p.render(ex, [7, 5, 6])
    assert "Game 1" not in text and "Game 2" not in text  # only the last 2 history items
    assert "1. Game 3 (rating: 3.5)\n2. Game 4 (rating: 2)" in text
    assert "1. Game 7\n2. Game 5\n3. Game 6" in text and "following 3 candidate" in text and "desc" not in text
    assert p.candidate_titles([7, 5]) == ["Game 7", "Game 5"]
    p = ApiRankingPrompter(rows, user_window_size=2, max_len_per_item=2, dataset_type="movies", system_prompt="S")
    msgs = p.messages(ex, [7])
    assert msgs[0] == {"role": "system", "content": "S"} and "watched" in msgs[1]["content"]
    assert "1. Game 7 - desc 7\n" in msgs[1]["content"]
    bad = tmp_path / "t.txt"
    bad.write_text("{history} only")
    with pytest.raises(UserInputError, match="candidates"):
        ApiRankingPrompter(rows, template_file=str(bad))
    good = tmp_path / "g.txt"
    good.write_text("H:{history}\nC:{candidates}")
    assert ApiRankingPrompter(rows, template_file=str(good)).render(ex, [5]).startswith("H:1. Game 1")
