"""One way to fail on bad input: a one-line message naming the flag/file, exit status 2."""
from __future__ import annotations

import sys
from typing import NoReturn


class UserInputError(ValueError):
    """Bad input detected inside library code; scripts turn it into `die`."""


def die(msg: str) -> NoReturn:
    """Print `error: msg` on one line to stderr and exit with status 2 (argparse's convention)."""
    prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "ourrec"
    print(f"{prog}: error: {' '.join(str(msg).split())}", file=sys.stderr)
    raise SystemExit(2)


def redact(text: str, *secrets: str | None) -> str:
    """Replace every non-empty secret in text by '***' (keys must never reach logs or files)."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text
