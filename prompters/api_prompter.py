"""Render the listwise ranking prompt an API model answers (compare_model/deepseek.py).

The prompt shows the user's last `user_window_size` history items (title and rating, oldest first) and the K
candidates numbered 1..K; the model answers with candidate numbers, best first (prompters/answer_parsing.py parses
it). API models tokenize with their own vocabularies, so `max_len_per_item` counts whitespace words here (not
tokens); 0 shows titles only.
"""
from __future__ import annotations

from typing import Sequence

from prompters import prompts
from prompters.abstract_prompter import AbstractPrompter, PromptError, item_raw_text, read_template

PLACEHOLDERS = {"history", "candidates", "n"}


def load_api_template(dataset_type: str = "other", template_file: str | None = None) -> str:
    """API_RANKING_PROMPT_TMPL(_MOVIES) for --dataset_type, or the text of --prompt_template FILE (validated)."""
    tmpl, source, names = read_template(dataset_type, template_file, prompts.API_RANKING_PROMPT_TMPL_MOVIES,
                                        prompts.API_RANKING_PROMPT_TMPL)
    if not {"history", "candidates"} <= names or names - PLACEHOLDERS:
        raise PromptError(*source, "template must use {history} and {candidates} (optionally {n}) and nothing else; "
                                   f"found {sorted(names)}")
    return tmpl


class ApiRankingPrompter(AbstractPrompter):
    """(example, candidates) -> chat messages asking for a ranking of the numbered candidates. No tokenizer: the
    item rows are made safe for the common chat families' special tokens."""

    def __init__(self, item_rows: Sequence[dict], user_window_size: int = 10, max_len_per_item: int = 0,
                 dataset_type: str = "other", template_file: str | None = None,
                 system_prompt: str | None = None) -> None:
        super().__init__(item_rows, None, user_window_size)
        if max_len_per_item < 0:
            raise PromptError("max_len_per_item", max_len_per_item, "must be >= 0 (0 = titles only)")
        self.max_len_per_item = max_len_per_item
        self.template = load_api_template(dataset_type, template_file)
        self.system_prompt = system_prompt

    def item_text(self, item_id: int) -> str:
        """' - ' + description/features cut to max_len_per_item words, or '' (titles only / no text)."""
        if self.max_len_per_item == 0:
            return ""
        words = item_raw_text(self.item_rows[int(item_id)]).split()
        return " - " + " ".join(words[: self.max_len_per_item]) if words else ""

    def candidates_text(self, candidates: Sequence[int]) -> str:
        return "\n".join(prompts.API_CANDIDATE_ITEM_TMPL.format(index=n, title=self.title(c), text=self.item_text(int(c)))
                         for n, c in enumerate(candidates, 1))

    def render(self, example: dict, candidates: Sequence[int]) -> str:
        return self.template.format(history=self.history_text(example), candidates=self.candidates_text(candidates),
                                    n=len(candidates))

    def messages(self, example: dict, candidates: Sequence[int]) -> list[dict[str, str]]:
        msgs = [{"role": "user", "content": self.render(example, candidates)}]
        if self.system_prompt:
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        return msgs

    def candidate_titles(self, candidates: Sequence[int]) -> list[str]:
        """Titles in candidate order: what the answer parser matches when the model names items."""
        return [self.title(c) for c in candidates]
