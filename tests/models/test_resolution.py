"""models/resolution.py: which directory test.py and compare_model/rrec.py read a model from, with the flag that named
it in every refusal."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from foundation.checkpoints import write_complete_marker
from foundation.errors import UserInputError
from models.resolution import (RREC_FINAL_DIR, describe_checkpoint, judge_dir_files, model_files,
                               resolve_judge_checkpoint, resolve_rrec_model, rrec_checkpoint_files)


def _model_dir(d: Path, step: int | None = None, state: dict | None = None, tokenizer: bool = True,
               rrec_config: bool = False) -> Path:
    """A directory with what a model directory holds (tiny placeholder files), COMPLETE when step is given."""
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"weights")
    if tokenizer:
        (d / "tokenizer.json").write_text("{}")
    if rrec_config:
        (d / "rrec_config.json").write_text("{}")
    if state is not None:
        (d / "trainer_state.json").write_text(json.dumps(state))
    if step is not None:
        write_complete_marker(d, step)
    return d


def test_judge_checkpoint_explicit_last_and_auto(tmp_path):
    run = tmp_path / "run"
    _model_dir(run / "checkpoint-3", 3, {"step": 3})
    newest = _model_dir(run / "checkpoint-9", 9, {"step": 9})
    _model_dir(run / "checkpoint-12", None, {"step": 12})  # interrupted save: no COMPLETE marker
    assert resolve_judge_checkpoint(None, run, "x") is None
    for spec in ("last", "auto"):
        assert resolve_judge_checkpoint(spec, run, "x") == str(newest)
    assert resolve_judge_checkpoint(str(run / "checkpoint-3"), run, "x") == str(run / "checkpoint-3")
    notok = _model_dir(tmp_path / "notok", tokenizer=False)
    with pytest.raises(UserInputError, match=r"^--resume_from .*notok: .*tokenizer"):
        resolve_judge_checkpoint(str(notok), tmp_path, "x")
    with pytest.raises(UserInputError, match=r"no complete checkpoint-N in the place I said"):
        resolve_judge_checkpoint("last", tmp_path / "empty", "the place I said")
    # the value head is not needed to evaluate; a tokenizer is
    assert not any("heads.safetensors" in group for group in judge_dir_files())
    assert any("tokenizer.json" in group for group in judge_dir_files())


def test_rrec_model_final_best_newest_or_refused(tmp_path, capsys):
    run = tmp_path / "run"
    best = _model_dir(run / "checkpoint-4", 4, {"step": 4})
    _model_dir(run / "checkpoint-8", 8, {"step": 8, "best_step": 4})
    assert resolve_rrec_model(str(run), flag="--checkpoint_path") == best
    assert "no final_checkpoint; evaluating checkpoint-4 (the best" in capsys.readouterr().err
    _model_dir(run / "checkpoint-10", 10, {"step": 10, "best_step": 99})  # the recorded best is gone: the newest
    assert resolve_rrec_model(str(run), flag="--checkpoint_path") == run / "checkpoint-10"
    final = _model_dir(run / RREC_FINAL_DIR, 10, rrec_config=True)
    assert resolve_rrec_model(str(run), flag="--checkpoint_path") == final
    assert resolve_rrec_model(str(final), flag="--checkpoint_path") == final  # a model dir itself
    (final / "model.safetensors").write_bytes(b"w")  # another size than its manifest says
    with pytest.raises(UserInputError, match=r"^--ckpt .*: damaged or incomplete checkpoint"):
        resolve_rrec_model(str(run), flag="--ckpt")
    broken = tmp_path / "broken"
    _model_dir(broken / "checkpoint-1", None, {"step": 1})
    with pytest.raises(UserInputError, match=r"^--checkpoint_path .*broken: no final_checkpoint and no complete"):
        resolve_rrec_model(str(broken), flag="--checkpoint_path")


def test_what_a_result_json_records_about_the_model(tmp_path):
    ours = _model_dir(tmp_path / "ours", rrec_config=True)
    foreign = _model_dir(tmp_path / "foreign")
    assert describe_checkpoint(ours) == "ours (full model)"
    assert describe_checkpoint(foreign) == "foreign full model, upstream's settings"
    files = model_files(ours)
    assert set(files) == {"model.safetensors", "rrec_config.json"} and files["model.safetensors"][0] == 7
    (ours / "model.safetensors").write_bytes(b"retrained!")
    assert model_files(ours) != files  # a retrained model at the same path: a rerun starts afresh
    assert ("item_table.pt",) in rrec_checkpoint_files() and ("rrec_config.json",) in rrec_checkpoint_files()
