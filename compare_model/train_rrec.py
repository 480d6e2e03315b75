"""Train the R2ec ("RRec") baseline with RecPO on a processed dataset (trainers/RecPOTrainer.py).

Single process: python compare_model/train_rrec.py --model_name_or_path demo/tiny-qwen --device cpu ...
Several GPUs:   accelerate launch --num_processes 4 compare_model/train_rrec.py ...
Writes {output_dir}/checkpoint-{step} (evaluate with compare_model/rrec.py --checkpoint_path OUTPUT_DIR)
and {output_dir}/metrics.jsonl (per-step losses/rewards, periodic validation metrics).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainers.errors import UserInputError, die  # noqa: E402
from trainers.GRecTrainer import RRecTrainingArguments, add_dataclass_arguments  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(p, RRecTrainingArguments)
    # the seed's spelling of the dataset flag
    p.add_argument("--dataset_path", dest="dataset_dir", default=argparse.SUPPRESS, help="alias of --dataset_dir")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from trainers.RecPOTrainer import RecPOTrainer

    try:
        trainer = RecPOTrainer(RRecTrainingArguments(**vars(args)))
        ckpt = trainer.train()
    except UserInputError as e:
        die(str(e))
    if trainer.is_main:
        print(f"final checkpoint: {ckpt}")


if __name__ == "__main__":
    main()
