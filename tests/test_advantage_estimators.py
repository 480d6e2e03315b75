"""The PL-PPO advantage estimators through train.py --advantage_estimator: the flag's checks and a short train.py
run per estimator that learns on the tiny setup (each formula by hand: tests/trainers/rl/test_advantages.py)."""
from __future__ import annotations

import json

import pytest
import torch

from tests.fixtures.ppo_train import ppo_assets  # noqa: F401 (session fixture)


# ---- a short run per estimator learns ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_train_split(ppo_assets, tmp_path_factory):  # noqa: F811 (fixture)
    """The test data with 16 training examples: one step's batch sees all of them, so its greedy NDCG (the
    'ndcg' of metrics.jsonl, measured on the rollout's scores before the update) tracks how well the policy fits
    them, step after step."""
    from datasets import DatasetDict, load_from_disk

    data, model = ppo_assets
    out = tmp_path_factory.mktemp("small") / data.name
    full = load_from_disk(str(data))
    DatasetDict({k: v.select(range(16)) if k in ("train", "valid") else v for k, v in full.items()}).save_to_disk(
        str(out))
    (out / "stats.json").write_text((data / "stats.json").read_text())
    return out, model


@pytest.mark.parametrize("estimator", ["critic", "rloo", "grpo"])
def test_each_estimator_learns(small_train_split, estimator, tmp_path):
    from trainers.ppo_trainer import parse_config, run_training

    data, model = small_train_split
    out = tmp_path / "run"
    run_training(parse_config([
        "--dataset_path", str(data), "--model_name_or_path", str(model), "--output_dir", str(out),
        "--dataset_type", "other", "--device", "cpu", "--no_plot", "--advantage_estimator", estimator,
        "--K", "5", "--K_eval", "5", "--batch_size", "16", "--rankings_per_user", "4", "--max_len_per_item", "4",
        "--user_window_size", "3", "--ppo_epochs", "2", "--lr_actor", "2e-3", "--lr_critic", "1e-3",
        "--max_steps", "10", "--save_every", "5", "--print_every", "0", "--eval_K", "5",
        "--num_valid_samples", "2", "--scoring", "shared"]))
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ndcg = [r["ndcg"] for r in recs]
    late = sum(ndcg[-4:]) / 4
    print(f"\n{estimator}: greedy NDCG@5 on the 16 training users by step: {[round(x, 2) for x in ndcg]}")
    assert late > ndcg[0] + 0.15, f"{estimator} did not learn: NDCG@5 {ndcg[0]:.3f} at step 1, {late:.3f} late"
    # without a critic the value head is neither trained nor logged, and the checkpoint still holds it
    critic_keys = {"value_loss", "value_mean", "explained_variance", "grad_norm_critic", "lr_critic"}
    assert critic_keys <= set(recs[-1]) if estimator == "critic" else not critic_keys & set(recs[-1])
    from models.qwen_models import BinaryJudge

    heads = [BinaryJudge.load(str(out / f"checkpoint-{n}"), device="cpu", dtype="fp32").value_head.state_dict()
             for n in (5, 10)]
    unchanged = all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert unchanged == (estimator != "critic")
