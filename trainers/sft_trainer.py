"""Supervised fine-tuning of the judge on the filtered SFT data, without LLaMA-Factory (transformers' Trainer,
which runs on accelerate: DDP under accelerate launch/torchrun, --bf16 = bf16 autocast over fp32 master weights).

Each example is the user turn rendered with the tokenizer's chat template (add_generation_prompt, exactly the
token ids the judge sees) followed by the response and the eos token; the loss covers the response tokens only
(labels -100 on the prompt). Checkpoints go to {output_dir}/checkpoint-{step} every --save_steps; the final
model (or LoRA adapter with --use_lora; merged with --merge_lora) and tokenizer are saved with save_pretrained in
--output_dir, which train.py/test.py accept as --model_name_or_path. Per-step logs: {output_dir}/metrics.jsonl.

SFT does not run on trainers/base_trainer.py's loop: HF's Trainer is its loop (data order and sampler, gradient
accumulation with its loss normalisation, the schedule, HF's checkpoint-N layout that --resume_from_checkpoint
continues), and replacing it would change every SFT run's numbers and checkpoints. It shares what the RL trainers
share: the model and LoRA settings (foundation/config.ModelConfig; SFTConfig lives in trainers/configs/sft.py, torch-
free), the output-dir check and checkpoint resolver (foundation/checkpoints), the distribution line, and
metrics.jsonl written through foundation.distributed.log_metrics with the shared keys (step, lr, wall_time_s).
"""
from __future__ import annotations

import dataclasses
import os
import time

import torch

from models.abstract_models import (
    LoraSettings,
    apply_lora,
    attention_softcap,
    check_model_dir,
    load_causal_lm,
    load_tokenizer,
    resolve_attn_implementation,
    resolve_device,
    save_lm,
)
from trainers.base_trainer import LR, STEP, WALL_TIME
from trainers.configs.sft import SFTConfig  # noqa: F401 (re-exported: its home is the torch-free config module)
from trainers.data.sft import SFTCollator, SFTDataset, validate_sft_records
from foundation.checkpoints import check_output_dir, resolve_checkpoint
from foundation.distributed import (describe_distribution, distribution_line, log_metrics,
                                    refuse_unavailable_distribution)
from foundation.errors import UserInputError
from foundation.files import atomic_write_json, loads_json, read_jsonl, writing


def load_records(path: str) -> list[dict]:
    """The JSON list written by process_sft_data.py (a JSONL file of records is accepted too)."""
    if not os.path.isfile(path):
        raise UserInputError(f"--data_file {path}: file not found; run sft_train/process_sft_data.py first")
    try:
        text = open(path, encoding="utf-8").read()
    except UnicodeDecodeError as e:
        raise UserInputError(f"--data_file {path}: not UTF-8 text ({e})")
    if text.lstrip().startswith("["):
        try:
            recs = loads_json(text)
        except ValueError as e:
            raise UserInputError(f"--data_file {path}: invalid JSON ({e})")
    else:
        recs = read_jsonl(path, flag="--data_file")
    if not isinstance(recs, list):
        raise UserInputError(f"--data_file {path}: not a JSON list of SFT records")
    if not recs:
        raise UserInputError(f"--data_file {path}: no records (did process_sft_data.py keep any?)")
    validate_sft_records(recs, f"--data_file {path}")
    return recs


def metrics_record(step: int, epoch: float | None, seconds: float, logs: dict) -> dict:
    """One of HF Trainer's log rows as a metrics.jsonl record with the keys every trainer shares
    (trainers/base_trainer.py): step, wall_time_s (seconds since this invocation started training), lr (HF's
    learning_rate); HF's other keys (loss, grad_norm, epoch, and the final train_* summary) as HF names them."""
    rec = {STEP: step, "epoch": epoch, WALL_TIME: round(seconds, 3)}
    rec.update({LR if k == "learning_rate" else k: v for k, v in logs.items()})
    return rec


def train_sft(cfg: "SFTConfig") -> str:
    """Run SFT; return the output directory holding the final model (or LoRA adapter) and tokenizer."""
    args = cfg
    # here, not at the top: transformers takes seconds to import, and `train_sft.py --help` should not wait for it
    from transformers import Trainer, TrainerCallback, TrainingArguments

    path = check_model_dir(args.model_name_or_path)
    check_output_dir(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir,
                     resume_hint="--resume_from_checkpoint last")
    records = load_records(args.data_file)
    device = resolve_device(args.device)
    # transformers' Trainer would run an FSDP/DeepSpeed launch as plain DDP on a CPU: refused instead
    refuse_unavailable_distribution(device.type, fsdp_on_cpu=False)
    if args.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserInputError("--bf16: this GPU does not support bf16")
    tok = load_tokenizer(path, args.trust_remote_code)
    data = SFTDataset(tok, records, args.max_length)
    # Weights load in fp32: the Trainer's bf16 flag is mixed precision (autocast), which keeps fp32 master weights.
    model = load_causal_lm(path, torch.device("cpu"), torch.float32,
                           resolve_attn_implementation(args.attn_implementation, device, torch.bfloat16 if args.bf16
                                                       else torch.float32, softcap=attention_softcap(path)),
                           args.trust_remote_code)
    if args.use_lora:
        model = apply_lora(model, LoraSettings.from_flags(args.lora_r, args.lora_alpha, args.lora_dropout,
                                                          args.lora_target_modules))
    # HF Trainer's checkpoint-N directories, found by the one resolver (auto | last | PATH)
    resume = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir, flag="--resume_from_checkpoint",
                                where=f"--output_dir {args.output_dir}")
    resume = str(resume) if resume is not None else None

    # transformers >= 5.x renamed gradient_checkpointing to activation_checkpointing (old name deprecated).
    gc_name = ("activation_checkpointing" if "activation_checkpointing" in
               {f.name for f in dataclasses.fields(TrainingArguments)} else "gradient_checkpointing")
    ckpt_kwargs = {gc_name: args.gradient_checkpointing}
    if args.gradient_checkpointing:
        ckpt_kwargs[f"{gc_name}_kwargs"] = {"use_reentrant": False}
    targs = TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.num_train_epochs, max_steps=args.max_steps,
        learning_rate=args.learning_rate, per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, warmup_steps=0, lr_scheduler_type=args.lr_scheduler_type,
        bf16=args.bf16, **ckpt_kwargs,
        seed=args.seed, save_strategy="steps", save_steps=args.save_steps, save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps, logging_first_step=True, report_to="none", remove_unused_columns=False,
        use_cpu=device.type == "cpu", dataloader_num_workers=0,
    )
    # warmup as a ratio of the real step count (warmup_ratio was removed from recent TrainingArguments).
    steps_per_epoch = max(1, -(-len(data) // (args.per_device_train_batch_size * args.gradient_accumulation_steps
                                               * max(1, targs.world_size))))
    total = args.max_steps if args.max_steps > 0 else int(steps_per_epoch * args.num_train_epochs)
    targs.warmup_steps = int(args.warmup_ratio * total)
    metrics_path = os.path.join(args.output_dir, "metrics.jsonl")
    t0 = time.time()

    class MetricsJsonl(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs:  # written by the main process (foundation.distributed.log_metrics, the trainers' one path)
                log_metrics(trainer.accelerator, metrics_path,
                            metrics_record(state.global_step, state.epoch, time.time() - t0, logs), tracking=False)

    distribution: dict = {}

    class Distribution(TrainerCallback):
        """The one line saying what the run got, once the Trainer has prepared the model."""

        def on_train_begin(self, a, state, control, **kw):
            distribution.update(describe_distribution(trainer.accelerator, trainer.model_wrapped))
            if state.is_world_process_zero:
                print(distribution_line(distribution), flush=True)

    # remove_unused_columns=False: the collator reads only input_ids/labels, so prompt_len never reaches the model.
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=SFTCollator(tok.pad_token_id),
                      processing_class=tok, callbacks=[MetricsJsonl(), Distribution()])
    n_resp = sum(sum(1 for l in it["labels"] if l != -100) for it in data.items)
    print(f"SFT on {len(data)} examples ({n_resp} response tokens) from {args.data_file}; model {path}; "
          f"{total} optimizer steps", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        # the model (or the LoRA adapter, or with --merge_lora the merged model) + tokenizer via save_pretrained;
        # a refused write (disk full, ...) is one line naming the file (the checkpoints written so far stay)
        with writing(args.output_dir):
            save_lm(trainer.accelerator.unwrap_model(trainer.model), args.output_dir, merge_adapter=args.merge_lora)
            tok.save_pretrained(args.output_dir)
        atomic_write_json(os.path.join(args.output_dir, "sft_args.json"), {**cfg.to_dict(), "distribution": distribution})
    return args.output_dir
