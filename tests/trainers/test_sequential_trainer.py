"""trainers/sequential_trainer.py built in this process on a tiny SASRec (compare_model/sasrec.py's whole run is
tests/test_sasrec.py's): the bce negatives avoid the user's own items; the best epoch and --patience; a rerun of a
finished run resumes its last checkpoint (the same weights, nothing left to train) and refuses changed training
settings; --K/--K_eval and the paper's dropout when unset."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from foundation.errors import UserInputError
from trainers.configs.sequential import SequentialConfig
from trainers.sequential_trainer import SequentialTrainer, default_dropout, resolve_K

N_ITEMS, MAX_LEN = 12, 4


def _windows(n_users: int = 6, seed: int = 0) -> np.ndarray:
    """Each user's last MAX_LEN + 1 items (distinct, left-padded with 0 for the shorter users)."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((n_users, MAX_LEN + 1), dtype=np.int32)
    for u in range(n_users):
        n = MAX_LEN + 1 if u % 2 == 0 else 3
        rows[u, -n:] = rng.choice(np.arange(1, N_ITEMS + 1), size=n, replace=False)
    return rows


def _trainer(out, **settings) -> SequentialTrainer:
    cfg = SequentialConfig(**{"model": "sasrec", "hidden_size": 8, "num_blocks": 1, "max_len": MAX_LEN,
                              "batch_size": 4, "num_epochs": 2, "valid_samples": 0, "patience": 2,
                              "output_dir": str(out), "no_progress": True, "seed": 3, **settings})
    cfg.validate()
    return SequentialTrainer(cfg, N_ITEMS, _windows(), density=0.1, valid_items=[], device=torch.device("cpu"))


def test_negatives_avoid_the_users_window(tmp_path):
    tr = _trainer(tmp_path)
    windows = _windows(200, seed=1)  # 5 of 12 items per user: a uniform draw would hit one often
    neg = tr.sample_negatives(np.random.default_rng(0), windows)
    assert neg.shape == (200, MAX_LEN) and neg.min() >= 1 and neg.max() <= N_ITEMS
    assert not (neg[:, :, None] == windows[:, None, :]).any()
    assert len(np.unique(neg)) > 5  # still a draw over the other items


def test_best_epoch_and_patience(tmp_path):
    tr = _trainer(tmp_path)
    stops = []
    for epoch, ndcg in enumerate((0.2, 0.5, 0.5, 0.4), start=1):
        tr.epoch = epoch
        stops.append(tr.update_best({"valid/NDCG@10": ndcg}))
    assert stops == [False, False, False, True]  # equal is no improvement: 2 validations without one stop it
    assert (tr.best_epoch, tr.best_metric) == (2, 0.5) and tr.best_step == 2 * tr.steps_per_epoch
    tr.cfg.patience = 0  # never stop
    assert tr.update_best({"valid/NDCG@10": 0.1}) is False


def test_a_rerun_resumes_the_finished_run_and_refuses_other_settings(tmp_path):
    first = _trainer(tmp_path)
    assert first.train(tmp_path / "results.json") is True
    assert first.epoch == 2 and first.finished and first.best_epoch == 2  # no validation: the newest model
    assert (tmp_path / f"checkpoint-{first.step}" / "COMPLETE").is_file()
    again = _trainer(tmp_path)
    assert again.ckpt == tmp_path / f"checkpoint-{first.step}" and again.epoch == 2 and again.finished
    for (name, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    trained = {n: p.detach().clone() for n, p in again.model.named_parameters()}
    assert again.train(tmp_path / "results.json") is True  # nothing left to train
    assert all(torch.equal(p, trained[n]) for n, p in again.model.named_parameters())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(UserInputError, match="--learning_rate"):
        _trainer(tmp_path, learning_rate=5e-3)


def test_unset_K_and_dropout_follow_the_reference_and_the_paper():
    cfg = SequentialConfig()
    resolve_K(cfg, {"samples": [{"candidates": list(range(7))}]})
    assert (cfg.K, cfg.K_eval) == (7, 7)
    cfg = SequentialConfig()
    resolve_K(cfg, None)
    assert (cfg.K, cfg.K_eval) == (20, 10)
    with pytest.raises(UserInputError, match="--K_eval 9"):
        resolve_K(SequentialConfig(K=5, K_eval=9), None)
    assert default_dropout(SequentialConfig(), 0.001) == 0.5  # sparse (Amazon, Steam)
    assert default_dropout(SequentialConfig(), 0.05) == 0.2  # dense (MovieLens-1M)
    assert default_dropout(SequentialConfig(model="gru4rec"), 0.001) == 0.3
    assert default_dropout(SequentialConfig(dropout=0.1), 0.001) == 0.1
