"""trainers/data/sequences.py: the training sequences and windows of the sequential baselines, on test_sasrec's
planted dataset."""
from __future__ import annotations

from tests.test_sasrec import N_ITEMS, data_dir  # noqa: F401 (data_dir: a fixture)


def test_training_sequences_are_the_train_split_in_time_order(data_dir):  # noqa: F811 (fixture)
    """Each user's training sequence is exactly their train interactions (targets and histories, each once) in
    time order, so no valid or test target is in it; the windows are each sequence's newest items."""
    from trainers.data.dataset import load_processed_dataset
    from trainers.data.sequences import last_windows, user_sequences

    ds = load_processed_dataset(data_dir)
    items, offsets = user_sequences(ds)
    per_user: dict[str, set] = {}
    for r in ds.split("train").to_list():
        per_user.setdefault(r["user_id"], set()).update(zip(r["history_timestamp"], r["history_item_id"]))
        per_user[r["user_id"]].add((r["timestamp"], r["item_id"]))
    expected = sorted(tuple(i for _, i in sorted(v)) for v in per_user.values())
    got = sorted(tuple(int(x) for x in items[offsets[u]:offsets[u + 1]]) for u in range(len(offsets) - 1))
    assert got == expected and all((b - a) % N_ITEMS == 1 for seq in got for a, b in zip(seq, seq[1:]))
    later = sum(len(ds.split(s)) for s in ("valid", "test"))
    assert later > 0 and len(items) == sum(map(len, expected))
    w = last_windows(items, offsets, 4, min_items=2)
    long_enough = [seq for seq in got if len(seq) >= 2]
    assert sorted(tuple(int(x) for x in row if x) for row in w) == sorted(seq[-4:] for seq in long_enough)
    assert all(row[0] == 0 or min(row) > 0 for row in w.tolist())  # pads only on the left
