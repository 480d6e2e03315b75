"""Evaluate the binary judge (a base model, a train.py checkpoint or its final/ model) on K candidates per example.

    python test.py --model_name_or_path demo/tiny-qwen --dataset_path demo/data/Video_Games_5_2021-1-2023-12 \
        --resume_from outputs/ppo/checkpoint-200 --num_samples 100 --output_dir outputs/test_demo
    accelerate launch --num_processes 4 test.py ...      # sharded: each process ranks a quarter, one results.json

Writes {output_dir}/results.json (docs/evaluation.md) incrementally; rerunning with the same --output_dir
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

import os
from pathlib import Path

from foundation.config import build_parser as options_parser
from foundation.config import config_from_args
from foundation.errors import exit_on_user_error
from foundation.files import check_output_path
from trainers.evaluation.options import JudgeEvalOptions


def build_parser():
    """The flags: one per JudgeEvalOptions field (trainers/evaluation/options.py)."""
    return options_parser(JudgeEvalOptions, description=__doc__)


def main(argv: list[str] | None = None) -> dict | None:
    opts = config_from_args(JudgeEvalOptions, build_parser().parse_args(argv), validate=False)
    with exit_on_user_error():  # one line from the main process, exit status 2 on every process
        return run(opts)


def run(opts: JudgeEvalOptions) -> dict | None:
    """Resolve the checkpoint and its training settings, check everything cheap, then rank through the evaluation
    runner (torch is imported only once the input is known to be good)."""
    from models.resolution import resolve_judge_checkpoint
    from trainers.data.dataset import load_processed_dataset
    from trainers.evaluation.results import load_result_json
    from trainers.evaluation.runner import EvalJob, candidate_items, check_resume

    root = Path(opts.checkpoint_dir) if opts.checkpoint_dir else Path(opts.output_dir).resolve().parent
    where = f"{root} ({'--checkpoint_dir' if opts.checkpoint_dir else 'the parent of --output_dir'})"
    checkpoint = resolve_judge_checkpoint(opts.resume_from, root, where)
    from_ckpt = opts.apply_trained_settings(checkpoint)
    opts.validate()
    dataset = load_processed_dataset(opts.dataset_path)
    reference = load_result_json(opts.reference_json) if opts.reference_json else None
    check_model_dirs(opts, checkpoint)
    opts.scoring = resolved_scoring(opts, checkpoint)
    items = candidate_items(dataset, opts.split, opts.num_samples, opts.K, opts.seed, reference, opts.dataset_path)
    out_path = check_output_path(opts.output_dir, "--output_dir", kind="dir") / "results.json"
    meta = {**{k: v for k, v in opts.to_dict().items() if k != "no_progress"},
            "dataset": os.path.basename(os.path.normpath(opts.dataset_path)),
            "model": opts.model_name_or_path, "checkpoint": checkpoint, "script": "test.py",
            "settings_from_checkpoint": from_ckpt}
    job = EvalJob(dataset=dataset, split=opts.split, items=items, result_file=out_path, meta=meta, seed=opts.seed,
                  K_eval=opts.K_eval, fresh=opts.overwrite_output_dir, resume_keys=opts.RESUME_KEYS,
                  flush_every=opts.batch_size)
    check_resume(job)  # saved samples' candidates are checked when the runner resumes them

    from trainers.evaluation.judge import JudgeRanker  # torch: only after the cheap checks
    from trainers.evaluation.runner import launch_state, run_evaluation

    return run_evaluation(job, JudgeRanker(opts, checkpoint, dataset.item_rows), launch_state(opts.device == "cpu"))


def check_model_dirs(opts: JudgeEvalOptions, checkpoint: str | None) -> None:
    """The model to evaluate exists: the checkpoint (and an adapter's base), or the base model itself; a full
    checkpoint of another architecture than --model_name_or_path is refused (it would silently evaluate a
    different model than asked for)."""
    from models.abstract_models import check_model_dir, is_adapter_dir

    if not checkpoint:
        check_model_dir(opts.model_name_or_path)
        return
    check_model_dir(checkpoint, flag="--resume_from")
    if is_adapter_dir(checkpoint):
        check_model_dir(opts.model_name_or_path)  # the adapter's base
    elif opts.model_name_or_path and Path(opts.model_name_or_path).is_dir():
        from foundation.checkpoints import check_same_model_shape

        check_same_model_shape(check_model_dir(opts.model_name_or_path), Path(checkpoint))


def resolved_scoring(opts: JudgeEvalOptions, checkpoint: str | None) -> str:
    """naive|shared: --scoring auto decided once, for the model that will be loaded (printed in one line)."""
    from models.abstract_models import is_adapter_dir
    from models.qwen_models import resolve_scoring

    adapter = checkpoint is not None and is_adapter_dir(checkpoint)
    return resolve_scoring(opts.scoring, checkpoint or opts.model_name_or_path, opts.attn_implementation, opts.device,
                           base_model=opts.model_name_or_path if adapter else None)


if __name__ == "__main__":
    main()
