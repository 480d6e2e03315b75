"""RRec's two loss forms side by side on real RecPO steps: a compare_model/train_rrec.py run (same flags, one
process) that, at every mini-batch, also differentiates the token and recommendation losses of BOTH
--advantage_broadcast forms on the same forward (the run itself trains with the form its flags name).

    python tools/rrec_loss_forms.py --model_name_or_path demo/tiny-qwen \\
        --dataset_dir demo/data/Video_Games_5_2021-1-2023-12 --output_dir /tmp/rrec_forms --overwrite_output_dir \\
        --device cpu --max_steps 1 --max_new_tokens 32 --num_eval_samples 0 --no-eval_on_start \\
        --no-gradient_checkpointing --no-progress

Prints, per mini-batch and rollout: its advantage, its rec-loss weight (advantage x relabel mask) and the largest
|d token loss / d log p| over its completion tokens under "upstream" and "per_row"; per mini-batch: the norms of
the two losses' gradients over the trainable weights under each form. docs/rrec.md explains the forms.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from foundation.config import build_parser as config_parser, config_from_args
from foundation.distributed import run_trainer
from foundation.errors import exit_on_user_error
from trainers.grec_trainer import ADVANTAGE_BROADCASTS, RRecTrainingArguments
from trainers.recpo_trainer import RecPOTrainer, rec_loss, token_loss


def _norm(grads) -> float:
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


class MeasuringRecPOTrainer(RecPOTrainer):
    """RecPOTrainer that records both loss forms' gradients before each mini-batch's own backward."""

    records: list[dict[str, Any]] = []

    def _losses(self, logps, old_logps, row_advantages, tokens_per_row, scores, labels, weights, old_rec_logp):
        c = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        rec: dict[str, Any] = {"advantage": row_advantages.tolist(), "rec_weight": weights.tolist()}
        for form in ADVANTAGE_BROADCASTS:
            tok, _ = token_loss(logps, old_logps, row_advantages, tokens_per_row, c.clip_eps_low, c.clip_eps_high,
                                form)
            item, _, _ = rec_loss(scores, labels, weights, old_rec_logp, c.clip_eps_low, c.clip_eps_high, form)
            g_tok = torch.autograd.grad(tok, [logps, *params], retain_graph=True, allow_unused=True)
            g_rec = torch.autograd.grad(item, params, retain_graph=True, allow_unused=True)
            rec[f"token_grad_row_max/{form}"] = [float(g.abs().max()) if g.numel() else 0.0
                                                 for g in g_tok[0].split(tokens_per_row.tolist())]
            rec[f"token_grad_norm/{form}"] = _norm(g_tok[1:])
            rec[f"rec_grad_norm/{form}"] = _norm(g_rec)
        self.records.append(rec)
        return super()._losses(logps, old_logps, row_advantages, tokens_per_row, scores, labels, weights,
                               old_rec_logp)


def report(records: list[dict[str, Any]]) -> str:
    forms = ADVANTAGE_BROADCASTS
    lines = ["max |d token loss / d log p| over each rollout's completion tokens, and gradient norms over the "
             "trainable weights, per mini-batch:",
             f"{'mb':>3} {'row':>3} {'advantage':>10} {'rec weight':>10} " + " ".join(f"{f:>12}" for f in forms)]
    for mb, r in enumerate(records):
        for j, (a, w) in enumerate(zip(r["advantage"], r["rec_weight"])):
            w += 0.0  # no "-0.0000" for an unrelabelled negative advantage
            lines.append(f"{mb:>3} {j:>3} {a:>10.4f} {w:>10.4f} " +
                         " ".join(f"{r[f'token_grad_row_max/{f}'][j]:>12.3e}" for f in forms))
        for kind in ("token", "rec"):
            lines.append(f"{mb:>3}  ||d {kind} loss / d weights||  " +
                         "  ".join(f"{f} {r[f'{kind}_grad_norm/{f}']:.3e}" for f in forms))
    for f in forms:
        rows = [x for r in records for x in r[f"token_grad_row_max/{f}"]]
        tok = [r[f"token_grad_norm/{f}"] for r in records]
        lines.append(f"{f}: token-loss gradient per rollout max {max(rows):.3e}, median "
                     f"{sorted(rows)[len(rows) // 2]:.3e}; token-loss weight-gradient norm per mini-batch max "
                     f"{max(tok):.3e}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """train_rrec.py's flags, this tool's description."""
    return config_parser(RRecTrainingArguments, description=__doc__)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    with exit_on_user_error():
        cfg = config_from_args(RRecTrainingArguments, args, validate=False)
        MeasuringRecPOTrainer.records = []
        run_trainer(cfg, MeasuringRecPOTrainer)
    records = MeasuringRecPOTrainer.records
    if records:
        print(report(records))
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
