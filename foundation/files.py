"""Crash-safe file IO shared by every script: atomic replace, durable JSONL appends, strict JSONL reads, bounded
JSON reads, output paths checked before writing, input directories checked, the run lock of an output directory.

Two homes live here:
- `writing(path)`: every write of the project runs inside it (atomic_write_text, append_jsonl, the run lock, the
  checkpoint and dataset writers, the model savers inside them), so an operating-system refusal (disk full,
  file too large, no permission, read-only file system, a symlink loop, a missing parent) becomes one OutputError
  naming the path and the reason; scripts exit 1 with that line (foundation.errors.exit_on_user_error). The write
  that failed leaves nothing half-written under a real name: earlier checkpoints and results stay intact and a
  rerun of the same command continues.
- `loads_json` / `read_json`: every JSON and JSONL the scripts read is parsed with a nesting limit
  (MAX_JSON_DEPTH; json.loads of deeper input raises RecursionError) and read with a size limit (MAX_JSON_BYTES,
  MAX_SMALL_JSON_BYTES, MAX_JSONL_LINE_BYTES); a breach is a ValueError (JsonLimitError), which every reader
  already turns into its one-line message naming the file.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from foundation.errors import OutputError, UserInputError, as_os_error, os_error_message

LOCK_FILE = ".lock"

# ---------------------------------------------------------------------------------------------- JSON limits
MAX_JSON_DEPTH = 100  # nesting levels of any JSON we read (ours use < 10; Python's parser fails near 1000)
MAX_JSON_BYTES = 4 << 30  # a whole JSON file: result JSONs of large evaluations with their reasoning texts
MAX_SMALL_JSON_BYTES = 64 << 20  # settings and state files: args.json, trainer_state.json, config.json, markers
MAX_JSONL_LINE_BYTES = 512 << 20  # one JSONL row (an answer row holds what a server sent: a long text at most)


class JsonLimitError(ValueError):
    """JSON nested deeper or larger than the limits above (a ValueError: readers report it like bad JSON)."""


def _too_deep(obj: Any, max_depth: int) -> bool:
    """Whether obj nests containers more than max_depth levels deep (iterative: no recursion on hostile input)."""
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if depth > max_depth:
            return True
        children = o.values() if isinstance(o, dict) else o
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    return False


def loads_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with a nesting limit: JsonLimitError (a ValueError) for input nested deeper than max_depth
    levels, instead of a RecursionError (or a value that breaks a recursive consumer later)."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise JsonLimitError(f"nested deeper than {max_depth} levels") from None
    if isinstance(obj, (dict, list)) and _too_deep(obj, max_depth):
        raise JsonLimitError(f"nested deeper than {max_depth} levels")
    return obj


def check_json_size(path: str | os.PathLike, max_bytes: int) -> None:
    """JsonLimitError when the file is larger than max_bytes (checked before reading it into memory)."""
    size = os.stat(path).st_size
    if size > max_bytes:
        raise JsonLimitError(f"{size} bytes, more than the {max_bytes} bytes this JSON file may have")


def read_json(path: str | os.PathLike, max_bytes: int = MAX_SMALL_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A JSON file, size-checked then parsed with loads_json. Raises OSError (unreadable) or ValueError (not
    UTF-8, not JSON, over a limit): each caller words them as its one-line error naming the file."""
    check_json_size(path, max_bytes)
    return loads_json(Path(path).read_text(encoding="utf-8"), max_depth)


# ---------------------------------------------------------------------------------------------- writing
_WRITE_HINTS = {
    errno.ENOSPC: "free some space, then rerun the same command: what was saved before is intact",
    errno.EDQUOT: "free some space (disk quota), then rerun the same command: what was saved before is intact",
    errno.EFBIG: "the file outgrew the file size limit (ulimit -f); raise it and rerun the same command",
    errno.EACCES: "choose a location this user may write to",
    errno.EPERM: "choose a location this user may write to",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.ELOOP: "the path runs into a loop of symbolic links",
    errno.ENOENT: "a folder on the path is missing (removed while the run was going?)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}
def _on_the_way(e: OSError, path: str | os.PathLike) -> OSError:
    """mkdir reports a folder on the path that is a symlink loop or a file as EEXIST ('File exists'): the error of
    the first ancestor that cannot be a folder says what is wrong (ELOOP, or ENOTDIR naming the file)."""
    if e.errno not in (errno.EEXIST, errno.ENOTDIR, errno.ENOENT):
        return e
    full = Path(path).absolute()
    for p in [*reversed(full.parents), full]:
        problem = _stat_problem(p)
        if problem is not None and problem.errno != errno.ENOENT:
            return OSError(problem.errno, problem.strerror, str(p))
        if problem is None and p != full and not p.is_dir():
            return OSError(errno.ENOTDIR, "a file where a folder should be", str(p))
    return e


def write_error(e: OSError, path: str | os.PathLike) -> OutputError:
    """The one-line OutputError of a refused write: the path (the OS's, else `path`), the reason, what to do."""
    e = _on_the_way(e, e.filename if e.filename is not None else path)
    hint = _WRITE_HINTS.get(e.errno or -1)
    return OutputError(f"cannot write {os_error_message(e, path)}" + (f"; {hint}" if hint else ""))


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Every write runs inside it: an OSError (or a library's wrapped one) becomes an OutputError naming the path
    the OS names, else `path`, with the reason (ENOSPC, EFBIG, EACCES, EROFS, ELOOP, ENOENT, ...)."""
    try:
        yield
    except (OutputError, UserInputError):
        raise
    except Exception as e:  # noqa: BLE001 - only OS write failures are turned, everything else re-raised
        os_error = as_os_error(e)
        if os_error is None:
            raise
        raise write_error(os_error, path) from e


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file in the same directory, fsync, then os.replace: readers see old or new, never half.
    A refused write (OutputError) leaves the old file as it was and no temp file."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent))


def repair_jsonl_tail(path: str | os.PathLike) -> None:
    """Drop a trailing partial line left by a kill mid-write so appends start on a clean line."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with writing(path), open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        f.truncate(cut)


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append whole records, one line each, flushed and fsynced (a kill loses at most the line being written).
    A refused write (disk full, file too large: OutputError) cuts the file back to what it held before, so the
    rows saved earlier stay whole and a rerun appends after them."""
    path = Path(path)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            start = f.tell()
            try:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                with suppress(OSError):
                    f.truncate(start)  # no half row left behind; shrinking needs no space
                raise


def parse_json_lines(lines: Sequence[str | bytes]) -> Iterator[tuple[int, Any, ValueError | None]]:
    """(1-based line number, parsed value or None, the JSON error or None) for every non-blank line: the one
    line-by-line JSONL parse; each reader decides what a bad line means for it."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            if len(line) > MAX_JSONL_LINE_BYTES:
                raise JsonLimitError(f"a line of {len(line)} bytes, more than {MAX_JSONL_LINE_BYTES}")
            yield n, loads_json(line), None
        except ValueError as e:
            yield n, None, e


def iter_jsonl(path: str | os.PathLike, flag: str = "--input_file", skip_bad_lines: bool = False,
               tolerate_partial_tail: bool = True, report: bool = True) -> Iterator[dict]:
    """Yield JSON objects from a JSONL file. A malformed line is an error naming file and line number,
    unless skip_bad_lines (then it is reported on stderr, unless not report, and skipped). An unterminated
    last line (a killed writer) is ignored when tolerate_partial_tail."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, expected a file" if path.is_dir() else "file not found"
        raise UserInputError(f"{flag} {path}: {what}")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, ValueError) as e:
        raise UserInputError(f"{flag} {path}: cannot read it ({type(e).__name__}: {e})") from None
    for n, obj, e in parse_json_lines(lines):
        if e is None and not isinstance(obj, dict):
            e = ValueError("not a JSON object")
        if e is not None:
            if tolerate_partial_tail and n == len(lines) and not lines[-1].endswith("\n"):
                continue
            if skip_bad_lines:
                if report:
                    print(f"warning: {path}:{n}: skipping malformed JSONL line ({e})", file=sys.stderr)
                continue
            raise UserInputError(f"{flag} {path}:{n}: malformed JSONL line ({e}); fix it or pass --skip_bad_lines")
        yield obj


def read_jsonl(path: str | os.PathLike, **kw) -> list[dict]:
    return list(iter_jsonl(path, **kw))


def read_answer_rows(output_file: str | os.PathLike, content_key: str = "content",
                     flag: str = "--output_file") -> tuple[list[dict], bool]:
    """(rows, has_partial_tail) of an answer JSONL (models.api_client.run_jobs, models.local_inference), validated
    before anyone touches it.

    Every complete line must be a JSON object with an "id" and either content_key or "error"; an unterminated
    last line is the partial row of a killed run only if it starts like one of ours ('{"id": '). Anything else
    means the file is not ours: UserInputError, and the file is left as it is."""
    path = Path(output_file)
    if not path.exists():
        check_output_path(path, flag)
        return [], False
    if not path.is_file():
        raise UserInputError(f"{flag} {path}: is not a file")
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    rows: list[dict] = []
    fix = f"if it is an answer file of this script, delete that line and rerun, else use another {flag}"
    for n, row, e in parse_json_lines(lines):
        if e is not None:
            raise UserInputError(f"{flag} {path}:{n}: not a row of an answer file (malformed JSON: {e}); {fix}")
        if not isinstance(row, dict) or "id" not in row or (content_key not in row and "error" not in row):
            raise UserInputError(f"{flag} {path}:{n}: not a row of an answer file (no 'id' and '{content_key}'); {fix}")
        rows.append(row)
    if tail.strip():
        try:
            row = loads_json(tail)
        except ValueError:
            row = None
        if isinstance(row, dict) and "id" in row and (content_key in row or "error" in row):
            rows.append(row)  # a complete row that only lacks its newline
        elif not tail.startswith(b'{"id": '):
            raise UserInputError(f"{flag} {path}: its unterminated last line is not a row of an answer file; {fix}")
        else:
            return rows, True
    return rows, False


def truncate_jsonl_after(path: Path, step: int) -> None:
    """Keep only records with "step" <= step (a resumed run's log then reads like one uninterrupted run);
    step < 0 empties the file. Lines that are not a record with an integer step are dropped with a warning."""
    import sys

    if not path.exists():
        return
    repair_jsonl_tail(path)
    keep = []
    for r in iter_jsonl(path, flag="metrics log", skip_bad_lines=True):
        s = r.get("step", 0)
        if not isinstance(s, int) or isinstance(s, bool):
            print(f"warning: {path}: dropping a record whose step is {s!r}", file=sys.stderr)
        elif s <= step:
            keep.append(r)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))


def _stat_problem(p: Path) -> OSError | None:
    """The OSError os.stat raises for p (ENOENT, ELOOP, EACCES, ...), None when it exists."""
    try:
        os.stat(p)
    except OSError as e:
        return e
    return None


def require_dir(path: str | os.PathLike, flag: str, hint: str = "") -> Path:
    """An input directory, or the one-line error of the one home of directory checks: 'does not exist', 'is a
    file, expected a directory', or what the OS says (a symlink loop, no permission). hint (e.g. 'run
    preprocess.py first') is appended after '; '."""
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    problem = _stat_problem(p)
    if problem is not None:
        if problem.errno == errno.ENOENT:
            raise UserInputError(f"{flag} {path}: directory does not exist{tail}")
        raise UserInputError(f"{flag} {path}: cannot be opened ({os_error_message(problem, path)}){tail}")
    if not p.is_dir():
        what = "is a file" if p.is_file() else "is not a directory"
        raise UserInputError(f"{flag} {path}: {what}, expected a directory{tail}")
    return p


def check_output_path(path: str | os.PathLike, flag: str, kind: str = "file") -> Path:
    """An output path that can be written: it is a `kind` ("file" or "dir") or does not exist yet, its nearest
    existing ancestor is a writable directory, and no symlink loop is on the way. One-line error naming the flag
    otherwise, before anything is written."""
    p = Path(path)
    problem = _stat_problem(p)
    if problem is None:
        if kind == "dir" and not p.is_dir():
            raise UserInputError(f"{flag} {path}: is a file, expected a directory")
        if kind == "file" and p.is_dir():
            raise UserInputError(f"{flag} {path}: is a directory; give a file path")
        return p
    if problem.errno not in (errno.ENOENT, errno.ENOTDIR):
        raise UserInputError(f"{flag} {path}: cannot be used ({os_error_message(problem, path)})")
    for parent in p.absolute().parents:
        problem = _stat_problem(parent)
        if problem is None:
            if not parent.is_dir():
                raise UserInputError(f"{flag} {path}: cannot be created, {parent} is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserInputError(f"{flag} {path}: cannot be created, {parent} is not writable "
                                     f"({'read-only file system' if _read_only(parent) else 'no permission'})")
            break
        if problem.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise UserInputError(f"{flag} {path}: cannot be created ({os_error_message(problem, parent)})")
    return p


def _read_only(d: Path) -> bool:
    try:
        return bool(os.statvfs(d).f_flag & os.ST_RDONLY)
    except OSError:
        return False


@contextmanager
def replaced_after_success(paths: Sequence[Path]) -> Iterator[None]:
    """Files a run starts afresh (--overwrite_output_dir) are moved aside, not deleted: removed once the run ends
    well, put back if it fails before writing any of them (a rejected API key, a bad flag found late, Ctrl-C)."""
    moved = []
    for p in paths:
        if p.exists():
            aside = p.with_name(f".{p.name}.replaced")
            with writing(aside):
                os.replace(p, aside)
            moved.append((p, aside))
    try:
        yield
    except BaseException:
        if not any(p.exists() for p in paths):
            for p, aside in moved:
                with suppress(OSError):
                    os.replace(aside, p)
        raise
    for _, aside in moved:
        with suppress(OSError):
            aside.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- the run lock
MAX_PID = 2 ** 22  # Linux's pid_max ceiling; a lock naming another number is not one of ours
_MAX_LOCK_BYTES = 4096


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _valid_owner(data: Any) -> dict | None:
    """The lock's content if it is what RunLock writes ({"pid": int 1..MAX_PID, "host": str, "started": str});
    None for anything else (garbage: wrong types, a pid of 0 or below, which os.kill would read as a process
    group, or beyond any real pid)."""
    if not isinstance(data, dict):
        return None
    pid, host, started = data.get("pid"), data.get("host"), data.get("started", "")
    if type(pid) is not int or not 0 < pid <= MAX_PID or not isinstance(host, str) or not isinstance(started, str):
        return None
    return data


class RunLock:
    """`{output_dir}/.lock` (or `name`: one lock per result file, per dataset) holding the owner's pid and host: a
    second run on the same output is refused with one line; a stale lock left by a dead process on this host is
    taken over, and so is a lock file with any other content (empty, binary, wrong types: garbage, seen twice
    0.2 s apart so a lock being written is not mistaken for it). Release removes it."""

    def __init__(self, output_dir: str | os.PathLike, flag: str = "--output_dir", name: str = LOCK_FILE,
                 label: str | os.PathLike | None = None) -> None:
        self.dir = Path(output_dir)
        self.path = self.dir / name
        self.flag = flag
        self.label = str(label if label is not None else self.dir)  # what the flag named, for the messages
        self.held = False

    def acquire(self) -> "RunLock":
        with writing(self.path):
            return self._acquire()

    def _acquire(self) -> "RunLock":
        if self.path.is_dir():
            raise UserInputError(f"{self.flag} {self.label}: its lock file {self.path} is a directory; remove it")
        self.dir.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner["host"] == me["host"] and not _pid_alive(owner["pid"]):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                if owner is None:  # being written right now, or garbage: look again
                    time.sleep(0.2)
                    owner = self._owner()
                    if owner is None:
                        self.path.unlink(missing_ok=True)
                        continue
                raise UserInputError(
                    f"{self.flag} {self.label}: in use by another run (pid {owner['pid']} on {owner['host']}, "
                    f"started {owner.get('started')}); wait for it or use another {self.flag} "
                    f"(delete {self.path} if that run is gone)")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            except BaseException:
                with suppress(OSError):
                    self.path.unlink()  # a half-written lock (disk full) would look like garbage to the next run
                raise
            self.held = True
            return self
        raise UserInputError(f"{self.flag} {self.label}: cannot take {self.path}")

    def _owner(self) -> dict | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read(_MAX_LOCK_BYTES + 1)
            if len(data) > _MAX_LOCK_BYTES:
                return None
            return _valid_owner(loads_json(data.decode("utf-8"), max_depth=2))
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner is not None and owner["pid"] == os.getpid():
                with suppress(OSError):
                    self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
