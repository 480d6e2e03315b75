"""Print one user's full interaction history (dates, titles, ratings) from a processed dataset.

python tools/find_user_history.py --dataset_dir DIR --user_id AE2...
"""
from __future__ import annotations

import argparse
from datetime import datetime, timezone

from trainers.data.dataset import SPLITS, load_processed_dataset
from foundation.config import HelpFormatter
from foundation.errors import UserInputError, exit_on_user_error


def user_history(dataset_dir: str, user_id: str) -> list[dict]:
    """Chronological interactions of user_id: {timestamp, date, item_id, asin, title, rating, split}.

    split is the split where the interaction is a target, or "history" for the user's first one.
    """
    ds = load_processed_dataset(dataset_dir, flag="--dataset_dir")
    ds.require_columns({"item_asins": "list of string", "item_asin": "string", "rating": "number"})
    titles = ds.titles
    events: dict[tuple[int, int], dict] = {}
    for s in SPLITS:
        d = ds.splits[s]
        idx = [i for i, u in enumerate(d["user_id"]) if u == user_id]
        for row in (d[i] for i in idx):
            for a, i, r, t in zip(row["item_asins"], row["history_item_id"], row["history_rating"],
                                  row["history_timestamp"]):
                events.setdefault((int(t), int(i)), {"asin": a, "rating": r, "split": "history"})
            events[(int(row["timestamp"]), int(row["item_id"]))] = {
                "asin": row["item_asin"], "rating": row["rating"], "split": s}
    if not events:
        raise UserInputError(f"--user_id {user_id}: not found in {dataset_dir}")
    out = []
    for (t, i), e in sorted(events.items()):
        out.append({"timestamp": t, "date": datetime.fromtimestamp(t / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M"),
                    "item_id": i, "asin": e["asin"], "title": titles[i], "rating": e["rating"], "split": e["split"]})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset_dir", required=True, help="processed dataset directory (preprocess.py output)")
    p.add_argument("--user_id", required=True, help="user id (as in the dataset's user_id column) to list")
    args = p.parse_args(argv)
    with exit_on_user_error():
        hist = user_history(args.dataset_dir, args.user_id)
    print(f"user {args.user_id}: {len(hist)} interactions")
    for h in hist:
        print(f"{h['date']}  {h['split']:7s}  id {h['item_id']:6d}  {h['asin']}  rating {h['rating']:.1f}  {h['title']}")


if __name__ == "__main__":
    main()
