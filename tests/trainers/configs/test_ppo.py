"""trainers/configs/ppo.py: train.py's settings are checked before any work (--advantage_estimator and the
--rankings_per_user it needs)."""
from __future__ import annotations

import pytest

from foundation.errors import UserInputError


def test_estimator_flag_is_checked(tmp_path):
    from trainers.ppo_trainer import parse_config

    for argv, needle in ((["--advantage_estimator", "gae"], "--advantage_estimator 'gae'"),
                         (["--advantage_estimator", "rloo", "--rankings_per_user", "1"], "--rankings_per_user >= 2")):
        with pytest.raises(UserInputError, match=needle):
            parse_config(argv + ["--output_dir", str(tmp_path / "x")]).validate()
