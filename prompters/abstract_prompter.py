"""The prompter base class (the original README's prompters/abstract_prompter.py): what every prompter shares.

A prompter turns a processed dataset's examples and items into what a model reads. The three of them
(prompters/binary_prompter.py: the judge's Yes/No prompts; rrec_prompter.py: R2ec's user and item prompts;
api_prompter.py: the listwise ranking an API model answers) all hold

  the item rows       read through rendering.safe_item_rows (special-token strings in item text neutralised for
                      the prompter's tokenizer, or for the common chat families when there is none);
  the tokenizer       None for API prompts (the server tokenizes); `encode` adds no special tokens, since the
                      chat template already holds any BOS the model wants;
  the history window  the newest `user_window_size` history items of an example (`history_window`), rendered as
                      numbered, rated lines by the binary and API prompters (`history_text`, their shared
                      format) and as time-ago lines by RRec's;
  item text           each prompter's own truncation of an item's description and features (`item_text`: tokens
                      for the judge, whitespace words for API models, upstream's 100 words for RRec).

Bad settings raise PromptError (a foundation.errors.SettingError): the message names the setting as the prompter
knows it ('user_window_size 0: must be >= 1'); the script that took it from a flag names the flag.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Sequence

from foundation.errors import SettingError
from prompters import prompts
from prompters.rendering import safe_item_rows

NO_HISTORY_TEXT = "(no earlier purchases)"
DATASET_TYPES = ("movies", "other")


class PromptError(SettingError):
    """A prompt setting (window size, item length, template, dataset type, model type) or a tokenizer's chat
    template that cannot make the prompt."""


def item_raw_text(row: dict) -> str:
    """An item's description then features as one string ('' if none), before any truncation."""
    parts = list(row.get("description") or []) + list(row.get("features") or [])
    return " ".join(str(p) for p in parts if p).strip()


def format_rating(r: Any) -> str:
    """A rating as the prompts show it: '5' for 5.0, '4.5' for 4.5, anything else as it is."""
    try:
        f = float(r)
    except (TypeError, ValueError):
        return str(r)
    return str(int(f)) if f.is_integer() else f"{f:.1f}"


def read_template(dataset_type: str, template_file: str | None, movies_tmpl: str,
                  other_tmpl: str) -> tuple[str, tuple[str, str], set[str]]:
    """(template, its source as (setting, value) for messages, its placeholder names): the text of the template
    file, else movies_tmpl/other_tmpl by dataset_type. Shared by the prompters that take a dataset type and a
    template file (binary, API); each checks the placeholders it needs itself (raising PromptError(*source, ...))."""
    if template_file:
        p = Path(template_file)
        if not p.is_file():
            raise PromptError("prompt_template", template_file, "file not found")
        tmpl = p.read_text(encoding="utf-8")
        source = ("prompt_template", str(template_file))
    else:
        check_dataset_type(dataset_type)
        tmpl = movies_tmpl if dataset_type == "movies" else other_tmpl
        source = ("dataset_type", dataset_type)
    try:
        names = {f[1] for f in string.Formatter().parse(tmpl) if f[1] is not None}
    except ValueError as e:
        raise PromptError(*source, f"invalid template ({e}); escape literal braces as {{{{ }}}}")
    return tmpl, source, names


def check_dataset_type(dataset_type: str) -> str:
    if dataset_type not in DATASET_TYPES:
        raise PromptError("dataset_type", repr(dataset_type), f"must be {'|'.join(DATASET_TYPES)}")
    return dataset_type


def check_window(user_window_size: int) -> int:
    if user_window_size < 1:
        raise PromptError("user_window_size", user_window_size, "must be >= 1")
    return user_window_size


class AbstractPrompter:
    """Base of every prompter (module docstring). Subclasses render their own prompts; `item_text` is each one's
    cut of an item's description and features."""

    def __init__(self, item_rows: Sequence[dict], tokenizer: Any = None, user_window_size: int = 10) -> None:
        self.tokenizer = tokenizer
        self.item_rows = safe_item_rows(item_rows, tokenizer)  # special-token strings in item text neutralised
        self.user_window_size = check_window(user_window_size)

    # ---- items and history ---------------------------------------------------------------------
    def title(self, item_id: int) -> str:
        return str(self.item_rows[int(item_id)]["title"])

    def item_text(self, item_id: int) -> str:  # pragma: no cover - every prompter defines its own
        """What the prompts show of an item besides its title, truncated by this prompter's rule."""
        raise NotImplementedError

    def history_window(self, example: dict, *columns: str) -> list[tuple]:
        """The newest user_window_size entries of the example's history columns (default: item ids and ratings),
        oldest first, zipped: [(item id, rating), ...]."""
        cols = columns or ("history_item_id", "history_rating")
        w = self.user_window_size
        return list(zip(*(list(example[c])[-w:] for c in cols)))

    def history_text(self, example: dict) -> str:
        """The example's history as the prompt shows it; here the numbered, rated lines of the binary and API
        prompts (prompts.HISTORY_ITEM_TMPL), or NO_HISTORY_TEXT (RRec's prompter shows time-ago lines instead)."""
        lines = [prompts.HISTORY_ITEM_TMPL.format(index=n, title=self.title(i), rating=format_rating(r),
                                                  text=self.item_text(int(i)))
                 for n, (i, r) in enumerate(self.history_window(example), 1)]
        return "\n".join(lines) if lines else NO_HISTORY_TEXT

    # ---- tokens ------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of text, no special tokens added (the chat template holds any BOS the model wants)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]
