"""The evaluation scripts' options: one dataclass per script, each flag declared once with foundation.config.option()
(help text, group, aliases, domain), importable without torch so `--help` stays instant.

    test.py                      JudgeEvalOptions
    compare_model/rrec.py        RRecEvalOptions
    compare_model/deepseek.py    DeepseekOptions   (ApiEvalOptions + --test_only)
    tools/run_r1.py              RunR1Options      (ApiEvalOptions + the prompt-file mode)
    the API scripts' client      ApiClientOptions  (every API script's API flags)
    tools/run_r1_once.py         RunR1OnceOptions
    sft_train/get_response_by_deepseek.py   GetResponseOptions

Each script keeps the flag names the original README gives it and accepts the other scripts' spelling of the same
thing as an alias: --dataset_path / --dataset_dir, --num_samples / --test_samples, --reference_json /
--candidate_json_path (the field, and so the key a result JSON records, keeps the script's own name).

Checks live once: a number's domain in its option (min/max: checked at parse time and again by check_domains for
settings read back from a checkpoint), a fixed set of values as choices (--dataset_type, which a checkpoint may
supply, by prompters.abstract_prompter.check_dataset_type in validate()), and the rules between settings in
validate() (CandidateOptions.resolve_K_eval: the extra cut-off K_eval within 1..K, default min(10, K)).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from foundation.config import (SCORING_MODES, SEED_MAX, ModelLoadingOptions, TrainerConfig, check_domains, option,
                               require)
from foundation.errors import UserInputError, exit_on_user_error
from foundation.files import read_json
from prompters.abstract_prompter import check_dataset_type

SPLITS = ("train", "valid", "test")
DEMO_DATASET = "demo/data/Video_Games_5_2021-1-2023-12"
JUDGE_MODES = ("greedy", "rollout")  # trainers/evaluation/judge.py ranks by either
GEN_MODES = ("top1", "random", "all")
DEFAULT_K, DEFAULT_CUTOFF = 20, 10


class CandidateOptions(TrainerConfig):
    """The candidate protocol's rule between settings (every evaluation's options have K and K_eval)."""

    K: int | None
    K_eval: int | None

    def resolve_K_eval(self) -> None:
        """K_eval unset: min(10, K); it must lie within 1..K."""
        if self.K_eval is None:
            self.K_eval = min(DEFAULT_CUTOFF, self.K)
        require(1 <= self.K_eval <= self.K, f"--K_eval {self.K_eval}: must be between 1 and --K {self.K}")


def result_path(output_dir: str | os.PathLike, split: str, output_file: str | None = None) -> Path:
    """Where an evaluation's result JSON goes: output_file, else {output_dir}/results.json for the test split and
    results_{split}.json for another one."""
    if output_file:
        return Path(output_file)
    return Path(output_dir) / ("results.json" if split == "test" else f"results_{split}.json")


# ---------------------------------------------------------------------------------------------- test.py
G_MODEL, G_DATA, G_OUT = "model", "data", "output"
G_PROMPT = "prompt and scoring (defaults: the checkpoint's training settings)"


@dataclass
class JudgeEvalOptions(ModelLoadingOptions, CandidateOptions):
    """test.py: the binary judge on K candidates per example."""

    # Settings that change candidates or scores: a resumed run must match the existing file on all of them.
    RESUME_KEYS = ("dataset", "split", "K", "seed", "reference_json", "model", "checkpoint", "mode", "max_new_tokens",
                   "temperature", "dataset_type", "prompt_template", "max_len_per_item", "user_window_size",
                   "gen_temperature", "gen_top_k", "gen_top_p")
    # Settings a checkpoint carries from training (used unless given on the command line), with test.py's defaults.
    TRAINED_SETTINGS = {"dataset_type": "other", "max_len_per_item": 64, "user_window_size": 10,
                        "prompt_template": None, "max_new_tokens": 0, "gen_temperature": 1.0, "gen_top_k": 50,
                        "gen_top_p": 1.0}

    model_name_or_path: str = option("demo/tiny-qwen", "base model dir or known name (paths.py); the base of a LoRA "
                                                        "--resume_from", group=G_MODEL)
    resume_from: str | None = option(None, "train.py checkpoint dir or final/ dir, or 'last' (see --checkpoint_dir)",
                                     group=G_MODEL)
    checkpoint_dir: str | None = option(None, "where --resume_from last looks for checkpoint-N (default: parent of "
                                              "--output_dir)", group=G_MODEL)
    dataset_path: str = option(DEMO_DATASET, "preprocess.py output dir", group=G_DATA, aliases=("--dataset_dir",))
    dataset_type: str | None = option(None, "movies|other: picks the prompt template (default: the checkpoint's, "
                                            "else other)", group=G_DATA)
    split: str = option("test", "train|valid|test", group=G_DATA, choices=SPLITS)
    num_samples: int | None = option(None, "examples to evaluate (seeded order); <=0 or unset = all", group=G_DATA,
                                     aliases=("--test_samples",))
    K: int = option(DEFAULT_K, "candidates per example (target + K-1 negatives)", group=G_DATA, min=2)
    K_eval: int = option(DEFAULT_CUTOFF, "extra NDCG/HR cut-off reported besides 1, 5, 10", group=G_DATA, min=1)
    seed: int = option(42, "seed of the example order, the candidate negatives and rollout sampling", group=G_DATA,
                       min=0, max=SEED_MAX)
    reference_json: str | None = option(None, "rank exactly the candidates of this result JSON", group=G_DATA,
                                        aliases=("--candidate_json_path",))
    max_len_per_item: int | None = option(None, "tokens of item text per item (else 64)", group=G_PROMPT, min=1)
    user_window_size: int | None = option(None, "history items shown in the prompt (else 10)", group=G_PROMPT, min=1)
    prompt_template: str | None = option(None, "file with a custom binary template", group=G_PROMPT)
    mode: str = option("greedy", "greedy (argsort) | rollout (one PL sample)", group=G_PROMPT, choices=JUDGE_MODES)
    scoring: str = option("auto", "auto | naive | shared (shared-prefix packing); auto: shared where it is exact for "
                                  "the model and backend, else naive (printed)", group=G_PROMPT, choices=SCORING_MODES)
    max_new_tokens: int | None = option(None, "0 = answer directly; N = reason for up to N tokens (else 0)",
                                        group=G_PROMPT, min=0)
    gen_temperature: float | None = option(None, "reasoning sampling temperature in rollout mode (else 1.0)",
                                           group=G_PROMPT)
    gen_top_k: int | None = option(None, "reasoning sampling top-k, 0 = off (else 50)", group=G_PROMPT, min=0)
    gen_top_p: float | None = option(None, "reasoning sampling top-p, 1 = off (else 1.0)", group=G_PROMPT)
    temperature: float = option(1.0, "PL temperature for --mode rollout", group=G_PROMPT)
    batch_size: int = option(8, "users per scoring batch", group=G_PROMPT, min=1)
    scoring_chunk_size: int = option(32, "prompts per forward pass in naive scoring (--micro_batch_size is the old "
                                         "name)", group=G_PROMPT, min=1, aliases=("--micro_batch_size",))
    gen_batch_size: int = option(256, "(user, candidate) rows decoded together in reasoning generation with "
                                      "--scoring shared", group=G_PROMPT, min=1)
    output_dir: str = option("outputs/test", "results.json goes here", group=G_OUT)
    overwrite_output_dir: bool = option(False, "discard existing results instead of resuming", group=G_OUT)
    gen_mode: str = option("top1", "which reasoning texts to keep: top1|random|all", group=G_OUT, choices=GEN_MODES)
    print_every_text: int = option(50, "print an example every N samples (0 = never)", group=G_OUT, min=0)
    no_progress: bool = option(False, "no tqdm bar", group=G_OUT)

    def apply_trained_settings(self, checkpoint: str | None) -> dict:
        """Fill the unset prompt/sampling settings from the checkpoint's training args (args.json, or final/'s
        training_args.json), else TRAINED_SETTINGS; an explicit value that differs wins, with a warning. Returns the
        settings taken from the checkpoint."""
        saved: dict = {}
        if checkpoint:
            for name in ("args.json", "training_args.json"):
                f = Path(checkpoint) / name
                if f.is_file():
                    try:
                        saved = read_json(f)
                        if not isinstance(saved, dict):
                            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
                    except (OSError, ValueError) as e:
                        raise UserInputError(f"--resume_from {checkpoint}: {name} is damaged ({e})")
                    break
        used = {}
        for key, default in self.TRAINED_SETTINGS.items():
            given = getattr(self, key)
            if given is None:
                setattr(self, key, saved.get(key, default))
                if key in saved:
                    used[key] = saved[key]
            elif key in saved and saved[key] != given:
                print(f"warning: --{key} {given!r} differs from the checkpoint's training setting {saved[key]!r}",
                      file=sys.stderr)
        return used

    def validate(self) -> None:
        """After apply_trained_settings: the checkpoint may have supplied some of the values."""
        check_dataset_type(self.dataset_type)
        for flag in ("max_len_per_item", "user_window_size", "max_new_tokens", "gen_top_k"):
            v = getattr(self, flag)
            require(isinstance(v, int) and not isinstance(v, bool), f"--{flag} {v!r}: must be an integer")
        check_domains(self)  # each number's own domain, also for the values the checkpoint supplied
        self.resolve_K_eval()
        # (temperature, gen_temperature/top_k/top_p: checked where they are used, JudgeRankSettings and
        # models.judge_types.SamplingSettings, when the ranker is made, before any model or result file is touched)
        if self.prompt_template:
            from prompters.binary_prompter import load_template

            load_template(self.dataset_type, self.prompt_template)  # placeholders checked before any loading


# ---------------------------------------------------------------------------------------------- compare_model/rrec.py
G_SETTINGS = "settings (default: the checkpoint's rrec_config.json, else upstream's)"
G_CANDIDATES, G_RUN = "data and candidates", "run"


@dataclass
class RRecEvalOptions(ModelLoadingOptions, CandidateOptions):
    """compare_model/rrec.py: an RRec (R2ec) model on the same candidates."""

    # Settings that change candidates or scores: a rerun on the same result JSON must match them.
    RESUME_KEYS = ("model", "model_files", "base_model", "dataset", "split", "seed", "K", "candidate_source",
                   "category", "model_type", "user_window_size", "max_new_tokens", "repetition_penalty",
                   "similarity_type", "similarity_temperature", "similarity_normalization", "item_rating_stats",
                   "save_prompts", "rank_repeat_targets")
    # The model settings a flag may override (models.rrec_models.RRecSettings' fields).
    SETTING_FLAGS = ("model_type", "similarity_type", "similarity_temperature", "similarity_normalization",
                     "user_window_size", "max_new_tokens", "repetition_penalty", "item_rating_stats")

    checkpoint_path: str = option("outputs/rrec", "train_rrec.py output dir, our checkpoint, an upstream checkpoint "
                                                  "or PEFT adapter dir", group=G_MODEL)
    base_model_name_or_path: str | None = option(None, "base model of an adapter checkpoint (default: the one its "
                                                       "adapter_config.json records)", group=G_MODEL)
    model_type: str | None = option(None, "qwen|gemma: end-of-turn stop token (else from config.json)",
                                    group=G_SETTINGS)
    similarity_type: str | None = option(None, "dot|cosine|L2 (upstream: dot)", group=G_SETTINGS)
    similarity_temperature: float | None = option(None, "scores / this (upstream 0.02)", group=G_SETTINGS)
    similarity_normalization: bool | None = option(None, "L2-normalise the vectors first (upstream: on)",
                                                   group=G_SETTINGS)
    user_window_size: int | None = option(None, "history items in the user prompt (upstream 20)", group=G_SETTINGS,
                                          min=1)
    max_new_tokens: int | None = option(None, "greedy reasoning length limit (upstream 640)", group=G_SETTINGS, min=0)
    repetition_penalty: float | None = option(None, "of the greedy reasoning (upstream: the model's "
                                                    "generation_config.json)", group=G_SETTINGS)
    item_rating_stats: bool | None = option(None, "show average_rating / rating_number in the item prompt (upstream: "
                                                  "on; a checkpoint trained with --no-item_rating_stats is evaluated "
                                                  "without them). On real Amazon data they are crawl-time totals that "
                                                  "include the test period: a popularity signal from the future",
                                            group=G_SETTINGS)
    dataset_dir: str = option(DEMO_DATASET, "processed dataset (ours or upstream R2ec's layout)", group=G_CANDIDATES,
                              aliases=("--dataset_path",))
    category: str = option("", "category for the prompts (default: from the dataset dir name)", group=G_CANDIDATES)
    split: str = option("test", "train|valid|test", group=G_CANDIDATES, choices=SPLITS)
    num_samples: int = option(1000, "examples to evaluate (<= 0: all)", group=G_CANDIDATES,
                              aliases=("--test_samples",))
    seed: int = option(42, "seed of example choice and negative sampling", group=G_CANDIDATES, min=0, max=SEED_MAX)
    reference_json: str | None = option(None, "rank exactly this result JSON's candidates", group=G_CANDIDATES,
                                        aliases=("--candidate_json_path",))
    K: int = option(DEFAULT_K, "candidates per example (must match --reference_json)", group=G_CANDIDATES, min=2)
    K_eval: int | None = option(None, "extra metric cut-off (default: min(10, --K))", group=G_CANDIDATES, min=1)
    full_ranking: bool = option(False, "also rank the whole catalogue, history masked (the paper's NDCG/HR@5/10/20)",
                                group=G_CANDIDATES)
    rank_repeat_targets: bool = option(False, "full ranking: keep a target that is also a history item rankable "
                                              "(upstream masks it with the rest of the history: a miss; only "
                                              "upstream-built data has such targets)", group=G_CANDIDATES)
    batch_size: int = option(8, "users per generation/forward batch", group=G_RUN, min=1)
    item_batch_size: int = option(32, "items per forward for the item table", group=G_RUN, min=1)
    output_dir: str = option("outputs/rrec_eval", "where the result JSON goes", group=G_RUN)
    output_file: str | None = option(None, "result JSON path (default {output_dir}/results.json; "
                                           "results_{split}.json for other splits)", group=G_RUN)
    save_prompts: bool = option(False, "keep each sample's exact rendered user prompt in the result JSON (reasoning "
                                       "is always kept)", group=G_RUN)
    no_resume: bool = option(False, "start the result JSON afresh (otherwise a rerun resumes, and must use the same "
                                    "settings)", group=G_RUN, aliases=("--overwrite_output_dir",))
    no_progress: bool = option(False, "hide progress bars", group=G_RUN)

    def validate(self) -> None:
        self.resolve_K_eval()

    @property
    def output_flag(self) -> str:
        return "--output_file" if self.output_file else "--output_dir"


# ---------------------------------------------------------------------------------------------- the API scripts
G_API, G_PROMPT_API = "API", "prompt"


@dataclass
class ApiClientOptions(TrainerConfig):
    """The API flags every API script shares (subclasses redeclare model_name/concurrency for their defaults)."""

    api_base: str = option("https://api.deepseek.com", "OpenAI-compatible base URL", group=G_API)
    api_key: str | None = option(None, "API key; default: the DEEPSEEK_API_KEY environment variable (never written "
                                       "to any file)", group=G_API)
    model_name: str = option("deepseek-chat", "model name", group=G_API)
    concurrency: int = option(8, "parallel requests", group=G_API, min=1)
    max_retries: int = option(5, "retries per request on 429/5xx/timeouts/connection errors/unusable 200 answers",
                              group=G_API, min=0)
    timeout: float = option(300.0, "wall-clock seconds one attempt may take, however slowly the server sends",
                            group=G_API)
    backoff_base: float = option(1.0, "first retry waits ~this many seconds, doubling each retry", group=G_API)
    backoff_max: float = option(60.0, "cap on one wait between attempts, also on a server's Retry-After",
                                group=G_API)
    temperature: float | None = option(None, "sampling temperature (default: the API's)", group=G_API)
    max_tokens: int | None = option(None, "answer token limit (default: the API's)", group=G_API, min=1)
    no_retry_errors: bool = option(False, "on a rerun, keep rows that failed earlier instead of asking again",
                                   group=G_API)
    redo_changed: bool = option(False, "on a rerun, ask again the saved answers whose prompt (or label/candidates) "
                                       "changed, instead of refusing to mix them", group=G_API)

    @contextmanager
    def script_errors(self) -> Iterator[None]:
        """An API script's main body: exit_on_user_error with the API key (from --api_key or the environment)
        redacted from the message."""
        from models.api_client import DEFAULT_KEY_ENV

        key = (self.api_key or "").strip() or os.environ.get(DEFAULT_KEY_ENV, "").strip() or None
        with exit_on_user_error(key, self.api_key):
            yield

    def client(self, model: str | None = None):
        """A models.api_client.ChatClient with these settings (the caller closes it)."""
        from models.api_client import ChatClient

        return ChatClient(api_base=self.api_base, api_key=self.api_key, model=model or self.model_name,
                          max_retries=self.max_retries, timeout=self.timeout, backoff_base=self.backoff_base,
                          backoff_max=self.backoff_max, temperature=self.temperature, max_tokens=self.max_tokens)

    def public_dict(self) -> dict[str, Any]:
        """The settings without secrets (for result-JSON meta and logs)."""
        return {k: v for k, v in self.to_dict().items()
                if not (k.endswith("key") or "secret" in k or "password" in k)}


@dataclass
class ApiEvalOptions(ApiClientOptions, CandidateOptions):
    """An API model ranking a dataset split's candidates (compare_model/deepseek.py, tools/run_r1.py's dataset mode)."""

    # Settings that change the candidates or the answers: a rerun on the same --output_dir must match them.
    RESUME_KEYS = ("dataset", "split", "K", "seed", "reference_json", "candidate_mode", "model", "dataset_type",
                   "user_window_size", "max_len_per_item", "prompt_template", "system_prompt", "temperature",
                   "max_tokens")

    dataset_dir: str | None = option(None, "processed dataset directory (preprocess.py output)", group=G_CANDIDATES,
                                     aliases=("--dataset_path",))
    dataset_type: str = option("other", "movies|other: picks the prompt wording", group=G_CANDIDATES)
    test_samples: int | None = option(None, "examples per split in test.py's seeded order; <= 0 = all (default: 100 "
                                            "in random mode, every reference sample in json mode)",
                                      group=G_CANDIDATES, aliases=("--num_samples",))
    candidate_mode: str | None = option(None, "random: sample K candidates (seeded); json: the candidates of "
                                              "--candidate_json_path (default: json when --candidate_json_path is "
                                              "given, else random)", group=G_CANDIDATES, choices=("random", "json"))
    candidate_json_path: str | None = option(None, "result JSON (test.py or another baseline) whose candidates to "
                                                   "rank, identical and in order", group=G_CANDIDATES,
                                             aliases=("--reference_json",))
    K: int | None = option(None, "candidates per example (default: 20; json mode: the reference's candidate count)",
                           group=G_CANDIDATES, min=2)
    K_eval: int | None = option(None, "extra NDCG/HR cut-off besides 1, 5, 10 (default: min(10, K))",
                                group=G_CANDIDATES, min=1)
    seed: int = option(42, "sample order and candidates", group=G_CANDIDATES, min=0, max=SEED_MAX)
    user_window_size: int = option(10, "history items shown", group=G_PROMPT_API, min=1)
    max_len_per_item: int = option(0, "words of description/features after each title; 0 = titles only",
                                   group=G_PROMPT_API, min=0)
    prompt_template: str | None = option(None, "file with a custom template ({history}, {candidates}, {n})",
                                         group=G_PROMPT_API)
    system_prompt: str | None = option(None, "optional system message", group=G_PROMPT_API)
    output_dir: str = option("outputs/deepseek", "responses.jsonl (raw answers) and results.json go here", group=G_OUT)
    overwrite_output_dir: bool = option(False, "discard earlier answers and results", group=G_OUT)
    no_progress: bool = option(False, "no tqdm bar", group=G_OUT)

    def validate(self) -> None:
        require(bool(self.dataset_dir), "--dataset_dir is required: the processed dataset whose candidates to rank")
        check_dataset_type(self.dataset_type)
        if self.candidate_mode is None:
            self.candidate_mode = "json" if self.candidate_json_path else "random"
        require(not (self.candidate_mode == "json" and not self.candidate_json_path),
                "--candidate_mode json needs --candidate_json_path (a result JSON from test.py)")
        require(not (self.candidate_mode == "random" and self.candidate_json_path),
                "--candidate_json_path is only used with --candidate_mode json")

    def resolve_candidates(self, reference: dict | None) -> None:
        """K and the number of examples: json mode takes the reference's candidate count (an explicit --K must
        match it); random mode defaults to K 20 and 100 examples. Then K_eval (resolve_K_eval)."""
        if reference is not None:
            ref_K = len(reference["samples"][0]["candidates"])
            require(self.K is None or self.K == ref_K,
                    f"--K {self.K}: the reference has {ref_K} candidates per sample; drop --K")
            self.K = ref_K
        else:
            self.K = DEFAULT_K if self.K is None else self.K
            self.test_samples = 100 if self.test_samples is None else self.test_samples
        self.resolve_K_eval()


@dataclass
class DeepseekOptions(ApiEvalOptions):
    """compare_model/deepseek.py."""

    test_only: bool = option(False, "skip the validation pass the seed ran first; evaluate the test split only",
                             group=G_CANDIDATES)


@dataclass
class RunR1Options(ApiEvalOptions):
    """tools/run_r1.py: the dataset evaluation of ApiEvalOptions, or answering a prompt file."""

    model_name: str = option("deepseek-reasoner", "model name", group=G_API)
    input_file: str | None = option(None, "prompt JSONL to answer (prompt-file mode)", group="prompt-file mode")
    output_file: str | None = option(None, "answer JSONL (appended, resumable; prompt-file mode)",
                                     group="prompt-file mode")
    skip_bad_lines: bool = option(False, "skip malformed input lines instead of failing", group="prompt-file mode")
    output_dir: str = option("outputs/r1", "responses.jsonl (raw answers) and results.json go here", group=G_OUT)

    @property
    def prompt_file_mode(self) -> bool:
        return self.input_file is not None or self.output_file is not None

    def validate(self) -> None:
        """One of the two modes; the dataset mode's own checks."""
        if self.dataset_dir and self.prompt_file_mode:
            raise UserInputError("--dataset_dir (dataset evaluation) and --input_file/--output_file (prompt file) "
                                 "are two modes; give one")
        if self.dataset_dir:
            super().validate()
        elif not (self.input_file and self.output_file):
            raise UserInputError("give --dataset_dir (evaluate a dataset's test split) or --input_file and "
                                 "--output_file (answer a prompt file)")


@dataclass
class RunR1OnceOptions(ApiClientOptions):
    """tools/run_r1_once.py: one prompt (--prompt or --prompt_file, exactly one)."""

    model_name: str = option("deepseek-reasoner", "model name", group=G_API)
    concurrency: int = option(1, "parallel requests", group=G_API, min=1)
    prompt: str | None = option(None, "the prompt text (or --prompt_file)")
    prompt_file: str | None = option(None, "a file holding the prompt text (or --prompt)")
    system_prompt: str | None = option(None, "optional system message")

    def validate(self) -> None:
        if (self.prompt is None) == (self.prompt_file is None):
            raise UserInputError("give one of --prompt and --prompt_file")


@dataclass
class GetResponseOptions(ApiClientOptions):
    """sft_train/get_response_by_deepseek.py's flags."""

    model_name: str = option("deepseek-reasoner", "model name", group=G_API, aliases=("--model",))
    input_file: str = option("sft_train/prompts.jsonl", "prompt JSONL")
    output_file: str = option("sft_train/responses.jsonl", "response JSONL")
    prompt_id_min: int | None = option(None, "first prompt id to ask (inclusive)")
    prompt_id_max: int | None = option(None, "last prompt id to ask (inclusive)")
    system_prompt: str | None = option(None, "optional system message put before each prompt")
    skip_bad_lines: bool = option(False, "skip malformed input lines instead of failing")
    no_progress: bool = option(False, "no tqdm bar")

    def validate(self) -> None:
        if self.prompt_id_min is not None and self.prompt_id_max is not None and \
                self.prompt_id_min > self.prompt_id_max:
            raise UserInputError(f"--prompt_id_min {self.prompt_id_min} > --prompt_id_max {self.prompt_id_max}")
        if os.path.abspath(self.input_file) == os.path.abspath(self.output_file):
            raise UserInputError("--output_file must differ from --input_file")
