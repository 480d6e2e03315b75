"""The PL-PPO advantage estimators (trainers/rl/advantages.py, train.py --advantage_estimator): each formula on
hand-made rewards, the registry, and a short train.py run per estimator that learns on the tiny setup."""
from __future__ import annotations

import json

import pytest
import torch

from tests.fixtures.ppo_train import ppo_assets  # noqa: F401 (session fixture)
from trainers.rl.advantages import (ADVANTAGE_ESTIMATORS, estimator_uses_critic, get_advantage_estimator,
                                    register_advantage_estimator)

REWARDS = torch.tensor([[1.0, 0.0, 0.5, 0.5],
                        [0.2, 0.2, 0.2, 0.2]])  # user 2: every ranking earned the same


def test_critic_advantage_is_reward_minus_value():
    adv, returns = get_advantage_estimator("critic")(REWARDS, torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(adv, torch.tensor([[0.75, -0.25, 0.25, 0.25], [-0.3, -0.3, -0.3, -0.3]]))
    torch.testing.assert_close(returns, torch.tensor([0.5, 0.2]))  # the critic's target: the user's mean reward
    with pytest.raises(ValueError, match="value head"):
        get_advantage_estimator("critic")(REWARDS, None)


def test_rloo_subtracts_the_mean_of_the_other_rankings():
    adv, returns = get_advantage_estimator("rloo")(REWARDS, None)
    # 1 - (0 + .5 + .5)/3, 0 - (1 + .5 + .5)/3, .5 - (1 + 0 + .5)/3 (twice); equal rewards: 0
    torch.testing.assert_close(adv, torch.tensor([[2 / 3, -2 / 3, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert returns is None


def test_grpo_normalises_within_the_user():
    adv, returns = get_advantage_estimator("grpo")(REWARDS, None)
    std = torch.tensor([1.0, 0.0, 0.5, 0.5]).std()  # unbiased, as GRPO
    torch.testing.assert_close(adv[0], torch.tensor([0.5, -0.5, 0.0, 0.0]) / std)
    assert (adv[1] == 0).all() and returns is None
    with pytest.raises(ValueError, match="at least 2"):
        get_advantage_estimator("grpo")(REWARDS[:, :1], None)


def test_registry():
    assert set(ADVANTAGE_ESTIMATORS) >= {"critic", "rloo", "grpo"}
    assert estimator_uses_critic("critic") and not estimator_uses_critic("rloo") and not estimator_uses_critic("grpo")
    with pytest.raises(ValueError, match="critic|rloo|grpo"):
        get_advantage_estimator("gae")
    with pytest.raises(ValueError, match="already registered"):
        register_advantage_estimator("rloo")(lambda r, v: (r, None))


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
