"""The result JSON of DESIGN.md section 3, written incrementally and resumable.

While a run is in progress, finished samples are appended to `{path}.partial.jsonl`
(one durable line each); the JSON itself is rewritten atomically every
`flush_every` samples and at the end. A rerun on the same path reloads both, so
a killed run resumes without duplicating or losing samples.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from trainers.evaluation.metrics import metrics_from_ranks
from trainers.foundation.errors import UserInputError
from trainers.foundation.files import append_jsonl, atomic_write_json, iter_jsonl, repair_jsonl_tail

SAMPLE_KEYS = ("interaction_id", "user_id", "target_item_id", "candidates", "scores", "ranking", "target_rank")


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except Exception:
        return None


def load_result_json(path: str | os.PathLike, flag: str = "--reference_json") -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{flag} {path}: file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserInputError(f"{flag} {path}: not valid JSON ({e})")
    if not isinstance(data, dict) or "samples" not in data:
        raise UserInputError(f"{flag} {path}: not a result JSON (no 'samples' list)")
    for i, s in enumerate(data["samples"]):
        missing = [k for k in ("interaction_id", "target_item_id", "candidates") if k not in s]
        if missing:
            raise UserInputError(f"{flag} {path}: sample {i} lacks {missing}")
    return data


def check_resume_settings(path: str | os.PathLike, meta: dict, keys: tuple[str, ...],
                          flag: str = "--output_dir") -> None:
    """Refuse to resume into an existing result JSON made with other settings (one line naming the keys).

    Only keys present in the old meta are compared; a nested meta["args"] dict counts as well."""
    p = Path(path)
    if not p.is_file():
        return
    old = load_result_json(p, flag=flag).get("meta", {}) or {}
    flat_old = {**(old.get("args") or {}), **old}
    flat_new = {**(meta.get("args") or {}), **meta}
    diff = [k for k in keys if k in flat_old and flat_old[k] != flat_new.get(k)]
    if diff:
        shown = ", ".join(f"{k}: {flat_old[k]!r} -> {flat_new.get(k)!r}" for k in diff)
        raise UserInputError(f"{flag} {p.parent}: existing {p.name} was made with other settings ({shown}); "
                             "pass --overwrite_output_dir or another output directory")


def reference_candidates(result: dict) -> dict[int, list[int]]:
    """interaction_id -> candidate list, in the file's order."""
    return {int(s["interaction_id"]): [int(c) for c in s["candidates"]] for s in result["samples"]}


def partial_path(path: str | os.PathLike, rank: int = 0) -> Path:
    """Where a process appends its finished samples: {path}.partial.jsonl (rank 0), {path}.partial.rank{r}.jsonl."""
    p = Path(path)
    return p.with_name(p.name + (".partial.jsonl" if rank == 0 else f".partial.rank{rank}.jsonl"))


def partial_paths(path: str | os.PathLike) -> list[Path]:
    """Every process's partial file next to a result JSON (rank 0 first)."""
    p = Path(path)
    return [x for x in [partial_path(p)] + sorted(p.parent.glob(p.name + ".partial.rank*.jsonl")) if x.is_file()]


class ResultWriter:
    """Collects samples for one result JSON; resumes from what an earlier run on the same path left.

    Several processes (an evaluation sharded with accelerate launch/torchrun) each append to their own partial
    file; only rank 0 writes the JSON, and `merge()` on rank 0 takes the other processes' samples in."""

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any], resume: bool = True, flush_every: int = 50,
                 rank: int = 0) -> None:
        self.path = Path(path)
        self.rank = rank
        self.partial = partial_path(self.path, rank)
        self.meta = dict(meta)
        self.meta.setdefault("git_commit", git_commit())
        self.flush_every = flush_every
        self.samples: dict[int, dict] = {}
        if resume:
            if self.path.is_file():
                for s in load_result_json(self.path, flag="output").get("samples", []):
                    self.samples[int(s["interaction_id"])] = s
            self.merge()
        elif rank == 0:
            for p in [self.path, *partial_paths(self.path)]:
                if p.exists():
                    p.unlink()
        self._since_flush = 0

    def merge(self) -> None:
        """Take in the samples of every partial file (this process's and the others')."""
        for part in partial_paths(self.path):
            if part == self.partial:
                repair_jsonl_tail(part)
            for s in iter_jsonl(part, flag="partial results", skip_bad_lines=True):
                missing = [k for k in SAMPLE_KEYS if k not in s]
                if missing:  # a damaged row is redone, not fatal (it would fail again on every rerun)
                    print(f"warning: {part}: skipping a row without {missing}; it will be recomputed", file=sys.stderr)
                    continue
                self.samples.setdefault(int(s["interaction_id"]), s)

    @property
    def done_ids(self) -> set[int]:
        return set(self.samples)

    def add(self, sample: dict) -> None:
        iid = int(sample["interaction_id"])
        if iid in self.samples:
            return
        self.samples[iid] = sample
        append_jsonl(self.partial, [sample])
        self._since_flush += 1
        if self._since_flush >= self.flush_every and self.rank == 0:
            self.write()

    def ordered_samples(self, order: list[int] | None = None) -> list[dict]:
        if order is None:
            return sorted(self.samples.values(), key=lambda s: int(s["interaction_id"]))
        return [self.samples[i] for i in order if i in self.samples]

    def write(self, metrics: dict | None = None, extra: dict | None = None, order: list[int] | None = None) -> dict:
        samples = self.ordered_samples(order)
        if metrics is None:
            metrics = metrics_from_ranks([s["target_rank"] for s in samples if s.get("target_rank")])
        data = {"meta": self.meta, "metrics": metrics, **(extra or {}), "samples": samples}
        if self.rank == 0:
            atomic_write_json(self.path, data)
        self._since_flush = 0
        return data

    def finalize(self, metrics: dict | None = None, extra: dict | None = None, order: list[int] | None = None) -> dict:
        """Rank 0: write the complete JSON and drop every partial log (their samples are all in the JSON now)."""
        data = self.write(metrics, extra, order)
        if self.rank == 0:
            for part in partial_paths(self.path):
                part.unlink()
        return data


def open_sharded_results(path: str | os.PathLike, meta: dict[str, Any], items: list, overwrite: bool,
                         flush_every: int, cpu: bool):
    """An evaluation's result file shared by every process of a launch (one process without a launcher): the old
    files cleared once (overwrite), each process's writer resuming, the order of all samples and the items still
    to rank. Returns (accelerate PartialState, this process's ResultWriter, order of interaction ids, todo items);
    the meta block is on disk before the first new sample, so a later resume can check it."""
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    rank = state.process_index
    if overwrite and rank == 0:
        ResultWriter(path, meta, resume=False)  # clears the old files once, before any process appends
    state.wait_for_everyone()
    writer = ResultWriter(path, meta, resume=True, flush_every=max(1, flush_every), rank=rank)
    order = [int(ex["interaction_id"]) for ex, _ in items]
    todo = [it for it in items if int(it[0]["interaction_id"]) not in writer.done_ids]
    if len(todo) < len(items) and rank == 0:
        print(f"resuming {path}: {len(items) - len(todo)} of {len(items)} samples already done")
    writer.write(order=order)
    return state, writer, order, todo
