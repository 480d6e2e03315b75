"""Users shared between the splits of a processed dataset, or between two processed datasets.

python tools/check_common_user.py --dataset_dir DIR [--other_dataset_dir DIR2]
"""
from __future__ import annotations

import argparse
from itertools import combinations

from trainers.data.dataset import SPLITS, load_processed_dataset
from foundation.config import HelpFormatter
from foundation.errors import exit_on_user_error


def split_users(dataset_dir: str, flag: str = "--dataset_dir") -> dict[str, set[str]]:
    ds = load_processed_dataset(dataset_dir, flag=flag)
    return {s: set(ds.splits[s]["user_id"]) for s in SPLITS}


def common_users(dataset_dir: str, other_dataset_dir: str | None = None) -> dict:
    """{"splits": {name: n_users}, "pairs": {"a&b": n_shared}, "all_splits": n, ["other": {...}]}."""
    a = split_users(dataset_dir)
    out: dict = {"splits": {s: len(u) for s, u in a.items()},
                 "pairs": {f"{x}&{y}": len(a[x] & a[y]) for x, y in combinations(SPLITS, 2)},
                 "all_splits": len(set.intersection(*a.values()))}
    if other_dataset_dir:
        b = split_users(other_dataset_dir, flag="--other_dataset_dir")
        ua, ub = set.union(*a.values()), set.union(*b.values())
        out["other"] = {"users": len(ua), "other_users": len(ub), "shared": len(ua & ub),
                        "shared_per_split": {s: len(a[s] & b[s]) for s in SPLITS},
                        "example_shared": sorted(ua & ub)[:5]}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset_dir", required=True, help="processed dataset directory (preprocess.py output)")
    p.add_argument("--other_dataset_dir", default=None, help="second processed dataset to compare users with")
    args = p.parse_args(argv)
    with exit_on_user_error():
        r = common_users(args.dataset_dir, args.other_dataset_dir)
    print("users per split: " + "  ".join(f"{s} {n}" for s, n in r["splits"].items()))
    for k, n in r["pairs"].items():
        x = k.split("&")[1]
        print(f"shared {k:12s} {n:6d}  ({n / max(1, r['splits'][x]):.1%} of {x})")
    print(f"in all three splits: {r['all_splits']}")
    if "other" in r:
        o = r["other"]
        print(f"vs {args.other_dataset_dir}: {o['shared']} shared users "
              f"({o['users']} here, {o['other_users']} there); per split "
              + " ".join(f"{s}:{n}" for s, n in o["shared_per_split"].items()))
        if o["example_shared"]:
            print("e.g. " + ", ".join(o["example_shared"]))


if __name__ == "__main__":
    main()
