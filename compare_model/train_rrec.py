"""Train the R2ec ("RRec") baseline with RecPO on a processed dataset (trainers/RecPOTrainer.py).

Single process: python compare_model/train_rrec.py --model_name_or_path demo/tiny-qwen --device cpu ...
Several GPUs:   accelerate launch --num_processes 4 compare_model/train_rrec.py ...
Writes {output_dir}/checkpoint-{step} (evaluate with compare_model/rrec.py --checkpoint_path OUTPUT_DIR)
and {output_dir}/metrics.jsonl (per-step losses/rewards, periodic validation metrics).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from trainers.foundation.errors import UserInputError, die
from trainers.GRecTrainer import RRecTrainingArguments, add_dataclass_arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(p, RRecTrainingArguments)
    # the seed's spelling of the dataset flag
    p.add_argument("--dataset_path", dest="dataset_dir", default=argparse.SUPPRESS, help="alias of --dataset_dir")
    p.set_defaults(K_eval=None)  # default min(10, --K): an explicit --K_eval above --K is an error
    p.add_argument("--overwrite_output_dir", action="store_true",
                   help="train into a non-empty --output_dir anyway (its checkpoints are replaced as steps are saved)")
    return p


def check_output_dir(output_dir: str, resume_from: str, overwrite: bool) -> None:
    """A fresh run must not mix its checkpoints and metrics.jsonl with an earlier run's."""
    out = Path(output_dir)
    if out.is_dir() and any(out.iterdir()) and not resume_from and not overwrite:
        raise UserInputError(f"--output_dir {output_dir}: exists and is not empty; pass --resume_from last to "
                             "continue that run, or --overwrite_output_dir to start afresh")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from trainers.RecPOTrainer import RecPOTrainer

    overwrite = args.__dict__.pop("overwrite_output_dir")
    if args.K_eval is None:
        args.K_eval = min(10, args.K)
    try:
        targs = RRecTrainingArguments(**vars(args))
        targs.validate()
        if not 1 <= targs.K_eval <= targs.K:  # checked here, not in validate(): library callers may pass K_eval > K
            raise UserInputError(f"--K_eval {targs.K_eval}: must be between 1 and --K {targs.K}")
        check_output_dir(targs.output_dir, targs.resume_from, overwrite)
        if overwrite and not targs.resume_from:
            metrics = Path(targs.output_dir) / "metrics.jsonl"
            if metrics.exists():  # the old run's log would otherwise be continued
                metrics.unlink()
        trainer = RecPOTrainer(targs)
        ckpt = trainer.train()
    except UserInputError as e:
        die(str(e))
    if trainer.is_main:
        print(f"final checkpoint: {ckpt}")


if __name__ == "__main__":
    main()
