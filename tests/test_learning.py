"""Acceptance test: PL-PPO training of the tiny model learns the planted preference of the synthetic data.

Each synthetic user buys mostly items of one sub-category whose word is in the item titles, and item
popularity does not reveal it. A short train.py run must raise greedy test NDCG@10 (K=10 candidates,
300 test examples) above both the untrained model and the popularity ranking of the same candidates.
"Clearly above" means: the paired difference exceeds 2 paired standard errors AND the spread of the
metric across three candidate-sampling seeds. Select with `pytest -m learning` (a few minutes on 2 cores).
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures.assets import build_tiny_qwen
from tests.fixtures.ppo_train import build_dataset, run_train, train_cmd

N_TEST = 300
K_TEST = 10
EVAL_SEEDS = (0, 1, 2)
# Compact prompt (the real --prompt_template feature): fewer tokens per step on a CPU.
TEMPLATE = "History:\n{history}\nCandidate: {candidate}\nLike it?"
# lr 3e-4 with 4 PPO epochs was the steadiest setting of a sweep (higher rates peak then fall back);
# shared-prefix scoring halves the step time on this prompt shape.
STEPS = 200
TRAIN = ["--K", "10", "--K_eval", "10", "--batch_size", "32", "--max_len_per_item", "1", "--user_window_size", "3",
         "--ppo_epochs", "4", "--lr_actor", "3e-4", "--lr_critic", "1e-3", "--max_steps", str(STEPS),
         "--save_every", "1000", "--print_every", "0", "--eval_every", "100", "--num_valid_samples", "100",
         "--scoring_chunk_size", "160", "--scoring", "shared", "--seed", "0"]


def _evaluate(model_dir, data, template, seed):
    from models.qwen_models import BinaryJudge
    from prompters.binary_prompter import BinaryPrompter
    from trainers.data.dataset import load_processed_dataset
    from trainers.evaluation.judge import evaluate_split

    ds = load_processed_dataset(data)
    judge = BinaryJudge.load(str(model_dir), device="cpu")
    prompter = BinaryPrompter(judge.tokenizer, ds.item_rows, "other", max_len_per_item=1, user_window_size=3,
                              template_file=str(template))
    samples, metrics = evaluate_split(judge, prompter, ds, "test", N_TEST, K_TEST, 10, seed, batch_size=16,
                                      scoring="shared", progress=False)
    return samples, metrics, ds


def _per_sample_ndcg10(ranks) -> np.ndarray:
    from trainers.evaluation.metrics import ndcg_at

    return np.array([ndcg_at(int(r), 10) for r in ranks])


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = a - b
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


@pytest.mark.learning
def test_training_beats_untrained_and_popularity(tmp_path):
    from trainers.evaluation.metrics import format_metrics_table, target_rank
    from trainers.evaluation.protocol import sanity_rows

    data = build_dataset(tmp_path)
    model = build_tiny_qwen(tmp_path / "tiny")
    template = tmp_path / "compact.txt"
    template.write_text(TEMPLATE)

    out = tmp_path / "run"
    r = run_train(train_cmd(data, model, out, *TRAIN, "--prompt_template", str(template)), timeout=1800, threads=2)
    assert r.returncode == 0, r.stderr[-3000:]
    trained_dir = out / f"checkpoint-{STEPS}"

    per_seed = {"untrained": [], "trained": [], "popularity": []}
    for seed in EVAL_SEEDS:
        base_samples, base_m, ds = _evaluate(model, data, template, seed)
        trained_samples, trained_m, _ = _evaluate(trained_dir, data, template, seed)
        assert [s["candidates"] for s in base_samples] == [s["candidates"] for s in trained_samples]
        pop = ds.popularity
        pop_ranks = [target_rank([pop[c] for c in s["candidates"]], s["candidates"].index(s["target_item_id"]))
                     for s in trained_samples]
        t = _per_sample_ndcg10([s["target_rank"] for s in trained_samples])
        b = _per_sample_ndcg10([s["target_rank"] for s in base_samples])
        p = _per_sample_ndcg10(pop_ranks)
        per_seed["untrained"].append(b.mean())
        per_seed["trained"].append(t.mean())
        per_seed["popularity"].append(p.mean())
        rows = {"untrained": base_m, "PL-PPO trained": trained_m, **sanity_rows(trained_samples, ds, seed)}
        assert rows["popularity"]["NDCG@10"] == pytest.approx(p.mean())
        print(f"\neval seed {seed}\n" + format_metrics_table(rows, (1, 5, 10)))
        d_base, se_base = _paired(t, b)
        d_pop, se_pop = _paired(t, p)
        print(f"NDCG@10 trained - untrained = {d_base:+.4f} (paired SE {se_base:.4f}); "
              f"trained - popularity = {d_pop:+.4f} (paired SE {se_pop:.4f})")
        assert d_base > 2 * se_base, f"seed {seed}: training did not beat the untrained model by 2 paired SEs"
        assert d_pop > 2 * se_pop, f"seed {seed}: training did not beat popularity by 2 paired SEs"

    spread = {k: float(np.max(v) - np.min(v)) for k, v in per_seed.items()}
    mean = {k: float(np.mean(v)) for k, v in per_seed.items()}
    print(f"mean NDCG@10 over eval seeds {EVAL_SEEDS}: {mean}; seed-to-seed spread: {spread}")
    worst_spread = max(spread.values())
    assert mean["trained"] - mean["untrained"] > worst_spread
    assert mean["trained"] - mean["popularity"] > worst_spread
