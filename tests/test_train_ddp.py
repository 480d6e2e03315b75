"""train.py with two CPU processes (torchrun, gloo): gradients are all-reduced, so both ranks end identical."""
from __future__ import annotations

import json

import pytest

from tests.fixtures.ppo_train import (
    load_weights,
    ppo_assets,  # noqa: F401 (session fixture)
    run_train,
    train_cmd,
)

FAST = ["--K", "4", "--K_eval", "3", "--batch_size", "2", "--max_len_per_item", "4", "--user_window_size", "3",
        "--ppo_epochs", "2", "--lr_actor", "1e-3", "--lr_critic", "1e-3", "--num_valid_samples", "6",
        "--print_every", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def assets(ppo_assets):
    return ppo_assets


def test_two_process_training_keeps_ranks_in_sync(assets, tmp_path):
    data, model = assets
    out = tmp_path / "run"
    r = run_train(train_cmd(data, model, out, "--max_steps", "2", "--save_every", "1", "--write_param_checksums",
                            *FAST, nproc=2))
    assert r.returncode == 0, r.stderr[-3000:]
    c0 = (out / "param_checksum_rank0.txt").read_text().strip()
    c1 = (out / "param_checksum_rank1.txt").read_text().strip()
    # Each rank trained on different users; identical weights prove the gradient all-reduce.
    assert c0 == c1 and len(c0) == 64
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == [1, 2]  # one writer (rank 0), no duplicates
    assert all(0.0 <= x["reward"] <= 1.0 for x in recs)
    final, init = load_weights(out / "checkpoint-2"), load_weights(model)
    lm_keys = [k for k in final if k.startswith("model")]
    assert lm_keys and set(lm_keys) <= set(init)
    changed = [k for k in lm_keys if not (final[k] == init[k]).all()]
    assert changed, "training did not change the backbone weights"
    assert sorted(p.name for p in (out / "checkpoint-2").glob("rng_state_rank*.pt")) == [
        "rng_state_rank0.pt", "rng_state_rank1.pt"]
