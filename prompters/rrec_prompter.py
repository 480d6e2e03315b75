"""R2ec ("RRec") prompts (docs/rrec.md), rendered as upstream renders them, through the tokenizer's chat
template.

User turn: four lines (the third empty) asking for a recommendation inside <answer> and </answer>, then one
line per history item (the newest `user_window_size`, oldest first): "{time ago}: [{title}] ({rating})" with
upstream's time-ago format ("3d 4.5h ago", "2h 30.5min ago", "0.8min ago") and the rating as stored ("5.0").
No system message is sent (a template that adds a default one, as Qwen's does, adds it).
  generation prompt  = chat(user turn) + the assistant header; reasoning is generated from here and stops
                       at the first <answer>
  user sequence      = chat(user turn, assistant turn = reasoning up to and including <answer>; "<answer>" is
                       appended when the reasoning never wrote it), the assistant turn left open
                       (continue_final_message): the user vector is read at its last token
Item turn: "Summarize key attributes of the following {singular} inside <answer> and </answer>.", a blank
line, then Title / User Rating / Number of Buyers / Description (the description list joined in reverse
order with spaces; over 100 words it is cut to 100 words followed by "..."). The assistant turn is pre-filled
with "<answer>" and left open, so the item vector is read at the same kind of token. item_rating_stats=False
leaves out the User Rating and Number of Buyers lines (on real Amazon data they are crawl-time totals, counting
ratings from the valid/test period: a popularity signal from the future).

As upstream, the reasoning is decoded to text (special tokens dropped) and the whole user sequence is
tokenised again; its completion tokens (the assistant turn's content, <answer> included) are what the
token loss trains.

`model_type` (qwen|gemma) only adds the family's end-of-turn token to the generation stop tokens.
"""
from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Sequence

from prompters import prompts
from prompters.abstract_prompter import AbstractPrompter, PromptError
from prompters.rendering import generation_prompt, render_chat

MODEL_TYPES = ("qwen", "gemma")
END_OF_TURN = {"qwen": "<|im_end|>", "gemma": "<end_of_turn>"}
GENERIC_CATEGORY_NAMES = ("products", "product")
DESCRIPTION_MAX_WORDS = 100  # upstream's DESCRIPTION_MAX_LEN
DEFAULT_USER_WINDOW = 20  # upstream's window_size


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


def format_time_ago(delta_ms: int | float) -> str:
    """Upstream's time-ago text of a millisecond difference (target time - purchase time), computed on a
    datetime.timedelta: days > 0 -> '{d}d {h:.1f}h ago'; else whole hours > 0 -> '{h}h {m:.1f}min ago';
    else '{m:.1f}min ago' (minutes include the whole seconds / 60; sub-second parts are dropped)."""
    delta = datetime.timedelta(milliseconds=float(delta_ms))
    days = delta.days
    hours, rest = divmod(delta.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    minutes = minutes + seconds / 60
    if days > 0:
        return f"{days}d {hours + minutes / 60:.1f}h ago"
    if hours > 0:
        return f"{hours}h {minutes:.1f}min ago"
    return f"{minutes:.1f}min ago"


def format_description(description: Sequence[str] | str | None, max_words: int = DESCRIPTION_MAX_WORDS) -> str:
    """Upstream's item description: the list joined in reverse order with single spaces, kept verbatim up to
    max_words whitespace-separated words, else the first max_words words joined by spaces + '...'."""
    if description is None:
        parts: list[str] = []
    elif isinstance(description, str):
        parts = [description]
    else:
        parts = [str(d) for d in description]
    text = " ".join(parts[::-1]) if parts else ""
    words = text.split()
    if len(words) > max_words:
        return " ".join(words[:max_words]) + "..."
    return text


def check_model_type(model_type: str) -> str:
    if model_type not in MODEL_TYPES:
        raise PromptError("model_type", repr(model_type), f"must be one of {'|'.join(MODEL_TYPES)}")
    return model_type


def model_type_of(model_family: str | None) -> str:
    """qwen|gemma from a transformers config model_type ('qwen2', 'gemma2', ...); qwen for anything else."""
    return "gemma" if str(model_family or "").lower().startswith("gemma") else "qwen"


class RRecPrompter(AbstractPrompter):
    """Renders users and items of one processed dataset into RRec's chat prompts (text and token ids)."""

    def __init__(self, tokenizer, item_rows: Sequence[dict], category: str,
                 user_window_size: int = DEFAULT_USER_WINDOW, model_type: str = "qwen",
                 emb_token: str = prompts.RREC_EMB_TOKEN, emb_end_token: str = prompts.RREC_EMB_END_TOKEN,
                 item_rating_stats: bool = True) -> None:
        super().__init__(item_rows, tokenizer, user_window_size)
        self.category = category
        self.category_plural, self.category_singular = category_names(category)
        self.model_type = check_model_type(model_type)
        self.emb_token, self.emb_end_token = emb_token, emb_end_token
        self.item_rating_stats = bool(item_rating_stats)
        self._item_ids_cache: dict[int, list[int]] = {}
        self.chat("probe")  # a chat template that cannot render our turns fails here, before any work
        self.chat("probe", self.emb_token)

    # ---- text --------------------------------------------------------------------------------
    def history_text(self, example: dict) -> str:
        """Upstream's time-ago history lines (the rating as stored)."""
        target_ts = int(example["timestamp"])
        return "\n".join(prompts.RREC_HISTORY_LINE_TMPL.format(
            ago=format_time_ago(target_ts - int(ts)), title=self.item_rows[int(iid)]["title"], rating=r)
            for iid, r, ts in self.history_window(example, "history_item_id", "history_rating", "history_timestamp"))

    def item_text(self, item_id: int) -> str:
        """Upstream's description: the list reversed, cut to DESCRIPTION_MAX_WORDS words."""
        return format_description(self.item_rows[int(item_id)].get("description"))

    def user_message(self, example: dict) -> str:
        """The user turn (no chat framing)."""
        return prompts.RREC_USER_PROMPT_TMPL.format(
            category_singular=self.category_singular, category_plural=self.category_plural,
            emb=self.emb_token, emb_end=self.emb_end_token, history=self.history_text(example))

    def item_message(self, item_id: int) -> str:
        row = self.item_rows[int(item_id)]
        template = prompts.RREC_ITEM_PROMPT_TMPL if self.item_rating_stats else \
            prompts.RREC_ITEM_PROMPT_NO_RATING_STATS_TMPL
        return template.format(
            category_singular=self.category_singular, emb=self.emb_token, emb_end=self.emb_end_token,
            title=row.get("title"), average_rating=row.get("average_rating"), rating_number=row.get("rating_number"),
            description=self.item_text(item_id))

    def complete_reasoning(self, generated_text: str) -> str:
        """The assistant content a user vector is read after: the reasoning up to and including its first
        <answer> (generation stops there), or the whole text followed by <answer> when it never wrote one."""
        cut = generated_text.find(self.emb_token)
        if cut >= 0:
            return generated_text[:cut + len(self.emb_token)]
        return generated_text + self.emb_token

    def chat(self, user_msg: str, assistant_prefix: str | None = None) -> str:
        """One user turn through the chat template; with assistant_prefix the assistant turn holds it and is left
        open (continue_final_message), otherwise the template's generation prompt ends the text."""
        messages = [{"role": "user", "content": user_msg}]
        if assistant_prefix is None:
            return generation_prompt(self.tokenizer, messages)
        if not getattr(self.tokenizer, "chat_template", None):
            return user_msg + "\n" + assistant_prefix
        messages.append({"role": "assistant", "content": assistant_prefix})
        return render_chat(self.tokenizer, messages, continue_final_message=True)

    def user_prompt(self, example: dict) -> str:
        """What reasoning is generated from."""
        return self.chat(self.user_message(example))

    def user_sequence(self, example: dict, reasoning: str) -> str:
        """The text a user vector is read from (at its last token, the end of <answer>)."""
        return self.chat(self.user_message(example), self.complete_reasoning(reasoning))

    def item_prompt(self, item_id: int) -> str:
        return self.chat(self.item_message(item_id), self.emb_token)

    # ---- token ids (encode: AbstractPrompter's; the chat template already holds any BOS, as Gemma's does) -----
    def user_ids(self, example: dict) -> list[int]:
        return self.encode(self.user_prompt(example))

    def user_sequence_ids(self, example: dict, reasoning: str, prompt_ids: Sequence[int] | None = None
                          ) -> tuple[list[int], int]:
        """(token ids of user_sequence, index of its first completion token). The completion starts where the
        tokenisation stops agreeing with the generation prompt's (normally right after the assistant header)."""
        ids = self.encode(self.user_sequence(example, reasoning))
        prompt = list(prompt_ids) if prompt_ids is not None else self.user_ids(example)
        start = 0
        while start < min(len(ids), len(prompt)) and ids[start] == prompt[start]:
            start += 1
        return ids, start

    def item_ids(self, item_id: int) -> list[int]:
        if int(item_id) not in self._item_ids_cache:
            self._item_ids_cache[int(item_id)] = self.encode(self.item_prompt(item_id))
        return self._item_ids_cache[int(item_id)]

    def stop_token_ids(self) -> list[int]:
        """Tokens that end a reasoning besides the <answer> stop string: eos, pad and the family's end of turn."""
        ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        eot = self.tokenizer.convert_tokens_to_ids(END_OF_TURN[self.model_type])
        if isinstance(eot, int) and eot != getattr(self.tokenizer, "unk_token_id", None):
            ids.add(eot)
        return sorted(i for i in ids if i is not None)
