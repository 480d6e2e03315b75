"""Evaluate the binary judge (base model or a train.py checkpoint) on K candidates per test example.

    python test.py --model_name_or_path demo/tiny-qwen --dataset_path demo/data/Video_Games_5_2021-1-2023-12 \
        --dataset_type other --num_samples 100 --output_dir outputs/test_demo

Writes {output_dir}/results.json (DESIGN.md section 3) incrementally; rerunning with the same --output_dir
resumes and computes only the missing samples (the existing file must have been made with the same dataset,
split, K, seed, model and scoring settings, else pass --overwrite_output_dir). Prints NDCG/HR/MRR for the
model and the random / popularity sanity rows on the same candidates.

--resume_from PATH loads a checkpoint directory written by train.py (a save_pretrained model with its
tokenizer plus heads.safetensors). --resume_from last picks the newest complete checkpoint-N under
--checkpoint_dir, or, if that is not given, under the parent directory of --output_dir (so
`train.py --output_dir runs/x` + `test.py --output_dir runs/x/test --resume_from last` works).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from paths import HEADS_FILE, TOKENIZER_FILES, WEIGHT_FILES
from trainers.foundation.errors import UserInputError, die

# Settings that change candidates or scores: a resumed run must match the existing file on all of them.
RESUME_KEYS = ("dataset", "split", "K", "seed", "reference_json", "model", "checkpoint", "mode", "max_new_tokens",
               "temperature", "dataset_type", "prompt_template", "max_len_per_item", "user_window_size")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model_name_or_path", default="demo/tiny-qwen", help="base model dir or known name (paths.py)")
    g.add_argument("--resume_from", default=None, help="checkpoint dir from train.py, or 'last' (see --checkpoint_dir)")
    g.add_argument("--checkpoint_dir", default=None,
                   help="where --resume_from last looks for checkpoint-N (default: parent of --output_dir)")
    g.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU)|bf16|fp16|fp32")
    g.add_argument("--attn_implementation", default="auto", help="auto|flash_attention_2|sdpa|flex_attention|eager")
    g.add_argument("--trust_remote_code", action="store_true",
                   help="allow custom model/tokenizer code shipped with the checkpoint")
    g = p.add_argument_group("data")
    g.add_argument("--dataset_path", default="demo/data/Video_Games_5_2021-1-2023-12", help="preprocess.py output dir")
    g.add_argument("--dataset_type", default="other", help="movies|other: picks the prompt template")
    g.add_argument("--split", default="test", help="train|valid|test")
    g.add_argument("--num_samples", type=int, default=None, help="examples to evaluate (seeded order); <=0 or unset = all")
    g.add_argument("--K", type=int, default=20, help="candidates per example (target + K-1 negatives)")
    g.add_argument("--K_eval", type=int, default=10, help="extra NDCG/HR cut-off reported besides 1, 5, 10")
    g.add_argument("--seed", type=int, default=42,
                   help="seed of the example order, the candidate negatives and rollout sampling")
    g.add_argument("--reference_json", default=None, help="rank exactly the candidates of this result JSON")
    g = p.add_argument_group("prompt and scoring")
    g.add_argument("--max_len_per_item", type=int, default=64, help="tokens of item text per item in the prompt")
    g.add_argument("--user_window_size", type=int, default=10, help="history items shown in the prompt")
    g.add_argument("--prompt_template", default=None, help="file with a custom binary template")
    g.add_argument("--mode", default="greedy", help="greedy (argsort) | rollout (one PL sample)")
    g.add_argument("--scoring", default="naive", help="naive | shared (shared-prefix packing)")
    g.add_argument("--max_new_tokens", type=int, default=0, help="0 = answer directly; N = reason for up to N tokens")
    g.add_argument("--temperature", type=float, default=1.0, help="PL temperature for --mode rollout")
    g.add_argument("--batch_size", type=int, default=8, help="users per scoring batch")
    g.add_argument("--micro_batch_size", type=int, default=32, help="prompts per forward pass")
    g = p.add_argument_group("output")
    g.add_argument("--output_dir", default="outputs/test", help="results.json goes here")
    g.add_argument("--overwrite_output_dir", action="store_true", help="discard existing results instead of resuming")
    g.add_argument("--gen_mode", default="top1", help="which reasoning texts to keep: top1|random|all")
    g.add_argument("--print_every_text", type=int, default=50, help="print an example every N samples (0 = never)")
    g.add_argument("--no_progress", action="store_true", help="no tqdm bar")
    return p


def check_args(a: argparse.Namespace) -> None:
    """Cheap checks before anything heavy is imported or loaded."""
    from trainers.data.dataset import check_dataset_type
    from trainers.evaluation.judge import GEN_MODES, MODES

    check_dataset_type(a.dataset_type)
    if a.mode not in MODES:
        raise UserInputError(f"--mode {a.mode!r}: must be one of {'|'.join(MODES)}")
    if a.gen_mode not in GEN_MODES:
        raise UserInputError(f"--gen_mode {a.gen_mode!r}: must be one of {'|'.join(GEN_MODES)}")
    if a.scoring not in ("naive", "shared"):
        raise UserInputError(f"--scoring {a.scoring!r}: must be naive|shared")
    if a.split not in ("train", "valid", "test"):
        raise UserInputError(f"--split {a.split!r}: must be train|valid|test")
    for flag in ("max_len_per_item", "user_window_size", "batch_size", "micro_batch_size"):
        if getattr(a, flag) < 1:
            raise UserInputError(f"--{flag} {getattr(a, flag)}: must be >= 1")
    if a.K < 2:
        raise UserInputError(f"--K {a.K}: must be >= 2")
    if not 1 <= a.K_eval <= a.K:
        raise UserInputError(f"--K_eval {a.K_eval}: must be between 1 and --K {a.K}")
    if a.max_new_tokens < 0:
        raise UserInputError(f"--max_new_tokens {a.max_new_tokens}: must be >= 0")
    if a.temperature <= 0:
        raise UserInputError(f"--temperature {a.temperature}: must be > 0")
    if a.print_every_text < 0:
        raise UserInputError(f"--print_every_text {a.print_every_text}: must be >= 0")
    if a.prompt_template:
        from prompters.binary_prompter import load_template

        load_template(a.dataset_type, a.prompt_template)  # missing/unknown placeholders fail here, before loading


def checkpoint_problem(d: Path) -> str | None:
    """Why d is not a complete train.py checkpoint, or None."""
    if not d.is_dir():
        return "not a directory"
    if not (d / "config.json").is_file():
        return "no config.json"
    if not any((d / f).is_file() for f in WEIGHT_FILES):
        return f"no model weights ({', '.join(WEIGHT_FILES)})"
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        return "no tokenizer files"
    if not (d / HEADS_FILE).is_file():
        return f"no {HEADS_FILE} (interrupted save?)"
    if (d / "trainer_state.json").is_file() and not (d / "COMPLETE").is_file():
        return "no COMPLETE marker (interrupted save?)"  # train.py writes the marker last
    return None


def resolve_checkpoint(resume_from: str | None, checkpoint_dir: str | None, output_dir: str) -> str | None:
    """None, an explicit complete checkpoint dir, or the newest complete checkpoint-N for 'last'."""
    if not resume_from:
        return None
    if resume_from == "last":
        root = Path(checkpoint_dir) if checkpoint_dir else Path(output_dir).resolve().parent
        from trainers.foundation.checkpoints import checkpoint_dirs

        # every checkpoint-N, newest first; completeness is judged by checkpoint_problem (also non-train.py dirs)
        for _, d in reversed(checkpoint_dirs(root, complete_only=False)):
            problem = checkpoint_problem(d)
            if problem is None:
                return str(d)
            print(f"warning: skipping incomplete {d}: {problem}", file=sys.stderr)
        where = "--checkpoint_dir" if checkpoint_dir else "the parent of --output_dir"
        raise UserInputError(f"--resume_from last: no complete checkpoint-N under {root} ({where}); "
                             "pass --checkpoint_dir or an explicit checkpoint path")
    problem = checkpoint_problem(Path(resume_from))
    if problem:
        raise UserInputError(f"--resume_from {resume_from}: incomplete checkpoint: {problem}")
    return resume_from


def check_existing(out_path: Path, meta: dict, items_by_iid: dict[int, list[int]]) -> None:
    """Refuse to resume into results made with other settings (meta) or other candidates (partial samples)."""
    from trainers.evaluation.results import load_result_json
    from trainers.foundation.files import iter_jsonl

    if out_path.is_file():
        old = load_result_json(out_path, flag="--output_dir").get("meta", {})
        diff = [k for k in RESUME_KEYS if k in old and old[k] != meta.get(k)]
        if diff:
            shown = ", ".join(f"{k}: {old[k]!r} -> {meta.get(k)!r}" for k in diff)
            raise UserInputError(f"--output_dir {out_path.parent}: existing results.json was made with other settings "
                                 f"({shown}); pass --overwrite_output_dir or another --output_dir")
    partial = out_path.with_name(out_path.name + ".partial.jsonl")
    sources = []
    if out_path.is_file():
        sources += load_result_json(out_path, flag="--output_dir")["samples"]
    if partial.is_file():
        sources += list(iter_jsonl(partial, flag="--output_dir", skip_bad_lines=True))
    for s in sources:
        iid = int(s["interaction_id"])
        if iid in items_by_iid and [int(c) for c in s["candidates"]] != items_by_iid[iid]:
            raise UserInputError(f"--output_dir {out_path.parent}: existing sample {iid} has other candidates than "
                                 "this run (different dataset/K/seed?); pass --overwrite_output_dir")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserInputError as e:
        die(str(e))


def run(args: argparse.Namespace) -> dict:
    check_args(args)
    from trainers.data.dataset import load_processed_dataset

    dataset = load_processed_dataset(args.dataset_path)
    if args.K > dataset.n_items:
        raise UserInputError(f"--K {args.K}: the catalogue has only {dataset.n_items} items; lower --K")
    reference = None
    if args.reference_json:
        from trainers.evaluation.results import load_result_json

        reference = load_result_json(args.reference_json)
    checkpoint = resolve_checkpoint(args.resume_from, args.checkpoint_dir, args.output_dir)
    from models.abstract_models import check_model_dir

    if checkpoint:
        check_model_dir(checkpoint, flag="--resume_from")
        if args.model_name_or_path and Path(args.model_name_or_path).is_dir():
            from trainers.foundation.checkpoints import check_same_model_shape

            # A checkpoint of another architecture would silently evaluate a different model than asked for.
            check_same_model_shape(check_model_dir(args.model_name_or_path), Path(checkpoint))
    else:
        check_model_dir(args.model_name_or_path)

    from trainers.evaluation.protocol import build_eval_items

    items = build_eval_items(dataset, args.split, args.num_samples, args.K, args.seed, reference)
    if not items:
        raise UserInputError(f"--split {args.split}: no examples to evaluate in {args.dataset_path}")
    out_path = Path(args.output_dir) / "results.json"
    meta = {
        **{k: v for k, v in vars(args).items() if k not in ("no_progress",)},
        "dataset": os.path.basename(os.path.normpath(args.dataset_path)),
        "model": args.model_name_or_path, "checkpoint": checkpoint, "script": "test.py",
    }
    if args.overwrite_output_dir:
        resume = False
    else:
        check_existing(out_path, meta, {int(ex["interaction_id"]): c for ex, c in items})
        resume = True

    import torch  # noqa: F401  (heavy imports only after the cheap checks)

    from models.qwen_models import load_judge_from_checkpoint
    from prompters.binary_prompter import BinaryPrompter
    from trainers.evaluation.judge import rank_examples
    from trainers.evaluation.metrics import eval_ks, format_metrics_table, metrics_from_ranks
    from trainers.evaluation.protocol import sanity_rows
    from trainers.evaluation.results import ResultWriter

    writer = ResultWriter(out_path, meta, resume=resume, flush_every=max(1, args.batch_size))
    order = [int(ex["interaction_id"]) for ex, _ in items]
    todo = [it for it in items if int(it[0]["interaction_id"]) not in writer.done_ids]
    if len(todo) < len(items):
        print(f"resuming {out_path}: {len(items) - len(todo)} of {len(items)} samples already done")
    writer.write(order=order)  # meta on disk before the first new sample, so a later resume can check it

    t0 = time.time()
    if todo:
        judge = load_judge_from_checkpoint(args.model_name_or_path, resume_from=checkpoint, device=args.device,
                                           dtype=args.dtype, attn_implementation=args.attn_implementation,
                                           trust_remote_code=args.trust_remote_code,
                                           micro_batch_size=args.micro_batch_size)
        prompter = BinaryPrompter(judge.tokenizer, dataset.item_rows, dataset_type=args.dataset_type,
                                  max_len_per_item=args.max_len_per_item, user_window_size=args.user_window_size,
                                  template_file=args.prompt_template, reasoning=args.max_new_tokens > 0)
        rank_examples(judge, prompter, todo, mode=args.mode, scoring=args.scoring, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                      K_eval=args.K_eval, on_sample=writer.add, progress=not args.no_progress,
                      gen_mode=args.gen_mode, print_every_text=args.print_every_text)
    elapsed = time.time() - t0

    samples = writer.ordered_samples(order)
    ks = eval_ks(args.K_eval)
    metrics = metrics_from_ranks([s["target_rank"] for s in samples], ks)
    sanity = sanity_rows(samples, dataset, args.seed, ks)
    writer.meta["eval_seconds_this_run"] = round(elapsed, 2)
    data = writer.finalize(metrics, extra={"sanity_rows": sanity}, order=order)
    name = f"model ({args.mode})" if not checkpoint else f"{Path(checkpoint).name} ({args.mode})"
    print(f"\n{args.split} split of {meta['dataset']}: {len(samples)} samples, K={args.K}, seed={args.seed}")
    print(format_metrics_table({name: metrics, **sanity}, ks))
    print(f"wrote {out_path}")
    return data


if __name__ == "__main__":
    main()
