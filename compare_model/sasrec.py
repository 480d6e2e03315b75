"""Baseline: a classical ID-based sequential recommender, SASRec (default) or GRU4Rec (--model gru4rec), trained on
the train split of a processed dataset and ranking exactly the candidates every other method ranks.

    # the candidates test.py ranked (the same examples, the same K candidates, in its order):
    python compare_model/sasrec.py --dataset_dir data/Video_Games_5_2021-1-2023-12 \
        --reference_json outputs/test/results.json --output_dir outputs/sasrec
    python compare_model/sasrec.py --model gru4rec --dataset_dir ... --reference_json ... --output_dir outputs/gru4rec
    python tools/compare_results.py outputs/test/results.json outputs/sasrec/results.json --names ours sasrec \
        --paired ours

SASRec: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018 (2 blocks, 1 head, 50 dimensions,
dropout 0.2 / 0.5 on sparse data, max length 50, Adam 1e-3 with betas (0.9, 0.98), batch 128, binary cross-entropy
with one sampled negative per position). GRU4Rec: Hidasi et al., "Session-based Recommendations with Recurrent
Neural Networks", ICLR 2016, and Hidasi & Karatzoglou, "Recurrent Neural Networks with Top-k Gains for Session-
based Recommendations", CIKM 2018 (one GRU layer of 100 units, cross-entropy over the batch's targets plus 2048
sampled negatives, dropout 0.3), trained here on whole user sequences with Adam. docs/baselines.md says where
each follows its paper and how to read "ours vs SASRec".

Training reads item ids only, from the train split (no valid or test target is trained on); the best epoch by
valid NDCG@10 among K sampled candidates is kept (early stopping, --patience). Then the --split examples are
ranked: the candidates of --reference_json (its interaction ids and lists), else K candidates sampled with --seed
as test.py samples them. The model reads each example's stored history, the same window the other methods are
shown. Also the full-catalogue NDCG/HR@5/10/20 with the pad and the history masked (as rrec.py --full_ranking).
The result JSON ({output_dir}/results.json) has rrec.py's format: samples with scores, ranking and target_rank
(and full_rank), the metrics, the random/popularity/content-tfidf sanity rows with their per-sample ranks, so
tools/compare_results.py --paired works on it.

A rerun of the same command continues: from the newest epoch checkpoint while training, then only the examples the
result JSON lacks (a killed and resumed run gives the same result as an uninterrupted one). Runs on the GPU when
there is one (--device).
"""
from __future__ import annotations

import argparse

from foundation.config import build_parser as config_parser
from foundation.config import config_from_args
from foundation.errors import exit_on_user_error
from trainers.configs.sequential import SequentialConfig  # torch-free: --help never imports the trainer


def build_parser() -> argparse.ArgumentParser:
    return config_parser(SequentialConfig, description=__doc__)


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error():
        cfg = config_from_args(SequentialConfig, args, validate=False)
        from trainers.sequential_trainer import run_sequential  # torch: after the flags are parsed

        return run_sequential(cfg)


if __name__ == "__main__":
    main()
