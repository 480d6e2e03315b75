"""Training checkpoints: atomic write, completion marker, "last" lookup, rotation, RNG state capture.

Layout of `{output_dir}/checkpoint-{step}`:
  model + tokenizer (save_pretrained) + heads.safetensors   -- QwenBinaryJudge.save
  optimizer.pt, scheduler.pt                                 -- torch state dicts
  rng_state_rank{r}.pt                                       -- python/numpy/torch RNG of every rank
  trainer_state.json                                         -- step, world size, metric bookkeeping
  args.json                                                  -- the run's arguments
  COMPLETE                                                   -- written last; marks a usable checkpoint

A checkpoint is assembled in a hidden temp directory and renamed into place, so a
kill mid-save leaves either the previous checkpoints untouched or a `.tmp-*` dir
that is ignored (and cleaned up on the next save).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.foundation.errors import UserInputError
from trainers.foundation.files import atomic_write_json

COMPLETE_MARKER = "COMPLETE"
CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(output_dir: str | os.PathLike, complete_only: bool = True) -> list[tuple[int, Path]]:
    """(step, path) of checkpoints in output_dir, oldest first."""
    out = []
    d = Path(output_dir)
    if not d.is_dir():
        return out
    for p in d.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir() and (not complete_only or (p / COMPLETE_MARKER).is_file()):
            out.append((int(m.group(1)), p))
    return sorted(out)


def resolve_resume_path(resume_from: str, output_dir: str | os.PathLike) -> Path:
    """--resume_from last -> newest complete checkpoint in output_dir; PATH -> that checkpoint (checked)."""
    if resume_from == "last":
        ckpts = checkpoint_dirs(output_dir)
        if not ckpts:
            raise UserInputError(f"--resume_from last: no complete checkpoint-* directory in --output_dir {output_dir}")
        return ckpts[-1][1]
    p = Path(resume_from)
    if not p.is_dir():
        raise UserInputError(f"--resume_from {resume_from}: directory does not exist (use 'last' or a checkpoint-N dir)")
    if not (p / COMPLETE_MARKER).is_file():
        raise UserInputError(f"--resume_from {resume_from}: incomplete checkpoint (no {COMPLETE_MARKER} marker); "
                             "it was interrupted while saving; pick an older one or 'last'")
    if not (p / "trainer_state.json").is_file():
        raise UserInputError(f"--resume_from {resume_from}: not a train.py checkpoint (no trainer_state.json)")
    return p


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


def load_torch_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """torch.load restricted to tensors and plain containers (weights_only=True): a checkpoint file can't run code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise UserInputError(f"--resume_from: cannot load {path} safely ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); the checkpoint is damaged or not ours")


def tmp_checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f".tmp-checkpoint-{step}"


def finalize_checkpoint(output_dir: str | os.PathLike, step: int, trainer_state: dict, args: dict) -> Path:
    """Rank 0, after every rank has written into the temp dir: state files, marker, atomic rename."""
    tmp = tmp_checkpoint_dir(output_dir, step)
    atomic_write_json(tmp / "trainer_state.json", trainer_state)
    atomic_write_json(tmp / "args.json", args)
    (tmp / COMPLETE_MARKER).write_text(str(step))
    final = Path(output_dir) / f"checkpoint-{step}"
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(Path(output_dir))
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
    """Keep the newest save_total_limit complete checkpoints; drop stale temp dirs and incomplete ones."""
    d = Path(output_dir)
    for p in d.glob(".tmp-checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)
    if save_total_limit is None or save_total_limit <= 0:
        return
    ckpts = checkpoint_dirs(d)
    for _, p in ckpts[:-save_total_limit]:
        shutil.rmtree(p, ignore_errors=True)


def read_trainer_state(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer_state.json").read_text())


def check_same_model_shape(base_model_dir: str | os.PathLike, ckpt: Path) -> None:
    """A checkpoint resumes only a run of the same architecture: compare the config fields that set shapes."""
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size")
    try:
        base = json.loads((Path(base_model_dir) / "config.json").read_text())
        mine = json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserInputError(f"--resume_from {ckpt}: cannot read config.json ({e})")
    diff = [f"{k}={mine.get(k)} vs {base.get(k)}" for k in keys if base.get(k) != mine.get(k)]
    if diff:
        raise UserInputError(f"--resume_from {ckpt}: checkpoint was made from a different model shape than "
                             f"--model_name_or_path {base_model_dir} ({'; '.join(diff)})")
