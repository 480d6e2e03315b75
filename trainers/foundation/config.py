"""One config style for every trainer: a dataclass whose fields carry their help text, turned into argparse flags.

    @dataclass
    class MyConfig(TrainerConfig):
        lr: float = option(1e-5, "learning rate", group="optimisation")
        def validate(self) -> None: ...          # raise UserInputError with one line naming the flag

    parser = build_parser(MyConfig, description=...)
    cfg = config_from_args(MyConfig, parser.parse_args(argv))      # validated

Booleans that default to True become --flag / --no-flag, the others plain switches; `aliases` add other spellings of a flag (e.g. the original README's names);
`choices` are checked by argparse. Validation lives in the dataclass's validate(), in one place.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Sequence, TypeVar

from trainers.foundation.errors import UserInputError

T = TypeVar("T", bound="TrainerConfig")


def option(default: Any, help: str, *, group: str | None = None, choices: Sequence[Any] | None = None,
           aliases: Sequence[str] = (), metavar: str | None = None) -> Any:
    """A dataclass field that becomes the flag --<name> with this help text."""
    meta = {"help": help, "group": group, "choices": tuple(choices) if choices else None, "aliases": tuple(aliases),
            "metavar": metavar}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class TrainerConfig:
    """Base of the trainers' config dataclasses (subclasses are @dataclass)."""

    def validate(self) -> None:  # pragma: no cover - overridden
        """Raise UserInputError on the first bad setting (one line naming the flag)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]


def _scalar_type(tp: Any):
    """The argparse type of an annotation such as int, float | None, str."""
    if isinstance(tp, str):  # postponed annotations
        tp = eval(tp, vars(typing), {})  # noqa: S307 - our own annotations only
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        tp = args[0]
    return tp if tp in (int, float, str, bool) else str


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of the dataclass cls, grouped by their `group` metadata."""
    hints = typing.get_type_hints(cls)
    groups: dict[str | None, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        g = meta.get("group")
        if g not in groups:
            groups[g] = parser.add_argument_group(g) if g else parser
        target = groups[g]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        tp = _scalar_type(hints[f.name])
        names = [f"--{f.name}", *meta.get("aliases", ())]
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": meta["help"]}
        if tp is bool:  # default True: --flag / --no-flag; default False: a plain switch
            action = argparse.BooleanOptionalAction if default else "store_true"
            target.add_argument(*names, action=action, **kw)
            continue
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        target.add_argument(*names, type=tp, **kw)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows every flag's default and keeps the description's line breaks (usage examples)."""


def build_parser(cls: type, description: str | None = None,
                 formatter_class: type = HelpFormatter) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=formatter_class)
    add_config_arguments(parser, cls)
    return parser


def config_from_args(cls: type[T], args: argparse.Namespace | dict, validate: bool = True) -> T:
    """The dataclass from parsed flags (unknown keys are an error: a typo must not be ignored), validated."""
    values = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserInputError(f"unknown setting(s) {unknown} for {cls.__name__}")
    cfg = cls(**values)
    if validate:
        cfg.validate()
    return cfg


def require(ok: bool, message: str) -> None:
    """Raise UserInputError(message) unless ok: the one-liner validate() methods are written with."""
    if not ok:
        raise UserInputError(message)
