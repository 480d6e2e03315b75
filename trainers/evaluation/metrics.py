"""Ranking metrics (DESIGN.md section 4): the one implementation every script uses.

Binary relevance, one relevant item per sample. Ties are broken *against* the
target: the target's rank is 1 + number of candidates whose score is >= its
score (other than itself), so a constant scorer gets the worst rank.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def target_rank(scores: Sequence[float], target_index: int) -> int:
    """1-based rank of candidates[target_index] under descending scores, ties against the target."""
    s = np.asarray(scores, dtype=np.float64)
    t = s[target_index]
    if np.isnan(t):
        return len(s)
    others = np.delete(s, target_index)
    return 1 + int(np.sum(others >= t))


def rank_from_ranking(ranking: Sequence[int], target_item_id: int) -> int:
    """1-based position of the target in an explicit ranking (len+1... -> last if absent)."""
    ranking = list(ranking)
    return ranking.index(target_item_id) + 1 if target_item_id in ranking else len(ranking) + 1


def ranking_from_scores(candidates: Sequence[int], scores: Sequence[float], target_item_id: int | None = None) -> list[int]:
    """Candidates sorted by descending score; among ties the target goes last (consistent with target_rank)."""
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    is_target = np.array([c == target_item_id for c in candidates], dtype=np.int64)
    # lexsort: primary key last -> sort by -score, then targets after non-targets.
    order = np.lexsort((is_target, -s))
    return [int(candidates[i]) for i in order]


def ndcg_at(rank: int, k: int) -> float:
    return 1.0 / math.log2(rank + 1) if rank <= k else 0.0


def ndcg_at_tensor(rank, k: int):
    """NDCG@k for a tensor of 1-based ranks (the PPO reward): same formula as ndcg_at, float32 out."""
    import torch

    gain = 1.0 / torch.log2(rank.double() + 1.0)
    return torch.where(rank <= k, gain, torch.zeros_like(gain)).to(torch.float32)


def ndcg_reward(ranking, target_index, k: int):
    """NDCG@k of the single relevant candidate under each ranking (the PL-PPO reward, same formula as ndcg_at).
    ranking [..., K] candidate indices best first, target_index [...] -> float32 [...]."""
    pos = (ranking == target_index.unsqueeze(-1)).float().argmax(-1)  # 0-based position
    return ndcg_at_tensor(pos + 1, k)


def hr_at(rank: int, k: int) -> float:
    return 1.0 if rank <= k else 0.0


def metrics_from_ranks(ranks: Iterable[int], ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean NDCG@k, HR@k for each k, MRR and the sample count n."""
    r = np.asarray(list(ranks), dtype=np.float64)
    ks = sorted(set(int(k) for k in ks))
    out: dict[str, float] = {}
    if len(r) == 0:
        out.update({f"NDCG@{k}": float("nan") for k in ks})
        out.update({f"HR@{k}": float("nan") for k in ks})
        out["MRR"] = float("nan")
        out["n"] = 0
        return out
    for k in ks:
        out[f"NDCG@{k}"] = float(np.mean(np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)))
    for k in ks:
        out[f"HR@{k}"] = float(np.mean(r <= k))
    out["MRR"] = float(np.mean(1.0 / r))
    out["n"] = int(len(r))
    return out


def eval_ks(K_eval: int | None = None) -> tuple[int, ...]:
    """The reported cut-offs: 1, 5, 10 plus K_eval."""
    ks = set(DEFAULT_KS)
    if K_eval:
        ks.add(int(K_eval))
    return tuple(sorted(ks))


def format_metrics_table(rows: dict[str, dict[str, float]], ks: Iterable[int] = DEFAULT_KS) -> str:
    """A fixed-width table: one row per method, columns NDCG@k, HR@k, MRR, n."""
    ks = sorted(set(ks))
    cols = [f"NDCG@{k}" for k in ks] + [f"HR@{k}" for k in ks] + ["MRR", "n"]
    name_w = max([len("method")] + [len(n) for n in rows])
    lines = ["method".ljust(name_w) + "  " + "  ".join(c.rjust(8) for c in cols)]
    for name, m in rows.items():
        cells = []
        for c in cols:
            v = m.get(c, float("nan"))
            cells.append(str(int(v)).rjust(8) if c == "n" else f"{v:8.4f}")
        lines.append(name.ljust(name_w) + "  " + "  ".join(cells))
    return "\n".join(lines)
