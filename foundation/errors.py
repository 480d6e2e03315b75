"""One way to fail on bad input: a one-line message naming the flag/file, exit status 2. And the one redaction
of secrets (API keys) that every text written to disk or printed passes."""
from __future__ import annotations

import functools
import os
import re
import sys
from contextlib import contextmanager
from typing import Any, Iterator, NoReturn


class UserInputError(ValueError):
    """Bad input detected inside library code; scripts turn it into `die`."""


def die(msg: str, status: int = 2) -> NoReturn:
    """Print `error: msg` on one line to stderr and exit with `status`: 2 (argparse's convention) for bad input,
    1 for a run that went through but produced no result."""
    prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "ourrec"
    print(f"{prog}: error: {' '.join(str(msg).split())}", file=sys.stderr)
    raise SystemExit(status)


@contextmanager
def exit_on_user_error(*secrets: str | None) -> Iterator[None]:
    """A script's main body: a UserInputError raised inside becomes `die` (one line, exit 2), with `secrets` (an
    API key) redacted from it. Under a multi-process launch (accelerate launch/torchrun set RANK) only rank 0
    prints it; the other processes exit 2 quietly."""
    try:
        yield
    except UserInputError as e:
        if int(os.environ.get("RANK", "0") or 0) == 0:
            die(redact(str(e), *secrets))
        raise SystemExit(2)


# A masked key as dashboards and servers print it: "sk-adv-****777", "sk-ad...777", "****777".
_MASK_RUN = r"(?:\*{2,}|•{2,}|…+|\.{3,})"
_MASKED = re.compile(r"([A-Za-z0-9_\-]*)(" + _MASK_RUN + r")([A-Za-z0-9_\-]*)")
_MIN_VISIBLE = 3  # visible key characters next to a mask that make it a masked form of that key


def _redact_masked(text: str, secret: str) -> str:
    def repl(m: re.Match) -> str:
        left, right = m.group(1), m.group(3)
        # the longest tail of `left` that starts the secret, the longest head of `right` that ends it
        k_left = next((k for k in range(min(len(left), len(secret) - 1), 0, -1) if secret.startswith(left[-k:])), 0)
        k_right = next((k for k in range(min(len(right), len(secret) - 1), 0, -1) if secret.endswith(right[:k])), 0)
        if k_left < _MIN_VISIBLE and k_right < _MIN_VISIBLE:
            return m.group(0)
        return (left[:len(left) - k_left] if k_left >= _MIN_VISIBLE else left) + "***" + \
            (right[k_right:] if k_right >= _MIN_VISIBLE else right)

    return _MASKED.sub(repl, text)


_LOOSE_MIN_LEN = 16  # keys at least this long are also found in any letter case and split by whitespace


def _char_forms(c: str) -> str:
    """c itself or its JSON/Python escape (\\u002d, \\x2d, either hex case): a raw response body or a
    json.dumps(ensure_ascii) text can hold a key character escaped."""
    n = ord(c)
    forms = [c] + ([f"\\u{n:04x}", f"\\u{n:04X}"] if n < 0x10000 else [])
    forms += [f"\\x{n:02x}", f"\\x{n:02X}"] if n < 0x100 else []
    return "(?:" + "|".join(re.escape(f) for f in dict.fromkeys(forms)) + ")"


@functools.lru_cache(maxsize=64)
def _escaped_pattern(secret: str) -> re.Pattern:
    return re.compile("".join(_char_forms(c) for c in secret))


@functools.lru_cache(maxsize=64)
def _loose_pattern(secret: str) -> re.Pattern:
    return re.compile(r"\s*".join(_char_forms(c) for c in secret), re.IGNORECASE)


def redact(text: str, *secrets: str | None) -> str:
    """Replace every non-empty secret in text, and every masked form of it (a prefix and/or suffix of at least 3
    of its characters around a run of *, •, … or ...), by '***'. A real API key (16+ characters) is also found
    in another letter case and with whitespace or line breaks inside it (a server that echoes it reformatted);
    any key also with characters written as \\u00XX or \\xXX escapes (a raw JSON body that echoes it).
    Keys must never reach logs or files."""
    text = str(text)
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = (_loose_pattern(s) if len(s) >= _LOOSE_MIN_LEN else _escaped_pattern(s)).sub("***", text)
        if len(s) > _MIN_VISIBLE:
            text = _redact_masked(text, s)
    return text


def redact_json(obj: Any, *secrets: str | None) -> Any:
    """`redact` applied to every string (and dict key) inside a JSON-like value."""
    if not any(secrets):
        return obj
    if isinstance(obj, str):
        return redact(obj, *secrets)
    if isinstance(obj, dict):
        return {redact(k, *secrets) if isinstance(k, str) else k: redact_json(v, *secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_json(v, *secrets) for v in obj]
    return obj
