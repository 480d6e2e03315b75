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
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from trainers.foundation.errors import UserInputError
from trainers.foundation.files import atomic_write_json

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
    (d / COMPLETE_MARKER).write_text(json.dumps({"step": step, "files": files}, indent=1))


def manifest_problem(d: Path, training: bool = False) -> str | None:
    """A file the COMPLETE manifest lists that is missing or has another size now, or None (also None for a marker
    without a manifest: older checkpoints, HF ones). Without `training`, missing TRAINING_STATE_FILES are fine."""
    try:
        data = json.loads((d / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return None
    for rel, size in files.items():
        f = d / rel
        if not f.is_file():
            if not training and any(fnmatch.fnmatch(rel, pat) for pat in TRAINING_STATE_FILES):
                continue
            return f"{rel} is missing (the checkpoint was written with it)"
        if isinstance(size, int) and f.stat().st_size != size:
            return f"{rel} has {f.stat().st_size} bytes but was written with {size} (truncated or replaced?)"
    return None


def checkpoint_problem(d: Path, required: Sequence[Requirement] = (), training: bool = False) -> str | None:
    """Why d is not a usable checkpoint (no COMPLETE marker when it is a training checkpoint, a required file
    missing or empty, a file its manifest lists missing or of another size), or None. `training`: a resumed run
    reads it, so the optimiser/scheduler/RNG state of the manifest must be there too."""
    if not d.is_dir():
        return "not a directory"
    # our trainers write trainer_state.json + args.json and the marker last (HF Trainer checkpoints have no args.json)
    if (d / TRAINER_STATE).is_file() and (d / ARGS_FILE).is_file() and not (d / COMPLETE_MARKER).is_file():
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
    p = Path(spec)
    if not p.is_dir():
        raise UserInputError(f"{flag} {spec}: directory does not exist (use 'auto', 'last' or a checkpoint-N dir)")
    if not CKPT_RE.match(p.name) and checkpoint_dirs(p, complete_only=False):
        found = resolve_checkpoint("last", p, required, flag, where=str(p), training=training)
        assert found is not None
        return found
    problem = checkpoint_problem(p, required, training)
    if problem:
        raise UserInputError(f"{flag} {spec}: incomplete checkpoint: {problem}; pick an older one or 'last'")
    return p


def read_trainer_state(ckpt: Path, flag: str = "--resume_from") -> dict:
    try:
        state = json.loads((ckpt / TRAINER_STATE).read_text())
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserInputError(f"{flag} {ckpt}: {TRAINER_STATE} is damaged ({type(e).__name__}: {e})")
    return state


def read_saved_args(ckpt: Path, flag: str = "--resume_from") -> dict:
    try:
        return json.loads((ckpt / ARGS_FILE).read_text())
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


# ---------------------------------------------------------------------------------------------- writing
def tmp_checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f".tmp-checkpoint-{step}"


def write_checkpoint(output_dir: str | os.PathLike, step: int, write_files: Callable[[Path], None],
                     trainer_state: dict, args: dict, rank: int, barrier: Callable[[], None],
                     save_total_limit: int | None = None) -> Path:
    """The one checkpoint writer: a temp dir, write_files(tmp) on EVERY rank (it decides what each rank writes,
    so collective saves such as FSDP state dicts work), this rank's RNG state, then on the main rank the state
    files, the COMPLETE marker, an atomic rename and rotation. Returns the final directory."""
    tmp = tmp_checkpoint_dir(output_dir, step)
    is_main = rank == 0
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    write_files(tmp)
    torch.save(capture_rng_state(), tmp / f"rng_state_rank{rank}.pt")
    barrier()
    final = Path(output_dir) / f"checkpoint-{step}"
    if is_main:
        atomic_write_json(tmp / TRAINER_STATE, trainer_state)
        atomic_write_json(tmp / ARGS_FILE, args)
        write_complete_marker(tmp, step)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(Path(output_dir))
        rotate_checkpoints(output_dir, save_total_limit)
    barrier()
    return final


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(str(d), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # not supported on every filesystem; the rename is still atomic
        pass


def rotate_checkpoints(output_dir: str | os.PathLike, save_total_limit: int | None) -> None:
    """Keep the newest save_total_limit complete checkpoints; drop stale temp dirs."""
    d = Path(output_dir)
    for p in d.glob(".tmp-checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)
    if save_total_limit is None or save_total_limit <= 0:
        return
    ckpts = checkpoint_dirs(d)
    for _, p in ckpts[:-save_total_limit]:
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
        base = json.loads((Path(base_model_dir) / "config.json").read_text())
        mine = json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserInputError(f"{flag} {ckpt}: cannot read config.json ({e})")
    diff = [f"{k}={mine.get(k)} vs {base.get(k)}" for k in keys if base.get(k) != mine.get(k)]
    if diff:
        raise UserInputError(f"{flag} {ckpt}: checkpoint was made from a different model shape than "
                             f"--model_name_or_path {base_model_dir} ({'; '.join(diff)})")


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
