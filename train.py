"""PL-PPO training of the binary LLM judge (DESIGN.md section 5).

Single process:   python train.py --dataset_path DATA --model_name_or_path MODEL --output_dir OUT
Data parallel:    torchrun --nproc_per_node N train.py ...   (gloo on CPU, nccl on GPU)
Resume:           python train.py ... --resume_from last
"""
from __future__ import annotations

from trainers.foundation.errors import UserInputError, die


def main(argv: list[str] | None = None) -> None:
    from trainers.ppo_trainer import build_arg_parser, run_training

    args = build_arg_parser().parse_args(argv)
    try:
        run_training(args)
    except UserInputError as e:
        die(str(e))


if __name__ == "__main__":
    main()
