"""Ranking metrics (docs/evaluation.md): the one implementation every script uses.

Binary relevance, one relevant item per sample. Ties are broken *against* the
target: the target's rank is 1 + number of candidates whose score is >= its
score (other than itself), so a constant scorer gets the worst rank.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def target_rank(scores: Sequence[float], target_index: int, tiebreak: Sequence[float] | None = None) -> int:
    """1-based rank of candidates[target_index] under descending scores. Ties go against the target (model
    scores: a constant scorer must not look good), or, given `tiebreak` (a seeded random draw per candidate), to
    the higher draw: for the non-learned sanity rows, whose scores often tie (popularity counts, zero TF-IDF
    overlap), so they are reported at the expected value of their ranking rule, not at its worst case."""
    s = np.asarray(scores, dtype=np.float64)
    t = s[target_index]
    if np.isnan(t):
        return len(s)
    if tiebreak is None:
        ahead = s >= t
    else:
        u = np.asarray(tiebreak, dtype=np.float64)
        if s.shape != u.shape:
            raise ValueError(f"scores {s.shape} and tiebreak {u.shape} differ in shape")
        ahead = (s > t) | ((s == t) & (u > u[target_index]))
    ahead[target_index] = False
    return 1 + int(np.sum(ahead))


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


def target_rank_tensor(scores, target_index):
    """target_rank for a batch on the device, without reading it: scores [B, K], target_index [B] -> 1-based ranks
    [B] (int64). Ties go against the target; a NaN target score is the last rank, as in target_rank."""
    import torch

    s = scores.double()
    t = s.gather(-1, target_index.unsqueeze(-1))
    ahead = (s >= t).sum(-1) - 1  # the target itself is >= itself, unless NaN (then nothing is ahead)
    return torch.where(torch.isnan(t.squeeze(-1)), torch.full_like(ahead, s.shape[-1]), 1 + ahead)


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
    for name in [f"NDCG@{k}" for k in ks] + [f"HR@{k}" for k in ks] + ["MRR"]:
        out[name] = float(np.mean(per_sample_metric(r, name)))
    out["n"] = int(len(r))
    return out


def per_sample_metric(ranks: Iterable[int], metric: str = "NDCG@10") -> np.ndarray:
    """One value per sample of NDCG@k, HR@k or MRR (the terms whose mean metrics_from_ranks reports)."""
    r = np.asarray(list(ranks), dtype=np.float64)
    if metric == "MRR":
        return 1.0 / r
    name, _, k = metric.partition("@")
    if name not in ("NDCG", "HR") or not k.isdigit():
        raise ValueError(f"metric {metric!r}: expected NDCG@k, HR@k or MRR")
    k = int(k)
    if name == "NDCG":
        return np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)
    return (r <= k).astype(np.float64)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(mean of a - b, its standard error) over paired samples: the same examples and candidates ranked by two
    methods. The SE is std(a - b, ddof=1) / sqrt(n); pairing removes the between-example variance that two
    independent means would carry."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"paired_difference needs two equally long 1-d sequences of >= 2 samples, got {d.shape}")
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def paired_margins(ranks: dict[str, Sequence[int]], reference: str,
                   metric: str = "NDCG@10") -> dict[str, tuple[float, float]]:
    """For every other method: (margin of `reference` over it in `metric`, paired SE). `ranks` maps method name
    -> target ranks of the same samples in the same order."""
    if reference not in ranks:
        raise ValueError(f"{reference!r} is not one of the methods {sorted(ranks)}")
    ref = per_sample_metric(ranks[reference], metric)
    return {name: paired_difference(ref, per_sample_metric(r, metric))
            for name, r in ranks.items() if name != reference}


def margin_verdict(margin: float, se: float) -> str:
    """'better' / 'worse' when the reference's margin is beyond two paired SEs either way, else 'within 2 SE'
    (a clearly negative margin is a finding too, not a 'not clear')."""
    if margin > 2 * se:
        return "better"
    return "worse" if margin < -2 * se else "within 2 SE"


def format_paired_margins(margins: dict[str, tuple[float, float]], reference: str, metric: str = "NDCG@10") -> str:
    """One line per method: the margin, its paired SE and whether the reference is better or worse by more than two
    SEs."""
    w = max([len(n) for n in margins] + [6])
    lines = [f"{metric}: {reference} minus each method (paired over the same samples; {reference} better/worse = "
             f"margin beyond 2 SE)"]
    for name, (m, se) in margins.items():
        lines.append(f"  {name.ljust(w)}  {m:+.4f}  SE {se:.4f}  {margin_verdict(m, se)}")
    return "\n".join(lines)


# ---- several training seeds per method (one result file each, the same samples and candidates) ------------------
def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof 1) of one number per training seed; the std is NaN for one seed."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def mean_over_seeds(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The metrics of several seeds' runs on the same samples averaged key by key (n: the shared sample count)."""
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "n"}
    out["n"] = rows[0]["n"]
    return out


def seed_paired_margins(ranks: dict[str, Sequence[Sequence[int]]], reference: str,
                        metric: str = "NDCG@10") -> dict[str, list[tuple[float, float]]]:
    """For every other method: one (margin, paired SE) per training seed of `reference`. `ranks` maps method ->
    one list of target ranks per seed (same samples, same order). A method with several seeds is compared through
    its per-sample metric averaged over its seeds, so the SE covers the sampling of examples, not of seeds."""
    if reference not in ranks:
        raise ValueError(f"{reference!r} is not one of the methods {sorted(ranks)}")
    refs = [per_sample_metric(r, metric) for r in ranks[reference]]
    out = {}
    for name, seeds in ranks.items():
        if name == reference:
            continue
        other = np.mean([per_sample_metric(r, metric) for r in seeds], axis=0)
        out[name] = [paired_difference(ref, other) for ref in refs]
    return out


def format_seed_margins(margins: dict[str, list[tuple[float, float]]], reference: str,
                        metric: str = "NDCG@10") -> str:
    """One line per method: the margin's mean +- std over the reference's seeds, then each seed's margin with its
    paired SE, and in how many seeds the reference is better / worse by more than two SEs."""
    w = max([len(n) for n in margins] + [6])
    n_seeds = len(next(iter(margins.values()))) if margins else 0
    lines = [f"{metric}: {reference} minus each method, {n_seeds} training seeds of {reference}: mean +- std over "
             f"seeds | per seed: margin (paired SE over the same samples) | seeds where {reference} is better / worse "
             f"by more than 2 SE"]
    for name, per_seed in margins.items():
        mean, std = mean_and_std([m for m, _ in per_seed])
        seeds = ", ".join(f"{m:+.4f} (SE {se:.4f})" for m, se in per_seed)
        verdicts = [margin_verdict(m, se) for m, se in per_seed]
        lines.append(f"  {name.ljust(w)}  {mean:+.4f} +- {std:.4f} | {seeds} | better in {verdicts.count('better')}, "
                     f"worse in {verdicts.count('worse')} of {len(per_seed)}")
    return "\n".join(lines)


def format_seed_spread(values: dict[str, Sequence[float]], metric: str = "NDCG@10") -> str:
    """One line per method with several training seeds: mean +- std over seeds and each seed's value."""
    w = max([len(n) for n in values] + [6])
    lines = [f"{metric} over training seeds (mean +- sample std over seeds; the paired SEs cover only the sampling "
             f"of examples):"]
    for name, v in values.items():
        mean, std = mean_and_std(v)
        lines.append(f"  {name.ljust(w)}  {mean:.4f} +- {std:.4f}  ({len(v)} seeds: "
                     f"{', '.join(f'{x:.4f}' for x in v)})")
    return "\n".join(lines)


def eval_ks(K_eval: int | None = None) -> tuple[int, ...]:
    """The reported cut-offs: 1, 5, 10 plus K_eval."""
    ks = set(DEFAULT_KS)
    if K_eval:
        ks.add(int(K_eval))
    return tuple(sorted(ks))


def format_metrics_table(rows: dict[str, dict[str, float]], ks: Iterable[int] = DEFAULT_KS,
                         markdown: bool = False) -> str:
    """One row per method, columns NDCG@k, HR@k, MRR, n: fixed-width text, or a markdown table (the README's)."""
    ks = sorted(set(ks))
    cols = [f"NDCG@{k}" for k in ks] + [f"HR@{k}" for k in ks] + ["MRR", "n"]
    cells = {name: [str(int(m.get(c, 0) if markdown else m.get(c, float("nan")))) if c == "n"
                    else f"{m.get(c, float('nan')):.4f}" for c in cols] for name, m in rows.items()}
    if markdown:
        lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        return "\n".join(lines + [f"| {name} | " + " | ".join(c) + " |" for name, c in cells.items()])
    name_w = max([len("method")] + [len(n) for n in rows])
    lines = ["method".ljust(name_w) + "  " + "  ".join(c.rjust(8) for c in cols)]
    lines += [name.ljust(name_w) + "  " + "  ".join(v.rjust(8) for v in c) for name, c in cells.items()]
    return "\n".join(lines)
