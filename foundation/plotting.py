"""Training curves from metrics.jsonl: rollout reward and validation NDCG against step (matplotlib, Agg).

Readable at any run length: the raw reward is faint with a marker per step (a 1-step run shows its point), its
exponential moving average is drawn on top over a window adapted to the run's length (smoothing_window), and every
validation point is drawn with its cut-off and candidate count in the legend.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from foundation.errors import UserInputError
from foundation.files import writing

MAX_SMOOTHING = 50  # steps: the widest EMA window, for runs of 500 steps and more
RAW_ALPHA = 0.3
VAL_COLORS = ("tab:red", "tab:green", "tab:purple", "tab:orange")


def validation_label(key: str) -> str:
    """'val_NDCG@10_K20' -> 'validation NDCG@10, K=20 candidates' (older logs without _K: 'validation NDCG@10')."""
    metric, _, k = key[len("val_"):].partition("_K")
    return f"validation {metric}, K={k} candidates" if k else f"validation {metric}"


def reward_label(run_dir: Path) -> str:
    """The reward curve's label, with the cut-off and training K from the run's args.json when it is there."""
    from foundation.files import read_json

    try:
        args = read_json(run_dir / "args.json")
        return f"reward (rollout NDCG@{int(args['K_eval'])}, K={int(args['K'])} training candidates)"
    except (OSError, ValueError, KeyError, TypeError):
        return "reward (rollout NDCG)"


def smoothing_window(n_steps: int, requested: int | None = None) -> int:
    """The EMA window in steps: `requested` when given (>= 1), else a tenth of the run, at least 2 and at most
    MAX_SMOOTHING (a 1-step run: 1, nothing to smooth)."""
    if requested:
        return max(1, int(requested))
    return 1 if n_steps <= 1 else min(MAX_SMOOTHING, max(2, n_steps // 10))


def ema(values: Sequence[float], window: int) -> list[float]:
    """Exponential moving average with alpha = 2 / (window + 1), started at the first value (so the curve begins with
    the run instead of rising from 0); a NaN (a record without the value) keeps the previous average."""
    import math

    alpha = 2.0 / (window + 1)
    out: list[float] = []
    cur = math.nan
    for v in values:
        if not math.isnan(v):
            cur = v if math.isnan(cur) else alpha * v + (1 - alpha) * cur
        out.append(cur)
    return out


def training_figure(metrics_file: str | os.PathLike, smooth: int | None = None) -> Any:
    """The figure of a metrics.jsonl: raw reward (faint, a marker per step), its EMA (on top), every
    val_NDCG@k_KN column (NDCG@k of greedy rankings among N validation candidates; the last point is the final
    validation, its value written beside it). The caller closes it (matplotlib.pyplot.close)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from foundation.files import read_jsonl

    recs = [r for r in read_jsonl(metrics_file, flag="--metrics_file", skip_bad_lines=True) if "step" in r]
    if not recs:
        raise UserInputError(f"--metrics_file {metrics_file}: no records with a 'step' field")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rewarded = [r for r in recs if isinstance(r.get("reward"), (int, float))]
    if rewarded:
        steps = [r["step"] for r in rewarded]
        rs = [float(r["reward"]) for r in rewarded]
        few = len(rs) <= 200  # markers while they stay apart
        ax.plot(steps, rs, color="tab:blue", alpha=RAW_ALPHA, lw=1, marker="o" if few else None, ms=3, zorder=2,
                label=reward_label(Path(metrics_file).parent))
        w = smoothing_window(len(rs), smooth)
        ax.plot(steps, ema(rs, w), color="tab:blue", lw=2.2, zorder=3, marker="o" if len(rs) <= 20 else None, ms=4,
                label=f"reward, EMA over {w} steps" if w > 1 else "reward")
    val_keys = sorted({k for r in recs for k in r if k.startswith("val_NDCG")})
    for k, c in zip(val_keys, VAL_COLORS * (len(val_keys) // len(VAL_COLORS) + 1)):
        pts = [(r["step"], float(r[k])) for r in recs if isinstance(r.get(k), (int, float))]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c, lw=1.5, ms=7, zorder=4,
                label=validation_label(k))
        ax.annotate(f"{pts[-1][1]:.3f}", pts[-1], textcoords="offset points", xytext=(6, 6), color=c, fontsize=9)
    last = max(r["step"] for r in recs)
    if last <= 10:  # a short run: whole-number steps, its points away from the frame
        ax.set_xlim(0.5, last + 0.5)
        ax.set_xticks(np.arange(1, last + 1))
    ax.set_xlabel("training step")
    ax.set_ylabel("NDCG (reward: on the rollout's rankings)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"PL-PPO training ({Path(metrics_file).parent.name}, {last} step{'s' if last != 1 else ''})")
    fig.tight_layout()
    return fig


def plot_training(metrics_file: str | os.PathLike, output: str | os.PathLike, smooth: int | None = None) -> Path:
    """Draw training_figure(metrics_file) into the PNG `output`."""
    import matplotlib.pyplot as plt

    fig = training_figure(metrics_file, smooth)
    out = Path(output)
    try:
        with writing(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)
    return out
