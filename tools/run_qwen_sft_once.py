"""Answer ONE prompt with a (fine-tuned) model and print the response and its parsed Yes/No: a quick look at
what a checkpoint generates.

--resume_from loads a checkpoint instead of the base weights: a path, a subdirectory of --model_dir (e.g.
checkpoint-500), or 'last' (the newest checkpoint-N in --model_dir that holds model weights: train.py's and
train_sft.py's checkpoints alike); the tokenizer comes from the checkpoint if it has one, else from
--model_dir. Without --prompt/--prompt_file it asks a built-in example: the binary judge prompt of
prompters/prompts.py for a small made-up purchase history.

python tools/run_qwen_sft_once.py --model_dir /path/to/model --resume_from /path/to/checkpoint
python tools/run_qwen_sft_once.py --model_dir outputs/sft --resume_from last --dtype bf16
"""
from __future__ import annotations

import argparse
import os
import sys

from foundation.config import HelpFormatter, finite_float, positive_int, seed_int
from foundation.errors import UserInputError, exit_on_user_error

# The built-in example: a short history and one candidate, rendered with the judge's own templates.
EXAMPLE_HISTORY = [("Turbo Racing Quest", 5.0), ("Neon Racing Saga", 4.0), ("Wild Racing Rally", 5.0)]
EXAMPLE_CANDIDATE = "Golden Racing Saga"


def example_prompt() -> str:
    """The binary judge prompt (BINARY_PROMPT_TMPL_OTHER, direct answer) for EXAMPLE_HISTORY and EXAMPLE_CANDIDATE."""
    from prompters import prompts

    history = "\n".join(prompts.HISTORY_ITEM_TMPL.format(index=i, title=t, rating=f"{r:g}", text="")
                        for i, (t, r) in enumerate(EXAMPLE_HISTORY, 1))
    candidate = prompts.CANDIDATE_ITEM_TMPL.format(title=EXAMPLE_CANDIDATE, text="")
    return prompts.BINARY_PROMPT_TMPL_OTHER.format(history=history, candidate=candidate,
                                                   answer_instruction=prompts.DIRECT_ANSWER_INSTRUCTION)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model_dir", default="outputs/sft", help="base or SFT model dir (or a name known to paths.py)")
    p.add_argument("--resume_from", default=None,
                   help="checkpoint dir (absolute, or relative to --model_dir), or 'last' (the newest in --model_dir)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda[:N] (default: auto = cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="weight dtype; auto = bf16 on CUDA, fp32 on CPU (default: auto)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", help="the user message (default: the built-in example prompt)")
    g.add_argument("--prompt_file", help="file whose whole text is the user message")
    p.add_argument("--system", default=None, help="optional system message")
    p.add_argument("--max_new_tokens", type=positive_int, default=256,
                   help="response length limit in tokens (default: 256)")
    p.add_argument("--temperature", type=finite_float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=seed_int, default=42, help="sampling seed, used when --temperature > 0 (default: 42)")
    args = p.parse_args(argv)
    with exit_on_user_error():
        from models.local_inference import LocalGenerator
        from paths import resolve_model_path
        from prompters.answer_parsing import parse_yes_no

        if args.prompt_file:
            if not os.path.isfile(args.prompt_file):
                raise UserInputError(f"--prompt_file {args.prompt_file}: file not found")
            with open(args.prompt_file, encoding="utf-8") as f:
                prompt = f.read().strip()
        elif args.prompt is not None:
            prompt = args.prompt
        else:
            prompt = example_prompt()
            print(f"(no --prompt given: the built-in example)\n{prompt}\n---", file=sys.stderr)
        if not prompt.strip():
            raise UserInputError("the prompt is empty")
        if args.resume_from:
            from models.abstract_models import is_adapter_dir
            from paths import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHT_FILES, WEIGHT_FILES
            from foundation.checkpoints import resolve_checkpoint

            base = resolve_model_path(args.model_dir, flag="--model_dir")
            spec = args.resume_from
            if spec != "last" and not os.path.isdir(spec):
                spec = os.path.join(base, spec)  # relative to --model_dir
                if not os.path.isdir(spec):
                    raise UserInputError(f"--resume_from {args.resume_from}: not a directory (nor one inside {base})")
            # any checkpoint-N with a model (full weights or a LoRA adapter); train.py's need their COMPLETE marker
            ckpt = str(resolve_checkpoint(spec, base, required=[("config.json", ADAPTER_CONFIG_FILE),
                                                                 tuple(WEIGHT_FILES) + tuple(ADAPTER_WEIGHT_FILES)],
                                          where=f"--model_dir {base}"))
            has_tok = any(os.path.isfile(os.path.join(ckpt, f)) for f in ("tokenizer.json", "tokenizer_config.json"))
            gen = LocalGenerator(ckpt, args.device, args.dtype, tokenizer_path=None if has_tok else base,
                                 flag="--resume_from", base_model=base if is_adapter_dir(ckpt) else None)
            print(f"(weights from {ckpt})", file=sys.stderr)
        else:
            gen = LocalGenerator(args.model_dir, args.device, args.dtype, flag="--model_dir")
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": prompt}]
        out = gen.generate([msgs], args.max_new_tokens, args.temperature, seed=args.seed)[0]
    print(out)
    print(f"[parsed answer: {parse_yes_no(out)}]")


if __name__ == "__main__":
    main()
