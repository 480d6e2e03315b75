"""Evaluate the binary judge (a base model, a train.py checkpoint or its final/ model) on K candidates per example.

    python test.py --model_name_or_path demo/tiny-qwen --dataset_path demo/data/Video_Games_5_2021-1-2023-12 \
        --resume_from outputs/ppo/checkpoint-200 --num_samples 100 --output_dir outputs/test_demo
    accelerate launch --num_processes 4 test.py ...      # sharded: each process ranks a quarter, one results.json

Writes {output_dir}/results.json (DESIGN.md section 3) incrementally; rerunning with the same --output_dir
resumes and computes only the missing samples (the existing file must have been made with the same dataset,
split, K, seed, model and scoring settings, else pass --overwrite_output_dir). Prints NDCG/HR/MRR for the
model and the sanity rows on the same candidates.

--resume_from PATH loads a train.py checkpoint (a full model, or a LoRA adapter on top of
--model_name_or_path) or a final/ directory; --resume_from last picks the newest complete checkpoint-N under
--checkpoint_dir, or, if that is not given, under the parent directory of --output_dir (so
`train.py --output_dir runs/x` + `test.py --output_dir runs/x/test --resume_from last` works). The prompt and
sampling settings the checkpoint was trained with (--dataset_type, --max_len_per_item, --user_window_size,
--prompt_template, --max_new_tokens, --gen_temperature, --gen_top_k, --gen_top_p) are used unless given here;
an explicit value that differs is used, with a warning.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from foundation.config import (add_model_loading_args, finite_float, int_range, nonnegative_int, positive_int,
                               seed_int)
from foundation.errors import UserInputError, exit_on_user_error
from foundation.files import check_output_path, read_json

# Settings that change candidates or scores: a resumed run must match the existing file on all of them.
RESUME_KEYS = ("dataset", "split", "K", "seed", "reference_json", "model", "checkpoint", "mode", "max_new_tokens",
               "temperature", "dataset_type", "prompt_template", "max_len_per_item", "user_window_size",
               "gen_temperature", "gen_top_k", "gen_top_p")
# Settings a checkpoint carries from training (used unless given on the command line), with test.py's defaults.
TRAINED_SETTINGS = {"dataset_type": "other", "max_len_per_item": 64, "user_window_size": 10, "prompt_template": None,
                    "max_new_tokens": 0, "gen_temperature": 1.0, "gen_top_k": 50, "gen_top_p": 1.0}
MODES = ("greedy", "rollout")
GEN_MODES = ("top1", "random", "all")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model_name_or_path", default="demo/tiny-qwen",
                   help="base model dir or known name (paths.py); the base of a LoRA --resume_from")
    g.add_argument("--resume_from", default=None,
                   help="train.py checkpoint dir or final/ dir, or 'last' (see --checkpoint_dir)")
    g.add_argument("--checkpoint_dir", default=None,
                   help="where --resume_from last looks for checkpoint-N (default: parent of --output_dir)")
    add_model_loading_args(g)
    g = p.add_argument_group("data")
    g.add_argument("--dataset_path", default="demo/data/Video_Games_5_2021-1-2023-12", help="preprocess.py output dir")
    g.add_argument("--dataset_type", default=None, help="movies|other: picks the prompt template "
                                                         "(default: the checkpoint's, else other)")
    g.add_argument("--split", default="test", help="train|valid|test")
    g.add_argument("--num_samples", type=int, default=None,
                   help="examples to evaluate (seeded order); <=0 or unset = all")
    g.add_argument("--K", type=int_range(2), default=20, help="candidates per example (target + K-1 negatives)")
    g.add_argument("--K_eval", type=positive_int, default=10, help="extra NDCG/HR cut-off reported besides 1, 5, 10")
    g.add_argument("--seed", type=seed_int, default=42,
                   help="seed of the example order, the candidate negatives and rollout sampling")
    g.add_argument("--reference_json", default=None, help="rank exactly the candidates of this result JSON")
    g = p.add_argument_group("prompt and scoring (defaults: the checkpoint's training settings)")
    g.add_argument("--max_len_per_item", type=positive_int, default=None, help="tokens of item text per item (else 64)")
    g.add_argument("--user_window_size", type=positive_int, default=None,
                   help="history items shown in the prompt (else 10)")
    g.add_argument("--prompt_template", default=None, help="file with a custom binary template")
    g.add_argument("--mode", default="greedy", help="greedy (argsort) | rollout (one PL sample)")
    g.add_argument("--scoring", default="naive", help="naive | shared (shared-prefix packing)")
    g.add_argument("--max_new_tokens", type=nonnegative_int, default=None,
                   help="0 = answer directly; N = reason for up to N tokens (else 0)")
    g.add_argument("--gen_temperature", type=finite_float, default=None,
                   help="reasoning sampling temperature in rollout mode (else 1.0)")
    g.add_argument("--gen_top_k", type=nonnegative_int, default=None,
                   help="reasoning sampling top-k, 0 = off (else 50)")
    g.add_argument("--gen_top_p", type=finite_float, default=None, help="reasoning sampling top-p, 1 = off (else 1.0)")
    g.add_argument("--temperature", type=finite_float, default=1.0, help="PL temperature for --mode rollout")
    g.add_argument("--batch_size", type=positive_int, default=8, help="users per scoring batch")
    g.add_argument("--scoring_chunk_size", "--micro_batch_size", dest="scoring_chunk_size", type=positive_int,
                   default=32, help="prompts per forward pass in naive scoring (--micro_batch_size is the old name)")
    g.add_argument("--gen_batch_size", type=positive_int, default=256,
                   help="(user, candidate) rows decoded together in reasoning generation with --scoring shared")
    g = p.add_argument_group("output")
    g.add_argument("--output_dir", default="outputs/test", help="results.json goes here")
    g.add_argument("--overwrite_output_dir", action="store_true", help="discard existing results instead of resuming")
    g.add_argument("--gen_mode", default="top1", help="which reasoning texts to keep: top1|random|all")
    g.add_argument("--print_every_text", type=nonnegative_int, default=50,
                   help="print an example every N samples (0 = never)")
    g.add_argument("--no_progress", action="store_true", help="no tqdm bar")
    return p


def check_args(a: argparse.Namespace) -> None:
    """Cheap checks before anything heavy is imported or loaded."""
    import math

    from trainers.data.dataset import check_dataset_type

    check_dataset_type(a.dataset_type)
    for flag, allowed in (("mode", MODES), ("gen_mode", GEN_MODES), ("scoring", ("naive", "shared")),
                          ("split", ("train", "valid", "test"))):
        if getattr(a, flag) not in allowed:
            raise UserInputError(f"--{flag} {getattr(a, flag)!r}: must be one of {'|'.join(allowed)}")
    # (each integer flag's own domain is checked by argparse; these may also come from the checkpoint's args.json)
    for flag in ("max_len_per_item", "user_window_size"):
        if not isinstance(getattr(a, flag), int) or getattr(a, flag) < 1:
            raise UserInputError(f"--{flag} {getattr(a, flag)}: must be >= 1")
    if not 1 <= a.K_eval <= a.K:
        raise UserInputError(f"--K_eval {a.K_eval}: must be between 1 and --K {a.K}")
    if not isinstance(a.max_new_tokens, int) or a.max_new_tokens < 0:
        raise UserInputError(f"--max_new_tokens {a.max_new_tokens}: must be >= 0")
    for flag in ("temperature", "gen_temperature"):
        v = getattr(a, flag)
        if not (v > 0 and math.isfinite(v)):
            raise UserInputError(f"--{flag} {v}: must be a finite number > 0")
    if a.prompt_template:
        from prompters.binary_prompter import load_template

        load_template(a.dataset_type, a.prompt_template)  # missing/unknown placeholders fail here, before loading


def judge_dir_files() -> list[tuple[str, ...]]:
    """What a model directory test.py can evaluate must hold: a full model or a PEFT adapter with a tokenizer. The
    value head (heads.safetensors) is only needed to continue training, so ours, LLaMA-Factory's and any other
    save_pretrained output evaluate alike."""
    from paths import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHT_FILES, TOKENIZER_FILES, WEIGHT_FILES

    return [("config.json", ADAPTER_CONFIG_FILE), tuple(WEIGHT_FILES) + tuple(ADAPTER_WEIGHT_FILES),
            tuple(TOKENIZER_FILES)]


def resolve_checkpoint_arg(resume_from: str | None, checkpoint_dir: str | None, output_dir: str) -> str | None:
    """None, an explicit complete checkpoint dir, or the newest complete checkpoint-N for 'last'."""
    from foundation.checkpoints import resolve_checkpoint

    if not resume_from:
        return None
    root = Path(checkpoint_dir) if checkpoint_dir else Path(output_dir).resolve().parent
    where = f"{root} ({'--checkpoint_dir' if checkpoint_dir else 'the parent of --output_dir'})"
    found = resolve_checkpoint("last" if resume_from == "auto" else resume_from, root, judge_dir_files(), where=where)
    return str(found) if found else None


def apply_trained_settings(args: argparse.Namespace, checkpoint: str | None) -> dict:
    """Fill unset prompt/sampling flags from the checkpoint's training args (warn on explicit mismatches)."""
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
    for key, default in TRAINED_SETTINGS.items():
        given = getattr(args, key)
        if given is None:
            setattr(args, key, saved.get(key, default))
            if key in saved:
                used[key] = saved[key]
        elif key in saved and saved[key] != given:
            print(f"warning: --{key} {given!r} differs from the checkpoint's training setting {saved[key]!r}",
                  file=sys.stderr)
    return used


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error():  # one line from the main process, exit status 2 on every process
        return run(args)


def run(args: argparse.Namespace) -> dict | None:
    checkpoint = resolve_checkpoint_arg(args.resume_from, args.checkpoint_dir, args.output_dir)
    from_ckpt = apply_trained_settings(args, checkpoint)
    check_args(args)
    from trainers.data.dataset import load_processed_dataset

    dataset = load_processed_dataset(args.dataset_path)
    reference = None
    if args.reference_json:
        from trainers.evaluation.results import load_result_json

        reference = load_result_json(args.reference_json)
    from models.abstract_models import check_model_dir, is_adapter_dir

    if checkpoint:
        check_model_dir(checkpoint, flag="--resume_from")
        if is_adapter_dir(checkpoint):
            check_model_dir(args.model_name_or_path)  # the adapter's base
        elif args.model_name_or_path and Path(args.model_name_or_path).is_dir():
            from foundation.checkpoints import check_same_model_shape

            # A checkpoint of another architecture would silently evaluate a different model than asked for.
            check_same_model_shape(check_model_dir(args.model_name_or_path), Path(checkpoint))
    else:
        check_model_dir(args.model_name_or_path)

    from trainers.evaluation.protocol import build_eval_items

    if reference is None:
        dataset.check_K(args.K)
    items = build_eval_items(dataset, args.split, args.num_samples, args.K, args.seed, reference)
    if not items:
        raise UserInputError(f"--split {args.split}: no examples to evaluate in {args.dataset_path}")
    out_path = check_output_path(args.output_dir, "--output_dir", kind="dir") / "results.json"
    meta = {
        **{k: v for k, v in vars(args).items() if k not in ("no_progress",)},
        "dataset": os.path.basename(os.path.normpath(args.dataset_path)),
        "model": args.model_name_or_path, "checkpoint": checkpoint, "script": "test.py",
        "settings_from_checkpoint": from_ckpt,
    }
    if not args.overwrite_output_dir:  # saved samples' candidates are checked by sharded_results
        from trainers.evaluation.results import check_resume_settings

        check_resume_settings(out_path, meta, RESUME_KEYS)

    import torch  # noqa: F401  (heavy imports only after the cheap checks)
    from models.qwen_models import SamplingSettings, load_judge_from_checkpoint
    from prompters.binary_prompter import BinaryPrompter
    from trainers.evaluation.judge import rank_examples
    from trainers.evaluation.metrics import eval_ks, format_metrics_table, metrics_from_ranks
    from trainers.evaluation.protocol import sanity_results
    from trainers.evaluation.results import sharded_results
    from foundation.distributed import shard

    from accelerate import PartialState

    state = PartialState(cpu=args.device == "cpu")
    rank, world = state.process_index, state.num_processes
    device = str(state.device) if world > 1 else args.device
    sampling = SamplingSettings(args.gen_temperature, args.gen_top_k, args.gen_top_p).validate()

    def load(todo):  # the model and its prompts, before any result file is touched
        if not shard(todo, rank, world):
            return None
        judge = load_judge_from_checkpoint(args.model_name_or_path, resume_from=checkpoint, device=device,
                                           dtype=args.dtype, attn_implementation=args.attn_implementation,
                                           packed_mask=args.scoring == "shared",
                                           trust_remote_code=args.trust_remote_code,
                                           scoring_chunk_size=args.scoring_chunk_size,
                                           generation_batch_rows=args.gen_batch_size)
        prompter = BinaryPrompter(judge.tokenizer, dataset.item_rows, dataset_type=args.dataset_type,
                                  max_len_per_item=args.max_len_per_item, user_window_size=args.user_window_size,
                                  template_file=args.prompt_template, reasoning=args.max_new_tokens > 0)
        return judge, prompter

    with sharded_results(state, out_path, meta, items, args.overwrite_output_dir, args.batch_size,
                         load=load) as (writer, order, todo, loaded):
        t0 = time.time()
        mine = shard(todo, rank, world)
        if mine:
            judge, prompter = loaded
            rank_examples(judge, prompter, mine, mode=args.mode, scoring=args.scoring, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                          K_eval=args.K_eval, on_sample=writer.add, progress=not args.no_progress and rank == 0,
                          gen_mode=args.gen_mode, print_every_text=args.print_every_text if rank == 0 else 0,
                          sampling=sampling)
        elapsed = time.time() - t0
        state.wait_for_everyone()
        if rank != 0:
            return None
        writer.merge()
        samples = writer.ordered_samples(order)
        ks = eval_ks(args.K_eval)
        metrics = metrics_from_ranks([s["target_rank"] for s in samples], ks)
        extra = sanity_results(samples, dataset, args.seed, ks)
        sanity = extra["sanity_rows"]
        writer.meta["eval_seconds_this_run"] = round(elapsed, 2)
        writer.meta["processes"] = world
        data = writer.finalize(metrics, extra=extra, order=order)
        name = f"model ({args.mode})" if not checkpoint else f"{Path(checkpoint).name} ({args.mode})"
        print(f"\n{args.split} split of {meta['dataset']}: {len(samples)} samples, K={args.K}, seed={args.seed}")
        print(format_metrics_table({name: metrics, **sanity}, ks))
        print(f"wrote {out_path}")
        return data

if __name__ == "__main__":
    main()
