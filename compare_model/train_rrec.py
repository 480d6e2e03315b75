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
from trainers.configs import rrec as config  # torch-free: --help never imports the trainer
from trainers.configs.rrec import RRecTrainingArguments


def build_parser() -> argparse.ArgumentParser:
    return config.build_parser(description=__doc__.split("\n\n")[0])


def parse_config(argv: Sequence[str] | None = None) -> RRecTrainingArguments:
    """Flags -> settings (validated later, inside the run, so errors are one line)."""
    return config.parse_config(argv, description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    with exit_on_user_error():  # one line from the main process, exit status 2 on every process
        cfg = parse_config(argv)
        from trainers.recpo_trainer import run_training  # torch, transformers: after the flags are parsed

        return run_training(cfg)


if __name__ == "__main__":
    main()
