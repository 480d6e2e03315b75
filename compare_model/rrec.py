"""Evaluate an R2ec ("RRec") model on our candidate sets (docs/rrec.md), as upstream evaluates it.

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

import sys
from pathlib import Path

from foundation.config import build_parser as options_parser
from foundation.config import config_from_args
from foundation.errors import UserInputError, exit_on_user_error
from foundation.files import check_output_path
from trainers.evaluation.options import RRecEvalOptions, result_path


def build_parser():
    """The flags: one per RRecEvalOptions field (trainers/evaluation/options.py)."""
    return options_parser(RRecEvalOptions, description=__doc__)


def main(argv: list[str] | None = None) -> dict | None:
    opts = config_from_args(RRecEvalOptions, build_parser().parse_args(argv), validate=False)
    with exit_on_user_error():  # one line from the main process, exit status 2 on every process
        return run(opts)


def run(opts: RRecEvalOptions) -> dict | None:
    """Resolve the model and its settings, check everything cheap, then rank through the evaluation runner."""
    from models.abstract_models import adapter_base_path, check_model_dir, is_adapter_dir
    from models.resolution import describe_checkpoint, model_files, resolve_rrec_model
    from models.rrec_models import RRecSettings, model_family
    from prompters.rrec_prompter import category_from_dataset_dir, model_type_of
    from trainers.data.dataset import load_processed_dataset
    from trainers.evaluation.results import load_result_json
    from trainers.evaluation.runner import EvalJob, candidate_items, check_resume

    opts.validate()
    dataset = load_processed_dataset(opts.dataset_dir, flag="--dataset_dir")
    reference = load_result_json(opts.reference_json) if opts.reference_json else None
    items = candidate_items(dataset, opts.split, opts.num_samples, opts.K, opts.seed, reference, opts.dataset_dir)
    ckpt = resolve_rrec_model(opts.checkpoint_path, flag="--checkpoint_path")
    check_model_dir(ckpt, flag="--checkpoint_path")
    base = None
    if is_adapter_dir(ckpt):
        base = str(adapter_base_path(ckpt, opts.base_model_name_or_path))
        check_model_dir(base, flag="--base_model_name_or_path", need_tokenizer=False)
    saved = RRecSettings.load(ckpt)
    overrides = {k: getattr(opts, k) for k in opts.SETTING_FLAGS}
    if saved is not None:
        for k, v in overrides.items():
            if v is not None and getattr(saved, k) != v:
                print(f"warning: --{k} {v!r} differs from the checkpoint's {getattr(saved, k)!r}", file=sys.stderr)
    else:
        saved = RRecSettings(model_type=model_type_of(model_family(ckpt, base)))
    settings = saved.with_overrides(**overrides).validate()
    category = opts.category or category_from_dataset_dir(opts.dataset_dir)
    out = result_path(opts.output_dir, opts.split, opts.output_file)
    if out.exists() and not out.is_file():
        raise UserInputError(f"--output_file {out}: exists and is not a file")
    check_output_path(out, opts.output_flag)
    meta = {"args": opts.to_dict(), "method": "rrec", "script": "compare_model/rrec.py", "model": str(ckpt),
            "model_files": model_files(ckpt), "base_model": base, "checkpoint_kind": describe_checkpoint(ckpt),
            "dataset": opts.dataset_dir, "dataset_layout": dataset.layout, "split": opts.split, "seed": opts.seed,
            "K": opts.K, "K_eval": opts.K_eval, "category": category, "save_prompts": opts.save_prompts,
            "rank_repeat_targets": opts.rank_repeat_targets, "candidate_source": opts.reference_json or "sampled",
            **vars(settings)}
    job = EvalJob(dataset=dataset, split=opts.split, items=items, result_file=out, meta=meta, seed=opts.seed,
                  K_eval=opts.K_eval, fresh=opts.no_resume, resume_keys=opts.RESUME_KEYS,
                  output_flag=opts.output_flag, fresh_flag="--no_resume", flush_every=opts.batch_size)
    check_resume(job)
    return evaluate(opts, job, dataset, ckpt, base, settings, category)


def evaluate(opts: RRecEvalOptions, job, dataset, ckpt: Path, base: str | None, settings, category: str
             ) -> dict | None:
    """Load, rank (sharded over processes), merge, report. Rank 0 returns the result JSON."""
    from trainers.evaluation.rrec import RRecRanker
    from trainers.evaluation.runner import launch_state, run_evaluation

    ranker = RRecRanker(opts, dataset, ckpt, base, settings, category)
    return run_evaluation(job, ranker, launch_state(cpu=opts.device == "cpu"))


if __name__ == "__main__":
    main()
