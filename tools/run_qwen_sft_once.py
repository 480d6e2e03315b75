"""Answer ONE prompt with a (fine-tuned) model and print the response and its parsed Yes/No.

--resume_from loads a checkpoint instead of the base weights: a path, or a subdirectory of --model_dir
(e.g. checkpoint-500); the tokenizer comes from the checkpoint if it has one, else from --model_dir.

python tools/run_qwen_sft_once.py --model_dir outputs/sft --resume_from checkpoint-500 \
    --prompt "Here are the items the user purchased recently ... Answer with \"Yes\" or \"No\"."
"""
from __future__ import annotations

import argparse
import os

from trainers.foundation.errors import UserInputError, die


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default="outputs/sft", help="base or SFT model dir (or a name known to paths.py)")
    p.add_argument("--resume_from", default=None, help="checkpoint dir (absolute, or relative to --model_dir)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda[:N] (default: auto = cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="weight dtype; auto = bf16 on CUDA, fp32 on CPU (default: auto)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="the user message")
    g.add_argument("--prompt_file", help="file whose whole text is the user message")
    p.add_argument("--system", default=None, help="optional system message")
    p.add_argument("--max_new_tokens", type=int, default=256, help="response length limit in tokens (default: 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=42, help="sampling seed, used when --temperature > 0 (default: 42)")
    args = p.parse_args(argv)
    try:
        from models.local_inference import LocalGenerator
        from paths import resolve_model_path
        from prompters.answer_parsing import parse_yes_no

        if args.prompt_file:
            if not os.path.isfile(args.prompt_file):
                raise UserInputError(f"--prompt_file {args.prompt_file}: file not found")
            with open(args.prompt_file, encoding="utf-8") as f:
                prompt = f.read().strip()
        else:
            prompt = args.prompt
        if not prompt:
            raise UserInputError("the prompt is empty")
        if args.resume_from:
            base = resolve_model_path(args.model_dir, flag="--model_dir")
            ckpt = args.resume_from if os.path.isdir(args.resume_from) else os.path.join(base, args.resume_from)
            if not os.path.isdir(ckpt):
                raise UserInputError(f"--resume_from {args.resume_from}: not a directory (nor one inside {base})")
            has_tok = any(os.path.isfile(os.path.join(ckpt, f)) for f in ("tokenizer.json", "tokenizer_config.json"))
            gen = LocalGenerator(ckpt, args.device, args.dtype, tokenizer_path=None if has_tok else base,
                                 flag="--resume_from")
        else:
            gen = LocalGenerator(args.model_dir, args.device, args.dtype, flag="--model_dir")
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": prompt}]
        out = gen.generate([msgs], args.max_new_tokens, args.temperature, seed=args.seed)[0]
    except UserInputError as e:
        die(str(e))
    print(out)
    print(f"[parsed answer: {parse_yes_no(out)}]")


if __name__ == "__main__":
    main()
