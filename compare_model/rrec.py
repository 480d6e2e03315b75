"""Evaluate an R2ec ("RRec") model on our candidate sets (DESIGN.md section 6), as upstream evaluates it.

--checkpoint_path takes any of:
  a train_rrec.py output dir    its final_checkpoint/ (the best model), else the best complete checkpoint-N
  one of our checkpoint dirs    model + rrec_config.json (similarity and prompt settings travel with it)
  an upstream full-weight dir   e.g. upstream's checkpoint-N or final_checkpoint (HF Trainer output)
  an upstream PEFT adapter      adapter_config.json + adapter_model.safetensors; its recorded base model path
                                usually points at the authors' disk: pass --base_model_name_or_path
Foreign checkpoints carry no rrec_config.json: upstream's settings apply (cosine similarity / 0.02, window 20,
640 reasoning tokens, the model's repetition penalty, item prompts with their rating fields), each overridable
by its flag.

Per example: greedy reasoning after RRec's user prompt until <answer>, the user vector there, scores against
every item's vector, and the ranking of the example's K candidates: exactly those of --reference_json (same
interaction ids, same lists: every method on identical candidates), otherwise sampled with --seed (the rule
test.py uses). --full_ranking adds the paper's full-catalogue NDCG/HR@5/10/20 (history masked) as "full_rank"
per sample and a second metrics row; as upstream, a target that is itself a history item is masked with it
(full_rank null, a miss) unless --rank_repeat_targets. --save_prompts keeps each sample's exact rendered user
prompt.

Under `accelerate launch --num_processes N` each process ranks a share and computes a share of the item table;
the merged result JSON equals a single process's. The result JSON ({output_dir}/results.json for the test
split, results_{split}.json otherwise, unless --output_file) is written incrementally; a rerun with the same
settings resumes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from foundation.config import (add_model_loading_args, finite_float, int_range, nonnegative_int, positive_int,
                               seed_int)
from foundation.errors import UserInputError, exit_on_user_error
from foundation.files import check_output_path

# Settings that change candidates or scores: a rerun on the same result JSON must match them.
RESUME_KEYS = ("model", "model_files", "base_model", "dataset", "split", "seed", "K", "candidate_source", "category",
               "model_type", "user_window_size", "max_new_tokens", "repetition_penalty", "similarity_type",
               "similarity_temperature", "similarity_normalization", "item_rating_stats", "save_prompts",
               "rank_repeat_targets")
SETTING_FLAGS = ("model_type", "similarity_type", "similarity_temperature", "similarity_normalization",
                 "user_window_size", "max_new_tokens", "repetition_penalty", "item_rating_stats")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint_path", default="outputs/rrec",
                   help="train_rrec.py output dir, our checkpoint, an upstream checkpoint or PEFT adapter dir")
    g.add_argument("--base_model_name_or_path", default=None,
                   help="base model of an adapter checkpoint (default: the one its adapter_config.json records)")
    add_model_loading_args(g)
    g = p.add_argument_group("settings (default: the checkpoint's rrec_config.json, else upstream's)")
    g.add_argument("--model_type", default=None, help="qwen|gemma: end-of-turn stop token (else from config.json)")
    g.add_argument("--similarity_type", default=None, help="dot|cosine|L2 (upstream: dot)")
    g.add_argument("--similarity_temperature", type=finite_float, default=None, help="scores / this (upstream 0.02)")
    g.add_argument("--similarity_normalization", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalise the vectors first (upstream: on)")
    g.add_argument("--user_window_size", type=positive_int, default=None,
                   help="history items in the user prompt (upstream 20)")
    g.add_argument("--max_new_tokens", type=nonnegative_int, default=None,
                   help="greedy reasoning length limit (upstream 640)")
    g.add_argument("--repetition_penalty", type=finite_float, default=None,
                   help="of the greedy reasoning (upstream: the model's generation_config.json)")
    g.add_argument("--item_rating_stats", action=argparse.BooleanOptionalAction, default=None,
                   help="show average_rating / rating_number in the item prompt (upstream: on; a checkpoint trained "
                        "with --no-item_rating_stats is evaluated without them). On real Amazon data they are "
                        "crawl-time totals that include the test period: a popularity signal from the future")
    g = p.add_argument_group("data and candidates")
    g.add_argument("--dataset_dir", default="demo/data/Video_Games_5_2021-1-2023-12",
                   help="processed dataset (ours or upstream R2ec's layout)")
    g.add_argument("--dataset_path", dest="dataset_dir", default=argparse.SUPPRESS, help="alias of --dataset_dir")
    g.add_argument("--category", default="", help="category for the prompts (default: from the dataset dir name)")
    g.add_argument("--split", default="test", help="train|valid|test")
    g.add_argument("--num_samples", type=int, default=1000, help="examples to evaluate (<= 0: all)")
    g.add_argument("--seed", type=seed_int, default=42, help="seed of example choice and negative sampling")
    g.add_argument("--reference_json", default=None, help="rank exactly this result JSON's candidates")
    g.add_argument("--K", type=int_range(2), default=20, help="candidates per example (must match --reference_json)")
    g.add_argument("--K_eval", type=positive_int, default=None, help="extra metric cut-off (default: min(10, --K))")
    g.add_argument("--full_ranking", action="store_true",
                   help="also rank the whole catalogue, history masked (the paper's NDCG/HR@5/10/20)")
    g.add_argument("--rank_repeat_targets", action="store_true",
                   help="full ranking: keep a target that is also a history item rankable (upstream masks it with "
                        "the rest of the history: a miss; only upstream-built data has such targets)")
    g = p.add_argument_group("run")
    g.add_argument("--batch_size", type=positive_int, default=8, help="users per generation/forward batch")
    g.add_argument("--item_batch_size", type=positive_int, default=32, help="items per forward for the item table")
    g.add_argument("--output_dir", default="outputs/rrec_eval", help="where the result JSON goes")
    g.add_argument("--output_file", default=None,
                   help="result JSON path (default {output_dir}/results.json; results_{split}.json for other splits)")
    g.add_argument("--save_prompts", action="store_true",
                   help="keep each sample's exact rendered user prompt in the result JSON (reasoning is always kept)")
    g.add_argument("--no_resume", "--overwrite_output_dir", dest="no_resume", action="store_true",
                   help="start the result JSON afresh (otherwise a rerun resumes, and must use the same settings)")
    g.add_argument("--no_progress", action="store_true", help="hide progress bars")
    return p


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error():  # one line from the main process, exit status 2 on every process
        return run(args)


def describe_checkpoint(ckpt: Path) -> str:
    from models.abstract_models import is_adapter_dir
    from models.rrec_models import RREC_CONFIG_FILE

    kind = "PEFT adapter" if is_adapter_dir(ckpt) else "full model"
    return f"ours ({kind})" if (ckpt / RREC_CONFIG_FILE).is_file() else f"foreign {kind}, upstream's settings"


def model_files(ckpt: Path) -> dict[str, list[int]]:
    """Size and mtime of the checkpoint's weight and settings files: a retrained model at the same path makes a
    rerun start afresh instead of resuming into the old model's results."""
    files = sorted([*ckpt.glob("*.safetensors"), *ckpt.glob("*.bin"), ckpt / "rrec_config.json"])
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()}


def check_args(args: argparse.Namespace) -> None:
    """What argparse cannot check (each integer flag's own domain it does)."""
    if args.split not in ("train", "valid", "test"):
        raise UserInputError(f"--split {args.split!r}: must be one of train|valid|test")
    if args.K_eval is None:
        args.K_eval = min(10, args.K)
    if not 1 <= args.K_eval <= args.K:
        raise UserInputError(f"--K_eval {args.K_eval}: must be between 1 and --K {args.K}")


def run(args: argparse.Namespace) -> dict | None:
    from models.abstract_models import adapter_base_path, check_model_dir, is_adapter_dir
    from models.rrec_models import RRecSettings, model_family
    from prompters.rrec_prompter import category_from_dataset_dir, model_type_of
    from trainers.data.dataset import load_processed_dataset
    from trainers.evaluation.protocol import build_eval_items
    from trainers.evaluation.results import check_resume_settings, load_result_json
    from trainers.grec_trainer import resolve_trained_model

    check_args(args)
    dataset = load_processed_dataset(args.dataset_dir, flag="--dataset_dir")
    reference = load_result_json(args.reference_json) if args.reference_json else None
    if reference is None:
        dataset.check_K(args.K)
    items = build_eval_items(dataset, args.split, args.num_samples, args.K, args.seed, reference=reference)
    if not items:
        raise UserInputError(f"--split {args.split}: no examples to evaluate in {args.dataset_dir}")
    ckpt = resolve_trained_model(args.checkpoint_path)
    check_model_dir(ckpt, flag="--checkpoint_path")
    base = None
    if is_adapter_dir(ckpt):
        base = str(adapter_base_path(ckpt, args.base_model_name_or_path))
        check_model_dir(base, flag="--base_model_name_or_path", need_tokenizer=False)
    saved = RRecSettings.load(ckpt)
    overrides = {k: getattr(args, k) for k in SETTING_FLAGS}
    if saved is not None:
        for k, v in overrides.items():
            if v is not None and getattr(saved, k) != v:
                print(f"warning: --{k} {v!r} differs from the checkpoint's {getattr(saved, k)!r}", file=sys.stderr)
    else:
        saved = RRecSettings(model_type=model_type_of(model_family(ckpt, base)))
    settings = saved.with_overrides(**overrides).validate()
    category = args.category or category_from_dataset_dir(args.dataset_dir)
    out = Path(args.output_file or Path(args.output_dir) / (
        "results.json" if args.split == "test" else f"results_{args.split}.json"))
    if out.exists() and not out.is_file():
        raise UserInputError(f"--output_file {out}: exists and is not a file")
    check_output_path(out, "--output_file" if args.output_file else "--output_dir")
    meta = {"args": vars(args), "method": "rrec", "script": "compare_model/rrec.py", "model": str(ckpt),
            "model_files": model_files(ckpt), "base_model": base, "checkpoint_kind": describe_checkpoint(ckpt),
            "dataset": args.dataset_dir,
            "dataset_layout": dataset.layout, "split": args.split, "seed": args.seed, "K": args.K,
            "K_eval": args.K_eval, "category": category, "save_prompts": args.save_prompts,
            "rank_repeat_targets": args.rank_repeat_targets,
            "candidate_source": args.reference_json or "sampled", **vars(settings)}
    if not args.no_resume:
        check_resume_settings(out, meta, RESUME_KEYS)
    return evaluate(args, dataset, items, ckpt, base, settings, category, out, meta)


def evaluate(args, dataset, items, ckpt, base, settings, category, out, meta) -> dict | None:
    """Load, rank (sharded over processes), merge, report. Rank 0 returns the result JSON."""
    import time

    from trainers.evaluation.metrics import eval_ks, format_metrics_table
    from trainers.evaluation.protocol import sanity_results
    from trainers.evaluation.results import sharded_results
    from trainers.evaluation.rrec import FULL_RANKING_KS, rrec_metrics
    from foundation.distributed import shard

    def check_saved(writer) -> None:
        if args.full_ranking and any("full_rank" not in s for s in writer.samples.values()):
            raise UserInputError(f"{out}: earlier samples were made without --full_ranking; rerun with --no_resume")

    from accelerate import PartialState

    state = PartialState(cpu=args.device == "cpu")
    rank, world = state.process_index, state.num_processes
    with sharded_results(state, out, meta, items, args.no_resume, args.batch_size, check_saved=check_saved,
                         fresh_flag="--no_resume",
                         flag="--output_file" if args.output_file else "--output_dir",
                         load=lambda todo: load_for_ranking(args, dataset, ckpt, base, settings, category, state)
                         ) as (writer, order, todo, loaded):
        t0 = time.time()
        if loaded is not None:  # the same on every process: all of them take part in the item table
            rank_items(args, dataset, shard(todo, rank, world), *loaded, settings, writer, state)
        state.wait_for_everyone()
        if rank != 0:
            return None
        writer.merge()
        samples = writer.ordered_samples(order)
        check_saved(writer)
        rows = rrec_metrics(samples, args.K_eval, args.full_ranking)
        extra = sanity_results(samples, dataset, args.seed, eval_ks(args.K_eval))
        sanity = extra["sanity_rows"]
        if args.full_ranking:
            extra["full_ranking_metrics"] = rows["rrec (full catalogue)"]
        writer.meta.update({"eval_seconds_this_run": round(time.time() - t0, 2), "processes": world})
        data = writer.finalize(rows["rrec"], extra=extra, order=order)
        print(f"{args.split}: {len(samples)} samples, K={args.K}, candidates from "
              f"{args.reference_json or 'seeded sampling'}; model {ckpt} ({meta['checkpoint_kind']})")
        print(format_metrics_table({"rrec": rows["rrec"], **sanity}, eval_ks(args.K_eval)))
        if args.full_ranking:
            print("full catalogue (history masked):")
            print(format_metrics_table({"rrec (full catalogue)": rows["rrec (full catalogue)"]},
                                       sorted(set(eval_ks(args.K_eval)) | set(FULL_RANKING_KS))))
        print(f"wrote {out}")
        return data


def load_for_ranking(args, dataset, ckpt, base, settings, category, state) -> tuple:
    """(model, prompter) of this process."""
    from dataclasses import asdict

    from models.rrec_models import RRecModel
    from prompters.rrec_prompter import RRecPrompter

    device = str(state.device) if state.num_processes > 1 else args.device
    model = RRecModel.load(str(ckpt), device=device, dtype=args.dtype, attn_implementation=args.attn_implementation,
                           base_model=base, forward_batch_size=args.item_batch_size,
                           trust_remote_code=args.trust_remote_code, settings=asdict(settings), merge_adapter=True,
                           flag="--checkpoint_path")
    model.eval()
    prompter = RRecPrompter(model.tokenizer, dataset.item_rows, category, user_window_size=settings.user_window_size,
                            model_type=settings.model_type, emb_token=settings.emb_token,
                            emb_end_token=settings.emb_end_token, item_rating_stats=settings.item_rating_stats)
    return model, prompter


def rank_items(args, dataset, mine, model, prompter, settings, writer, state) -> None:
    """This process's share: compute (its share of) the item table, rank its examples."""
    from trainers.evaluation.rrec import compute_item_table, rank_with_rrec
    from foundation.distributed import gather_objects

    rank, world = state.process_index, state.num_processes
    show = not args.no_progress and rank == 0
    table = compute_item_table(model, prompter, dataset.n_items, batch_size=args.item_batch_size, progress=show,
                               rank=rank, world=world, gather=lambda obj: gather_objects(state, obj))
    rank_with_rrec(model, prompter, mine, table, settings.max_new_tokens, batch_size=args.batch_size,
                   full_ranking=args.full_ranking, on_sample=writer.add, progress=show,
                   save_prompts=args.save_prompts, rank_repeat_targets=args.rank_repeat_targets)


if __name__ == "__main__":
    main()
