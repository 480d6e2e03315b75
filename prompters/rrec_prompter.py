"""R2ec ("RRec") prompts (shared/RRec.md): the "analyse, then recommend" user prompt and the
"summarise key attributes" item prompt, both rendered through the tokenizer's chat template.

User prompt: the last `user_window_size` history items, oldest first, one line each:
"{how long before the target} ago: [{title}] ({rating})", e.g. "3d 4.5h ago: [Zelda] (5)".
Item prompt: Title, User Rating (average_rating), Number of Buyers (rating_number) and
Description (description list joined, cut to 100 words).

`model_type` (qwen|gemma) only changes chat details: Gemma's template has no system role, so no
system message is ever sent (we never send one for Qwen either; its template adds its default), and
the end-of-turn token that stops generation differs (`<|im_end|>` vs `<end_of_turn>`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from prompters import prompts
from trainers.foundation.errors import UserInputError

MODEL_TYPES = ("qwen", "gemma")
END_OF_TURN = {"qwen": "<|im_end|>", "gemma": "<end_of_turn>"}
GENERIC_CATEGORY_NAMES = ("products", "product")


def category_from_dataset_dir(dataset_dir: str) -> str:
    """'.../Video_Games_5_2021-1-2023-12' -> 'Video_Games' (the name preprocess.py gives its output)."""
    name = Path(str(dataset_dir).rstrip("/")).name
    m = re.match(r"^(.*?)_\d+_\d{4}-\d{1,2}-\d{4}-\d{1,2}$", name)
    return m.group(1) if m else name


def category_names(category: str) -> tuple[str, str]:
    """(plural, singular) names of a category; a generic fallback for categories RRec did not name."""
    if category in prompts.RREC_CATEGORY_NAMES:
        return prompts.RREC_CATEGORY_NAMES[category]
    for key, names in prompts.RREC_CATEGORY_NAMES.items():  # e.g. a renamed copy 'Video_Games_small'
        if category.startswith(key):
            return names
    return GENERIC_CATEGORY_NAMES


def format_time_ago(delta_ms: float) -> str:
    """Time between a history purchase and the target: '3d 4.5h', '4.5h' under a day ('0.0h' if negative)."""
    hours_total = max(float(delta_ms), 0.0) / 3_600_000.0
    days = int(hours_total // 24)
    hours = hours_total - 24 * days
    return f"{days}d {hours:.1f}h" if days > 0 else f"{hours:.1f}h"


def _fmt_number(v) -> str:
    if v is None:
        return "unknown"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return str(int(f)) if f.is_integer() else f"{f:.1f}"


def truncate_words(text: str, max_words: int) -> str:
    words = text.split()
    return " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")


def check_model_type(model_type: str) -> str:
    if model_type not in MODEL_TYPES:
        raise UserInputError(f"--model_type {model_type!r}: must be one of {'|'.join(MODEL_TYPES)}")
    return model_type


class RRecPrompter:
    """Renders users and items of one processed dataset into RRec's chat prompts (text and token ids)."""

    def __init__(self, tokenizer, item_rows: Sequence[dict], category: str, user_window_size: int = 10,
                 model_type: str = "qwen", max_description_words: int = 100) -> None:
        if user_window_size < 1:
            raise UserInputError(f"--user_window_size {user_window_size}: must be >= 1")
        self.tokenizer = tokenizer
        self.item_rows = item_rows
        self.category = category
        self.category_plural, self.category_singular = category_names(category)
        self.user_window_size = user_window_size
        self.model_type = check_model_type(model_type)
        self.max_description_words = max_description_words
        self._item_ids_cache: dict[int, list[int]] = {}

    # ---- text --------------------------------------------------------------------------------
    def history_text(self, example: dict) -> str:
        w = self.user_window_size
        ids = list(example["history_item_id"])[-w:]
        ratings = list(example["history_rating"])[-w:]
        stamps = list(example.get("history_timestamp") or [None] * len(ids))[-w:]
        target_ts = example.get("timestamp")
        lines = []
        for iid, r, ts in zip(ids, ratings, stamps):
            ago = format_time_ago(float(target_ts) - float(ts)) if ts is not None and target_ts is not None else "some time"
            lines.append(prompts.RREC_HISTORY_LINE_TMPL.format(
                ago=ago, title=self.item_rows[int(iid)]["title"], rating=_fmt_number(r)))
        return "\n".join(lines) if lines else "(no earlier purchases)"

    def user_message(self, example: dict) -> str:
        """The user turn (no chat framing)."""
        return prompts.RREC_USER_PROMPT_TMPL.format(
            category_singular=self.category_singular, category_plural=self.category_plural,
            history=self.history_text(example))

    def item_message(self, item_id: int) -> str:
        row = self.item_rows[int(item_id)]
        desc = " ".join(str(d) for d in (row.get("description") or []) if d).strip()
        return prompts.RREC_ITEM_PROMPT_TMPL.format(
            category_singular=self.category_singular, title=row.get("title", ""),
            average_rating=_fmt_number(row.get("average_rating")),
            rating_number=_fmt_number(row.get("rating_number")),
            description=truncate_words(desc, self.max_description_words) if desc else "none")

    def chat(self, user_msg: str) -> str:
        """One user turn through the chat template, ending with the assistant turn start."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user_msg}], tokenize=False, add_generation_prompt=True)
        return user_msg + "\n"

    def user_prompt(self, example: dict) -> str:
        return self.chat(self.user_message(example))

    def item_prompt(self, item_id: int) -> str:
        return self.chat(self.item_message(item_id))

    # ---- token ids ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        # The chat template already holds any BOS the model wants (Gemma's does).
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def user_ids(self, example: dict) -> list[int]:
        return self.encode(self.user_prompt(example))

    def item_ids(self, item_id: int) -> list[int]:
        if int(item_id) not in self._item_ids_cache:
            self._item_ids_cache[int(item_id)] = self.encode(self.item_prompt(item_id))
        return self._item_ids_cache[int(item_id)]

    def stop_token_ids(self) -> list[int]:
        """Tokens that end a reasoning: eos, pad and the model family's end-of-turn token."""
        ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        eot = self.tokenizer.convert_tokens_to_ids(END_OF_TURN[self.model_type])
        if isinstance(eot, int) and eot != getattr(self.tokenizer, "unk_token_id", None):
            ids.add(eot)
        return sorted(i for i in ids if i is not None)
