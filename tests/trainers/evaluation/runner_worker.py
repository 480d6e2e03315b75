"""A fake method for trainers/evaluation/runner.py: a deterministic scorer over the real items of a processed
dataset (no model), and the entry point tests/trainers/evaluation/test_runner.py launches under torchrun.

    python -m torch.distributed.run --nproc_per_node 2 tests/trainers/evaluation/runner_worker.py DATA OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from trainers.evaluation.metrics import ranking_from_scores, target_rank
from trainers.evaluation.runner import EvalJob, Ranker, candidate_items

K, NUM_SAMPLES, SEED, K_EVAL = 6, 12, 3, 4


class Killed(Exception):
    """Stands for the process being killed in the middle of ranking."""


def score(interaction_id: int, item_id: int) -> float:
    """A fixed pseudo-random score of (example, candidate): the same whichever process or batch computes it."""
    return ((item_id * 2654435761 + interaction_id * 40503) % 10007) / 10007


class ScoreByIdRanker(Ranker):
    """Ranks with `score`; records the interaction ids it ranked; fails after `fail_after` samples (a killed run)."""

    name = "by-id"

    def __init__(self, fail_after: int | None = None) -> None:
        self.ranked: list[int] = []
        self.loads = 0
        self.fail_after = fail_after

    def load(self, mine, state):
        self.loads += 1
        return "model" if mine else None

    def rank(self, loaded, mine, on_sample, state) -> None:
        assert loaded == "model"
        for ex, cands in mine:
            if self.fail_after is not None and len(self.ranked) == self.fail_after:
                raise Killed(f"after {len(self.ranked)} samples")
            iid, target = int(ex["interaction_id"]), int(ex["item_id"])
            s = [score(iid, int(c)) for c in cands]
            self.ranked.append(iid)
            on_sample({"interaction_id": iid, "user_id": ex["user_id"], "target_item_id": target,
                       "candidates": [int(c) for c in cands], "scores": s,
                       "ranking": ranking_from_scores(cands, s, target),
                       "target_rank": target_rank(s, cands.index(target)),
                       "outputs": {}})


def make_job(dataset, out_dir: Path, reference: dict | None = None, fresh: bool = False,
             seed: int = SEED) -> EvalJob:
    items = candidate_items(dataset, "test", NUM_SAMPLES, K, seed, reference, "the test dataset")
    meta = {"method": "by-id", "dataset": "synthetic", "split": "test", "K": K, "seed": seed}
    return EvalJob(dataset=dataset, split="test", items=items, result_file=Path(out_dir) / "results.json", meta=meta,
                   seed=seed, K_eval=K_EVAL, fresh=fresh, resume_keys=("dataset", "split", "K", "seed"),
                   flush_every=2)


def main(data: str, out_dir: str) -> None:
    from trainers.data.dataset import load_processed_dataset
    from trainers.evaluation.runner import launch_state, run_evaluation

    dataset = load_processed_dataset(data)
    state = launch_state(cpu=True)
    ranker = ScoreByIdRanker()
    rank = state.process_index
    run_evaluation(make_job(dataset, Path(out_dir), fresh=True), ranker, state)
    (Path(out_dir) / f"ranked_rank{rank}.json").write_text(json.dumps(ranker.ranked))


if __name__ == "__main__":
    main(*sys.argv[1:3])
