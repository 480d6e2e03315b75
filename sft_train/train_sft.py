"""Supervised fine-tuning of the judge on the filtered SFT data, without LLaMA-Factory (transformers' Trainer).

--data_file is the alpaca or sharegpt JSON written by process_sft_data.py. Each example is the user turn
rendered with the tokenizer's chat template (add_generation_prompt, exactly the token ids the judge sees)
followed by the response and the eos token; the loss covers the response tokens only (labels -100 on the
prompt). Checkpoints go to {output_dir}/checkpoint-{step} every --save_steps; the final model and tokenizer
are saved with save_pretrained in --output_dir, which train.py/test.py accept as --model_name_or_path.
Per-step logs are appended to {output_dir}/metrics.jsonl.

python sft_train/train_sft.py --model_name_or_path models_hub/Qwen2.5-3B-Instruct \
    --data_file sft_train/ourrec_sft_alpaca.json --output_dir outputs/sft_qwen --num_train_epochs 2 \
    --bf16 --gradient_checkpointing
"""
from __future__ import annotations

import argparse
import json
import os
import time

from trainers.foundation.errors import UserInputError, die


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", default="Qwen2.5-3B-Instruct", help="model dir or a name known to paths.py")
    p.add_argument("--data_file", default="sft_train/ourrec_sft_alpaca.json",
                   help="alpaca or sharegpt JSON from process_sft_data.py (default: sft_train/ourrec_sft_alpaca.json)")
    p.add_argument("--output_dir", default="outputs/sft",
                   help="checkpoints, metrics.jsonl and the final model go here (default: outputs/sft)")
    p.add_argument("--num_train_epochs", type=float, default=2.0, help="passes over --data_file (default: 2.0)")
    p.add_argument("--max_steps", type=int, default=-1, help="overrides --num_train_epochs when > 0")
    p.add_argument("--learning_rate", type=float, default=1e-5, help="peak AdamW learning rate (default: 1e-5)")
    p.add_argument("--per_device_train_batch_size", type=int, default=2,
                   help="examples per forward per process (default: 2)")
    p.add_argument("--gradient_accumulation_steps", type=int, default=8,
                   help="forwards accumulated per optimizer step; effective batch = this x per-device batch x "
                        "processes (default: 8)")
    p.add_argument("--max_length", type=int, default=2048, help="tokens per example (prompt cut from the left)")
    p.add_argument("--warmup_ratio", type=float, default=0.05,
                   help="fraction of the total optimizer steps used for linear warmup (default: 0.05)")
    p.add_argument("--lr_scheduler_type", default="cosine",
                   help="transformers scheduler name, e.g. cosine|linear|constant_with_warmup (default: cosine)")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute activations in backward: less memory, more compute")
    p.add_argument("--seed", type=int, default=42, help="seed of data order and initialisation (default: 42)")
    p.add_argument("--save_steps", type=int, default=500,
                   help="write {output_dir}/checkpoint-{step} every N optimizer steps (default: 500)")
    p.add_argument("--save_total_limit", type=int, default=None,
                   help="keep only the newest N checkpoints (default: keep all)")
    p.add_argument("--logging_steps", type=int, default=10,
                   help="append a metrics.jsonl row every N optimizer steps (default: 10)")
    p.add_argument("--resume_from_checkpoint", default=None, help="checkpoint dir, or 'last' (newest in output_dir)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda[:N] (multi-GPU: launch with torchrun/accelerate)")
    p.add_argument("--attn_implementation", default="auto",
                   help="auto|flash_attention_2|sdpa|flex_attention|eager; auto = flash_attention_2 when usable, "
                        "else sdpa (default: auto)")
    p.add_argument("--trust_remote_code", action="store_true",
                   help="allow custom model/tokenizer code shipped with the checkpoint")
    p.add_argument("--overwrite_output_dir", action="store_true",
                   help="train into a non-empty --output_dir without --resume_from_checkpoint anyway")
    return p


def load_records(path: str) -> list[dict]:
    """The JSON list written by process_sft_data.py (a JSONL file of records is accepted too)."""
    from trainers.data.sft import validate_sft_records
    from trainers.foundation.files import read_jsonl

    if not os.path.isfile(path):
        raise UserInputError(f"--data_file {path}: file not found; run sft_train/process_sft_data.py first")
    try:
        text = open(path, encoding="utf-8").read()
    except UnicodeDecodeError as e:
        raise UserInputError(f"--data_file {path}: not UTF-8 text ({e})")
    if text.lstrip().startswith("["):
        try:
            recs = json.loads(text)
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


def train(args: argparse.Namespace) -> str:
    """Run SFT; return the output directory holding the final model and tokenizer."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from models.abstract_models import (
        check_model_dir,
        load_causal_lm,
        load_tokenizer,
        resolve_attn_implementation,
        resolve_device,
    )
    from trainers.data.sft import SFTCollator, SFTDataset
    from trainers.foundation.files import append_jsonl

    path = check_model_dir(args.model_name_or_path)
    if (os.path.isdir(args.output_dir) and os.listdir(args.output_dir) and not args.resume_from_checkpoint
            and not args.overwrite_output_dir):
        raise UserInputError(f"--output_dir {args.output_dir}: exists and is not empty; pass "
                             "--resume_from_checkpoint last to continue, or --overwrite_output_dir to start afresh")
    records = load_records(args.data_file)
    device = resolve_device(args.device)
    if args.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserInputError("--bf16: this GPU does not support bf16")
    tok = load_tokenizer(path, args.trust_remote_code)
    data = SFTDataset(tok, records, args.max_length)
    # Weights load in fp32: the Trainer's bf16 flag is mixed precision (autocast), which keeps fp32 master weights.
    model = load_causal_lm(path, torch.device("cpu"), torch.float32,
                           resolve_attn_implementation(args.attn_implementation, device, torch.bfloat16 if args.bf16
                                                       else torch.float32), args.trust_remote_code)
    resume = args.resume_from_checkpoint
    if resume == "last":
        resume = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        if resume is None:
            raise UserInputError(f"--resume_from_checkpoint last: no checkpoint-* in {args.output_dir}")
    elif resume and not os.path.isdir(resume):
        raise UserInputError(f"--resume_from_checkpoint {resume}: directory not found")

    # transformers >= 5.x renamed gradient_checkpointing to activation_checkpointing (old name deprecated).
    import dataclasses

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
            if state.is_world_process_zero and logs:
                append_jsonl(metrics_path, [{"step": state.global_step, "epoch": state.epoch,
                                             "wall_time": round(time.time() - t0, 3), **logs}])

    # remove_unused_columns=False: the collator reads only input_ids/labels, so prompt_len never reaches the model.
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=SFTCollator(tok.pad_token_id),
                      processing_class=tok, callbacks=[MetricsJsonl()])
    n_resp = sum(sum(1 for l in it["labels"] if l != -100) for it in data.items)
    print(f"SFT on {len(data)} examples ({n_resp} response tokens) from {args.data_file}; model {path}; "
          f"{total} optimizer steps", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        trainer.save_model(args.output_dir)  # model + tokenizer (processing_class) via save_pretrained
        tok.save_pretrained(args.output_dir)
        with open(os.path.join(args.output_dir, "sft_args.json"), "w", encoding="utf-8") as f:
            json.dump(vars(args), f, indent=1)
    return args.output_dir


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        out = train(args)
    except UserInputError as e:
        die(str(e))
    print(f"saved SFT model to {out} (use it as --model_name_or_path for train.py)")


if __name__ == "__main__":
    main()
