"""foundation/plotting.py: training.png from a run's metrics.jsonl."""
from __future__ import annotations

import json

import pytest


def _metrics(path, n_steps: int, val_every: int, seed: int = 0) -> list[dict]:
    """A metrics.jsonl as train.py writes it: a noisy rising reward each step, val_NDCG@10_K20 every val_every
    steps and at the last one."""
    import random

    rng = random.Random(seed)
    recs = []
    for s in range(1, n_steps + 1):
        r = {"step": s, "reward": 0.3 + 0.2 * s / n_steps + rng.uniform(-0.15, 0.15)}
        if s % val_every == 0 or s == n_steps:
            r["val_NDCG@10_K20"] = 0.25 + 0.1 * s / n_steps
        recs.append(r)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    (path.parent / "args.json").write_text(json.dumps({"K": 10, "K_eval": 5}))
    return recs


@pytest.mark.parametrize("n_steps,val_every", [(1, 1), (5, 5), (1000, 100)])
def test_training_plot_is_readable_at_any_length(tmp_path, n_steps, val_every):
    """training.png (issue 28): raw reward faint with a marker per step, its EMA on top over a window adapted to the
    run's length, every validation point drawn with its K, labelled axes; a 1-step run has visible points."""
    import matplotlib.pyplot as plt
    import numpy as np

    from foundation import plotting

    recs = _metrics(tmp_path / "metrics.jsonl", n_steps, val_every)
    fig = plotting.training_figure(tmp_path / "metrics.jsonl")
    try:
        (ax,) = fig.axes
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        raw = lines["reward (rollout NDCG@5, K=10 training candidates)"]
        window = plotting.smoothing_window(n_steps)
        smooth = lines[f"reward, EMA over {window} steps" if window > 1 else "reward"]
        val = lines["validation NDCG@10, K=20 candidates"]
        rewards = [r["reward"] for r in recs]
        assert list(raw.get_xdata()) == list(range(1, n_steps + 1)) and list(raw.get_ydata()) == rewards
        assert list(smooth.get_xdata()) == list(range(1, n_steps + 1))  # from the first step on, however short
        assert raw.get_alpha() < 0.5 and smooth.get_alpha() in (None, 1) and smooth.get_zorder() > raw.get_zorder()
        assert smooth.get_linewidth() > raw.get_linewidth()
        want_val = [(r["step"], r["val_NDCG@10_K20"]) for r in recs if "val_NDCG@10_K20" in r]
        assert list(zip(val.get_xdata(), val.get_ydata())) == want_val
        assert val.get_marker() == "o" and val.get_markersize() >= 5 and val.get_zorder() > smooth.get_zorder()
        if n_steps <= 200:  # a point per step stays visible (a 1-step run has no line to draw)
            assert raw.get_marker() == "o" and raw.get_markersize() > 0
        if n_steps == 1:
            assert ax.get_xlim()[0] < 1 < ax.get_xlim()[1] and list(smooth.get_ydata()) == rewards
            assert smooth.get_marker() == "o"  # drawn opaque: the one point is not only the faint raw one
        if n_steps == 1000:  # the EMA follows the trend and is far less noisy than the raw reward
            assert window == plotting.MAX_SMOOTHING
            ys = np.asarray(smooth.get_ydata())
            assert np.std(np.diff(ys)) < 0.2 * np.std(np.diff(rewards))
            assert ys[-100:].mean() > ys[:100].mean() + 0.1
        assert ax.get_xlabel() == "training step" and "NDCG" in ax.get_ylabel()
        assert f"{recs[-1]['val_NDCG@10_K20']:.3f}" in [t.get_text() for t in ax.texts]
    finally:
        plt.close(fig)
    assert plotting.plot_training(tmp_path / "metrics.jsonl", tmp_path / "training.png").stat().st_size > 0
