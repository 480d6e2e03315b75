"""prompters/binary_prompter.py: shared prefix, windowing, truncation, template validation."""
import pytest

from foundation.errors import UserInputError, cli_message
from prompters.abstract_prompter import PromptError
from prompters.binary_prompter import BinaryPrompter, load_template
from tests.fixtures.assets import build_tiny_tokenizer

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
    # the prompter names the setting; the script names the flag (foundation.errors.cli_message)
    with pytest.raises(PromptError, match=r"^prompt_template .*lacks placeholder.*\{history\}") as e:
        load_template("other", str(f))
    assert cli_message(e.value).startswith(f"--prompt_template {f}: template lacks placeholder")
    f.write_text("{candidate} then {history}")
    with pytest.raises(UserInputError, match="must come before"):
        load_template("other", str(f))
    with pytest.raises(PromptError, match="^dataset_type 'books': must be movies|other") as e:
        load_template("books")
    assert cli_message(e.value) == "--dataset_type 'books': must be movies|other"
    with pytest.raises(PromptError, match="^user_window_size 0: must be >= 1") as e:
        BinaryPrompter(tok, ITEMS, user_window_size=0)
    assert cli_message(e.value, {"user_window_size": "--window"}) == "--window 0: must be >= 1"
