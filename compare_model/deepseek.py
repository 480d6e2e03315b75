"""Baseline: ask an OpenAI-compatible chat API (DeepSeek by default) to rank each example's K candidates.

    DEEPSEEK_API_KEY=sk-... python compare_model/deepseek.py --dataset_dir data/Video_Games_5_2021-1-2023-12 \
        --test_samples 200 --K 20 --output_dir outputs/deepseek --test_only
    # the exact candidates test.py ranked:
    python compare_model/deepseek.py --dataset_dir ... --candidate_mode json \
        --candidate_json_path outputs/test/results.json --output_dir outputs/deepseek_json

The prompt (prompters/api_prompter.py) shows the user's last --user_window_size history items with ratings and
the candidates numbered 1..K; the answer is parsed robustly (trainers/api_ranking.py). Partial answers rank
the missing candidates after the named ones, unparseable answers and requests that failed after all retries
rank the target last; all are counted in the metrics (parse_ok / parse_partial / parse_unparseable /
api_errors), none stops the run.

Candidates: --candidate_mode random samples them as test.py does (trainers.evaluation.build_eval_items with
--K and --seed: the same seed gives the same candidates as test.py); --candidate_mode json ranks exactly the
candidates of --candidate_json_path (a result JSON from test.py or another baseline), in its order.

Outputs in --output_dir: responses.jsonl (raw answers, one row per interaction id, written as they arrive) and
results.json (the result JSON of DESIGN.md section 3, with the random/popularity sanity rows). Rerunning with
the same --output_dir resumes: answered ids are not asked again (failed ones are, unless --no_retry_errors).

--test_only: the seed script evaluated a validation pass before the test pass; this one does too by default
(--test_samples examples of the valid split into responses_valid.jsonl / results_valid.json), and
--test_only skips it (and the API cost). --candidate_mode json always evaluates only the reference's split.

The key comes from --api_key or DEEPSEEK_API_KEY and is never written to any file or log.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from trainers.foundation.errors import UserInputError

# Settings that change the candidates or the answers: a rerun on the same --output_dir must match them.
RESUME_KEYS = ("dataset", "split", "K", "seed", "reference_json", "candidate_mode", "model", "dataset_type",
               "user_window_size", "max_len_per_item", "prompt_template", "system_prompt", "temperature", "max_tokens")


def build_parser() -> argparse.ArgumentParser:
    from trainers.cli import add_client_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and candidates")
    g.add_argument("--dataset_dir", "--dataset_path", dest="dataset_dir", required=True,
                   help="processed dataset directory (preprocess.py output)")
    g.add_argument("--dataset_type", default="other", help="movies|other: picks the prompt wording")
    g.add_argument("--test_samples", type=int, default=None,
                   help="examples per split in test.py's seeded order; <= 0 = all (default: 100 in random mode, "
                        "every reference sample in json mode)")
    g.add_argument("--test_only", action="store_true",
                   help="skip the validation pass the seed ran first; evaluate the test split only")
    g.add_argument("--candidate_mode", default="random", choices=["random", "json"],
                   help="random: sample K candidates (seeded); json: the candidates of --candidate_json_path")
    g.add_argument("--candidate_json_path", default=None, help="result JSON whose candidates to rank (json mode)")
    g.add_argument("--K", type=int, default=None,
                   help="candidates per example (default: 20; json mode: the reference's candidate count)")
    g.add_argument("--K_eval", type=int, default=None, help="extra NDCG/HR cut-off besides 1, 5, 10 (default: min(10, K))")
    g.add_argument("--seed", type=int, default=42, help="sample order and candidates (default: %(default)s)")
    g = p.add_argument_group("prompt")
    g.add_argument("--user_window_size", type=int, default=10, help="history items shown (default: %(default)s)")
    g.add_argument("--max_len_per_item", type=int, default=0,
                   help="words of description/features after each title; 0 = titles only (default: %(default)s)")
    g.add_argument("--prompt_template", default=None, help="file with a custom template ({history}, {candidates}, {n})")
    g.add_argument("--system_prompt", default=None, help="optional system message")
    add_client_args(p, model_default="deepseek-chat", model_flag="--model_name", concurrency=8)
    g = p.add_argument_group("output")
    g.add_argument("--output_dir", default="outputs/deepseek", help="responses.jsonl and results.json go here")
    g.add_argument("--overwrite_output_dir", action="store_true", help="discard earlier answers and results")
    g.add_argument("--no_progress", action="store_true", help="no tqdm bar")
    return p


def check_args(a: argparse.Namespace) -> None:
    from trainers.data.dataset import check_dataset_type

    check_dataset_type(a.dataset_type)
    if a.candidate_mode == "json" and not a.candidate_json_path:
        raise UserInputError("--candidate_mode json needs --candidate_json_path (a result JSON from test.py)")
    if a.candidate_mode == "random" and a.candidate_json_path:
        raise UserInputError("--candidate_json_path is only used with --candidate_mode json")
    if a.K is not None and a.K < 2:
        raise UserInputError(f"--K {a.K}: must be >= 2")
    if a.K_eval is not None and a.K_eval < 1:
        raise UserInputError(f"--K_eval {a.K_eval}: must be >= 1")


def run_split(args, client, dataset, split: str, items, prompter, reference_path: str | None) -> dict:
    from trainers.cli import public_args
    from trainers.evaluation.api import api_metrics, evaluate_with_api
    from trainers.evaluation.metrics import eval_ks, format_metrics_table
    from trainers.evaluation.protocol import sanity_rows
    from trainers.evaluation.results import ResultWriter, check_resume_settings

    suffix = "" if split == "test" else f"_{split}"
    out = Path(args.output_dir)
    responses, results = out / f"responses{suffix}.jsonl", out / f"results{suffix}.json"
    if args.overwrite_output_dir and responses.exists():
        responses.unlink()
    meta = {**public_args(args), "script": "compare_model/deepseek.py", "split": split,
            "dataset": os.path.basename(os.path.normpath(args.dataset_dir)), "model": args.model_name,
            "reference_json": reference_path}
    meta.pop("no_progress", None)
    if not args.overwrite_output_dir:
        check_resume_settings(results, meta, RESUME_KEYS)
    writer = ResultWriter(results, meta, resume=not args.overwrite_output_dir, flush_every=20)
    order = [int(ex["interaction_id"]) for ex, _ in items]
    writer.write(order=order)  # meta on disk before the first answer, so a resumed run can be checked against it
    samples = evaluate_with_api(client, prompter, items, responses, writer, concurrency=args.concurrency,
                                retry_errors=not args.no_retry_errors, progress=not args.no_progress,
                                desc=f"{args.model_name} ({split})")
    ks = eval_ks(args.K_eval)
    metrics = api_metrics(samples, ks)
    sanity = sanity_rows(samples, dataset, args.seed, ks)
    writer.finalize(metrics, extra={"sanity_rows": sanity}, order=order)
    print(f"\n{split} split of {meta['dataset']}: {len(samples)} samples, K={args.K}, seed={args.seed}")
    print(format_metrics_table({args.model_name: metrics, **sanity}, ks))
    print(f"answers: {metrics['parse_ok']} ok, {metrics['parse_partial']} partial, "
          f"{metrics['parse_unparseable']} unparseable, {metrics['api_errors']} API errors")
    print(f"wrote {results} and {responses}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from models.api_client import resolve_api_key
    from trainers.cli import api_script_errors, client_from_args

    with api_script_errors(args):
        check_args(args)
        resolve_api_key(args.api_key)
        from prompters.api_prompter import ApiRankingPrompter
        from trainers.data.dataset import load_processed_dataset
        from trainers.evaluation.protocol import build_eval_items
        from trainers.evaluation.results import load_result_json

        dataset = load_processed_dataset(args.dataset_dir, flag="--dataset_dir")
        reference, splits = None, (["test"] if args.test_only else ["valid", "test"])
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
        for split in splits:
            items = build_eval_items(dataset, split, args.test_samples, args.K, args.seed, reference=reference)
            if not items:
                raise UserInputError(f"split {split!r} of {args.dataset_dir} has no examples")
            run_split(args, client, dataset, split, items, prompter, args.candidate_json_path)
        client.close()


if __name__ == "__main__":
    main()
