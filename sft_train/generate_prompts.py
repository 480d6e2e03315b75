"""Sample (user, candidate, Yes/No label) judge prompts for SFT into a JSONL file (docs/sft.md).

Each row: {id (0..n-1), interaction_id, user_id, item_id, target_item_id, label ("Yes"/"No"),
prompt (the user message), messages ([{"role": "user", "content": prompt}]), text (the chat-formatted
prompt exactly as the judge sees it; without --reasoning it ends in the answer prefix "Answer:")}. Prompts are
rendered by the same BinaryPrompter train.py uses.
A row is a positive (the true next item) with probability --match_ratio, else a negative picked from the
candidates trainers.candidates.sample_candidates draws for that interaction (--K, --seed).

--model_type names the model whose tokenizer and chat template render the prompts (it truncates item
texts to --max_len_per_item tokens and formats `text`): a model family as in the original README (qwen,
gemma: the family's default model, paths.MODEL_FAMILIES), a model name known to paths.py (e.g.
Qwen2.5-3B-Instruct -> $OURREC_MODEL_ROOT/Qwen2.5-3B-Instruct) or a directory. --tokenizer DIR overrides it.
An existing --output_file is replaced only if it is a prompt file of this script.

python sft_train/generate_prompts.py --dataset_dir data/Video_Games_5_2021-1-2023-12 --num_samples 2000 \
    --match_ratio 0.5 --model_type qwen --output_file sft_train/prompts.jsonl
"""
from __future__ import annotations

import argparse
from collections import Counter

from foundation.config import HelpFormatter, finite_float, int_range, positive_int, seed_int
from foundation.errors import exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset_dir", required=True, help="processed dataset directory (preprocess.py output)")
    p.add_argument("--num_samples", type=positive_int, default=1000,
                   help="prompt rows to write (examples drawn without replacement, cycling if the split is smaller; "
                        "default: 1000)")
    p.add_argument("--match_ratio", type=finite_float, default=0.5,
                   help="probability that a row is a positive (label Yes)")
    p.add_argument("--model_type", default="qwen",
                   help="model whose tokenizer/chat template renders prompts: a family (qwen|gemma), a model name "
                        "known to paths.py, or a directory (default: qwen = Qwen2.5-3B-Instruct)")
    p.add_argument("--tokenizer", default=None, help="model/tokenizer directory overriding --model_type")
    p.add_argument("--output_file", default="sft_train/prompts.jsonl",
                   help="prompt JSONL to write (replaced atomically; default: sft_train/prompts.jsonl)")
    p.add_argument("--split", default="train", choices=["train", "valid", "test"],
                   help="dataset split the examples come from (default: train)")
    p.add_argument("--seed", type=seed_int, default=42,
                   help="seed of the example order, the Yes/No draw and the candidates (default: 42)")
    p.add_argument("--K", type=int_range(2), default=20, help="candidate set size the negative is drawn from")
    p.add_argument("--prompt_template", default=None, help="template file overriding --dataset_type's")
    p.add_argument("--dataset_type", default="other", choices=["movies", "other"],
                   help="which built-in prompt template (prompters/prompts.py) to use (default: other)")
    p.add_argument("--max_len_per_item", type=positive_int, default=64,
                   help="tokens each item description is truncated to (default: 64)")
    p.add_argument("--user_window_size", type=positive_int, default=10,
                   help="most recent history items shown in the prompt (default: 10)")
    p.add_argument("--reasoning", action="store_true",
                   help='ask for brief reasoning ending in "Answer: Yes/No" instead of a bare Yes/No')
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error():
        import json

        from models.abstract_models import load_tokenizer
        from paths import resolve_model_path
        from prompters.binary_prompter import BinaryPrompter
        from trainers.data.dataset import load_processed_dataset
        from trainers.data.sft import check_prompt_output, sample_sft_prompts
        from foundation.files import atomic_write_text

        check_prompt_output(args.output_file)
        ds = load_processed_dataset(args.dataset_dir, flag="--dataset_dir")
        flag = "--tokenizer" if args.tokenizer else "--model_type"
        tok_dir = resolve_model_path(args.tokenizer or args.model_type, flag=flag)
        tok = load_tokenizer(tok_dir, flag=flag)
        prompter = BinaryPrompter(tok, ds.item_rows, dataset_type=args.dataset_type,
                                  max_len_per_item=args.max_len_per_item, user_window_size=args.user_window_size,
                                  template_file=args.prompt_template, reasoning=args.reasoning)
        rows = sample_sft_prompts(ds, prompter, args.split, args.num_samples, args.match_ratio, args.seed, args.K)
        # Whole file at once (atomic): a prompt file is an input to resumable steps and must never be half-written.
        atomic_write_text(args.output_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    c = Counter(r["label"] for r in rows)
    print(f"wrote {len(rows)} prompts to {args.output_file} (Yes {c['Yes']}, No {c['No']}; "
          f"match_ratio {args.match_ratio}, split {args.split}, tokenizer {tok_dir})")


if __name__ == "__main__":
    main()
