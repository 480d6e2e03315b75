"""trainers/evaluation/results.py: resuming a result file through sharded_results."""
from __future__ import annotations

import json

import pytest

from foundation.errors import UserInputError


def test_resume_with_other_candidates_is_refused(tmp_path):
    """test.py and compare_model/rrec.py resume through sharded_results: a saved sample whose candidates differ
    from this run's (another dataset, K or seed) must not be mixed into the new result file."""
    from accelerate import PartialState

    from trainers.evaluation.results import ResultWriter, sharded_results

    out = tmp_path / "results.json"
    ex = {"interaction_id": 7}
    w = ResultWriter(out, {"seed": 1}, resume=False)
    w.add({"interaction_id": 7, "user_id": "U7", "target_item_id": 3, "candidates": [3, 1, 2], "target_rank": 1,
           "ranking": [3, 1, 2], "scores": [0.9, 0.5, 0.1]})
    w.write()
    state = PartialState(cpu=True)
    with pytest.raises(UserInputError, match="saved sample 7 has other candidates.*--no_resume"):
        with sharded_results(state, out, {"seed": 1}, [(ex, [3, 2, 1])], False, 5, fresh_flag="--no_resume"):
            pass
    assert json.loads(out.read_text())["samples"][0]["candidates"] == [3, 1, 2]  # nothing was touched
    with sharded_results(state, out, {"seed": 1}, [(ex, [3, 1, 2])], False, 5) as (writer, order, todo, _):
        assert todo == [] and order == [7] and writer.done_ids == {7}
