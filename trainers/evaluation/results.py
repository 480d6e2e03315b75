"""The result JSON (docs/evaluation.md), written incrementally and resumable.

While a run is in progress, finished samples are appended to `{path}.partial.jsonl`
(one durable line each); the JSON itself is rewritten atomically every
`flush_every` samples and at the end. A rerun on the same path reloads both, so
a killed run resumes without duplicating or losing samples.
"""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from trainers.evaluation.metrics import metrics_from_ranks, rank_from_ranking
from foundation.errors import UserInputError
from foundation.files import MAX_JSON_BYTES, append_jsonl, atomic_write_json, iter_jsonl, read_json, repair_jsonl_tail

SAMPLE_KEYS = ("interaction_id", "user_id", "target_item_id", "candidates", "scores", "ranking", "target_rank")


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except Exception:
        return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def sample_problem(s: Any, complete: bool = True) -> str | None:
    """Why a saved sample row cannot be used, or None. Always: a JSON object with integer interaction_id and
    target_item_id and a list of distinct integer candidates holding the target. `complete` (a row a resumed run
    would reuse as finished): also target_rank in 1..K, ranking an order of the candidates and scores one number
    per candidate."""
    if not isinstance(s, dict):
        return "not a JSON object"
    needed = SAMPLE_KEYS if complete else ("interaction_id", "target_item_id", "candidates")
    missing = [k for k in needed if k not in s]
    if missing:
        return f"no {missing}"
    if not _is_int(s["interaction_id"]) or not _is_int(s["target_item_id"]):
        return "interaction_id/target_item_id are not integers"
    cands = s["candidates"]
    if not isinstance(cands, list) or not cands or not all(_is_int(c) for c in cands):
        return "candidates is not a list of item ids"
    if len(set(cands)) != len(cands) or s["target_item_id"] not in cands:
        return "candidates repeat an item or lack the target"
    if not complete:
        return None
    if not _is_int(s["target_rank"]) or not 1 <= s["target_rank"] <= len(cands):
        return f"target_rank {s['target_rank']!r} is not in 1..{len(cands)}"
    ranking, scores = s["ranking"], s["scores"]
    if not isinstance(ranking, list) or not all(_is_int(c) for c in ranking) or sorted(ranking) != sorted(cands):
        return "ranking is not an order of the candidates"
    if not isinstance(scores, list) or len(scores) != len(cands) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in scores):
        return "scores is not one number per candidate"
    return None


def load_result_json(path: str | os.PathLike, flag: str = "--reference_json", check_samples: bool = True) -> dict:
    """A result JSON; with check_samples every sample must name its interaction, target and candidates
    (sample_problem, complete=False), else a one-line error naming the sample."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{flag} {path}: {'is a directory, expected a file' if p.is_dir() else 'file not found'}")
    try:
        data = read_json(p, MAX_JSON_BYTES)
    except (OSError, ValueError) as e:
        raise UserInputError(f"{flag} {path}: not valid JSON ({type(e).__name__}: {e})")
    if not isinstance(data, dict) or not isinstance(data.get("samples"), list):
        raise UserInputError(f"{flag} {path}: not a result JSON (no 'samples' list)")
    if check_samples:
        for i, s in enumerate(data["samples"]):
            problem = sample_problem(s, complete=False)
            if problem:
                raise UserInputError(f"{flag} {path}: sample {i}: {problem}")
    return data


def usable_samples(rows: Any, where: Path | str, complete: bool = True, report: bool = True) -> list[dict]:
    """The rows a resumed run can reuse (sample_problem); each other one is reported on stderr (unless not report)
    and will be recomputed (failing on it would fail again on every rerun)."""
    out = []
    for s in rows:
        problem = sample_problem(s, complete)
        if problem and not report:
            continue
        if problem:
            iid = s.get("interaction_id") if isinstance(s, dict) else None
            print(f"warning: {where}: skipping saved sample {iid!r} ({problem}); it will be recomputed",
                  file=sys.stderr)
            continue
        out.append(s)
    return out


def check_resume_settings(path: str | os.PathLike, meta: dict, keys: tuple[str, ...],
                          flag: str = "--output_dir") -> None:
    """Refuse to resume into an existing result JSON made with other settings (one line naming the keys).

    Only keys present in the old meta are compared; a nested meta["args"] dict counts as well."""
    p = Path(path)
    if not p.is_file():
        return
    old = load_result_json(p, flag=flag, check_samples=False).get("meta", {}) or {}
    if not isinstance(old, dict) or not isinstance(old.get("args") or {}, dict):
        raise UserInputError(f"{flag} {p.parent}: existing {p.name} has a damaged 'meta' (not an object); "
                             "pass --overwrite_output_dir or another output directory")
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
                saved = load_result_json(self.path, flag="output", check_samples=False)["samples"]
                for s in usable_samples(saved, self.path):
                    self.samples[int(s["interaction_id"])] = s
            self.merge()
        elif rank == 0:
            for p in [self.path, *partial_paths(self.path)]:
                if p.exists():
                    p.unlink()
        self._since_flush = 0

    def merge(self) -> None:
        """Take in the samples of every partial file (this process's and the others'). Unusable rows are reported
        by the first merge only (the ones read when the run started)."""
        report, self._merged = not getattr(self, "_merged", False), True
        for part in partial_paths(self.path):
            if part == self.partial:
                repair_jsonl_tail(part)
            # a damaged row is redone, not fatal (it would fail again on every rerun)
            rows = iter_jsonl(part, flag="partial results", skip_bad_lines=True, report=report)
            for s in usable_samples(rows, part, report=report):
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


@contextmanager
def sharded_results(state, path: str | os.PathLike, meta: dict[str, Any], items: list, fresh: bool,
                    flush_every: int, load: Callable[[list], Any] | None = None, flag: str = "--output_dir",
                    check_saved: Callable[[ResultWriter], None] | None = None,
                    fresh_flag: str = "--overwrite_output_dir"):
    """An evaluation's result file shared by every process of a launch (accelerate PartialState `state`), held
    for the evaluation: one evaluation per result file at a time (a run lock beside it), each process's writer
    resuming unless `fresh` (a saved sample of another candidate list than `items` refuses the resume: it was made
    with another dataset, K or seed; `fresh_flag` names the way out), `check_saved(writer)` on what is saved, then
    `load(todo)` (the model and its
    prompts) BEFORE anything is cleared, so a damaged checkpoint fails with the old results intact; then the old
    files are cleared once (fresh) and the meta block written before the first new sample. Yields (this
    process's ResultWriter, the order of all interaction ids, the items still to rank, load's result or None)."""
    from foundation.distributed import locked_run

    path = Path(path)
    with locked_run(state, str(path.parent), flag=flag, lock_name=f".{path.name}.lock"):
        rank = state.process_index
        flush = max(1, flush_every)
        writer = None if fresh else ResultWriter(path, meta, flush_every=flush, rank=rank)
        if writer is not None:
            wanted = {int(ex["interaction_id"]): [int(c) for c in cands] for ex, cands in items}
            for iid, saved in writer.samples.items():
                if iid in wanted and [int(c) for c in saved["candidates"]] != wanted[iid]:
                    raise UserInputError(f"{flag} {path.parent}: saved sample {iid} has other candidates than this "
                                         f"run (another dataset, K or seed?); pass {fresh_flag} to start afresh")
            if check_saved is not None:
                check_saved(writer)
        order = [int(ex["interaction_id"]) for ex, _ in items]
        todo = [it for it in items if writer is None or int(it[0]["interaction_id"]) not in writer.done_ids]
        loaded = load(todo) if load is not None and todo else None
        if writer is None:
            if rank == 0:
                ResultWriter(path, meta, resume=False)  # clears the old files once, before any process appends
            state.wait_for_everyone()
            writer = ResultWriter(path, meta, flush_every=flush, rank=rank)
        if len(todo) < len(items) and rank == 0:
            print(f"resuming {path}: {len(items) - len(todo)} of {len(items)} samples already done")
        writer.write(order=order)
        yield writer, order, todo, loaded


def candidate_sets(data: dict) -> dict[int, frozenset]:
    """interaction id -> its candidate set, of a loaded result JSON."""
    return {int(s["interaction_id"]): frozenset(int(c) for c in s["candidates"]) for s in data["samples"]}


def sample_rank(s: dict) -> int:
    """target_rank, or (older/partial files) the target's position in the ranking."""
    if s.get("target_rank"):
        return int(s["target_rank"])
    if s.get("ranking"):
        return rank_from_ranking(s["ranking"], s["target_item_id"])
    raise UserInputError(f"sample {s.get('interaction_id')} has neither target_rank nor ranking")


def check_same_candidates(paths: list[str], datas: list[dict]) -> None:
    """Result files are comparable only when they rank the same candidates of the same interactions."""
    ref = candidate_sets(datas[0])
    for path, data in zip(paths[1:], datas[1:]):
        other = candidate_sets(data)
        only_ref, only_other = ref.keys() - other.keys(), other.keys() - ref.keys()
        differ = [i for i in ref.keys() & other.keys() if ref[i] != other[i]]
        if only_ref or only_other or differ:
            raise UserInputError(
                f"{path} does not rank the same candidates as {paths[0]}: {len(only_ref)} interaction(s) only in the "
                f"first, {len(only_other)} only in this one, {len(differ)} with other candidates; rerun it with "
                f"--reference_json {paths[0]}")
