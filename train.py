"""PL-PPO training of the binary judge (DESIGN.md section 5).

Single process:    python train.py --dataset_path DATA --model_name_or_path MODEL --output_dir OUT
Several GPUs:      accelerate launch --num_processes N train.py ...        (DDP; FSDP/ZeRO: --config_file
                   configs/accelerate/<fsdp|zero2|zero3>.yaml); torchrun --nproc_per_node N train.py ... works too
Preemptible jobs:  python train.py ... --resume_from auto   (continues from the newest complete checkpoint)
"""
from __future__ import annotations

import os

from trainers.foundation.errors import UserInputError, die
from trainers.ppo_trainer import build_parser, parse_config, run_training  # noqa: F401 (build_parser: --help tests)


def main(argv: list[str] | None = None) -> dict | None:
    try:
        return run_training(parse_config(argv))
    except UserInputError as e:
        if int(os.environ.get("RANK", "0")) == 0:
            die(str(e))
        raise SystemExit(2)  # the other processes stop quietly: one line, from the main one


if __name__ == "__main__":
    main()
