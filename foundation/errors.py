"""One way to fail on bad input: a one-line message naming the flag/file, exit status 2. The one top-level handler
of every script (`exit_on_user_error`): bad input, a write the operating system refused, Ctrl-C and SIGTERM each
end in one line instead of a traceback. And the one redaction of secrets (API keys) that every text written to
disk or printed passes."""
from __future__ import annotations

import errno
import functools
import os
import re
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, NoReturn


class UserInputError(ValueError):
    """Bad input detected inside library code; scripts turn it into `die`."""


class SettingError(UserInputError):
    """A setting a library was given is unusable, worded the way the library knows it, without the command line:
    str() is 'max_len_per_item 0: must be >= 1' (`setting`, the value as `shown`, the `problem`). The script that
    took the value from a flag names the flag: `flag_message` (and `exit_on_user_error`, which every script's main
    body runs in) print '--max_len_per_item 0: must be >= 1', the flag being --<setting> unless the script maps the
    setting to another spelling. Prompters and models raise subclasses (prompters.abstract_prompter.PromptError,
    models.abstract_models.ModelSettingError). Without a setting the message is the problem alone."""

    def __init__(self, setting: str | None, shown: Any, problem: str) -> None:
        self.setting, self.shown, self.problem = setting, shown, problem
        super().__init__(self.worded(setting))

    def worded(self, name: str | None) -> str:
        if name is None:
            return self.problem
        return f"{name} {self.shown}: {self.problem}" if self.shown not in (None, "") else f"{name}: {self.problem}"

    def flag_message(self, flags: Mapping[str, str] | None = None) -> str:
        """The one line a script prints: the setting as its flag (`flags` maps a setting to a script's spelling)."""
        if self.setting is None:
            return self.problem
        return self.worded((flags or {}).get(self.setting, f"--{self.setting}"))


def cli_message(e: BaseException, flags: Mapping[str, str] | None = None) -> str:
    """What a script prints for a bad-input error: a SettingError with its flag, any other one as it is."""
    return e.flag_message(flags) if isinstance(e, SettingError) else str(e)


class OutputError(Exception):
    """A write the operating system refused (disk full, file too large, no permission, read-only file system, a
    symlink loop, a missing parent folder), already worded as one line naming the path and the reason
    (foundation.files.writing raises it). Scripts exit 1: the input was fine, the run could not save its result."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM turned into what Ctrl-C raises, so that every `finally` and `except BaseException` a script has for
    Ctrl-C (incremental result files, moved-aside outputs, locks) runs the same way for a `kill` or a job
    scheduler's stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def die(msg: str, status: int = 2) -> NoReturn:
    """Print `error: msg` on one line to stderr and exit with `status`: 2 (argparse's convention) for bad input,
    1 for a run that went through but produced no result."""
    prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "ourrec"
    print(f"{prog}: error: {' '.join(str(msg).split())}", file=sys.stderr)
    raise SystemExit(status)


def os_error_message(e: OSError, path: Any = None) -> str:
    """'PATH: reason (ENAME)' for an OSError: the path it names (else `path`) and the operating system's words."""
    where = e.filename if e.filename is not None else path
    reason = e.strerror or str(e) or type(e).__name__
    code = errno.errorcode.get(e.errno or -1)
    text = f"{reason} ({code})" if code else reason
    if getattr(e, "filename2", None) is not None:
        where = f"{where} -> {e.filename2}"
    return f"{where}: {text}" if where is not None else text


# how Rust-backed writers (safetensors, tokenizers) report an OS error, and pyarrow when it leaves errno unset
_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)|\[Errno (\d+)\]")


def as_os_error(e: BaseException) -> OSError | None:
    """The OSError behind e: e itself, or one a library wrapped into its own exception type (safetensors and
    tokenizers raise their own error carrying '(os error 28)'); None when e is no OS error."""
    if isinstance(e, OSError) and e.errno is not None:
        return e
    m = _OS_ERROR_IN_TEXT.search(str(e))
    if m:
        code = int(m.group(1) or m.group(2))
        return OSError(code, os.strerror(code), getattr(e, "filename", None))
    return e if isinstance(e, OSError) else None


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001
    raise Interrupted(signum)


@contextmanager
def _signals_as_errors() -> Iterator[None]:
    """While the block runs: SIGTERM raises Interrupted (only where nothing else handles it: a trainer's StopRequest,
    entered inside, installs its own and puts this one back); SIGXFSZ (a write past `ulimit -f`) is ignored, so the
    write fails with EFBIG, which the block reports and cleans up after, instead of killing the process."""
    wanted = {signal.SIGTERM: _on_sigterm}
    if hasattr(signal, "SIGXFSZ"):  # POSIX only
        wanted[signal.SIGXFSZ] = signal.SIG_IGN
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = [s for s in wanted if signal.getsignal(s) is signal.SIG_DFL]
    for s in installed:
        signal.signal(s, wanted[s])
    try:
        yield
    finally:
        for s in installed:
            signal.signal(s, signal.SIG_DFL)


@contextmanager
def exit_on_user_error(*secrets: str | None, flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """A script's main body, its one top-level handler, each case one line (with `secrets`, an API key, redacted):
    - UserInputError (bad input): exit 2; a library's SettingError names the flag (--<setting>, or the spelling
      `flags` maps the setting to);
    - OutputError, or any other OSError that reaches here (a write refused: disk full, no permission, ...): the path
      and the reason, exit 1;
    - Ctrl-C (SIGINT) or SIGTERM: 'interrupted', exit 130 / 143 (128 + the signal). What the script saved so far
      stays as it is (result files are written incrementally: rerunning the same command resumes).
    Under a multi-process launch (accelerate launch/torchrun set RANK) only rank 0 prints; the others exit quietly
    with the same status. On entry it sets the process's CPU threads (foundation.threads.configure_threads: every
    script starts here, so every script gets the same thread default and overrides)."""
    quiet = int(os.environ.get("RANK", "0") or 0) != 0

    def fail(msg: str, status: int) -> NoReturn:
        if quiet:
            raise SystemExit(status)
        die(redact(msg, *secrets), status)

    try:
        with _signals_as_errors():
            _configure_threads()
            yield
    except UserInputError as e:
        fail(cli_message(e, flags), 2)
    except OutputError as e:
        fail(str(e), 1)
    except Exception as e:  # noqa: BLE001 - only OS errors (also ones a library wrapped) become the line
        os_error = as_os_error(e)
        if os_error is None:
            raise
        fail(os_error_message(os_error), 1)
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        fail(f"interrupted by {name}{' (Ctrl-C)' if name == 'SIGINT' else ''}; what was saved so far is kept "
             "(rerun the same command to continue where the script resumes)", 128 + int(signum))


def _configure_threads() -> None:
    from foundation.threads import configure_threads

    try:
        configure_threads()
    except ValueError as e:  # a bad OURREC_THREADS / OMP_NUM_THREADS value
        raise UserInputError(str(e)) from None


# ---------------------------------------------------------------------------------------------- redaction
# A masked key as dashboards and servers print it: "sk-adv-****777", "sk-ad...777", "****777".
# The lookahead on the first character lets the regex engine skip ahead in C (3x faster on text without masks).
_MASK_RE = re.compile(r"(?=[*•….])(?:\*{2,}|•{2,}|…+|\.{3,})")
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_MIN_VISIBLE = 3  # visible key characters next to a mask that make it a masked form of that key


@functools.lru_cache(maxsize=64)
def _masked_parts(secret: str) -> tuple[re.Pattern, re.Pattern]:
    """(a pattern matching the longest head of `secret` (>= _MIN_VISIBLE characters, not all of it) that ends
    where a search ends, the same for the longest tail of `secret` that starts where a match starts): the visible
    parts next to a mask. Searched in C over at most len(secret) characters on each side of a mask."""
    heads = [re.escape(secret[:k]) for k in range(len(secret) - 1, _MIN_VISIBLE - 1, -1)]
    tails = [re.escape(secret[-k:]) for k in range(len(secret) - 1, _MIN_VISIBLE - 1, -1)]
    return re.compile("(?:" + "|".join(heads) + r")\Z"), re.compile("|".join(tails))


def _redact_masked(text: str, secret: str) -> str:
    """Every mask run with >= _MIN_VISIBLE characters of the secret's head before it or of its tail after it
    becomes '***' together with those characters. Linear in len(text): each mask looks at most len(secret) - 1
    key characters to each side (the old single regex backtracked over every long run of key characters)."""
    if len(secret) - 1 < _MIN_VISIBLE:
        return text
    head_re, tail_re = _masked_parts(secret)
    width = len(secret) - 1
    out, pos = [], 0
    for m in _MASK_RE.finditer(text):
        start, end = m.span()
        if start < pos:
            continue
        a, lim = start, max(pos, start - width)
        while a > lim and text[a - 1] in _KEY_CHARS:
            a -= 1
        b, lim = end, min(len(text), end + width)
        while b < lim and text[b] in _KEY_CHARS:
            b += 1
        head = head_re.search(text, a, start)
        tail = tail_re.match(text, end, b)
        if head is None and tail is None:
            continue
        out += [text[pos:head.start() if head else start], "***"]
        pos = tail.end() if tail else end
    return "".join(out) + text[pos:] if out else text


_LOOSE_MIN_LEN = 16  # keys at least this long are also found in any letter case and split by whitespace
# Whitespace a server may put inside an echoed key, also URL-encoded ('+', %20, %09, %0A, %0D): one fixed-length
# token per repetition, each starting with a different character, so the star cannot backtrack badly.
_LOOSE_GAP = r"(?:\s|\+|%20|%0[9aAdD])*"


def _hex(n: int, width: int) -> str:
    """n as `width` hex digits, each letter digit matching either case ([aA]): servers escape in both."""
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{n:0{width}x}")


def _char_forms(c: str) -> str:
    """A regex of c itself or an escaped form of it, hex digits in either case: a JSON/Python escape (\\u002d,
    \\x2d) from a raw response body or a json.dumps(ensure_ascii) text, or a URL encoding (%2D, %2d, the
    double-encoded %252D, %u002D) from a URL or form body that echoes the key."""
    n = ord(c)
    forms = [re.escape(c)]
    if n < 0x10000:
        forms += [r"\\u" + _hex(n, 4), "%[uU]" + _hex(n, 4)]
    if n < 0x100:
        forms += [r"\\x" + _hex(n, 2)]
    utf8 = c.encode("utf-8")
    forms += ["".join("%" + _hex(b, 2) for b in utf8), "".join("%25" + _hex(b, 2) for b in utf8)]
    return "(?:" + "|".join(forms) + ")"


def _first_chars(c: str, any_case: bool) -> str:
    """A lookahead on the characters a form of c can start with (c, its other case, '\\', '%'): it lets the
    regex engine skip ahead in C to the few places a key can start."""
    chars = {c, "\\", "%"} | ({c.lower(), c.upper()} if any_case else set())
    return "(?=[" + "".join(re.escape(x) for x in sorted(chars)) + "])"


@functools.lru_cache(maxsize=64)
def _escaped_pattern(secret: str) -> re.Pattern:
    return re.compile(_first_chars(secret[0], False) + "".join(_char_forms(c) for c in secret))


@functools.lru_cache(maxsize=64)
def _loose_pattern(secret: str) -> re.Pattern:
    return re.compile(_first_chars(secret[0], True) + _LOOSE_GAP.join(_char_forms(c) for c in secret),
                      re.IGNORECASE)


def redact(text: str, *secrets: str | None) -> str:
    """Replace every non-empty secret in text, and every masked form of it (a prefix and/or suffix of at least 3
    of its characters around a run of *, •, … or ...), by '***'. A real API key (16+ characters) is also found
    in another letter case and with whitespace or line breaks inside it, also URL-encoded (a server that echoes
    it reformatted); any key also with characters written as \\u00XX or \\xXX escapes (a raw JSON body that
    echoes it) or percent-encoded (%2D, %2d, %252D: a URL or form body). Linear time in len(text) whatever it
    holds (tests/test_fault_sweep.py times it against a plain scan). Keys must never reach logs or files."""
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
