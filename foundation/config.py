"""One config style for every trainer: a dataclass whose fields carry their help text, turned into argparse flags.

    @dataclass
    class MyConfig(TrainerConfig):
        lr: float = option(1e-5, "learning rate", group="optimisation")
        def validate(self) -> None: ...          # raise UserInputError with one line naming the flag

    parser = build_parser(MyConfig, description=...)
    cfg = config_from_args(MyConfig, parser.parse_args(argv))      # validated

Booleans that default to True or None become --flag / --no-flag, the others plain switches; `aliases` add other
spellings of a flag (e.g. the original README's names);
`choices` are checked by argparse. A number's domain is part of its option (`min=`, `max=`: seeds 0..SEED_MAX,
counts >= 0 or >= 1), checked at parse time (one line naming the flag, exit 2) and again when a config is built
from a dict; scripts with hand-written argparse use the same checks as `type=` (int_range, seed_int, ...).
Rules that involve several settings live in the dataclass's validate(), in one place.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

from foundation.errors import UserInputError

T = TypeVar("T", bound="TrainerConfig")


# numpy's seeds are 0..2**32-1 (a negative or larger --seed would fail deep inside a run)
SEED_MAX = 2 ** 32 - 1


def option(default: Any, help: str, *, group: str | None = None, choices: Sequence[Any] | None = None,
           aliases: Sequence[str] = (), metavar: str | None = None, min: float | None = None,  # noqa: A002
           max: float | None = None) -> Any:  # noqa: A002
    """A dataclass field that becomes the flag --<name> with this help text; min/max: its domain (inclusive)."""
    meta = {"help": help, "group": group, "choices": tuple(choices) if choices else None, "aliases": tuple(aliases),
            "metavar": metavar, "min": min, "max": max}
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


def finite_float(text: str) -> float:
    """argparse type of every float flag: nan and inf are refused at parse time (one line naming the flag,
    exit 2), so no NaN reaches a loss, a sampler or an API request."""
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def _domain_problem(value: float, lo: float | None, hi: float | None) -> str | None:
    if lo is not None and hi is not None and not lo <= value <= hi:
        return f"must be in {lo}..{hi}"
    if lo is not None and value < lo:
        return f"must be >= {lo}"
    if hi is not None and value > hi:
        return f"must be <= {hi}"
    return None


def int_range(lo: int | None = None, hi: int | None = None):
    """argparse type of an integer flag with a domain (inclusive): `--seed -1` is refused at parse time with one
    line ('argument --seed: must be in 0..4294967295, got -1'), exit 2, before anything runs."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
        problem = _domain_problem(v, lo, hi)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {v}")
        return v

    parse.__name__ = "int"  # argparse names the type in its own messages
    return parse


def float_range(lo: float | None = None, hi: float | None = None):
    """finite_float with a domain (inclusive)."""
    def parse(text: str) -> float:
        v = finite_float(text)
        problem = _domain_problem(v, lo, hi)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return v

    parse.__name__ = "float"
    return parse


seed_int = int_range(0, SEED_MAX)  # every --seed
nonnegative_int = int_range(0)  # counts where 0 means none / off
positive_int = int_range(1)  # counts of at least one (batch sizes, window sizes, K_eval)


def check_domains(cfg: Any) -> None:
    """UserInputError (one line naming the flag) for a field outside its option's min/max or choices: a config built
    from a dict (in-process callers, settings read back from a checkpoint) gets the same checks as the command
    line."""
    for f in dataclasses.fields(cfg):
        value, lo, hi = getattr(cfg, f.name), f.metadata.get("min"), f.metadata.get("max")
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise UserInputError(f"--{f.name} {value!r}: must be one of {'|'.join(map(str, choices))}")
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        problem = _domain_problem(value, lo, hi)
        if problem:
            raise UserInputError(f"--{f.name} {value}: {problem}")


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
        if tp is bool:  # default True or None (unset: decided later): --flag / --no-flag; False: a plain switch
            action = argparse.BooleanOptionalAction if default is None or default else "store_true"
            target.add_argument(*names, action=action, **kw)
            continue
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        lo, hi = meta.get("min"), meta.get("max")
        if tp is int:
            typ = int_range(lo, hi) if lo is not None or hi is not None else int
        elif tp is float:
            typ = float_range(lo, hi) if lo is not None or hi is not None else finite_float
        else:
            typ = tp
        target.add_argument(*names, type=typ, **kw)


# a help text that already states its flag's default ("... (default: 8765)", "...; default: the API's")
_STATES_DEFAULT = re.compile(r"(^|[(;,]\s*)default:", re.IGNORECASE)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows every flag's default and keeps the description's line breaks (usage examples). A help text that
    states its default in words keeps them alone, and an unset (None) default adds nothing: the help says what unset
    means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or _STATES_DEFAULT.search(text):
            return text
        return super()._get_help_string(action)


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
    check_domains(cfg)
    if validate:
        cfg.validate()
    return cfg


def require(ok: bool, message: str) -> None:
    """Raise UserInputError(message) unless ok: the one-liner validate() methods are written with."""
    if not ok:
        raise UserInputError(message)


# ---------------------------------------------------------------------------------------------- shared by trainers
G_PRECISION, G_LORA, G_RUN = "precision and attention", "LoRA", "run: output, resume, tracking"
DTYPES = ("auto", "bf16", "fp16", "fp32")
# The judge's scoring paths (models/qwen_models.py): per prompt, shared-prefix packing, or auto (shared where it is
# exact and fast on the model and backend, naive otherwise; models.qwen_models.resolve_scoring decides, once per run).
SCORING_MODES = ("auto", "naive", "shared")
REPORT_TO = ("none", "tensorboard", "wandb")


@dataclass
class ModelConfig(TrainerConfig):
    """The settings of the model every trainer trains: device, attention, remote code, activation checkpointing and
    LoRA. RunConfig (PL-PPO, RRec) and the SFT trainer's config build on it (a subclass may redeclare a field to
    change its default or help)."""

    device: str = option("auto", "auto|cpu|cuda|cuda:N (under accelerate launch/torchrun each process takes its "
                                 "GPU)", group=G_PRECISION)
    attn_implementation: str = option("auto", "auto|prefix_split|flex_attention|sdpa|eager|flash_attention_2, "
                                              "chosen once per run (auto: prefix_split when candidates are packed "
                                              "(--scoring shared), else FlashAttention-2 when installed, else sdpa)",
                                      group=G_PRECISION)
    trust_remote_code: bool = option(False, "allow custom model/tokenizer code shipped with the checkpoint",
                                     group=G_PRECISION)
    gradient_checkpointing: bool = option(False, "recompute activations in backward: less memory, more compute",
                                          group=G_PRECISION)
    use_lora: bool = option(False, "train LoRA adapters (peft) instead of all weights", group=G_LORA)
    lora_r: int = option(8, "LoRA rank", group=G_LORA)
    lora_alpha: float = option(16.0, "LoRA alpha (scale = alpha / r)", group=G_LORA)
    lora_dropout: float = option(0.0, "LoRA dropout", group=G_LORA)
    lora_target_modules: str = option("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                                      "comma-separated module names that get adapters", group=G_LORA)
    merge_lora: bool = option(False, "write the final model as a full model with the adapters merged in "
                                     "(checkpoints keep the adapter)", group=G_LORA)

    def validate_model(self) -> None:
        """The checks of the model settings (subclasses call it from validate())."""
        require(self.lora_r >= 1, f"--lora_r {self.lora_r}: must be >= 1")
        require(self.lora_alpha > 0, f"--lora_alpha {self.lora_alpha}: must be > 0")
        require(0 <= self.lora_dropout < 1, f"--lora_dropout {self.lora_dropout}: must be in [0, 1)")
        require(not (self.merge_lora and not self.use_lora), "--merge_lora needs --use_lora")


@dataclass
class RunConfig(ModelConfig):
    """The settings every RL trainer shares: the model's (ModelConfig), precision, the output directory and its
    resumption, tracking. Trainers subclass it (a subclass may redeclare a field to change its default or help)."""

    # Settings that do not change what a run computes (the resume check ignores them); subclasses extend it.
    OPERATIONAL = ("output_dir", "overwrite_output_dir", "resume_from", "allow_changed_settings", "report_to",
                   "device", "attn_implementation", "trust_remote_code", "gradient_checkpointing", "merge_lora")

    dtype: str = option("auto", "compute precision: auto (bf16 autocast on GPU, fp32 on CPU)|bf16|fp16|fp32; "
                                "master weights and optimiser state stay fp32 unless --pure_bf16", group=G_PRECISION)
    pure_bf16: bool = option(False, "store the weights and AdamW state in bf16 (half the memory). Costs accuracy: "
                                    "updates below bf16's resolution (~0.4%% of a weight) are lost, so at small "
                                    "learning rates most weights never change", group=G_PRECISION)
    output_dir: str = option("outputs/run", "checkpoint-N/ directories, the final model, metrics.jsonl, args.json",
                             group=G_RUN)
    overwrite_output_dir: bool = option(False, "start afresh in a non-empty --output_dir (its checkpoints and logs "
                                               "are removed once every check has passed)", group=G_RUN)
    resume_from: str | None = option(None, "auto (newest complete checkpoint in --output_dir, else start fresh: "
                                           "one command for every attempt of a preemptible job) | last | PATH",
                                     group=G_RUN)
    allow_changed_settings: str = option("", "comma-separated settings allowed to differ from the resumed "
                                             "checkpoint's (e.g. lr_actor,max_steps); the change is logged",
                                         group=G_RUN)
    report_to: str = option("none", "experiment tracker beside metrics.jsonl: none|tensorboard|wandb "
                                    "(wandb must be installed)", group=G_RUN)

    def validate_run(self) -> None:
        """The checks of the shared settings (subclasses call it from validate())."""
        for flag, allowed in (("dtype", DTYPES), ("report_to", REPORT_TO)):
            require(getattr(self, flag) in allowed, f"--{flag} {getattr(self, flag)!r}: must be one of "
                                                    f"{'|'.join(allowed)}")
        self.validate_model()
        require(not (self.resume_from and self.overwrite_output_dir),
                "--resume_from and --overwrite_output_dir exclude each other")
        require(not (self.pure_bf16 and self.dtype in ("fp16", "fp32")),
                f"--pure_bf16 with --dtype {self.dtype}: pure bf16 computes in bf16; drop --dtype")

    def allowed_changes(self) -> list[str]:
        return [s.strip().lstrip("-") for s in self.allow_changed_settings.split(",") if s.strip()]

    def trajectory_settings(self) -> list[str]:
        """Every setting that changes what the run computes: a resume must match the checkpoint on them."""
        return [k for k in self.to_dict() if k not in self.OPERATIONAL]


@dataclass
class ModelLoadingOptions(TrainerConfig):
    """The settings every evaluation script loads a model with (test.py, compare_model/rrec.py)."""

    device: str = option("auto", "auto|cpu|cuda|cuda:N (several processes: one GPU each)", group="model")
    dtype: str = option("auto", "weights: auto (bf16 on GPU, fp32 on CPU)|bf16|fp16|fp32", group="model")
    attn_implementation: str = option("auto", "auto|prefix_split|flex_attention|sdpa|eager|flash_attention_2 (auto: "
                                              "prefix_split with --scoring shared, else FlashAttention-2 when "
                                              "installed, else sdpa)", group="model")
    trust_remote_code: bool = option(False, "allow custom model/tokenizer code shipped with the checkpoint",
                                     group="model")
