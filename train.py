"""PL-PPO training of the binary judge (docs/training.md).

Single process:    python train.py --dataset_path DATA --model_name_or_path MODEL --output_dir OUT
Several GPUs:      accelerate launch --num_processes N train.py ...        (DDP; FSDP/ZeRO: --config_file
                   configs/accelerate/<fsdp|zero2|zero3>.yaml); torchrun --nproc_per_node N train.py ... works too
Preemptible jobs:  python train.py ... --resume_from auto   (continues from the newest complete checkpoint)
"""
from __future__ import annotations

from foundation.errors import exit_on_user_error
from trainers.configs.ppo import build_parser, parse_config  # noqa: F401 (build_parser: --help tests); torch-free


def main(argv: list[str] | None = None) -> dict | None:
    with exit_on_user_error():  # one line from the main process, exit status 2 on every process
        cfg = parse_config(argv)
        from trainers.ppo_trainer import run_training  # torch, transformers: after the flags are parsed

        return run_training(cfg)


if __name__ == "__main__":
    main()
