"""Supervised fine-tuning of the judge on the filtered SFT data, without LLaMA-Factory (trainers/sft_trainer.py).

--data_file is the alpaca or sharegpt JSON written by process_sft_data.py. The final model (or LoRA adapter)
and tokenizer are saved in --output_dir, which train.py/test.py accept as --model_name_or_path.

python sft_train/train_sft.py --model_name_or_path models_hub/Qwen2.5-3B-Instruct \
    --data_file sft_train/ourrec_sft_alpaca.json --output_dir outputs/sft_qwen --num_train_epochs 2 \
    --bf16 --gradient_checkpointing                                   # add --use_lora for adapters
accelerate launch --num_processes 4 sft_train/train_sft.py ...      # several GPUs (DDP)
"""
from __future__ import annotations

import argparse

from foundation.config import build_parser as config_parser
from foundation.config import config_from_args
from foundation.errors import exit_on_user_error
from trainers.configs.sft import SFTConfig  # torch-free: --help never imports the trainer


def build_parser() -> argparse.ArgumentParser:
    return config_parser(SFTConfig, description=__doc__)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error():
        cfg = config_from_args(SFTConfig, args)
        from trainers.sft_trainer import train_sft  # torch, transformers: after the flags are parsed

        out = train_sft(cfg)
    print(f"saved SFT model to {out} (use it as --model_name_or_path for train.py)")


if __name__ == "__main__":
    main()
