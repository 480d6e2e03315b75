"""Item-id sequences for the ID-based sequential models (SASRec, GRU4Rec; models/sequential.py), as numpy arrays.

Training sequences come from the TRAIN split only (ProcessedDataset.train_interactions: the histories and targets
of train examples, each interaction once, in time order per user), so no valid or test target is ever trained on.
Everything stays in int32/int64 arrays (a catalogue of millions of interactions never becomes Python objects):

user_sequences   -> CSR form: every train user's items in time order (items, offsets)
last_windows     -> [n_users, length] int32, each user's last `length` items, left-padded with the pad id 0
left_padded      -> the same for a list of histories (an evaluation batch's history_item_id lists)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

PAD = 0  # the pad item id (row 0 of item_info in our layout; upstream's layout is mapped to it on load)


def user_sequences(dataset) -> tuple[np.ndarray, np.ndarray]:
    """(items int32 [n_interactions], offsets int64 [n_users + 1]): user u's train interactions in time order are
    items[offsets[u]:offsets[u + 1]]."""
    users, items, _ = dataset.train_interactions
    if len(users) == 0:
        return np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return items.astype(np.int32), np.r_[starts, len(users)].astype(np.int64)


def last_windows(items: np.ndarray, offsets: np.ndarray, length: int, min_items: int = 1) -> np.ndarray:
    """[n, length] int32: the last `length` items of every CSR row with at least `min_items` items, right-aligned
    (the newest item in the last column) and left-padded with PAD. Vectorised: one scatter, no Python loop."""
    counts = np.diff(offsets)
    rows = np.flatnonzero(counts >= min_items)
    take = np.minimum(counts[rows], length)
    out = np.full((len(rows), length), PAD, dtype=np.int32)
    if len(rows) == 0:
        return out
    row = np.repeat(np.arange(len(rows)), take)
    within = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)  # 0..take-1 per row
    col = length - take[row] + within
    src = offsets[rows + 1][row] - take[row] + within
    out[row, col] = items[src]
    return out


def left_padded(histories: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """[len(histories), length] int32: each history's last `length` items, right-aligned, left-padded with PAD."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    flat = np.fromiter((int(i) for h in histories for i in h), dtype=np.int32, count=int(lengths.sum()))
    return last_windows(flat, offsets, length, min_items=0)
