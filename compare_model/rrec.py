"""Evaluate an R2ec ("RRec") checkpoint on our candidate sets (DESIGN.md section 6).

For each evaluated example: greedy reasoning after RRec's user prompt, the user vector after it, inner
products with every item's vector (item prompts, no generation), and the ranking of the example's K
candidates. Candidates: exactly those of --reference_json (same interaction ids, same lists, so every
method is scored on identical candidates), otherwise freshly sampled with --seed (the rule test.py
uses). --full_ranking adds the paper's full-catalogue NDCG/HR@5/10/20 (written as "full_rank" per
sample and a second metrics row).

The result JSON ({output_dir}/results.json for the test split, results_{split}.json otherwise, unless
--output_file; the same name test.py and deepseek.py use) is written incrementally; a rerun
with the same path resumes. Generated reasoning is kept in each sample's "outputs". Nothing is cached
anywhere else.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from trainers.foundation.errors import UserInputError, die

# Settings that change candidates or scores: a rerun on the same result JSON must match them.
RESUME_KEYS = ("model", "dataset", "split", "seed", "K", "candidate_source", "user_window_size", "max_new_tokens",
               "category", "model_type")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint_path", default="outputs/rrec",
                   help="RRec checkpoint dir, or a train_rrec.py output dir (its newest checkpoint is used)")
    p.add_argument("--dataset_dir", default="demo/data/Video_Games_5_2021-1-2023-12", help="processed dataset")
    p.add_argument("--dataset_path", dest="dataset_dir", default=argparse.SUPPRESS, help="alias of --dataset_dir")
    p.add_argument("--split", default="test", help="train|valid|test")
    p.add_argument("--num_samples", type=int, default=1000, help="examples to evaluate (<= 0: all)")
    p.add_argument("--model_type", default=None,
                   help="qwen|gemma: chat details (end-of-turn stop token; Gemma has no system role). "
                        "Default: the checkpoint's rrec_config.json, else qwen")
    p.add_argument("--category", default="", help="category for the prompts (default: from the dataset dir name)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda[:i]")
    p.add_argument("--dtype", default="auto", help="auto|bf16|fp16|fp32")
    p.add_argument("--attn_implementation", default="auto", help="auto|flash_attention_2|sdpa|eager")
    p.add_argument("--seed", type=int, default=42, help="seed of example choice and negative sampling")
    p.add_argument("--reference_json", default=None, help="rank exactly this result JSON's candidates")
    p.add_argument("--user_window_size", type=int, default=10, help="history items in the user prompt")
    p.add_argument("--K", type=int, default=20, help="candidates per example (must match --reference_json)")
    p.add_argument("--K_eval", type=int, default=None, help="extra metric cut-off (default: min(10, --K))")
    p.add_argument("--output_dir", default="outputs/rrec_eval", help="where the result JSON goes")
    p.add_argument("--output_file", default=None, help="result JSON path (default {output_dir}/results.json; results_{split}.json for other splits)")
    p.add_argument("--max_new_tokens", type=int, default=128, help="greedy reasoning length limit (0: none)")
    p.add_argument("--batch_size", type=int, default=8, help="users per generation/forward batch")
    p.add_argument("--item_batch_size", type=int, default=32, help="items per forward for the item table")
    p.add_argument("--full_ranking", action="store_true", help="also rank the whole catalogue (paper's protocol)")
    p.add_argument("--no_resume", "--overwrite_output_dir", dest="no_resume", action="store_true",
                   help="start the result JSON afresh (otherwise a rerun resumes, and must use the same settings)")
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserInputError as e:
        die(str(e))


def run(args: argparse.Namespace) -> dict:
    from models.rrec_models import load_rrec_model
    from prompters.rrec_prompter import RRecPrompter, category_from_dataset_dir
    from trainers.data.dataset import load_processed_dataset
    from trainers.evaluation.metrics import eval_ks, format_metrics_table
    from trainers.evaluation.protocol import build_eval_items, sanity_rows
    from trainers.evaluation.results import ResultWriter, check_resume_settings, load_result_json
    from trainers.evaluation.rrec import compute_item_table, rank_with_rrec, rrec_metrics
    from trainers.foundation.checkpoints import resolve_checkpoint

    if args.batch_size < 1:
        raise UserInputError(f"--batch_size {args.batch_size}: must be >= 1")
    if args.max_new_tokens < 0:
        raise UserInputError(f"--max_new_tokens {args.max_new_tokens}: must be >= 0")
    if args.user_window_size < 1:
        raise UserInputError(f"--user_window_size {args.user_window_size}: must be >= 1")
    if args.K < 2:
        raise UserInputError(f"--K {args.K}: must be >= 2")
    if args.K_eval is None:
        args.K_eval = min(10, args.K)
    if not 1 <= args.K_eval <= args.K:
        raise UserInputError(f"--K_eval {args.K_eval}: must be between 1 and --K {args.K}")
    dataset = load_processed_dataset(args.dataset_dir, flag="--dataset_dir")
    reference = load_result_json(args.reference_json) if args.reference_json else None
    items = build_eval_items(dataset, args.split, args.num_samples, args.K, args.seed, reference=reference)
    ckpt = resolve_checkpoint(args.checkpoint_path, args.checkpoint_path, flag="--checkpoint_path")
    model = load_rrec_model(str(ckpt), device=args.device, dtype=args.dtype,
                            attn_implementation=args.attn_implementation, model_type=args.model_type,
                            micro_batch_size=args.item_batch_size)
    category = args.category or category_from_dataset_dir(args.dataset_dir)
    prompter = RRecPrompter(model.tokenizer, dataset.item_rows, category, user_window_size=args.user_window_size,
                            model_type=model.rrec_config.model_type)
    out = Path(args.output_file or Path(args.output_dir) / (
        "results.json" if args.split == "test" else f"results_{args.split}.json"))
    meta = {"args": vars(args), "method": "rrec", "model": str(ckpt), "dataset": args.dataset_dir,
            "split": args.split, "seed": args.seed, "K": args.K, "K_eval": args.K_eval,
            "rrec_config": vars(model.rrec_config).copy(), "candidate_source": args.reference_json or "sampled"}
    if not args.no_resume:
        check_resume_settings(out, meta, RESUME_KEYS)
    writer = ResultWriter(out, meta, resume=not args.no_resume)
    writer.write(order=[int(ex["interaction_id"]) for ex, _ in items])  # meta on disk before the first sample
    todo = [it for it in items if int(it[0]["interaction_id"]) not in writer.done_ids]
    if len(todo) < len(items):
        print(f"resuming {out}: {len(items) - len(todo)} of {len(items)} samples already done")
    if todo:
        table = compute_item_table(model, prompter, dataset.n_items, batch_size=args.item_batch_size,
                                   progress=not args.no_progress)
        rank_with_rrec(model, prompter, todo, table, args.max_new_tokens, batch_size=args.batch_size,
                       full_ranking=args.full_ranking, on_sample=writer.add, progress=not args.no_progress)
    order = [int(ex["interaction_id"]) for ex, _ in items]
    samples = writer.ordered_samples(order)
    if args.full_ranking and any("full_rank" not in s for s in samples):
        raise UserInputError(f"{out}: earlier samples were made without --full_ranking; rerun with --no_resume")
    rows = rrec_metrics(samples, args.K_eval, args.full_ranking)
    sanity = sanity_rows(samples, dataset, args.seed, eval_ks(args.K_eval))
    extra = {"sanity": sanity}
    if args.full_ranking:
        extra["full_ranking_metrics"] = rows["rrec (full catalogue)"]
    data = writer.finalize(rows["rrec"], extra=extra, order=order)
    cand_rows = {"rrec": rows["rrec"], **sanity}
    print(f"{args.split}: {len(samples)} samples, K={args.K}, candidates from {args.reference_json or 'seeded sampling'}")
    print(format_metrics_table(cand_rows, eval_ks(args.K_eval)))
    if args.full_ranking:
        print("full catalogue:")
        print(format_metrics_table({"rrec (full catalogue)": rows["rrec (full catalogue)"]},
                                   sorted(set(eval_ks(args.K_eval)) | {20})))
    print(f"wrote {out}")
    return data


if __name__ == "__main__":
    main()
