"""trainers/evaluation/options.py: the evaluation scripts' flags from dataclasses, the other spelling of the same
thing accepted as an alias by every script, the checks between settings (`--help` without torch:
tests/test_cli_help.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from foundation.config import build_parser, config_from_args
from foundation.errors import UserInputError, cli_message
from trainers.evaluation.options import (ApiEvalOptions, DeepseekOptions, JudgeEvalOptions, RRecEvalOptions,
                                         RunR1Options, result_path)

# (options class, the original README's flag) -> the other scripts' spelling of the same setting
ALIASES = {
    JudgeEvalOptions: {"--dataset_path": "--dataset_dir", "--num_samples": "--test_samples",
                  "--reference_json": "--candidate_json_path"},
    RRecEvalOptions: {"--dataset_dir": "--dataset_path", "--num_samples": "--test_samples",
                      "--reference_json": "--candidate_json_path"},
    DeepseekOptions: {"--dataset_dir": "--dataset_path", "--test_samples": "--num_samples",
                      "--candidate_json_path": "--reference_json"},
    RunR1Options: {"--dataset_dir": "--dataset_path", "--test_samples": "--num_samples",
                   "--candidate_json_path": "--reference_json"},
}


def _parse(cls, argv):
    return config_from_args(cls, build_parser(cls).parse_args(argv), validate=False)


@pytest.mark.parametrize("cls", list(ALIASES))
def test_every_script_takes_both_spellings(cls):
    for flag, alias in ALIASES[cls].items():
        value = "7" if "samples" in flag else "/x/y"
        a, b = _parse(cls, [flag, value]), _parse(cls, [alias, value])
        assert a == b and a != _parse(cls, []), (cls.__name__, flag, alias)
        assert str(getattr(a, flag.lstrip("-"))) == value  # the field keeps the script's own name


@pytest.mark.parametrize("cls", [JudgeEvalOptions, RRecEvalOptions, DeepseekOptions])
def test_ranges_are_checked_at_parse_time(cls, capsys):
    for bad in (["--K", "1"], ["--K_eval", "0"], ["--seed", "-1"], ["--seed", str(2 ** 32)]):
        with pytest.raises(SystemExit) as e:
            build_parser(cls).parse_args(bad)
        assert e.value.code == 2 and bad[0] in capsys.readouterr().err


def test_K_eval_within_1_to_K_and_its_default():
    opts = _parse(RRecEvalOptions, ["--K", "5"])
    opts.validate()
    assert opts.K_eval == 5  # min(10, K)
    with pytest.raises(UserInputError, match=r"^--K_eval 6: must be between 1 and --K 5$"):
        _parse(RRecEvalOptions, ["--K", "5", "--K_eval", "6"]).validate()
    api = _parse(ApiEvalOptions, ["--dataset_dir", "d", "--candidate_json_path", "r.json"])
    api.validate()
    api.resolve_candidates({"samples": [{"candidates": [1, 2, 3]}]})  # json mode: the reference's K
    assert (api.K, api.K_eval, api.candidate_mode, api.test_samples) == (3, 3, "json", None)
    with pytest.raises(UserInputError, match="drop --K"):
        ref = _parse(ApiEvalOptions, ["--dataset_dir", "d", "--K", "4", "--candidate_json_path", "r.json"])
        ref.validate()
        ref.resolve_candidates({"samples": [{"candidates": [1, 2, 3]}]})
    rnd = _parse(ApiEvalOptions, ["--dataset_dir", "d"])
    rnd.validate()
    rnd.resolve_candidates(None)
    assert (rnd.K, rnd.K_eval, rnd.test_samples, rnd.candidate_mode) == (20, 10, 100, "random")


def test_test_options_take_unset_settings_from_the_checkpoint_and_check_them(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "args.json").write_text('{"max_len_per_item": 0, "user_window_size": 3}')
    opts = _parse(JudgeEvalOptions, [])
    assert opts.apply_trained_settings(str(ckpt)) == {"max_len_per_item": 0, "user_window_size": 3}
    with pytest.raises(UserInputError, match="^--max_len_per_item 0: must be >= 1$"):  # the checkpoint's value
        opts.validate()
    (ckpt / "args.json").write_text('{"dataset_type": "books"}')
    opts = _parse(JudgeEvalOptions, [])
    opts.apply_trained_settings(str(ckpt))
    with pytest.raises(UserInputError, match="^dataset_type 'books': must be movies|other") as e:
        opts.validate()  # the prompters' check, worded as a setting; the script prints it with the flag
    assert cli_message(e.value).startswith("--dataset_type 'books'")


def test_api_modes_of_run_r1():
    with pytest.raises(UserInputError, match="two modes"):
        _parse(RunR1Options, ["--dataset_dir", "d", "--input_file", "a"]).validate()
    with pytest.raises(UserInputError, match="give --dataset_dir"):
        _parse(RunR1Options, ["--input_file", "a"]).validate()
    with pytest.raises(UserInputError, match="--dataset_dir is required"):
        _parse(DeepseekOptions, []).validate()
    with pytest.raises(UserInputError, match="only used with --candidate_mode json"):
        _parse(DeepseekOptions, ["--dataset_dir", "d", "--candidate_mode", "random", "--reference_json", "r"]
               ).validate()


def test_public_settings_hold_no_key():
    opts = _parse(DeepseekOptions, ["--api_key", "sk-secret-123"])
    assert "sk-secret-123" not in str(opts.public_dict()) and opts.public_dict()["model_name"] == "deepseek-chat"
    assert _parse(RunR1Options, []).model_name == "deepseek-reasoner"


def test_result_path():
    assert result_path("out", "test") == Path("out/results.json")
    assert result_path("out", "valid") == Path("out/results_valid.json")
    assert result_path("out", "valid", "x.json") == Path("x.json")
