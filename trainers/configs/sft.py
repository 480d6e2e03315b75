"""sft_train/train_sft.py's settings: SFTConfig, one flag per field (the model settings, LoRA included, are
foundation/config.ModelConfig's). Importable without torch: the script builds its parser from here and imports the
trainer (trainers/sft_trainer.py: torch, transformers) only after the flags are parsed."""
from __future__ import annotations

from dataclasses import dataclass

from foundation.config import G_LORA, G_PRECISION, SEED_MAX, ModelConfig, option, require


@dataclass
class SFTConfig(ModelConfig):
    """Every setting of an SFT run; sft_train/train_sft.py turns each field into a flag (the model settings, LoRA
    included, are foundation/config.ModelConfig's)."""

    model_name_or_path: str = option("Qwen2.5-3B-Instruct", "model dir or a name known to paths.py")
    data_file: str = option("sft_train/ourrec_sft_alpaca.json", "alpaca or sharegpt JSON from process_sft_data.py")
    output_dir: str = option("outputs/sft", "checkpoints, metrics.jsonl and the final model go here")
    num_train_epochs: float = option(2.0, "passes over --data_file")
    max_steps: int = option(-1, "overrides --num_train_epochs when > 0")
    learning_rate: float = option(1e-5, "peak AdamW learning rate")
    per_device_train_batch_size: int = option(2, "examples per forward per process")
    gradient_accumulation_steps: int = option(8, "forwards accumulated per optimizer step; effective batch = this "
                                                 "x per-device batch x processes")
    max_length: int = option(2048, "tokens per example (prompt cut from the left)")
    warmup_ratio: float = option(0.05, "fraction of the total optimizer steps used for linear warmup")
    lr_scheduler_type: str = option("cosine", "transformers scheduler name, e.g. cosine|linear|constant_with_warmup")
    bf16: bool = option(False, "bf16 mixed precision on GPU (autocast; master weights stay fp32)")
    seed: int = option(42, "seed of data order and initialisation", min=0, max=SEED_MAX)
    save_steps: int = option(500, "write {output_dir}/checkpoint-{step} every N optimizer steps")
    save_total_limit: int | None = option(None, "keep only the newest N checkpoints (default: keep all)", min=1)
    logging_steps: int = option(10, "append a metrics.jsonl row every N optimizer steps")
    resume_from_checkpoint: str | None = option(None, "checkpoint dir, 'last' (newest complete one in output_dir) "
                                                      "or 'auto' (that, else a fresh start)")
    overwrite_output_dir: bool = option(False, "train into a non-empty --output_dir without "
                                               "--resume_from_checkpoint anyway")
    device: str = option("auto", "auto|cpu|cuda[:N] (multi-GPU: launch with accelerate launch/torchrun)",
                         group=G_PRECISION)
    attn_implementation: str = option("auto", "auto|flash_attention_2|sdpa|flex_attention|eager; auto = "
                                              "flash_attention_2 when usable, else sdpa", group=G_PRECISION)
    lora_dropout: float = option(0.05, "LoRA dropout", group=G_LORA)
    merge_lora: bool = option(False, "save the final model with the adapters merged in (a full model)", group=G_LORA)

    def validate(self) -> None:
        self.validate_model()
        for flag in ("per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps"):
            require(getattr(self, flag) >= 1, f"--{flag} {getattr(self, flag)}: must be >= 1")
        require(self.max_length >= 2, f"--max_length {self.max_length}: must be >= 2")
        require(self.learning_rate > 0, f"--learning_rate {self.learning_rate}: must be > 0")
        require(0 <= self.warmup_ratio < 1, f"--warmup_ratio {self.warmup_ratio}: must be in [0, 1)")
        require(self.max_steps > 0 or self.num_train_epochs > 0, "--max_steps <= 0 needs --num_train_epochs > 0")
