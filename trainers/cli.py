"""argparse pieces shared by the API scripts (compare_model/deepseek.py, tools/run_r1*.py,
sft_train/get_response_by_deepseek.py): the client flags, building a client from them, error handling, and the
dataset evaluation both compare_model/deepseek.py and tools/run_r1.py run (ranking a split's candidates)."""
from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from models.api_client import DEFAULT_API_BASE, DEFAULT_KEY_ENV, ApiJob, ChatClient, run_jobs
from foundation.config import finite_float, int_range, nonnegative_int, positive_int, seed_int
from foundation.errors import UserInputError, die, exit_on_user_error
from foundation.files import check_output_path


def add_client_args(parser, model_default: str = "deepseek-chat", model_flag: str = "--model_name",
                    concurrency: int = 8) -> None:
    """The API flags every API script shares."""
    g = parser.add_argument_group("API")
    g.add_argument("--api_base", default=DEFAULT_API_BASE, help="OpenAI-compatible base URL (default: %(default)s)")
    g.add_argument("--api_key", default=None,
                   help=f"API key; default: the {DEFAULT_KEY_ENV} environment variable (never written to any file)")
    g.add_argument(model_flag, dest=model_flag.lstrip("-"), default=model_default,
                   help="model name (default: %(default)s)")
    g.add_argument("--concurrency", type=positive_int, default=concurrency,
                   help="parallel requests (default: %(default)s)")
    g.add_argument("--max_retries", type=nonnegative_int, default=5,
                   help="retries per request on 429/5xx/timeouts/connection errors/unusable 200 answers "
                        "(default: %(default)s)")
    g.add_argument("--timeout", type=finite_float, default=300.0,
                   help="wall-clock seconds one attempt may take, however slowly the server sends "
                        "(default: %(default)s)")
    g.add_argument("--backoff_base", type=finite_float, default=1.0,
                   help="first retry waits ~this many seconds, doubling each retry (default: %(default)s)")
    g.add_argument("--backoff_max", type=finite_float, default=60.0,
                   help="cap on one wait between attempts, also on a server's Retry-After (default: %(default)s)")
    g.add_argument("--temperature", type=finite_float, default=None, help="sampling temperature (default: the API's)")
    g.add_argument("--max_tokens", type=positive_int, default=None, help="answer token limit (default: the API's)")
    g.add_argument("--no_retry_errors", action="store_true",
                   help="on a rerun, keep rows that failed earlier instead of asking again")
    g.add_argument("--redo_changed", action="store_true",
                   help="on a rerun, ask again the saved answers whose prompt (or label/candidates) changed, instead "
                        "of refusing to mix them")


def add_prompt_file_args(parser) -> None:
    """The flags of the scripts that answer a prompt JSONL (tools/run_r1.py, sft_train/get_response_by_deepseek.py)."""
    parser.add_argument("--system_prompt", default=None, help="optional system message put before each prompt")
    parser.add_argument("--skip_bad_lines", action="store_true", help="skip malformed input lines instead of failing")
    parser.add_argument("--no_progress", action="store_true", help="no tqdm bar")


@contextmanager
def api_script_errors(args) -> Iterator[None]:
    """An API script's main body: exit_on_user_error with the API key (from --api_key or the environment)
    redacted from the message."""
    key = (args.api_key or "").strip() or os.environ.get(DEFAULT_KEY_ENV, "").strip() or None
    with exit_on_user_error(key, args.api_key):
        yield


def answer_jobs(args, jobs: Sequence[ApiJob], model: str, content_key: str = "content") -> dict[str, dict]:
    """run_jobs with a client built from the add_client_args/add_prompt_file_args flags (then closed), holding a
    lock beside --output_file: a second run appending to the same file would ask (and pay for) each request twice."""
    from foundation.files import RunLock

    out = check_output_path(args.output_file, "--output_file")  # before the lock creates its folder
    client = client_from_args(args, model)
    try:
        with RunLock(out.parent, flag="--output_file", name=f".{out.name}.lock", label=out):
            return run_jobs(client, jobs, args.output_file, concurrency=args.concurrency, content_key=content_key,
                            retry_errors=not args.no_retry_errors, redo_changed=args.redo_changed, desc=model,
                            progress=not args.no_progress)
    finally:
        client.close()


def client_from_args(args, model: str) -> ChatClient:
    return ChatClient(api_base=args.api_base, api_key=args.api_key, model=model, max_retries=args.max_retries,
                      timeout=args.timeout, backoff_base=args.backoff_base, backoff_max=args.backoff_max,
                      temperature=args.temperature, max_tokens=args.max_tokens)


def public_args(args) -> dict:
    """argparse namespace as a dict without secrets (for result-JSON meta and logs)."""
    return {k: v for k, v in vars(args).items() if not (k.endswith("key") or "secret" in k or "password" in k)}


# ------------------------------------------------------------------------------ dataset evaluation (ranking)
# Settings that change the candidates or the answers: a rerun on the same --output_dir must match them.
RESUME_KEYS = ("dataset", "split", "K", "seed", "reference_json", "candidate_mode", "model", "dataset_type",
               "user_window_size", "max_len_per_item", "prompt_template", "system_prompt", "temperature", "max_tokens")


def add_dataset_eval_args(parser: argparse.ArgumentParser, output_default: str, required: bool = True) -> None:
    """Data, candidate, prompt and output flags of an API ranking evaluation (compare_model/deepseek.py, the
    dataset mode of tools/run_r1.py)."""
    g = parser.add_argument_group("data and candidates")
    g.add_argument("--dataset_dir", "--dataset_path", dest="dataset_dir", required=required,
                   default=None, help="processed dataset directory (preprocess.py output)")
    g.add_argument("--dataset_type", default="other", help="movies|other: picks the prompt wording")
    g.add_argument("--test_samples", type=int, default=None,
                   help="examples per split in test.py's seeded order; <= 0 = all (default: 100 in random mode, "
                        "every reference sample in json mode)")
    g.add_argument("--candidate_mode", default=None, choices=["random", "json"],
                   help="random: sample K candidates (seeded); json: the candidates of --candidate_json_path "
                        "(default: json when --candidate_json_path is given, else random)")
    g.add_argument("--candidate_json_path", "--reference_json", dest="candidate_json_path", default=None,
                   help="result JSON (test.py or another baseline) whose candidates to rank, identical and in order")
    g.add_argument("--K", type=int_range(2), default=None,
                   help="candidates per example (default: 20; json mode: the reference's candidate count)")
    g.add_argument("--K_eval", type=positive_int, default=None,
                   help="extra NDCG/HR cut-off besides 1, 5, 10 (default: min(10, K))")
    g.add_argument("--seed", type=seed_int, default=42, help="sample order and candidates (default: %(default)s)")
    g = parser.add_argument_group("prompt")
    g.add_argument("--user_window_size", type=positive_int, default=10,
                   help="history items shown (default: %(default)s)")
    g.add_argument("--max_len_per_item", type=nonnegative_int, default=0,
                   help="words of description/features after each title; 0 = titles only (default: %(default)s)")
    g.add_argument("--prompt_template", default=None, help="file with a custom template ({history}, {candidates}, {n})")
    g.add_argument("--system_prompt", default=None, help="optional system message")
    g = parser.add_argument_group("output")
    g.add_argument("--output_dir", default=output_default,
                   help="responses.jsonl (raw answers) and results.json go here (default: %(default)s)")
    g.add_argument("--overwrite_output_dir", action="store_true", help="discard earlier answers and results")
    g.add_argument("--no_progress", action="store_true", help="no tqdm bar")


def _check_dataset_eval_args(a: argparse.Namespace) -> None:
    from trainers.data.dataset import check_dataset_type

    check_dataset_type(a.dataset_type)
    if a.candidate_mode is None:
        a.candidate_mode = "json" if a.candidate_json_path else "random"
    if a.candidate_mode == "json" and not a.candidate_json_path:
        raise UserInputError("--candidate_mode json needs --candidate_json_path (a result JSON from test.py)")
    if a.candidate_mode == "random" and a.candidate_json_path:
        raise UserInputError("--candidate_json_path is only used with --candidate_mode json")


def _split_outputs(args, script: str, split: str) -> tuple[Path, Path, dict]:
    """(responses file, result JSON, meta) of one split; an existing result JSON made with other settings is
    refused here, before any split is evaluated (unless --overwrite_output_dir)."""
    from trainers.evaluation.results import check_resume_settings

    suffix = "" if split == "test" else f"_{split}"
    out = Path(args.output_dir)
    responses, results = out / f"responses{suffix}.jsonl", out / f"results{suffix}.json"
    meta = {**public_args(args), "script": script, "split": split,
            "dataset": os.path.basename(os.path.normpath(args.dataset_dir)), "model": args.model_name,
            "reference_json": args.candidate_json_path}
    meta.pop("no_progress", None)
    if not args.overwrite_output_dir:
        try:
            check_resume_settings(results, meta, RESUME_KEYS)
        except UserInputError as e:
            if "other settings" in str(e):
                raise
            raise UserInputError(f"{e}; it is rebuilt from {responses.name}: delete {results} and rerun")
    return responses, results, meta


def _evaluate_split(args, client, dataset, split: str, items, prompter, outputs: tuple[Path, Path, dict]) -> dict:
    from trainers.evaluation.api import api_metrics, api_row_label, evaluate_with_api, served_models
    from trainers.evaluation.metrics import eval_ks, format_metrics_table
    from trainers.evaluation.protocol import sanity_results
    from trainers.evaluation.results import ResultWriter
    from foundation.files import replaced_after_success

    responses, results, meta = outputs  # _split_outputs, checked before the first split ran
    old = [responses, results, results.with_name(results.name + ".partial.jsonl")] if args.overwrite_output_dir else []
    # --overwrite_output_dir: the old answers go only once this run has recorded its own (a rejected key or any
    # other failure before the first answer leaves them where they were)
    with replaced_after_success(old):
        samples, writer = evaluate_with_api(
            client, prompter, items, responses, lambda: ResultWriter(results, meta, resume=False, flush_every=20),
            concurrency=args.concurrency, retry_errors=not args.no_retry_errors, redo_changed=args.redo_changed,
            progress=not args.no_progress, desc=f"{args.model_name} ({split})")
    ks = eval_ks(args.K_eval)
    metrics = api_metrics(samples, ks)
    extra = sanity_results(samples, dataset, args.seed, ks)
    sanity = extra["sanity_rows"]
    writer.meta["served_model"] = served_models(samples)
    writer.finalize(metrics, extra=extra, order=[int(ex["interaction_id"]) for ex, _ in items])
    print(f"\n{split} split of {meta['dataset']}: {len(samples)} samples, K={args.K}, seed={args.seed}")
    print(format_metrics_table({api_row_label(args.model_name, writer.meta["served_model"]): metrics, **sanity}, ks))
    print(f"answers: {metrics['parse_ok']} ok, {metrics['parse_partial']} partial, "
          f"{metrics['parse_unparseable']} unparseable, {metrics['api_errors']} API errors")
    print(f"wrote {results} and {responses}")
    return metrics


def run_dataset_eval(args: argparse.Namespace, script: str, with_valid_pass: bool) -> dict[str, dict]:
    """Rank the candidates of a dataset split with the API model (DESIGN.md section 6): the test split, preceded
    by a validation pass when with_valid_pass; json mode ranks exactly the reference's split and candidates.
    Returns the metrics by split."""
    from models.api_client import resolve_api_key
    from prompters.api_prompter import ApiRankingPrompter
    from trainers.data.dataset import load_processed_dataset
    from trainers.evaluation.protocol import build_eval_items
    from trainers.evaluation.results import load_result_json

    _check_dataset_eval_args(args)
    resolve_api_key(args.api_key)
    dataset = load_processed_dataset(args.dataset_dir, flag="--dataset_dir")
    reference, splits = None, (["valid", "test"] if with_valid_pass else ["test"])
    if args.candidate_mode == "json":
        reference = load_result_json(args.candidate_json_path, flag="--candidate_json_path")
        if not reference["samples"]:
            raise UserInputError(f"--candidate_json_path {args.candidate_json_path}: no samples")
        ref_K = len(reference["samples"][0]["candidates"])
        if args.K is not None and args.K != ref_K:
            raise UserInputError(f"--K {args.K}: the reference has {ref_K} candidates per sample; drop --K")
        args.K = ref_K
        splits = [str(reference.get("meta", {}).get("split") or "test")]
    else:
        args.K = 20 if args.K is None else args.K
        args.test_samples = 100 if args.test_samples is None else args.test_samples
    if args.K_eval is None:
        args.K_eval = min(10, args.K)
    if not 1 <= args.K_eval <= args.K:
        raise UserInputError(f"--K_eval {args.K_eval}: must be between 1 and --K {args.K}")
    client = client_from_args(args, args.model_name)
    prompter = ApiRankingPrompter(dataset.item_rows, user_window_size=args.user_window_size,
                                  max_len_per_item=args.max_len_per_item, dataset_type=args.dataset_type,
                                  template_file=args.prompt_template, system_prompt=args.system_prompt)
    check_output_path(args.output_dir, "--output_dir", kind="dir")
    items, outputs = {}, {}
    for split in splits:  # every split's candidates and output checked before the first request
        items[split] = build_eval_items(dataset, split, args.test_samples, args.K, args.seed, reference=reference)
        if not items[split]:
            raise UserInputError(f"split {split!r} of {args.dataset_dir} has no examples")
        outputs[split] = _split_outputs(args, script, split)
    out = {}
    from foundation.files import RunLock

    try:  # one run per output dir at a time: a second one would ask (and pay for) every request twice
        with RunLock(args.output_dir):
            for split in splits:
                out[split] = _evaluate_split(args, client, dataset, split, items[split], prompter, outputs[split])
    finally:
        client.close()
    failed = [f"{split} ({len(items[split])} requests)" for split, m in out.items()
              if m["api_errors"] == len(items[split])]
    if failed:  # a table of only failed requests ranks every target last: not a result, so not a success
        die(f"every request of the {', '.join(failed)} split failed after retries; the failures are saved in "
            f"{args.output_dir} and a rerun of the same command asks them again", status=1)
    return out
