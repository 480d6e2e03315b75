"""Build the embedded demo: synthetic Amazon-Reviews-2023-format raw files and a tiny random Qwen2.

    python tools/make_demo.py --out_dir demo                 # raw files + model (rebuilt)
    python tools/make_demo.py --skip_existing --preprocess   # what train.sh/test.sh run: only what is missing

writes demo/raw/ (Video_Games.csv.gz, meta_Video_Games.jsonl.gz) and demo/tiny-qwen/; with --preprocess also
the processed dataset demo/data/Video_Games_5_2021-1-2023-12 (through preprocess.py, the real command).
The data carry a planted preference (fixtures/synthetic_amazon.py, preference "synonyms": users stick to a family
of sub-categories that titles name with one of three words; popularity and word overlap stay weak), so training
has something real to learn. Histories keep the 3 items the tiny judge reads (--window_size 3), so every method
and sanity row sees the same history. Everything is offline and seeded.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from fixtures.tiny_model import build_random_qwen, build_tiny_qwen
from fixtures.synthetic_amazon import PREFERENCES, SUBCATEGORIES, SYNONYMS, synthetic_corpus, write_amazon_raw
from foundation.config import HelpFormatter, positive_int, seed_int
from foundation.errors import die, exit_on_user_error

REPO = Path(__file__).resolve().parents[1]
# The demo's preprocessing window and settings (demo.sh runs the same command).
PREPROCESS = ["--K", "5", "--st_year", "2021", "--st_month", "1", "--ed_year", "2023", "--ed_month", "12",
              "--min_items", "50", "--window_size", "3"]


def demo_dataset_dir(out_dir: Path, category: str) -> Path:
    return out_dir / "data" / f"{category}_5_2021-1-2023-12"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--out_dir", default="demo", help="writes OUT_DIR/raw/ and OUT_DIR/tiny-qwen/ (default: demo)")
    ap.add_argument("--category", default="Video_Games", help="category name of the raw files (default: Video_Games)")
    ap.add_argument("--n_users", type=positive_int, default=400, help="synthetic users (default: 400)")
    ap.add_argument("--n_items", type=positive_int, default=240, help="synthetic items (default: 240)")
    ap.add_argument("--n_subcats", type=positive_int, default=4,
                    help="sub-categories of the items, families of them with --preference synonyms (default: 4)")
    ap.add_argument("--preference", choices=PREFERENCES, default="synonyms",
                    help="how titles name the sub-category (fixtures/synthetic_amazon.py; default: synonyms)")
    ap.add_argument("--repeat_rate", type=float, default=0.02,
                    help="share of purchases bought again later (default: 0.02): preprocess.py's default "
                         "--repeat_policy first_only removes them and reports them in stats.json[\"repeats\"]")
    ap.add_argument("--seed", type=seed_int, default=0,
                    help="seed of the data and the random model weights (default: 0)")
    ap.add_argument("--hidden_size", type=positive_int, default=64, help="hidden size of the tiny Qwen2 (default: 64)")
    ap.add_argument("--num_hidden_layers", type=positive_int, default=2, help="layers of the tiny Qwen2 (default: 2)")
    ap.add_argument("--model_shape", default=None, choices=["qwen2.5-0.5b", "qwen2.5-3b", "qwen2.5-7b"],
                    help="also write OUT_DIR/<shape>-random: a random-weight model of that published shape with the "
                         "demo tokenizer (GPU timing runs of train.py / train_rrec.py; built on the GPU if present)")
    ap.add_argument("--skip_existing", action="store_true",
                    help="keep raw files, model and dataset that already exist (build only what is missing)")
    ap.add_argument("--preprocess", action="store_true",
                    help="also run preprocess.py on the raw files into OUT_DIR/data (the demo's dataset)")
    args = ap.parse_args(argv)
    most = len(SYNONYMS) if args.preference == "synonyms" else len(SUBCATEGORIES)
    if not 1 <= args.n_subcats <= most:
        die(f"--n_subcats {args.n_subcats}: must be in 1..{most} with --preference {args.preference}")
    if not 0.0 <= args.repeat_rate <= 1.0:
        die(f"--repeat_rate {args.repeat_rate}: must be in [0, 1]")
    if args.n_items < args.n_subcats or args.n_users < 1:
        die(f"--n_items {args.n_items} / --n_users {args.n_users}: need n_items >= n_subcats and n_users >= 1")
    out = Path(args.out_dir)
    raw_ok = (out / "raw" / f"{args.category}.csv.gz").is_file() and (out / "raw" / f"meta_{args.category}.jsonl.gz").is_file()
    if not (args.skip_existing and raw_ok):
        files = write_amazon_raw(out / "raw", category=args.category, n_users=args.n_users, n_items=args.n_items,
                                 n_subcats=args.n_subcats, seed=args.seed, preference=args.preference,
                                 repeat_rate=args.repeat_rate)
        for f in files.values():
            print(f"raw file: {f}")
    model = out / "tiny-qwen"
    if not (args.skip_existing and (model / "config.json").is_file()):
        build_tiny_qwen(model, corpus=synthetic_corpus(), hidden_size=args.hidden_size,
                        num_hidden_layers=args.num_hidden_layers, seed=args.seed)
        print(f"tiny model: {model}")
    if args.model_shape:
        big = out / f"{args.model_shape}-random"
        if not (args.skip_existing and (big / "config.json").is_file()):
            build_random_qwen(big, args.model_shape, corpus=synthetic_corpus(), seed=args.seed)
            print(f"random {args.model_shape} model: {big}")
    if args.preprocess:
        data = demo_dataset_dir(out, args.category)
        if args.skip_existing and (data / "dataset_dict.json").is_file():
            return
        cmd = [sys.executable, str(REPO / "preprocess.py"), "--category", args.category, *PREPROCESS,
               "--raw_dir", str(out / "raw"), "--data_root_dir", str(out / "data"), "--overwrite_output_dir"]
        r = subprocess.run(cmd)
        if r.returncode != 0:
            raise SystemExit(r.returncode)


if __name__ == "__main__":
    with exit_on_user_error():  # bad input, a refused write, Ctrl-C: one line
        main()
