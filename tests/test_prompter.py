"""Binary prompter: shared prefix, windowing, truncation, template validation; candidate sampler."""
import pytest

from prompters.binary_prompter import BinaryPrompter, load_template
from tests.fixtures.assets import build_tiny_tokenizer
from trainers.data.candidates import sample_candidates
from trainers.foundation.errors import UserInputError

ITEMS = [{"title": "pad_title", "description": [], "features": []}] + [
    {"title": f"Racing Turbo {i}", "description": ["fast cars " * 40], "features": [f"feature {i}"]}
    for i in range(1, 40)
]
EXAMPLE = {"history_item_id": [1, 2, 3, 4, 5], "history_rating": [5.0, 4.0, 3.5, 5.0, 2.0]}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_prefix_shared_and_concatenation_is_the_full_prompt(tok):
    p = BinaryPrompter(tok, ITEMS, max_len_per_item=5, user_window_size=3)
    up = p.build(EXAMPLE, [7, 8, 9])
    assert up.K == 3 and up.candidates == [7, 8, 9]
    text = tok.decode(up.full_ids(1))
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\nAnswer:")
    assert "Racing Turbo 8" in text and "Racing Turbo 7" not in text
    # only the last 3 history items, oldest first
    prefix = tok.decode(up.prefix_ids)
    assert "Racing Turbo 1 " not in prefix and "Racing Turbo 2 " not in prefix
    assert prefix.index("Racing Turbo 3") < prefix.index("Racing Turbo 5")
    assert "(rating: 3.5)" in prefix
    # candidate text is not in the shared prefix
    assert "Racing Turbo 7" not in prefix and "Candidate item:" in prefix


def test_item_text_truncated_to_max_len_per_item(tok):
    short = BinaryPrompter(tok, ITEMS, max_len_per_item=3).item_text(1)
    long = BinaryPrompter(tok, ITEMS, max_len_per_item=30).item_text(1)
    assert len(tok(short, add_special_tokens=False)["input_ids"]) <= 3 + 3  # " - " separator
    assert len(long) > len(short)


def test_reasoning_prompt_has_no_answer_prefix(tok):
    p = BinaryPrompter(tok, ITEMS, reasoning=True)
    text = tok.decode(p.build(EXAMPLE, [9]).full_ids(0))
    assert text.endswith("<|im_start|>assistant\n") and "Answer: Yes" in text


def test_prompt_template_file(tmp_path, tok):
    f = tmp_path / "t.txt"
    f.write_text("History:\n{history}\nItem: {candidate}\nLike it? {answer_instruction}")
    p = BinaryPrompter(tok, ITEMS, template_file=str(f))
    assert "History:" in tok.decode(p.build(EXAMPLE, [9]).prefix_ids)
    f.write_text("Item: {candidate}")
    with pytest.raises(UserInputError, match=r"--prompt_template .*lacks placeholder.*\{history\}"):
        load_template("other", str(f))
    f.write_text("{candidate} then {history}")
    with pytest.raises(UserInputError, match="must come before"):
        load_template("other", str(f))
    with pytest.raises(UserInputError, match="--dataset_type"):
        load_template("books")
    with pytest.raises(UserInputError, match="--user_window_size"):
        BinaryPrompter(tok, ITEMS, user_window_size=0)


def test_candidates_contain_target_exclude_history_and_are_seeded():
    hist = [1, 2, 3]
    a = sample_candidates(10, hist, n_items=39, K=8, seed=0, interaction_id=5)
    assert len(a) == 8 and len(set(a)) == 8 and 10 in a
    assert not set(a) & {0, 1, 2, 3}
    assert a == sample_candidates(10, hist, n_items=39, K=8, seed=0, interaction_id=5)
    assert a != sample_candidates(10, hist, n_items=39, K=8, seed=1, interaction_id=5)
    # dense case: every eligible item is used exactly once
    full = sample_candidates(10, hist, n_items=39, K=36, seed=0, interaction_id=5)
    assert sorted(full) == [i for i in range(1, 40) if i not in hist]
    with pytest.raises(UserInputError, match="--K 37"):
        sample_candidates(10, hist, n_items=39, K=37, seed=0, interaction_id=5)
