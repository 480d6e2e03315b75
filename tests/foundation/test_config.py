"""foundation/config.py: a config dataclass becomes argparse flags (defaults, --flag/--no-flag, aliases, choices,
domains checked at parse time), and config_from_args builds it back with the same checks and validate()."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from foundation.config import (
    SEED_MAX,
    TrainerConfig,
    build_parser,
    config_from_args,
    float_range,
    int_range,
    option,
    require,
)
from foundation.errors import UserInputError


@dataclass
class DemoConfig(TrainerConfig):
    seed: int = option(0, "random seed", min=0, max=SEED_MAX)
    K: int = option(5, "candidates per user", min=1, aliases=("--num_candidates",))
    lr: float = option(1e-3, "learning rate", min=0)
    mode: str = option("fast", "fast|slow", choices=("fast", "slow"))
    shuffle: bool = option(True, "shuffle the users every epoch")
    verbose: bool = option(False, "print every step")
    K_eval: int | None = option(None, "candidates at evaluation (unset: --K)")
    tags: list = option([], "free-form labels")  # noqa: RUF009 - option() is a dataclasses.field with a factory

    def validate(self) -> None:
        require(self.K_eval is None or self.K_eval <= self.K, f"--K_eval {self.K_eval}: must be <= --K {self.K}")


def parse(argv: list[str]) -> DemoConfig:
    return config_from_args(DemoConfig, build_parser(DemoConfig).parse_args(argv))


def refused_at_parse_time(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        build_parser(DemoConfig).parse_args(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_flags_and_their_defaults_round_trip_to_the_dataclass():
    assert parse([]) == DemoConfig()
    cfg = parse(["--seed", str(SEED_MAX), "--num_candidates", "7", "--lr", "0.5", "--mode", "slow", "--no-shuffle",
                 "--verbose", "--K_eval", "3"])
    assert (cfg.seed, cfg.K, cfg.lr, cfg.mode, cfg.shuffle, cfg.verbose, cfg.K_eval) == (
        SEED_MAX, 7, 0.5, "slow", False, True, 3)
    assert isinstance(cfg.K, int) and isinstance(cfg.lr, float)
    a, b = DemoConfig(), DemoConfig()
    a.tags.append("x")
    assert b.tags == []  # a mutable default is not shared between configs
    text = build_parser(DemoConfig).format_help()
    assert "--num_candidates" in text and "(default: 5)" in text and "random seed" in text


def test_out_of_domain_values_are_refused_at_parse_time_naming_the_flag(capsys):
    assert "argument --seed: must be in 0..4294967295, got -1" in refused_at_parse_time(["--seed", "-1"], capsys)
    assert "argument --K/--num_candidates: must be >= 1, got 0" in refused_at_parse_time(["--K", "0"], capsys)
    assert "argument --lr: must be a finite number, got 'nan'" in refused_at_parse_time(["--lr", "nan"], capsys)
    assert "argument --mode: invalid choice: 'medium'" in refused_at_parse_time(["--mode", "medium"], capsys)
    assert "argument --K/--num_candidates: not an integer: '2.5'" in refused_at_parse_time(["--K", "2.5"], capsys)
    with pytest.raises(argparse.ArgumentTypeError, match="must be <= 1.0, got 2"):
        float_range(hi=1.0)("2")
    assert int_range(1, 3)("3") == 3


def test_a_config_built_from_a_dict_gets_the_same_checks_and_validate():
    assert config_from_args(DemoConfig, {"K": 4, "K_eval": 4}).K_eval == 4
    for values, message in (({"K": 0}, "--K 0: must be >= 1"), ({"lr": -1.0}, "--lr -1.0: must be >= 0"),
                            ({"mode": "medium"}, "--mode 'medium': must be one of fast|slow"),
                            ({"K": 2, "K_eval": 3}, "--K_eval 3: must be <= --K 2"),
                            ({"seeed": 1}, "unknown setting(s) ['seeed'] for DemoConfig")):
        with pytest.raises(UserInputError) as e:
            config_from_args(DemoConfig, values)
        assert str(e.value) == message
    assert config_from_args(DemoConfig, {"K": 2, "K_eval": 3}, validate=False).K_eval == 3  # domains only
