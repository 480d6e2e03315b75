"""Reasoning mode end to end: evaluation samples like training by default, and a train.py reasoning run decodes
with the shared-prefix KV (the token log-probs of the sampling distribution: tests/models/test_qwen_models.py)."""
from __future__ import annotations

from tests.fixtures.ppo_train import ppo_assets  # noqa: F401 (session fixture)


def test_evaluation_samples_like_training_by_default():
    from trainers.evaluation.options import JudgeEvalOptions
    from trainers.ppo_trainer import PPOConfig

    cfg = PPOConfig()
    for key in ("gen_temperature", "gen_top_k", "gen_top_p", "max_new_tokens", "max_len_per_item",
                "user_window_size", "dataset_type"):
        assert JudgeEvalOptions.TRAINED_SETTINGS[key] == getattr(cfg, key), key


def test_train_py_reasoning_run_decodes_with_the_shared_prefix_kv(ppo_assets, tmp_path):
    """A reasoning-mode training run with shared scoring (auto: prefix_split) generates through SharedPrefixKV in
    the trainer's own loop: two steps, every (user, candidate) reasoning length logged, model FLOPs logged."""
    import json

    from tests.fixtures.ppo_train import run_train, train_cmd

    data, model = ppo_assets
    out = tmp_path / "run"
    r = run_train(train_cmd(data, model, out, "--K", "4", "--K_eval", "3", "--batch_size", "2", "--max_steps", "2",
                            "--max_len_per_item", "4", "--user_window_size", "3", "--max_new_tokens", "6",
                            "--scoring", "shared", "--print_every", "0", "--num_valid_samples", "2",
                            "--eval_every", "100", "--save_every", "100"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "attention: prefix_split" in r.stderr
    logged = [json.loads(x) for x in (out / "token_lengths.jsonl").read_text().splitlines() if x.strip()]
    assert [rec["step"] for rec in logged] == [1, 2]
    lengths = [n for rec in logged for rank in rec["lengths"] for user in rank for n in user]
    assert len(lengths) == 2 * 2 * 4 and max(lengths) > 0 and all(0 <= n <= 6 for n in lengths)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [x["step"] for x in recs if "tflops_per_s" in x] == [1, 2]
    # the KL between rollout and updated policy, whole (what the ratio uses) and split into ranking and reasoning
    for x in recs:
        assert min(x["approx_kl"], x["approx_kl_ranking"], x["approx_kl_reasoning"]) >= 0
