"""trainers/grec_trainer.py: upstream R2ec's evaluation interval, its best model and early stopping (HF's
EarlyStoppingCallback), and the checkpoint rotation that keeps the best one."""
from __future__ import annotations


def test_upstream_eval_interval_best_model_and_early_stopping(tmp_path):
    from types import SimpleNamespace

    from foundation.checkpoints import rotate_checkpoints
    from trainers.grec_trainer import GRecTrainer, upstream_eval_steps

    # floor(n_train / (3 * batch) / 8): 3675 / 12 = 306.25 -> 306.25 // 8 = 38; tiny splits still evaluate
    assert upstream_eval_steps(3675, 4) == 38 and upstream_eval_steps(960, 4) == 10
    assert upstream_eval_steps(10, 4) == 1

    # HF's EarlyStoppingCallback with patience 2: only a strictly better valid NDCG@10 resets the count
    t = SimpleNamespace(best_metric=None, best_step=None, evals_without_improvement=0,
                        cfg=SimpleNamespace(early_stopping_patience=2))
    stops = [GRecTrainer.update_best(t, step, {"valid_full/NDCG@10": m})
             for step, m in ((10, 0.1), (20, 0.3), (30, 0.3), (40, float("nan")), (50, 0.2))]
    assert stops == [False, False, False, False, True]  # 0.3 again is no improvement; NaN is not counted
    assert (t.best_step, t.best_metric, t.evals_without_improvement) == (20, 0.3, 2)
    t.cfg.early_stopping_patience = 0  # never stop
    assert GRecTrainer.update_best(t, 60, {"valid_full/NDCG@10": 0.0}) is False

    # 5 checkpoints kept, the best among them even when it is old; interrupted saves are not counted
    for step in range(1, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "COMPLETE").write_text(str(step))
    rotate_checkpoints(tmp_path, 5, keep_step=2)
    assert sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*")) == [2, 4, 5, 6, 7]
    rotate_checkpoints(tmp_path, 5, keep_step=None)
    assert sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*")) == [2, 4, 5, 6, 7]
    rotate_checkpoints(tmp_path, 3, keep_step=6)
    assert sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*")) == [5, 6, 7]
