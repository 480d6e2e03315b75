"""Render a user's history and K candidates into binary Yes/No judge prompts.

Every prompt is `prefix_ids + suffix_ids[k]`: the prefix (chat template start,
instructions, the user's history) is identical for all K candidates of a user;
the suffix holds one candidate, the question, the assistant turn start and
(direct mode) the answer prefix. The naive path scores the concatenations, the
shared path reuses the prefix; both see the same token ids by construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from prompters import prompts
from prompters.abstract_prompter import (AbstractPrompter, PromptError, format_rating, item_raw_text,  # noqa: F401
                                         read_template)
from prompters.rendering import generation_prompt

_SENTINEL = "\u2063CANDIDATE\u2063"  # invisible separator: never occurs in item text


@dataclass
class UserPrompt:
    """Token ids of one user's K judge prompts, sharing one prefix."""

    prefix_ids: list[int]
    suffix_ids: list[list[int]]
    candidates: list[int] = field(default_factory=list)
    # reasoning mode: per candidate, (start, end) of generated reasoning tokens inside suffix_ids[k]
    reasoning_spans: list[tuple[int, int]] | None = None

    @property
    def K(self) -> int:
        return len(self.suffix_ids)

    def full_ids(self, k: int) -> list[int]:
        return self.prefix_ids + self.suffix_ids[k]

    def n_tokens(self, shared: bool) -> int:
        """Tokens one scoring pass runs through the model: the prefix once (shared) or once per candidate."""
        suffix = sum(len(s) for s in self.suffix_ids)
        return len(self.prefix_ids) * (1 if shared else self.K) + suffix

    def n_attended_pairs(self, shared: bool) -> int:
        """Causal (query, key) pairs one scoring pass must compute: each candidate sees its prefix and itself; the
        prefix's own pairs once (shared) or once per candidate."""
        P = len(self.prefix_ids)
        own = sum(P * len(s) + len(s) * (len(s) + 1) // 2 for s in self.suffix_ids)
        return P * (P + 1) // 2 * (1 if shared else self.K) + own


def load_template(dataset_type: str, template_file: str | None = None) -> str:
    """The binary template for --dataset_type, or the text of --prompt_template FILE (validated)."""
    tmpl, source, names = read_template(dataset_type, template_file, prompts.BINARY_PROMPT_TMPL_MOVIES,
                                        prompts.BINARY_PROMPT_TMPL_OTHER)
    missing = {"history", "candidate"} - names
    if missing:
        raise PromptError(*source, f"template lacks placeholder(s) {sorted('{' + m + '}' for m in missing)}")
    unknown = names - {"history", "candidate", "answer_instruction"}
    if unknown:
        raise PromptError(*source, f"unknown placeholder(s) {sorted(unknown)}; allowed: history, candidate, "
                                   "answer_instruction")
    if tmpl.index("{history}") > tmpl.index("{candidate}"):
        raise PromptError(*source, "{history} must come before {candidate} (the history is the shared prefix)")
    return tmpl


class BinaryPrompter(AbstractPrompter):
    """Builds UserPrompt token ids for (example, candidates) through the tokenizer's chat template."""

    def __init__(
        self,
        tokenizer,
        item_rows: Sequence[dict],
        dataset_type: str = "other",
        max_len_per_item: int = 64,
        user_window_size: int = 10,
        template_file: str | None = None,
        reasoning: bool = False,
    ) -> None:
        if max_len_per_item < 1:
            raise PromptError("max_len_per_item", max_len_per_item, "must be >= 1")
        super().__init__(item_rows, tokenizer, user_window_size)
        self.max_len_per_item = max_len_per_item
        self.reasoning = reasoning
        self.template = load_template(dataset_type, template_file)
        instruction = prompts.REASONING_ANSWER_INSTRUCTION if reasoning else prompts.DIRECT_ANSWER_INSTRUCTION
        user_msg = self.template.format(history="{history}", candidate=_SENTINEL, answer_instruction=instruction)
        # Render once with placeholders, then split: chat framing is identical for all users.
        chat = self._apply_chat(user_msg)
        if chat.count(_SENTINEL) != 1 or chat.split(_SENTINEL)[0].count("{history}") != 1:
            raise PromptError(None, None, f"{getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'}: its chat "
                                          "template does not keep the user message (damaged chat_template.jinja?)")
        before, after = chat.split(_SENTINEL)
        head, tail = before.split("{history}")
        self._head, self._mid = head, tail
        self._after = after + ("" if reasoning else prompts.ANSWER_PREFIX)
        self._item_text_cache: dict[int, str] = {}
        self._suffix_cache: dict[int, list[int]] = {}

    def _apply_chat(self, user_msg: str) -> str:
        return generation_prompt(self.tokenizer, [{"role": "user", "content": user_msg}])

    def item_text(self, item_id: int) -> str:
        """Description/features of an item truncated to max_len_per_item tokens ('' if none)."""
        if item_id not in self._item_text_cache:
            text = item_raw_text(self.item_rows[item_id])
            if text:
                ids = self.encode(" " + text)[: self.max_len_per_item]
                text = " - " + self.tokenizer.decode(ids).strip()
            self._item_text_cache[item_id] = text
        return self._item_text_cache[item_id]

    def prefix_ids(self, example: dict) -> list[int]:
        text = self._head + self.history_text(example) + self._mid
        return self.encode(text)

    def suffix_ids(self, item_id: int) -> list[int]:
        if item_id not in self._suffix_cache:
            title = self.item_rows[int(item_id)]["title"]
            cand = prompts.CANDIDATE_ITEM_TMPL.format(title=title, text=self.item_text(int(item_id)))
            self._suffix_cache[item_id] = self.encode(cand + self._after)
        return self._suffix_cache[item_id]

    def build(self, example: dict, candidates: Sequence[int]) -> UserPrompt:
        return UserPrompt(
            prefix_ids=self.prefix_ids(example),
            suffix_ids=[list(self.suffix_ids(int(c))) for c in candidates],
            candidates=[int(c) for c in candidates],
        )

    def render_text(self, example: dict, item_id: int) -> str:
        """The full prompt text for one (user, candidate): what SFT data and API calls use."""
        return self.tokenizer.decode(self.prefix_ids(example) + self.suffix_ids(int(item_id)))

    def user_message(self, example: dict, item_id: int) -> str:
        """The user turn only (no chat framing), for APIs that apply their own template."""
        instruction = prompts.REASONING_ANSWER_INSTRUCTION if self.reasoning else prompts.DIRECT_ANSWER_INSTRUCTION
        title = self.item_rows[int(item_id)]["title"]
        cand = prompts.CANDIDATE_ITEM_TMPL.format(title=title, text=self.item_text(int(item_id)))
        hist = self.history_text(example)
        return self.template.format(history=hist, candidate=cand, answer_instruction=instruction)
