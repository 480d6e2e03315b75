"""Build the embedded demo: synthetic Amazon-Reviews-2023-format raw files and a tiny random Qwen2.

    python tools/make_demo.py --out_dir demo

writes demo/raw/ (Video_Games.csv.gz, meta_Video_Games.jsonl.gz) and demo/tiny-qwen/.
The data carry a planted preference (users stick to a sub-category named in item
titles), so training has something real to learn. Everything is offline and seeded.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from models.tiny import build_tiny_qwen
from trainers.data.synthetic import synthetic_corpus, write_amazon_raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out_dir", default="demo", help="writes OUT_DIR/raw/ and OUT_DIR/tiny-qwen/ (default: demo)")
    ap.add_argument("--category", default="Video_Games", help="category name of the raw files (default: Video_Games)")
    ap.add_argument("--n_users", type=int, default=400, help="synthetic users (default: 400)")
    ap.add_argument("--n_items", type=int, default=240, help="synthetic items (default: 240)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data and the random model weights (default: 0)")
    ap.add_argument("--hidden_size", type=int, default=64, help="hidden size of the tiny Qwen2 (default: 64)")
    ap.add_argument("--num_hidden_layers", type=int, default=2, help="layers of the tiny Qwen2 (default: 2)")
    args = ap.parse_args()
    out = Path(args.out_dir)
    files = write_amazon_raw(out / "raw", category=args.category, n_users=args.n_users, n_items=args.n_items, seed=args.seed)
    model_dir = build_tiny_qwen(out / "tiny-qwen", corpus=synthetic_corpus(), hidden_size=args.hidden_size,
                                num_hidden_layers=args.num_hidden_layers, seed=args.seed)
    for f in files.values():
        print(f"raw file: {f}")
    print(f"tiny model: {model_dir}")


if __name__ == "__main__":
    main()
