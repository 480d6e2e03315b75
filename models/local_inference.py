"""The one implementation of "run a local causal LM over a prompt JSONL" (tools/run_qwen_*.py).

Input rows need an `id` and either `messages` (chat turns) or `prompt` (the user message); an optional
`label` is copied through (generate_prompts.py writes all three). Generation is batched with left padding
through the tokenizer's chat template (add_generation_prompt); temperature 0 is greedy. Output rows
{id, prompt, label, response, answer (parsed Yes/No or null), model} are appended to the output JSONL
batch by batch (fsynced); a rerun checks the file is an answer file (else refuses it untouched), repairs a
partial last line, skips ids already written and continues, so a killed run never duplicates or loses rows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from models.abstract_models import (
    attention_softcap,
    load_causal_lm,
    load_tokenizer,
    resolve_attn_implementation,
    resolve_device,
    resolve_dtype,
)
from prompters.rendering import generation_prompt
from foundation.config import HelpFormatter, finite_float, positive_int, seed_int
from foundation.errors import SettingError, UserInputError


class LocalGenerator:
    """A causal LM + tokenizer for batched chat generation (left padding)."""

    def __init__(self, model_path: str, device: str | None = "auto", dtype: str | None = "auto",
                 attn_implementation: str | None = "auto", tokenizer_path: str | None = None,
                 trust_remote_code: bool = False, flag: str = "--model_path", base_model: str | None = None) -> None:
        """model_path: a full model or a PEFT adapter directory (merged into its base for inference; the base is
        base_model if given, else the adapter's recorded base_model_name_or_path)."""
        from models.abstract_models import check_model_dir

        self.path = str(check_model_dir(model_path, flag=flag) if tokenizer_path is None else
                        _check_config(model_path, flag))
        tok_path = str(check_model_dir(tokenizer_path, flag=flag)) if tokenizer_path else self.path
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        attn = resolve_attn_implementation(attn_implementation, self.device, self.dtype,
                                           softcap=attention_softcap(self.path, base_model))
        self.tokenizer = load_tokenizer(tok_path, trust_remote_code)
        self.tokenizer.padding_side = "left"  # generation continues from the last real token of every row
        self.model = load_causal_lm(self.path, self.device, self.dtype, attn, trust_remote_code, base_model=base_model,
                                    merge_adapter=True, flag=flag).eval()

    def chat_text(self, messages: Sequence[dict]) -> str:
        return generation_prompt(self.tokenizer, list(messages))

    @torch.no_grad()
    def generate(self, batch_messages: Sequence[Sequence[dict]], max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> list[str]:
        """One response per conversation; temperature 0 = greedy, else sampling (seeded by `seed`)."""
        texts = [self.chat_text(m) for m in batch_messages]
        # Token ids as the judge builds them: template text encoded without extra special tokens.
        enc = self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(self.device)
        if seed is not None:
            torch.manual_seed(seed)
        sample = temperature > 0
        out = self.model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature if sample else None,
            top_p=top_p if sample else None, top_k=None, pad_token_id=self.tokenizer.pad_token_id,
        )
        gen = out[:, enc["input_ids"].shape[1]:]
        return [self.tokenizer.decode(g, skip_special_tokens=True).strip() for g in gen]


def _check_config(path: str, flag: str) -> Path:
    """A model or PEFT adapter directory whose tokenizer comes from elsewhere."""
    from models.abstract_models import check_model_dir

    return check_model_dir(path, flag=flag, need_tokenizer=False)


def row_messages(row: dict) -> list[dict]:
    if row.get("messages"):
        return row["messages"]
    if isinstance(row.get("prompt"), str):
        return [{"role": "user", "content": row["prompt"]}]
    raise UserInputError(f"prompt row id {row.get('id')}: needs `messages` or `prompt`")


def done_ids(output_file: str | Path) -> set[int]:
    """Ids already in the output. The file is validated as an answer file first; only then is a partial last
    line left by a kill cut off."""
    from foundation.files import read_answer_rows, repair_jsonl_tail

    rows, partial_tail = read_answer_rows(output_file, content_key="response", flag="--output_file")
    if partial_tail:
        repair_jsonl_tail(output_file)
    try:
        return {int(r["id"]) for r in rows}
    except (TypeError, ValueError):
        raise UserInputError(f"--output_file {output_file}: has a row whose id is not an integer; use another file")


def run_prompt_file(model_path: str, input_file: str, output_file: str, device: str | None = "auto",
                    dtype: str | None = "auto", batch_size: int = 8, max_new_tokens: int = 256,
                    temperature: float = 0.0, top_p: float = 1.0, prompt_id_min: int | None = None,
                    prompt_id_max: int | None = None, seed: int = 42, attn_implementation: str | None = "auto",
                    generator: LocalGenerator | None = None, show_progress: bool = True,
                    base_model: str | None = None) -> dict:
    """Generate responses for prompt ids in [prompt_id_min, prompt_id_max] not yet in output_file.

    Returns {"total", "skipped_done", "written"}. Sampling is seeded per batch by (seed + first id), so a
    resumed run draws the same as an uninterrupted one when batches line up.
    """
    from tqdm import tqdm

    from prompters.answer_parsing import parse_yes_no
    from foundation.files import append_jsonl, read_jsonl

    if batch_size < 1:
        raise SettingError("batch_size", batch_size, "must be >= 1")
    if max_new_tokens < 1:
        raise SettingError("max_new_tokens", max_new_tokens, "must be >= 1")
    if temperature < 0:
        raise SettingError("temperature", temperature, "must be >= 0")
    if not 0 < top_p <= 1:
        raise SettingError("top_p", top_p, "must be in (0, 1]")
    rows = read_jsonl(input_file, flag="--input_file")
    for r in rows:
        if "id" not in r:
            raise UserInputError(f"--input_file {input_file}: a row has no `id` field")
    lo = prompt_id_min if prompt_id_min is not None else -(1 << 62)
    hi = prompt_id_max if prompt_id_max is not None else (1 << 62)
    selected = [r for r in rows if lo <= int(r["id"]) <= hi]
    done = done_ids(output_file)
    seen: set[int] = set()
    todo = []
    for r in selected:  # duplicate ids in the input are answered once
        i = int(r["id"])
        if i not in done and i not in seen:
            seen.add(i)
            todo.append(r)
    summary = {"total": len(selected), "skipped_done": len(selected) - len(todo), "written": 0}
    if not todo:
        return summary
    gen = generator or LocalGenerator(model_path, device, dtype, attn_implementation, base_model=base_model)
    bar = tqdm(total=len(todo), desc="generate", unit="prompt", disable=not show_progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        msgs = [row_messages(r) for r in chunk]
        outs = gen.generate(msgs, max_new_tokens, temperature, top_p, seed=seed + int(chunk[0]["id"]))
        recs = []
        for r, m, o in zip(chunk, msgs, outs):
            user = next((t["content"] for t in reversed(m) if t.get("role") == "user"), "")
            recs.append({"id": int(r["id"]), "prompt": r.get("prompt", user), "label": r.get("label"),
                         "response": o, "answer": parse_yes_no(o), "model": gen.path})
        append_jsonl(output_file, recs)
        summary["written"] += len(recs)
        bar.update(len(recs))
    bar.close()
    return summary


def inference_cli(argv: list[str] | None, description: str, model_path: str, input_file: str, output_file: str,
                  max_new_tokens: int = 256, batch_size: int = 8) -> dict:
    """The argparse front end shared by tools/run_qwen_baseline.py and tools/run_qwen_sft.py (they differ only in
    defaults): parse flags, run run_prompt_file, print a summary; bad input exits with status 2."""
    import argparse

    from foundation.errors import exit_on_user_error

    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("--model_path", default=model_path, help="model dir or a name known to paths.py")
    p.add_argument("--input_file", default=input_file, help="prompt JSONL (generate_prompts.py output)")
    p.add_argument("--output_file", default=output_file, help="response JSONL; appended to and resumed")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda[:N]")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="weight dtype; auto = bf16 on CUDA (fp16 without bf16 support), fp32 on CPU (default: auto)")
    p.add_argument("--batch_size", type=positive_int, default=batch_size,
                   help=f"prompts generated per forward batch (default: {batch_size})")
    p.add_argument("--max_new_tokens", type=positive_int, default=max_new_tokens,
                   help=f"response length limit in tokens (default: {max_new_tokens})")
    p.add_argument("--temperature", type=finite_float, default=0.0, help="0 = greedy")
    p.add_argument("--top_p", type=finite_float, default=1.0,
                   help="nucleus-sampling mass; only used when --temperature > 0 (default: 1.0)")
    p.add_argument("--prompt_id_min", type=int, default=None, help="first prompt id to answer (inclusive)")
    p.add_argument("--prompt_id_max", type=int, default=None, help="last prompt id to answer (inclusive)")
    p.add_argument("--seed", type=seed_int, default=42,
                   help="sampling seed; each batch is seeded with seed + its first prompt id (default: 42)")
    p.add_argument("--attn_implementation", default="auto",
                   help="auto|flash_attention_2|sdpa|flex_attention|eager; auto = flash_attention_2 when usable, "
                        "else sdpa (default: auto)")
    p.add_argument("--base_model_name_or_path", default=None,
                   help="base model of a LoRA adapter --model_path (default: the base the adapter records)")
    args = p.parse_args(argv)
    with exit_on_user_error():
        s = run_prompt_file(args.model_path, args.input_file, args.output_file, args.device, args.dtype,
                            args.batch_size, args.max_new_tokens, args.temperature, args.top_p, args.prompt_id_min,
                            args.prompt_id_max, args.seed, args.attn_implementation,
                            base_model=args.base_model_name_or_path)
    print(f"{s['total']} prompts in range: {s['skipped_done']} already done, {s['written']} written to "
          f"{args.output_file}")
    return s
