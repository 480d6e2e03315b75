"""trainers/configs/sft.py: sft_train/train_sft.py's settings; validate() passes the defaults and refuses a bad
setting in one line naming its flag (the model's LoRA settings included)."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest

from foundation.errors import UserInputError
from trainers.configs.sft import SFTConfig


def test_defaults_pass_and_each_bad_setting_names_its_flag():
    SFTConfig().validate()
    replace(SFTConfig(), max_steps=5, num_train_epochs=0).validate()  # --max_steps alone bounds the run
    replace(SFTConfig(), use_lora=True, merge_lora=True, warmup_ratio=0.0).validate()
    for change, message in (({"per_device_train_batch_size": 0}, "--per_device_train_batch_size 0: must be >= 1"),
                            ({"gradient_accumulation_steps": 0}, "--gradient_accumulation_steps 0: must be >= 1"),
                            ({"save_steps": 0}, "--save_steps 0: must be >= 1"),
                            ({"logging_steps": 0}, "--logging_steps 0: must be >= 1"),
                            ({"max_length": 1}, "--max_length 1: must be >= 2"),
                            ({"learning_rate": 0.0}, "--learning_rate 0.0: must be > 0"),
                            ({"warmup_ratio": 1.0}, "--warmup_ratio 1.0: must be in [0, 1)"),
                            ({"max_steps": -1, "num_train_epochs": 0}, "--max_steps <= 0 needs --num_train_epochs"),
                            ({"merge_lora": True}, "--merge_lora needs --use_lora"),
                            ({"use_lora": True, "lora_r": 0}, "--lora_r 0: must be >= 1")):
        with pytest.raises(UserInputError, match="^" + re.escape(message)):
            replace(SFTConfig(), **change).validate()
