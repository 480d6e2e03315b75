"""trainers/data/dataset.py: mapping item_info rows to item ids."""
from __future__ import annotations

import pytest


def test_item_ids_that_cannot_be_mapped_are_refused():
    from datasets import Dataset

    from trainers.data.dataset import item_info_by_id
    from foundation.errors import UserInputError

    info, layout = item_info_by_id(Dataset.from_dict({"item_id": [2, 0, 1], "title": ["b", "pad", "a"]}))
    assert layout == "by item_id" and info["title"] == ["pad", "a", "b"]
    for ids in ([0, 1, 1], [1, 2, 3]):
        with pytest.raises(UserInputError, match="item_id"):
            item_info_by_id(Dataset.from_dict({"item_id": ids, "title": ["x", "y", "z"]}))
