"""Crash-safe file IO shared by every script: atomic replace, durable JSONL appends, strict JSONL reads, output
paths checked before writing, the run lock of an output directory."""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from foundation.errors import UserInputError

LOCK_FILE = ".lock"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file in the same directory, fsync, then os.replace: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent))


def repair_jsonl_tail(path: str | os.PathLike) -> None:
    """Drop a trailing partial line left by a kill mid-write so appends start on a clean line."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        f.truncate(cut)


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append whole records, one line each, flushed and fsynced (a kill loses at most the line being written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def parse_json_lines(lines: Sequence[str | bytes]) -> Iterator[tuple[int, Any, ValueError | None]]:
    """(1-based line number, parsed value or None, the JSON error or None) for every non-blank line: the one
    line-by-line JSONL parse; each reader decides what a bad line means for it."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line), None
        except ValueError as e:
            yield n, None, e


def iter_jsonl(path: str | os.PathLike, flag: str = "--input_file", skip_bad_lines: bool = False,
               tolerate_partial_tail: bool = True, report: bool = True) -> Iterator[dict]:
    """Yield JSON objects from a JSONL file. A malformed line is an error naming file and line number,
    unless skip_bad_lines (then it is reported on stderr, unless not report, and skipped). An unterminated
    last line (a killed writer) is ignored when tolerate_partial_tail."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{flag} {path}: file not found")
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
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
            row = json.loads(tail)
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


def check_output_path(path: str | os.PathLike, flag: str, kind: str = "file") -> Path:
    """An output path that can be written: it is a `kind` ("file" or "dir") or does not exist yet, and its nearest
    existing ancestor is a directory. One-line error naming the flag otherwise, before anything is written."""
    p = Path(path)
    if p.exists():
        if kind == "dir" and not p.is_dir():
            raise UserInputError(f"{flag} {path}: exists and is not a directory")
        if kind == "file" and p.is_dir():
            raise UserInputError(f"{flag} {path}: is a directory; give a file path")
        return p
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserInputError(f"{flag} {path}: cannot be created, {parent} is a file")
            break
    return p


@contextmanager
def replaced_after_success(paths: Sequence[Path]) -> Iterator[None]:
    """Files a run starts afresh (--overwrite_output_dir) are moved aside, not deleted: removed once the run ends
    well, put back if it fails before writing any of them (a rejected API key, a bad flag found late, Ctrl-C)."""
    moved = []
    for p in paths:
        if p.exists():
            aside = p.with_name(f".{p.name}.replaced")
            os.replace(p, aside)
            moved.append((p, aside))
    try:
        yield
    except BaseException:
        if not any(p.exists() for p in paths):
            for p, aside in moved:
                os.replace(aside, p)
        raise
    for _, aside in moved:
        aside.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- the run lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """`{output_dir}/.lock` (or `name`: one lock per result file, per dataset) holding the owner's pid and host: a
    second run on the same output is refused with one line; a stale lock left by a dead process on this host is
    taken over. Release removes it."""

    def __init__(self, output_dir: str | os.PathLike, flag: str = "--output_dir", name: str = LOCK_FILE,
                 label: str | os.PathLike | None = None) -> None:
        self.dir = Path(output_dir)
        self.path = self.dir / name
        self.flag = flag
        self.label = str(label if label is not None else self.dir)  # what the flag named, for the messages
        self.held = False

    def acquire(self) -> "RunLock":
        self.dir.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner.get("host") == me["host"] and not _pid_alive(int(owner.get("pid", -1))):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                if owner is None:  # being written right now, or garbage: look again
                    time.sleep(0.2)
                    owner = self._owner()
                    if owner is None:
                        self.path.unlink(missing_ok=True)
                        continue
                raise UserInputError(
                    f"{self.flag} {self.label}: in use by another run (pid {owner.get('pid')} on {owner.get('host')}, "
                    f"started {owner.get('started')}); wait for it or use another {self.flag} "
                    f"(delete {self.path} if that run is gone)")
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise UserInputError(f"{self.flag} {self.label}: cannot take {self.path}")

    def _owner(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) and "pid" in data else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner is not None and int(owner.get("pid", -1)) == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
