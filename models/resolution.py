"""Which directory holds the model an evaluation reads, and what a complete one holds.

    judge_dir_files         what a judge directory test.py evaluates must hold (a full model or a PEFT adapter, and
                            a tokenizer; the value head is for training only)
    resolve_judge_checkpoint  test.py's --resume_from: a checkpoint or final/ directory, or the newest complete
                            checkpoint-N for 'last'/'auto'
    rrec_checkpoint_files   what a complete train_rrec.py checkpoint holds (training resumes from it)
    resolve_rrec_model      compare_model/rrec.py's --checkpoint_path: a run's final_checkpoint, else its best (or
                            newest) complete checkpoint-N, or a model / adapter / checkpoint directory itself
    describe_checkpoint, model_files   what a result JSON records about the model it was made with

Used by the evaluation scripts and by the trainers that write these directories (trainers/grec_trainer.py); the
flag a directory came from is the caller's (`flag`), named in every message.
"""
from __future__ import annotations

import sys
from pathlib import Path

from foundation.checkpoints import TRAINER_STATE, checkpoint_dirs, checkpoint_problem, resolve_checkpoint
from foundation.errors import UserInputError
from foundation.files import read_json, require_dir
from paths import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHT_FILES, TOKENIZER_FILES, WEIGHT_FILES

RREC_FINAL_DIR = "final_checkpoint"  # upstream's name for the trained (best) RRec model
RREC_CONFIG_FILE = "rrec_config.json"  # our RRec settings beside the weights (models/rrec_models.py writes them)
ITEM_TABLE_FILE = "item_table.pt"  # the RRec item table of a checkpoint


def judge_dir_files() -> list[tuple[str, ...]]:
    """What a model directory test.py can evaluate must hold: a full model or a PEFT adapter with a tokenizer. The
    value head (heads.safetensors) is only needed to continue training, so ours, LLaMA-Factory's and any other
    save_pretrained output evaluate alike."""
    return [("config.json", ADAPTER_CONFIG_FILE), tuple(WEIGHT_FILES) + tuple(ADAPTER_WEIGHT_FILES),
            tuple(TOKENIZER_FILES)]


def resolve_judge_checkpoint(spec: str | None, search_dir: str | Path, where: str,
                             flag: str = "--resume_from") -> str | None:
    """None (no spec), an explicit complete judge directory, or the newest complete checkpoint-N under search_dir
    for 'last' ('auto' too: an evaluation has nothing to start fresh from). `where` names search_dir in messages."""
    if not spec:
        return None
    found = resolve_checkpoint("last" if spec == "auto" else spec, Path(search_dir), judge_dir_files(), flag=flag,
                               where=where)
    return str(found) if found else None


def rrec_checkpoint_files() -> list[tuple[str, ...]]:
    """What a complete train_rrec.py checkpoint holds (any one of each group)."""
    return [("config.json", ADAPTER_CONFIG_FILE), tuple(WEIGHT_FILES) + tuple(ADAPTER_WEIGHT_FILES),
            tuple(TOKENIZER_FILES), (RREC_CONFIG_FILE,), ("optimizer.pt",), ("scheduler.pt",), (ITEM_TABLE_FILE,),
            ("trainer_state.json",), ("args.json",)]


def resolve_rrec_model(spec: str, flag: str) -> Path:
    """The model directory an RRec evaluation reads from `spec`: a run directory's final_checkpoint; without one,
    its best usable checkpoint-N so far (ours record best_step, HF's trainer_state.json best_model_checkpoint), else
    the newest usable one; or a model / adapter / checkpoint directory itself. Anything incomplete or damaged (no
    COMPLETE marker, its manifest no longer matching its files) is refused or skipped, never half-loaded."""
    from paths import resolve_model_path

    p = Path(spec) if Path(spec).exists() else Path(resolve_model_path(spec, flag=flag))
    require_dir(p, flag)
    ckpts = checkpoint_dirs(p, complete_only=False)
    if not (p / RREC_FINAL_DIR).is_dir() and ckpts and not (p / "config.json").is_file() \
            and not (p / ADAPTER_CONFIG_FILE).is_file():
        newest = next((d for _, d in reversed(ckpts) if checkpoint_problem(d) is None), None)
        if newest is None:
            raise UserInputError(f"{flag} {spec}: no {RREC_FINAL_DIR} and no complete checkpoint-N (interrupted "
                                 "saves only); point it at a checkpoint directory")
        try:
            state = read_json(newest / TRAINER_STATE)
            state = state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            state = {}
        best = state.get("best_step")
        recorded = state.get("best_model_checkpoint")
        best_dir = p / f"checkpoint-{best}" if type(best) is int else (
            p / Path(recorded).name if isinstance(recorded, str) and recorded else None)
        chosen = best_dir if best_dir is not None and checkpoint_problem(best_dir) is None else newest
        print(f"{flag} {spec}: no {RREC_FINAL_DIR}; evaluating {chosen.name} "
              f"({'the best by valid NDCG@10 so far' if chosen == best_dir else 'the newest'})", file=sys.stderr)
        return chosen
    chosen = p / RREC_FINAL_DIR if (p / RREC_FINAL_DIR).is_dir() else p
    problem = checkpoint_problem(chosen)
    if problem:
        raise UserInputError(f"{flag} {spec}: damaged or incomplete checkpoint {chosen} ({problem}); pick another "
                             "one or the run directory")
    return chosen


def describe_checkpoint(ckpt: Path) -> str:
    """'ours (PEFT adapter)', 'foreign full model, upstream's settings', ...: whose RRec model a directory holds."""
    kind = "PEFT adapter" if (Path(ckpt) / ADAPTER_CONFIG_FILE).is_file() else "full model"
    return f"ours ({kind})" if (Path(ckpt) / RREC_CONFIG_FILE).is_file() else f"foreign {kind}, upstream's settings"


def model_files(ckpt: Path) -> dict[str, list[int]]:
    """Size and mtime of a checkpoint's weight and settings files: a retrained model at the same path makes a rerun
    start afresh instead of resuming into the old model's results."""
    ckpt = Path(ckpt)
    files = sorted([*ckpt.glob("*.safetensors"), *ckpt.glob("*.bin"), ckpt / RREC_CONFIG_FILE])
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()}
