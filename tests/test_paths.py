import pytest

import paths
from foundation.errors import UserInputError


def test_existing_directory_is_returned(tmp_path):
    assert paths.resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_known_name_maps_under_env_root(tmp_path, monkeypatch):
    (tmp_path / "Qwen2.5-3B-Instruct").mkdir()
    monkeypatch.setenv(paths.MODEL_ROOT_ENV, str(tmp_path))
    assert paths.resolve_model_path("Qwen/Qwen2.5-3B-Instruct") == str(tmp_path / "Qwen2.5-3B-Instruct")


def test_per_model_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("OURREC_MODEL_QWEN2_5_3B_INSTRUCT", str(tmp_path))
    assert paths.resolve_model_path("Qwen2.5-3B-Instruct") == str(tmp_path)


def test_missing_path_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.MODEL_ROOT_ENV, str(tmp_path))
    with pytest.raises(UserInputError, match="does not exist.*OURREC_MODEL_ROOT"):
        paths.resolve_model_path("Qwen2.5-3B-Instruct")
    with pytest.raises(UserInputError, match="not a directory and not a known model name"):
        paths.resolve_model_path("no-such-model")
