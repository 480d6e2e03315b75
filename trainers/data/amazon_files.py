"""Amazon Reviews 2023 raw files: where they live on the file host and on disk, download, reading.

`locate_raw_files` finds a category's rating CSV (or raw review JSONL) and metadata JSONL under a
directory, flat or in the host's folder layout, gzipped or not; `download` fetches missing ones
(resumable). `iter_lines` and `byte_progress` read them with a progress bar over the file's bytes.
"""
from __future__ import annotations

import gzip
import io
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from foundation.errors import UserInputError
from foundation.files import writing

HOST = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023"
CORRUPT_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)


def rating_url(category: str) -> str:
    return f"{HOST}/benchmark/5core/rating_only/{category}.csv.gz"


def meta_url(category: str) -> str:
    return f"{HOST}/raw/meta_categories/meta_{category}.jsonl.gz"


def download(url: str, dest: Path, chunk: int = 1 << 20, timeout: float = 60.0) -> Path:
    """Stream url to dest with a progress bar; resumes from `dest.part`; no-op if dest exists."""
    dest = Path(dest)
    if dest.exists():
        return dest
    part = dest.with_name(dest.name + ".part")
    with writing(part):  # a refused write (disk full, no permission): one line naming the file
        dest.parent.mkdir(parents=True, exist_ok=True)
    done = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "our-rec-preprocess"})
    if done:
        req.add_header("Range", f"bytes={done}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and done:  # .part already complete
            part.rename(dest)
            return dest
        raise UserInputError(f"download of {url} failed: HTTP {e.code}; download it by hand and pass --raw_dir")
    except (urllib.error.URLError, OSError) as e:
        raise UserInputError(f"download of {url} failed ({e}); download it by hand and pass --raw_dir")
    with resp:
        if done and resp.status != 206:  # server ignored Range: start over
            done = 0
        length = resp.headers.get("Content-Length")
        total = int(length) + done if length else None
        with writing(part):
            f = open(part, "ab" if done else "wb")
        with f, tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=dest.name) as bar:
            while True:
                buf = resp.read(chunk)
                if not buf:
                    break
                with writing(part):  # the network's errors stay the download's; only the disk's are turned
                    f.write(buf)
                bar.update(len(buf))
    with writing(dest):
        part.rename(dest)
    return dest


@dataclass
class RawFiles:
    meta: Path
    ratings: Path | None = None
    reviews: Path | None = None

    @property
    def interactions(self) -> Path:
        return self.ratings if self.ratings is not None else self.reviews  # type: ignore[return-value]


def _first(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def candidate_paths(raw_dir: Path, category: str) -> dict[str, list[Path]]:
    """Where each raw file may live: flat in raw_dir or mirrored like the file host."""
    r = Path(raw_dir)
    return {
        "ratings": [r / f"{category}.csv.gz", r / f"{category}.csv",
                    r / "benchmark" / "5core" / "rating_only" / f"{category}.csv.gz",
                    r / "rating_only" / f"{category}.csv.gz"],
        "reviews": [r / f"{category}.jsonl.gz", r / f"{category}.jsonl",
                    r / "raw" / "review_categories" / f"{category}.jsonl.gz",
                    r / "raw" / "review_categories" / f"{category}.jsonl",
                    r / "review_categories" / f"{category}.jsonl.gz"],
        "meta": [r / f"meta_{category}.jsonl.gz", r / f"meta_{category}.jsonl",
                 r / "raw" / "meta_categories" / f"meta_{category}.jsonl.gz",
                 r / "raw" / "meta_categories" / f"meta_{category}.jsonl",
                 r / "meta_categories" / f"meta_{category}.jsonl.gz"],
    }


def locate_raw_files(raw_dir: str | Path, category: str, allow_download: bool = False) -> RawFiles:
    """Find the category's files under raw_dir (any layout); download missing ones if allowed."""
    raw_dir = Path(raw_dir)
    cand = candidate_paths(raw_dir, category)
    ratings, reviews, meta = (_first(cand[k]) for k in ("ratings", "reviews", "meta"))
    if allow_download:
        if ratings is None and reviews is None:
            ratings = download(rating_url(category), cand["ratings"][0])
        if meta is None:
            meta = download(meta_url(category), cand["meta"][0])
    if ratings is None and reviews is None:
        raise UserInputError(
            f"no rating file for {category} in {raw_dir}: expected {cand['ratings'][0]} "
            f"(or {cand['ratings'][2]}, or review file {cand['reviews'][0]}); "
            f"pass the right --raw_dir or omit --raw_dir to download it")
    if meta is None:
        raise UserInputError(
            f"no metadata file for {category} in {raw_dir}: expected {cand['meta'][0]} "
            f"(or {cand['meta'][2]}); pass the right --raw_dir or omit --raw_dir to download it")
    return RawFiles(meta=meta, ratings=ratings, reviews=None if ratings is not None else reviews)


# utf-8-sig: a UTF-8 byte-order mark at the start (an Excel or Windows export) is read as nothing, not as part of
# the first column name or the first JSON line; pyarrow's readers skip it too.
TEXT_ENCODING = "utf-8-sig"


def open_text(path: Path):
    if is_gzip(path):
        return gzip.open(path, "rt", encoding=TEXT_ENCODING)
    return open(path, "r", encoding=TEXT_ENCODING)


def corrupt_file_error(path: Path, e: Exception) -> UserInputError:
    return UserInputError(f"cannot read {path}: corrupt or truncated file ({type(e).__name__}: {e}); "
                          f"delete it and download it again")


class ByteBar:
    """A tqdm bar over the bytes of a raw file on disk (compressed or not): `update()` after reading."""

    def __init__(self, raw, path: Path, desc: str) -> None:
        self.raw = raw
        self.bar = tqdm(total=Path(path).stat().st_size, unit="B", unit_scale=True, desc=desc, mininterval=1)
        self.seen = 0

    def update(self) -> None:
        pos = self.bar.total if self.raw.closed else self.raw.tell()
        self.bar.update(pos - self.seen)
        self.seen = pos

    def close(self) -> None:
        self.update()
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:  # also on errors, so the bar never prints after an error line
        self.close()


def is_gzip(path: Path) -> bool:
    return str(path).endswith(".gz")


def iter_lines(path: Path, desc: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every line of a (gzipped) UTF-8 file, with a bar over its bytes.
    A corrupt or truncated file is a UserInputError naming it."""
    try:
        with open(path, "rb") as raw, ByteBar(raw, path, desc) as bar:
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip(path) else raw
            for n, line in enumerate(io.TextIOWrapper(stream, encoding=TEXT_ENCODING), start=1):
                if n % 4096 == 0:
                    bar.update()
                yield n, line
    except CORRUPT_ERRORS as e:
        raise corrupt_file_error(path, e) from None
