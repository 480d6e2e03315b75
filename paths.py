"""Model names -> local directories. Override the root with OURREC_MODEL_ROOT or one model with
OURREC_MODEL_<NAME> (e.g. OURREC_MODEL_QWEN2_5_3B_INSTRUCT=/models/qwen3b). A model family of the original
README (`--model_type qwen|gemma`) stands for its default model (MODEL_FAMILIES)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from foundation.errors import UserInputError

# What a saved model directory holds (kept here, torch-free, so scripts can check directories before heavy imports).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
HEADS_FILE = "heads.safetensors"  # our value head, next to the save_pretrained files
# A PEFT (LoRA) adapter directory: adapter_config.json names the base model, the weights are the adapter's only.
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")

MODEL_ROOT_ENV = "OURREC_MODEL_ROOT"
DEFAULT_MODEL_ROOT = "models_hub"

# Known names -> directory names below the model root (what `huggingface-cli download` would create).
MODEL_DIRS: dict[str, str] = {
    "Qwen2.5-0.5B-Instruct": "Qwen2.5-0.5B-Instruct",
    "Qwen2.5-1.5B-Instruct": "Qwen2.5-1.5B-Instruct",
    "Qwen2.5-3B-Instruct": "Qwen2.5-3B-Instruct",
    "Qwen2.5-7B-Instruct": "Qwen2.5-7B-Instruct",
    "Qwen2-1.5B-Instruct": "Qwen2-1.5B-Instruct",
    "gemma-2-2b-it": "gemma-2-2b-it",
}

# Model families the original README's --model_type names -> the model each stands for.
MODEL_FAMILIES: dict[str, str] = {"qwen": "Qwen2.5-3B-Instruct", "gemma": "gemma-2-2b-it"}


def _env_key(name: str) -> str:
    return "OURREC_MODEL_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def resolve_model_path(name_or_path: str, flag: str = "--model_name_or_path") -> str:
    """An existing directory is returned as is; a known name (optionally 'Qwen/…') maps to a local dir."""
    if os.path.isdir(name_or_path):
        return name_or_path
    family = MODEL_FAMILIES.get(name_or_path.strip().lower())
    if family is not None:
        try:
            return resolve_model_path(family, flag)
        except UserInputError as e:
            why = str(e).split(": ", 1)[-1]
            raise UserInputError(f"{flag} {name_or_path} (the {name_or_path.strip().lower()} family: {family}) {why}")
    short = name_or_path.split("/")[-1]
    if short in MODEL_DIRS or os.environ.get(_env_key(short)):
        candidate = os.environ.get(_env_key(short)) or str(
            Path(os.environ.get(MODEL_ROOT_ENV, DEFAULT_MODEL_ROOT)) / MODEL_DIRS[short])
        if os.path.isdir(candidate):
            return candidate
        raise UserInputError(f"{flag} {name_or_path}: maps to {candidate}, which does not exist; set {MODEL_ROOT_ENV} "
                             f"or {_env_key(short)} to the downloaded model directory")
    raise UserInputError(f"{flag} {name_or_path}: not a directory and not a known model name ({', '.join(MODEL_DIRS)}) "
                         f"or family ({', '.join(MODEL_FAMILIES)})")
