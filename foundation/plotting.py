"""Training curves from metrics.jsonl: rollout reward and validation NDCG against step (matplotlib, Agg)."""
from __future__ import annotations

import os
from pathlib import Path

from foundation.errors import UserInputError
from foundation.files import writing


def validation_label(key: str) -> str:
    """'val_NDCG@10_K20' -> 'validation NDCG@10, K=20 candidates' (older logs without _K: 'validation NDCG@10')."""
    metric, _, k = key[len("val_"):].partition("_K")
    return f"validation {metric}, K={k} candidates" if k else f"validation {metric}"


def reward_label(run_dir: Path) -> str:
    """The reward curve's label, with the cut-off and training K from the run's args.json when it is there."""
    import json

    try:
        args = json.loads((run_dir / "args.json").read_text())
        return f"reward (rollout NDCG@{int(args['K_eval'])}, K={int(args['K'])} training candidates)"
    except (OSError, ValueError, KeyError, TypeError):
        return "reward (rollout NDCG)"


def plot_training(metrics_file: str | os.PathLike, output: str | os.PathLike, smooth: int = 20) -> Path:
    """Draw reward (raw and moving average) and every val_NDCG@k_KN column (NDCG@k of greedy rankings of N
    validation candidates; the last one is the final validation) against step into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from foundation.files import read_jsonl

    recs = [r for r in read_jsonl(metrics_file, flag="--metrics_file", skip_bad_lines=True) if "step" in r]
    if not recs:
        raise UserInputError(f"--metrics_file {metrics_file}: no records with a 'step' field")
    steps = np.array([r["step"] for r in recs])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if any("reward" in r for r in recs):
        rs = np.array([r.get("reward", np.nan) for r in recs], dtype=float)
        ax.plot(steps, rs, color="tab:blue", alpha=0.3, lw=1, label=reward_label(Path(metrics_file).parent))
        w = max(1, min(smooth, len(rs)))
        if w > 1:
            ma = np.convolve(np.nan_to_num(rs), np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1:], ma, color="tab:blue", lw=2, label=f"reward, {w}-step mean")
    val_keys = sorted({k for r in recs for k in r if k.startswith("val_NDCG")})
    for k, c in zip(val_keys, ("tab:red", "tab:green", "tab:purple")):
        pts = [(r["step"], r[k]) for r in recs if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c, lw=2, label=validation_label(k))
    ax.set_xlabel("step")
    ax.set_ylabel("NDCG")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(f"PL-PPO training ({Path(metrics_file).parent.name})")
    fig.tight_layout()
    out = Path(output)
    try:
        with writing(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)
    return out
