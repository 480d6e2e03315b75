"""Training checkpoints: one resolver, one writer, RNG state capture (the run lock lives in files.py).

Layout of `{output_dir}/checkpoint-{step}` (what each trainer puts in it is in its own docstring):
  model files (save_pretrained, or a PEFT adapter) + tokenizer + trainer-specific heads
  optimizer / scheduler state, rng_state_rank{r}.pt of every rank
  trainer_state.json   step, world size, bookkeeping
  args.json            the run's settings
  COMPLETE             written last; marks a usable checkpoint and lists every file with its size (the
                       manifest), so a file deleted, truncated or replaced later is found before anything loads

A checkpoint is assembled in a hidden temp directory and renamed into place, so a kill mid-save leaves either
the previous checkpoints untouched or a `.tmp-*` dir that is ignored (and cleaned up on the next save).

`--resume_from` values every trainer accepts (resolve_checkpoint):
  auto   the newest complete checkpoint in the output dir, or a fresh start if there is none (preemptible jobs:
         the same command serves every attempt)
  last   the newest complete checkpoint; an error if there is none
  PATH   that checkpoint directory (complete), or a run directory whose newest complete checkpoint is used
"""
from __future__ import annotations

import fnmatch
import json
import os
import random
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch

from foundation.errors import UserInputError
from foundation.files import (LOCK_FILE, atomic_write_json, atomic_write_text, check_output_path, read_json,
                              require_dir, truncate_jsonl_after, writing)

if TYPE_CHECKING:
    from foundation.config import RunConfig

COMPLETE_MARKER = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
ARGS_FILE = "args.json"
CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
RESUME_KEYWORDS = ("auto", "last")

# A requirement is a tuple of alternatives: at least one of the names must exist in the checkpoint.
Requirement = Sequence[str]
# What only a resumed training run reads: an evaluation accepts a checkpoint whose copies of these were deleted
# (to save space); a trainer resuming from it needs every file its manifest lists.
TRAINING_STATE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state_rank*.pt", "item_table.pt", "accelerate_state/*")


def checkpoint_dirs(output_dir: str | os.PathLike, complete_only: bool = True) -> list[tuple[int, Path]]:
    """(step, path) of checkpoint-N directories in output_dir, oldest first."""
    out = []
    d = Path(output_dir)
    if not d.is_dir():
        return out
    for p in d.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir() and (not complete_only or (p / COMPLETE_MARKER).is_file()):
            out.append((int(m.group(1)), p))
    return sorted(out)


def write_complete_marker(d: Path, step: int | None = None) -> None:
    """The COMPLETE marker, written last: the step and every file of d with its size (the manifest; model cards,
    *.md, are left out: deleting or editing one breaks nothing)."""
    files = {p.relative_to(d).as_posix(): p.stat().st_size for p in sorted(d.rglob("*"))
             if p.is_file() and p.name != COMPLETE_MARKER and p.suffix != ".md"}
    atomic_write_text(d / COMPLETE_MARKER, json.dumps({"step": step, "files": files}, indent=1))


def manifest_problem(d: Path, training: bool = False) -> str | None:
    """A file the COMPLETE manifest lists that is missing or has another size now, or None (also None for a marker
    without a manifest: older checkpoints, HF ones). Without `training`, missing TRAINING_STATE_FILES are fine."""
    try:
        data = read_json(d / COMPLETE_MARKER)
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return None
    for rel, size in files.items():
        if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts:
            return f"its {COMPLETE_MARKER} manifest lists {rel!r}, which is not a file of the checkpoint (damaged?)"
        f = d / rel
        if not f.is_file():
            if not training and any(fnmatch.fnmatch(rel, pat) for pat in TRAINING_STATE_FILES):
                continue
            return f"{rel} is missing (the checkpoint was written with it)"
        if isinstance(size, int) and f.stat().st_size != size:
            return f"{rel} has {f.stat().st_size} bytes but was written with {size} (truncated or replaced?)"
    return None


def is_hf_trainer_checkpoint(d: Path) -> bool:
    """A checkpoint HF's Trainer wrote (upstream R2ec's, train_sft.py's): its trainer_state.json has "global_step" and
    it has no COMPLETE marker, being complete as HF wrote it. Ours write "step" and the marker last."""
    try:
        return "global_step" in read_json(d / TRAINER_STATE)
    except (OSError, ValueError, TypeError):
        return False


def checkpoint_problem(d: Path, required: Sequence[Requirement] = (), training: bool = False) -> str | None:
    """Why d is not a usable checkpoint (no COMPLETE marker when it is a training checkpoint, a required file
    missing or empty, a file its manifest lists missing or of another size), or None. `training`: a resumed run
    reads it, so the optimiser/scheduler/RNG state of the manifest must be there too."""
    if not d.is_dir():
        return "not a directory"
    if (d / TRAINER_STATE).is_file() and not (d / COMPLETE_MARKER).is_file() and not is_hf_trainer_checkpoint(d):
        return f"no {COMPLETE_MARKER} marker (interrupted save?)"
    for alternatives in required:
        present = [n for n in alternatives if (d / n).exists()]
        if not present:
            return f"missing {' or '.join(alternatives)}"
        empty = [n for n in present if (d / n).is_file() and (d / n).stat().st_size == 0]
        if len(empty) == len(present):
            return f"{empty[0]} is empty (truncated save?)"
    return manifest_problem(d, training)


def resolve_checkpoint(spec: str | None, search_dir: str | os.PathLike, required: Sequence[Requirement] = (),
                       flag: str = "--resume_from", where: str | None = None, training: bool = False) -> Path | None:
    """The checkpoint a --resume_from value names (module docstring), or None for a fresh start.

    'last'/'auto' skip incomplete or damaged checkpoints with a warning on stderr; an explicit one is an error.
    `training`: the caller resumes training from it (checkpoint_problem)."""
    if not spec:
        return None
    where = where or f"{search_dir}"
    if spec in RESUME_KEYWORDS:
        for _, d in reversed(checkpoint_dirs(search_dir, complete_only=False)):
            problem = checkpoint_problem(d, required, training)
            if problem is None:
                return d
            print(f"warning: skipping incomplete {d}: {problem}", file=sys.stderr)
        if spec == "auto":
            return None
        raise UserInputError(f"{flag} last: no complete checkpoint-N in {where}; start without {flag} "
                             "(or use 'auto', which starts fresh when there is none)")
    p = require_dir(spec, flag, hint="use 'auto', 'last' or a checkpoint-N dir")
    # A run directory: its newest complete checkpoint-N. A directory that holds a model itself (LLaMA-Factory's and
    # HF Trainer's output: the final model beside checkpoint-N/) is read as it is when only a model is asked for.
    model_itself = bool(required) and not training and checkpoint_problem(p, required) is None
    if not CKPT_RE.match(p.name) and checkpoint_dirs(p, complete_only=False) and not model_itself:
        try:
            found = resolve_checkpoint("last", p, required, flag, where=str(p), training=training)
        except UserInputError:
            raise UserInputError(f"{flag} {spec}: neither a model directory ({checkpoint_problem(p, required)}) "
                                 "nor a run directory with a complete checkpoint-N")
        assert found is not None
        return found
    problem = checkpoint_problem(p, required, training)
    if problem:
        raise UserInputError(f"{flag} {spec}: incomplete checkpoint: {problem}; pick an older one or 'last'")
    return p


def read_trainer_state(ckpt: Path, flag: str = "--resume_from") -> dict:
    try:
        state = read_json(ckpt / TRAINER_STATE)
        if type(state["step"]) is not int or state["step"] < 0:
            raise ValueError(f"step {state['step']!r} is not a step number")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserInputError(f"{flag} {ckpt}: {TRAINER_STATE} is damaged ({type(e).__name__}: {e})")
    return state


def read_saved_args(ckpt: Path, flag: str = "--resume_from") -> dict:
    try:
        saved = read_json(ckpt / ARGS_FILE)
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
        return saved
    except (OSError, ValueError) as e:
        raise UserInputError(f"{flag} {ckpt}: {ARGS_FILE} is damaged ({type(e).__name__}: {e})")


def changed_settings(saved: dict, current: dict, keys: Sequence[str]) -> list[str]:
    """The trajectory settings whose value differs between a checkpoint's args and this run."""
    return [k for k in keys if k in saved and saved[k] != current.get(k)]


def check_resume_settings(ckpt: Path, current: dict, keys: Sequence[str], allowed: Sequence[str],
                          allow_flag: str = "--allow_changed_settings") -> list[str]:
    """Refuse to resume with settings that change the trajectory unless the user names them in allow_flag.
    Returns the changed (and allowed) setting names, for logging."""
    saved = read_saved_args(ckpt)
    diff = changed_settings(saved, current, keys)
    refused = [k for k in diff if k not in allowed]
    if refused:
        shown = ", ".join(f"--{k} {saved[k]!r} -> {current.get(k)!r}" for k in refused)
        raise UserInputError(f"--resume_from {ckpt}: this run changes settings the checkpoint was trained with ({shown}); "
                             f"rerun with the checkpoint's values or pass {allow_flag} {','.join(refused)}")
    return diff


# ---------------------------------------------------------------------------------------------- the run directory
# What a training run writes at the top of its --output_dir (train.py, compare_model/train_rrec.py: the checkpoint
# layout above, their logs, the final model, trackers). Another training run's entries among these collide with a
# new run there: --resume_from auto would continue the other run's checkpoints, its logs would be appended to. Other
# entries (other scripts' run directories, test.py's results.json) do not: several scripts may share ./outputs.
TRAINING_RUN_ENTRIES = ("checkpoint-*", ".tmp-checkpoint-*", ARGS_FILE, TRAINER_STATE, "metrics.jsonl", "final",
                        "final_checkpoint", "training.png", "token_lengths.jsonl", "param_checksum_rank*.txt",
                        "wandb", "ourrec_*")


def describe_entries(paths: Sequence[Path], limit: int = 6) -> str:
    """'checkpoint-100/, metrics.jsonl, args.json' (directories end in '/', checkpoints in step order first; more
    than `limit` entries: '... and N more')."""
    def order(p: Path) -> tuple:
        m = CKPT_RE.match(p.name)
        return (0, int(m.group(1)), "") if m else (1, 0, p.name)

    names = [p.name + ("/" if p.is_dir() else "") for p in sorted(paths, key=order)]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output_dir(output_dir: str | os.PathLike, resume_from: str | None, overwrite: bool,
                     resume_hint: str = "--resume_from auto", collides: Sequence[str] | None = None) -> None:
    """Before anything runs: --output_dir is a directory or absent, and one that holds what this run would write is
    used only with a resume flag (continue it; resume_hint names it) or --overwrite_output_dir (start afresh).
    collides: name patterns of what this kind of run writes at the top of the directory (TRAINING_RUN_ENTRIES for
    the RL trainers); None: every entry collides (a run that writes its model at the top, like train_sft.py). The
    refusal names what is there."""
    out = check_output_path(output_dir, "--output_dir", kind="dir")
    if resume_from or overwrite or not out.is_dir():
        return
    entries = [p for p in out.iterdir() if p.name != LOCK_FILE]
    if collides is not None:
        entries = [p for p in entries if any(fnmatch.fnmatchcase(p.name, pat) for pat in collides)]
    if entries:
        what = "another training run's " if collides is not None else ""
        raise UserInputError(f"--output_dir {out}: holds {what}{describe_entries(entries)}; pass {resume_hint} to "
                             "continue it, --overwrite_output_dir to start afresh, or choose another --output_dir")


def run_files(output_dir: str | os.PathLike, names: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """What a training run wrote into output_dir, i.e. what --overwrite_output_dir removes: every entry matching
    TRAINING_RUN_ENTRIES (the list the output-dir check refuses on, trackers included, so a new run's curves never
    join an old run's), its temp dirs, plus the run's own extra files and dirs (relative to output_dir, or
    absolute) that exist."""
    out = Path(output_dir)
    found = [p for pattern in (*TRAINING_RUN_ENTRIES, ".tmp-*") for p in sorted(out.glob(pattern))]
    found += [out / n for n in names]
    return [p for p in dict.fromkeys(found) if p.exists()]


def prepare_output_dir(output_dir: str | os.PathLike, args: dict, overwrite_files: Sequence[Path] = (),
                       logs: Sequence[Path] = (), keep_records_through: int | None = None) -> None:
    """A run's output dir once every check has passed (main process only): created; overwrite_files (the old run's,
    --overwrite_output_dir) removed; the JSONL logs cut after step keep_records_through (a resume: the records of
    steps after the checkpoint go, so the logs read like one uninterrupted run); args.json written."""
    out = Path(output_dir)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        for p in overwrite_files:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        if keep_records_through is not None:
            for log in logs:
                truncate_jsonl_after(log, keep_records_through)
        atomic_write_json(out / ARGS_FILE, args)


# ---------------------------------------------------------------------------------------------- writing
def tmp_checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f".tmp-checkpoint-{step}"


def write_checkpoint(output_dir: str | os.PathLike, step: int, write_files: Callable[[Path], None],
                     trainer_state: dict, args: dict, rank: int, barrier: Callable[[], None],
                     save_total_limit: int | None = None, keep_step: int | None = None) -> Path:
    """The one checkpoint writer: a temp dir, write_files(tmp) on EVERY rank (it decides what each rank writes,
    so collective saves such as FSDP state dicts work), this rank's RNG state, then on the main rank the state
    files, the COMPLETE marker, an atomic rename and rotation (rotate_checkpoints: keep_step's checkpoint, e.g.
    the best model, is never rotated away). Returns the final directory.

    A write the operating system refuses (disk full, ...) is an OutputError naming the file; the temp dir is
    removed and the checkpoints written before stay as they were, so the run can continue from them."""
    tmp = tmp_checkpoint_dir(output_dir, step)
    is_main = rank == 0
    final = Path(output_dir) / f"checkpoint-{step}"
    with _assembling(tmp):
        if is_main:
            _empty_dir(tmp)
        barrier()
        write_files(tmp)
        save_torch(capture_rng_state(), tmp / f"rng_state_rank{rank}.pt")
        barrier()
        if is_main:
            atomic_write_json(tmp / TRAINER_STATE, trainer_state)
            atomic_write_json(tmp / ARGS_FILE, args)
            write_complete_marker(tmp, step)
            _install_dir(tmp, final)  # re-saving the same step (e.g. after a resume) replaces it
    if is_main:
        rotate_checkpoints(output_dir, save_total_limit, keep_step)
    barrier()
    return final


def write_final_model(final: Path, write_files: Callable[[Path], None], is_main: bool,
                      barrier: Callable[[], None]) -> Path | None:
    """The finished model of a run ({output_dir}/final for PL-PPO, final_checkpoint for RRec), written like a
    checkpoint: write_files(tmp) on the main process into {output_dir}/.tmp-{name}, its COMPLETE manifest, then
    renamed into place, so a kill leaves the previous one or a temp dir. Every process waits for it; returns the directory on the main one."""
    if is_main:
        tmp = final.parent / f".tmp-{final.name}"
        with _assembling(tmp):
            _empty_dir(tmp)
            write_files(tmp)
            write_complete_marker(tmp)  # the manifest: a file damaged later is found before anything loads
            _install_dir(tmp, final)
    barrier()
    return final if is_main else None


@contextmanager
def _assembling(tmp: Path) -> Iterator[None]:
    """A directory assembled in tmp: every write inside goes through files.writing (an OSError, also one wrapped by
    torch, safetensors or tokenizers, becomes one OutputError naming the file); on any failure the temp dir goes,
    leaving the earlier checkpoints as they were (a full disk also gets its space back)."""
    try:
        with writing(tmp):
            yield
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _WriteRecorder:
    """A file object for torch.save that remembers the OSError of a refused write: torch reports it only as its
    own RuntimeError ('unexpected pos ...'), which says nothing of a full disk."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """torch.save whose refused writes surface as the OSError (ENOSPC, EFBIG, ...) behind them: every torch file
    of a checkpoint (optimizer, scheduler, RNG state, item table) is written with it."""
    with writing(path), open(path, "wb", buffering=0) as f:
        rec = _WriteRecorder(f)
        try:
            torch.save(obj, rec)
        except RuntimeError:
            if rec.error is not None:
                raise rec.error from None
            raise


def _empty_dir(d: Path) -> None:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)


def _install_dir(tmp: Path, final: Path) -> None:
    """Replace final by the complete directory tmp (an atomic rename once final is gone)."""
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(final.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(str(d), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # not supported on every filesystem; the rename is still atomic
        pass


def rotate_checkpoints(output_dir: str | os.PathLike, save_total_limit: int | None,
                       keep_step: int | None = None) -> None:
    """Keep the newest save_total_limit complete checkpoints; drop stale temp dirs. keep_step's checkpoint (RRec's
    best model) is kept whatever its age and counts towards the limit (at least one other is kept)."""
    d = Path(output_dir)
    for p in d.glob(".tmp-checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)
    if save_total_limit is None or save_total_limit <= 0:
        return
    others = [p for s, p in checkpoint_dirs(d) if s != keep_step]
    kept = 1 if keep_step is not None and (d / f"checkpoint-{keep_step}").is_dir() else 0
    for p in others[:max(0, len(others) - max(save_total_limit - kept, 1))]:
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """RNG states as plain Python values and tensors only, so the file loads with torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"bit_generator": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    if isinstance(np_state, dict):  # the weights_only-safe form written by capture_rng_state
        np_state = (np_state["bit_generator"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                    np_state["has_gauss"], np_state["cached_gaussian"])
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_torch_state(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                     flag: str = "--resume_from") -> Any:
    """torch.load restricted to tensors and plain containers (weights_only=True): a checkpoint file can't run code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise UserInputError(f"{flag}: cannot load {path} safely ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); the checkpoint is damaged or not ours")


def check_same_model_shape(base_model_dir: str | os.PathLike, ckpt: Path, flag: str = "--resume_from") -> None:
    """A checkpoint resumes only a run of the same architecture: compare the config fields that set shapes
    (adapter checkpoints hold no config.json; their adapter load checks the shapes)."""
    if not (ckpt / "config.json").is_file():
        return
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size")
    try:
        base = read_json(Path(base_model_dir) / "config.json")
        mine = read_json(ckpt / "config.json")
        if not isinstance(base, dict) or not isinstance(mine, dict):
            raise ValueError("config.json is not a JSON object")
    except (OSError, ValueError) as e:
        raise UserInputError(f"{flag} {ckpt}: cannot read config.json ({e})")
    diff = [f"{k}={mine.get(k)} vs {base.get(k)}" for k in keys if base.get(k) != mine.get(k)]
    if diff:
        raise UserInputError(f"{flag} {ckpt}: checkpoint was made from a different model shape than "
                             f"--model_name_or_path {base_model_dir} ({'; '.join(diff)})")


def open_resume(cfg: RunConfig, required: Sequence[Requirement], base_model_dir: str | os.PathLike
                ) -> tuple[Path | None, dict, list[str]]:
    """The first part of every trainer's resume, before anything is built: the checkpoint cfg.resume_from names
    in cfg.output_dir (cfg: a foundation.config.RunConfig), checked against the base model's shape and the run's
    trajectory settings. Returns (checkpoint or None for a fresh start, its trainer state, the changed settings
    --allow_changed_settings permits)."""
    out = Path(cfg.output_dir)
    # training=True: a resumed run also needs the optimiser/scheduler/RNG files its COMPLETE manifest lists
    ckpt = resolve_checkpoint(cfg.resume_from, out, required=required, where=f"--output_dir {out}", training=True)
    if ckpt is None:
        return None, {}, []
    check_same_model_shape(base_model_dir, ckpt)
    state = read_trainer_state(ckpt)
    changed = check_resume_settings(ckpt, cfg.to_dict(), cfg.trajectory_settings(), cfg.allowed_changes())
    return ckpt, state, changed


def apply_base_lrs(optimizer, scheduler, base_lrs: Sequence[float]) -> None:
    """After a checkpoint's optimizer and (LambdaLR) scheduler state is loaded: the run's learning rates, possibly
    changed with --allow_changed_settings, win over the saved ones at the schedule's current position, and
    get_last_lr() (the logged lr) reports them."""
    scheduler.base_lrs = [float(lr) for lr in base_lrs]
    for group, base_lr, lam in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base_lr
        group["lr"] = base_lr * lam(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def finish_resume(ckpt: Path, rank: int, world: int, trainer_state: dict, changed: Sequence[str],
                  is_main: bool) -> None:
    """The last part of every trainer's resume: this rank's RNG state back, and the lines that say how the resumed
    run differs from the one that wrote the checkpoint (process count, settings allowed to change)."""
    rng_file = ckpt / f"rng_state_rank{rank}.pt"
    if rng_file.is_file():
        restore_rng_state(load_torch_state(rng_file))
    saved_world = int(trainer_state.get("world_size", world))
    if saved_world != world and is_main:
        print(f"warning: checkpoint was written by {saved_world} process(es), resuming with {world}: "
              "training continues but will not replay an uninterrupted run exactly")
    if changed and is_main:
        print(f"resuming {ckpt} with changed settings: {', '.join(changed)}")


def select_param_groups(state: dict, optimizer, ckpt: Path) -> dict:
    """The saved optimizer state with its param groups matched to the optimizer's by their "name": a group the run
    no longer has is dropped (the critic's, once an estimator without critic takes over), a group the checkpoint
    lacks starts without state (the critic's, the other way round). Unchanged when the names agree or a group is
    unnamed; a named group whose size changed is kept as saved, for check_optimizer_state_fits to refuse."""
    try:
        saved_groups, saved_state = state["param_groups"], state["state"]
    except (KeyError, TypeError):
        return state
    saved_names = [g.get("name") for g in saved_groups]
    names = [g.get("name") for g in optimizer.param_groups]
    if saved_names == names or None in saved_names or None in names:
        return state
    by_name = {g["name"]: g for g in saved_groups}
    groups, kept, start = [], {}, 0
    for g in optimizer.param_groups:
        n, old = len(g["params"]), by_name.get(g["name"])
        ids = list(range(start, start + n))
        if old is None:
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        elif len(old["params"]) != n:
            groups.append(old)
        else:
            for i, j in zip(old["params"], ids):
                st = saved_state.get(i, saved_state.get(str(i)))
                if st is not None:
                    kept[j] = st
            groups.append({**old, "params": ids})
        start += n
    dropped = [n for n in saved_names if n not in names]
    if dropped:
        print(f"{ckpt}: optimizer state of {', '.join(dropped)} not used by this run")
    return {"state": kept, "param_groups": groups}


def check_optimizer_state_fits(state: dict, optimizer, ckpt: Path) -> None:
    """Refuse optimiser state whose tensors have other shapes than this run's parameters (at load time, not at
    the first step)."""
    try:
        saved_groups = state["param_groups"]
        saved = state["state"]
    except (KeyError, TypeError):
        raise UserInputError(f"--resume_from {ckpt}: optimizer.pt is not an optimiser state dict")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    n_saved = sum(len(g["params"]) for g in saved_groups)
    if n_saved != len(params):
        raise UserInputError(f"--resume_from {ckpt}: optimizer.pt holds {n_saved} parameters, this run trains "
                             f"{len(params)} (another model, or --use_lora changed?)")
    ids = [i for g in saved_groups for i in g["params"]]
    for i, p in zip(ids, params):
        st = saved.get(i) or saved.get(str(i)) or {}
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0 and tuple(v.shape) != tuple(p.shape):
                raise UserInputError(f"--resume_from {ckpt}: optimizer.pt state {k!r} has shape {tuple(v.shape)} "
                                     f"but the parameter has {tuple(p.shape)}; the checkpoint belongs to another run")
