"""Item text made safe to put into a prompt, and the one call of a chat template (every prompter uses both,
through prompters/abstract_prompter.py).

Special-token strings in item text. A title or description holding a tokenizer's special-token string (e.g.
`<|im_end|>` for Qwen) would be encoded as that special token once the prompt is tokenised: the model would see
its turn end in the middle of a title. preprocess.py's HTML cleaning does not remove such strings (they are not
tags) and a dataset may come from elsewhere, so every prompter reads its items through `safe_item_rows`, which
breaks each such string with a zero-width space after its first character (`<\u200b|im_end|>`): the text stays
readable, the tokenizer no longer matches the special token. Neutralised are the tokenizer's special and
markup-like added tokens (`<...>`, `[...]`) and, for API prompts whose tokenizer we do not know, the spellings
of the common chat families (`<|...|>`, DeepSeek's `<｜...｜>`, `<start_of_turn>`, `[INST]`, ...).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from foundation.errors import UserInputError

ZERO_WIDTH_SPACE = "\u200b"
# Special-token spellings of common chat-model families (used whatever the tokenizer).
GENERIC_SPECIAL_TOKENS = re.compile(
    r"<\|[^<>|\s]{1,64}\|>"                      # Qwen, GPT, Llama 3: <|im_end|>, <|eot_id|>
    r"|<｜[^<>｜]{1,64}｜>"                        # DeepSeek: <｜end▁of▁sentence｜>
    r"|</?(?:start_of_turn|end_of_turn|bos|eos|pad|unk|s)>"  # Gemma, sentencepiece models
    r"|\[/?INST\]")                              # Llama 2 / Mistral


def _break(token: str) -> str:
    return token[0] + ZERO_WIDTH_SPACE + token[1:]


def special_token_strings(tokenizer: Any) -> list[str]:
    """The strings a tokenizer encodes as one special token: its special tokens and its added tokens that are
    marked special or look like markup (`<...>`, `[...]`), longest first."""
    if tokenizer is None:
        return []
    found = {t for t in (getattr(tokenizer, "all_special_tokens", None) or []) if isinstance(t, str)}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for tok in added.values():
        content = str(getattr(tok, "content", tok))
        markup = (content[:1], content[-1:]) in (("<", ">"), ("[", "]"))
        if getattr(tok, "special", False) or markup:
            found.add(content)
    return sorted((t for t in found if len(t) >= 2 and not t.isspace()), key=len, reverse=True)


def neutralise_special_tokens(text: str, tokens: Sequence[str] = ()) -> str:
    """text with every occurrence of the given special-token strings and of GENERIC_SPECIAL_TOKENS broken by a
    zero-width space after its first character. Text without them is returned unchanged."""
    for t in tokens:
        if t in text:
            text = text.replace(t, _break(t))
    return GENERIC_SPECIAL_TOKENS.sub(lambda m: _break(m.group(0)), text)


class SafeItemRows(Sequence):
    """A read-only view of item rows (row i = item id i) whose strings (and lists of strings) have their
    special-token strings neutralised; rows are converted once, on first use."""

    def __init__(self, rows: Sequence[dict], tokens: Sequence[str] = ()) -> None:
        self._rows = rows
        self._tokens = list(tokens)
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def _clean(self, v: Any) -> Any:
        if isinstance(v, str):
            return neutralise_special_tokens(v, self._tokens)
        if isinstance(v, list) and any(isinstance(x, str) for x in v):
            return [self._clean(x) for x in v]
        return v

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if i not in self._cache:
            row = self._rows[i]
            clean = {k: self._clean(v) for k, v in row.items()}
            # rows without special-token strings stay the very same objects (no copy of a large catalogue)
            self._cache[i] = clean if any(clean[k] != v for k, v in row.items()) else row
        return self._cache[i]


def safe_item_rows(rows: Sequence[dict], tokenizer: Any = None) -> SafeItemRows:
    """rows as every prompter reads them (module docstring); tokenizer None = the generic spellings only."""
    if isinstance(rows, SafeItemRows):
        return rows
    return SafeItemRows(rows, special_token_strings(tokenizer))


def render_chat(tokenizer: Any, messages: list[dict[str, str]], **kw: Any) -> str:
    """tokenizer.apply_chat_template(messages, tokenize=False, **kw); a template that cannot render them (a damaged
    chat_template.jinja, one that lacks a feature we use) is a one-line error naming the tokenizer."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    except Exception as e:  # noqa: BLE001 - jinja2 and transformers raise many types
        where = getattr(tokenizer, "name_or_path", "") or "the model's tokenizer"
        raise UserInputError(f"{where}: its chat template cannot render the prompt ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); the tokenizer files are damaged or the "
                             "template is not a chat template")


def generation_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The text a model continues from: the chat template with its generation prompt, or, for a tokenizer without
    a template (a base model), the message contents one per line. Every prompt we generate or score from (judge,
    RRec, SFT data, local inference) is built here, so all of them agree token for token."""
    if getattr(tokenizer, "chat_template", None):
        return render_chat(tokenizer, messages, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages) + "\n"
