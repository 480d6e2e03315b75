"""Shared model plumbing: device/dtype/attention choice and safe loading of HF checkpoints."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import torch

from paths import HEADS_FILE, TOKENIZER_FILES  # noqa: F401  (re-exported)
from trainers.foundation.errors import UserInputError


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """auto -> bf16 on CUDA (fp16 if the GPU lacks bf16), fp32 on CPU."""
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype in (None, "", "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in table:
        raise UserInputError(f"--dtype {dtype!r}: must be auto|bf16|fp16|fp32")
    return table[dtype]


def flash_attn_usable(device: torch.device, dtype: torch.dtype) -> bool:
    return (device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
            and importlib.util.find_spec("flash_attn") is not None)


def resolve_attn_implementation(requested: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """auto -> flash_attention_2 when installed and usable, else sdpa. Explicit values are checked."""
    if requested in (None, "", "auto"):
        return "flash_attention_2" if flash_attn_usable(device, dtype) else "sdpa"
    if requested == "flash_attention_2" and not flash_attn_usable(device, dtype):
        raise UserInputError("--attn_implementation flash_attention_2 needs CUDA, bf16/fp16 and the flash-attn package "
                             "(pip install -r requirements-gpu.txt); use sdpa")
    if requested not in ("flash_attention_2", "sdpa", "eager", "flex_attention"):
        raise UserInputError(f"--attn_implementation {requested!r}: must be auto|flash_attention_2|sdpa|flex_attention|eager")
    return requested


def check_model_dir(path: str | Path, flag: str = "--model_name_or_path") -> Path:
    """A local HF checkpoint directory with config and tokenizer files, or a clear error."""
    from paths import resolve_model_path

    p = Path(resolve_model_path(str(path), flag=flag))
    if not (p / "config.json").is_file():
        raise UserInputError(f"{flag} {path}: no config.json in {p}; not a saved transformers model")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise UserInputError(f"{flag} {path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {p}; "
                             "copy the base model's tokenizer into it")
    return p


def load_tokenizer(path: str | Path, trust_remote_code: bool = False, flag: str = "--model_name_or_path"):
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_dir() and not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise UserInputError(f"{flag} {path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {p}; "
                             "copy the base model's tokenizer into it")
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str | Path, device: torch.device, dtype: torch.dtype, attn_implementation: str,
                   trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
    )
    return model.to(device)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask: real tokens keep positions 0..len-1 (for forward passes)."""
    L = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask [N, L] (L = longest sequence): what `generate` needs, so that new
    tokens start at column L for every row."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, L - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[i, L - len(s):] = 1
    return ids, mask


class AbstractRecModel(torch.nn.Module):
    """Base of our recommenders: a causal LM backbone plus task heads, saved as a HF directory + heads file."""

    HEADS_FILE = HEADS_FILE

    def backbone(self):
        """The transformer body returning hidden states (no LM head)."""
        return self.lm.get_decoder() if hasattr(self.lm, "get_decoder") else self.lm.base_model

    def lm_head_weight(self) -> torch.Tensor:
        return self.lm.get_output_embeddings().weight

    def enable_gradient_checkpointing(self) -> None:
        # transformers 5.x renamed it (the old name warns); 4.x only has gradient_checkpointing_enable.
        if hasattr(self.lm, "activation_checkpointing_enable"):
            self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lm.config.use_cache = False
