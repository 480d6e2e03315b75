"""Summarise a processed dataset directory: sizes, history lengths, split date ranges, title lengths.

python tools/analyze_processed_dataset.py --dataset_dir data/Video_Games_5_2021-1-2023-12 [--tokenizer PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from datetime import datetime, timezone

import numpy as np

from trainers.data.dataset import SPLITS, load_processed_dataset
from foundation.config import HelpFormatter
from foundation.errors import exit_on_user_error
from foundation.files import read_json


def _date(ms: int) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def _describe(xs) -> str:
    a = np.asarray(xs, dtype=np.float64)
    if a.size == 0:
        return "n=0"
    return (f"n={a.size} mean={a.mean():.2f} min={a.min():.0f} p50={np.median(a):.0f} "
            f"p90={np.percentile(a, 90):.0f} max={a.max():.0f}")


def analyze(dataset_dir: str, tokenizer: str | None = None) -> dict:
    """Compute the summary as a dict (also used by tests)."""
    ds = load_processed_dataset(dataset_dir, flag="--dataset_dir")
    users: set[str] = set()
    interactions: set[tuple] = set()
    out: dict = {"splits": {}}
    hist_len: Counter = Counter()
    for s in SPLITS:
        d = ds.splits[s]
        uid, ts = d["user_id"], d["timestamp"]
        users.update(uid)
        for u, i, t, hi, ht in zip(uid, d["item_id"], ts, d["history_item_id"], d["history_timestamp"]):
            interactions.add((u, int(i), int(t)))
            interactions.update((u, int(a), int(b)) for a, b in zip(hi, ht))
        lens = [len(h) for h in d["history_item_id"]]
        hist_len.update(lens)
        out["splits"][s] = {
            "examples": len(d), "users": len(set(uid)),
            "date_range": [_date(min(ts)), _date(max(ts))] if len(d) else None,
            "history_length": _describe(lens),
        }
    titles = [t for t in ds.item_info["title"][1:]]
    out.update(users=len(users), items=ds.n_items, interactions=len(interactions),
               history_length_counts=dict(sorted(hist_len.items())),
               title_words=_describe([len(t.split()) for t in titles]))
    if tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
        texts = [f"{r['title']} {' '.join(r.get('description') or [])}".strip() for r in ds.item_rows[1:]]
        out["title_tokens"] = _describe([len(tok(t, add_special_tokens=False)["input_ids"]) for t in titles])
        out["item_text_tokens"] = _describe([len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts])
    stats = os.path.join(dataset_dir, "stats.json")
    if os.path.exists(stats):
        try:
            data = read_json(stats)
            if not isinstance(data, dict) or not isinstance(data.get("used_window", {}), dict):
                raise ValueError("not the JSON object preprocess.py writes")
            out["stats_json"] = data
        except (OSError, ValueError) as e:  # preprocess.py's report only; the dataset itself loaded fine
            print(f"warning: {stats} is unreadable ({e}); summary without it", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset_dir", required=True, help="preprocess.py output directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer name/path: also report item text lengths in tokens")
    args = p.parse_args(argv)
    with exit_on_user_error():
        r = analyze(args.dataset_dir, args.tokenizer)
    print(f"dataset {args.dataset_dir}")
    print(f"users {r['users']}  items {r['items']}  interactions {r['interactions']}  "
          f"density {r['interactions'] / max(1, r['users'] * r['items']):.5f}")
    for s, v in r["splits"].items():
        dr = f"{v['date_range'][0]}..{v['date_range'][1]}" if v["date_range"] else "-"
        print(f"{s:6s} examples {v['examples']:7d}  users {v['users']:6d}  dates {dr}  history {v['history_length']}")
    print("history length counts: " + " ".join(f"{k}:{c}" for k, c in r["history_length_counts"].items()))
    print(f"title words: {r['title_words']}")
    for k in ("title_tokens", "item_text_tokens"):
        if k in r:
            print(f"{k.replace('_', ' ')}: {r[k]}")
    if "stats_json" in r:
        sj = r["stats_json"]
        uw = sj.get("used_window", {})
        print(f"stats.json: K={sj.get('K')} window_size={sj.get('window_size')} used window "
              f"{uw.get('st_year')}-{uw.get('st_month')}..{uw.get('ed_year')}-{uw.get('ed_month')} "
              f"start extensions {sj.get('start_extensions')}")


if __name__ == "__main__":
    main()
