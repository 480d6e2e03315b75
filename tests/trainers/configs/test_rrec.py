"""trainers/configs/rrec.py: compare_model/train_rrec.py's settings with no flags are upstream's launch settings."""
from __future__ import annotations


def test_defaults_are_upstream_launch_settings():
    """train_rrec.py with no flags = upstream's train.py + launch_train.sh (docs/rrec.md), value by value."""
    from compare_model.train_rrec import parse_config

    c = parse_config([])
    expected = {
        "group_size": 4, "gen_temperature": 2.0, "gen_top_k": 50, "gen_top_p": 1.0, "max_new_tokens": 640,
        "repetition_penalty": None,  # the model's generation_config.json, as upstream's vLLM gets it
        "relabel_topk": 2, "train_batch_size": 4, "eval_batch_size": 32, "item_emb_batch_size": 128,
        "warmup_steps": 32, "learning_rate": 1e-5, "lr_scheduler_type": "constant", "num_train_epochs": 3.0,
        "max_grad_norm": 1.0, "weight_decay": 0.0, "seed": 42, "user_window_size": 20,
        "use_lora": True, "lora_r": 4, "lora_alpha": 128.0, "lora_dropout": 0.05, "disable_dropout": True,
        "pure_bf16": False, "gradient_checkpointing": True,
        "similarity_type": "dot", "similarity_temperature": 0.02, "similarity_normalization": True,
        "reward_ndcg_k": 1000, "reward_softmax_weight": 0.05, "advantage_type": "gaussian",
        "clip_eps_low": 0.2, "clip_eps_high": 0.28, "mini_batch_size": 8, "ppo_epochs": 1,
        "step_per_mini_batch": True, "gather_negs_across_processes": True, "token_loss_weight": 1.0,
        "rec_loss_weight": 1.0, "item_refresh_steps": 0, "advantage_broadcast": "upstream",
        "item_rating_stats": True,
        "eval_on_start": True, "eval_steps": -1, "num_eval_samples": -1, "load_best_model_at_end": True,
        "early_stopping_patience": 8, "save_total_limit": 5, "rank_repeat_targets": False,
    }
    assert {k: getattr(c, k) for k in expected} == expected
    assert sorted(c.lora_target_modules.split(",")) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
