"""Train the R2ec ("RRec") baseline with RecPO (trainers/recpo_trainer.py), reproducing upstream R2ec by default.

Single process:    python compare_model/train_rrec.py --model_name_or_path MODEL --dataset_dir DATA --output_dir OUT
Several GPUs:      accelerate launch --num_processes N compare_model/train_rrec.py ...   (DDP)
Preemptible jobs:  add --resume_from auto (continues from the newest complete checkpoint, else starts fresh)
Writes {output_dir}/checkpoint-{step} at every evaluation, {output_dir}/final_checkpoint (the best model by
valid NDCG@10; evaluate it with compare_model/rrec.py --checkpoint_path OUT) and {output_dir}/metrics.jsonl.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from foundation.errors import exit_on_user_error
from trainers.grec_trainer import RRecTrainingArguments


def build_parser() -> argparse.ArgumentParser:
    from foundation.config import build_parser as config_parser

    return config_parser(RRecTrainingArguments, description=__doc__.split("\n\n")[0])


def parse_config(argv: Sequence[str] | None = None) -> RRecTrainingArguments:
    """Flags -> settings (validated later, inside the run, so errors are one line)."""
    from foundation.config import config_from_args

    return config_from_args(RRecTrainingArguments, build_parser().parse_args(argv), validate=False)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    with exit_on_user_error():  # one line from the main process, exit status 2 on every process
        from trainers.recpo_trainer import run_training

        return run_training(parse_config(argv))


if __name__ == "__main__":
    main()
