"""One metrics table for several result JSONs that ranked the same candidates.

python tools/compare_results.py outputs/test/results.json outputs/deepseek/results.json --names ours deepseek

Refuses (exit 2) unless every file has the same interaction ids with the same candidate sets as the first
(so the numbers are comparable). Metrics are recomputed from each sample's target_rank with
trainers/evaluation/metrics.py; the sanity rows (random, popularity, content-tfidf) come from the first file's
sanity_rows, if present. --paired NAME adds the margin of row NAME over every other row with its paired standard
error (same samples, same candidates; the sanity rows' per-sample ranks are stored in the file as sanity_ranks).
"""
from __future__ import annotations

import argparse

from trainers.evaluation.metrics import (eval_ks, format_metrics_table, format_paired_margins, metrics_from_ranks,
                                         paired_margins)
from trainers.evaluation.results import check_same_candidates, load_result_json, sample_rank
from foundation.config import positive_int
from foundation.errors import UserInputError, exit_on_user_error


def compare(paths: list[str], names: list[str] | None = None, K_eval: int | None = None,
            markdown: bool = False, paired: str | None = None, paired_metric: str = "NDCG@10") -> str:
    """The comparison table as text (raises UserInputError on mismatching files). With `paired`, the name of one
    row, also the margin of that row over every other one in `paired_metric`, with its paired standard error."""
    if names and len(names) != len(paths):
        raise UserInputError(f"--names: got {len(names)} names for {len(paths)} files")
    datas = [load_result_json(p, flag="result file") for p in paths]
    for p, d in zip(paths, datas):
        if not d["samples"]:
            raise UserInputError(f"{p}: no samples")
    check_same_candidates(paths, datas)
    ks = sorted(eval_ks(K_eval))
    order = [int(s["interaction_id"]) for s in datas[0]["samples"]]
    rows: dict[str, dict] = {}
    ranks: dict[str, list[int]] = {}  # per sample, in the first file's order: what the paired margins compare
    for i, (p, d) in enumerate(zip(paths, datas)):
        name = names[i] if names else p
        if name in rows:
            name = f"{name} [{i + 1}]"
        by_id = {int(s["interaction_id"]): sample_rank(s) for s in d["samples"]}
        ranks[name] = [by_id[j] for j in order]
        rows[name] = metrics_from_ranks(ranks[name], ks)
    # Sanity rows were computed on the first file's candidates, which all files share.
    for k, m in (datas[0].get("sanity_rows") or {}).items():
        rows[k] = m
        per_sample = (datas[0].get("sanity_ranks") or {}).get(k)
        if per_sample is not None and all(str(j) in per_sample for j in order):
            ranks[k] = [int(per_sample[str(j)]) for j in order]
    text = format_metrics_table(rows, ks, markdown=markdown)
    if paired:
        if paired not in ranks:
            raise UserInputError(f"--paired {paired!r}: not a row name; rows: {', '.join(rows)}")
        try:
            margins = paired_margins(ranks, paired, paired_metric)
        except ValueError as e:
            raise UserInputError(f"--paired_metric {paired_metric!r}: {e}")
        missing = [k for k in rows if k not in ranks]
        text += "\n\n" + format_paired_margins(margins, paired, paired_metric)
        if missing:
            text += f"\n  (no per-sample ranks stored for {', '.join(missing)}: older result file)"
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Compare result JSONs on identical candidate sets.")
    p.add_argument("paths", nargs="+", help="result JSON files (test.py, compare_model/*.py)")
    p.add_argument("--names", nargs="+", default=None, help="row names, one per file (default: the paths)")
    p.add_argument("--K_eval", type=positive_int, default=None, help="extra cut-off besides 1, 5, 10")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--paired", default=None, metavar="NAME",
                   help="also print the margin of row NAME over every other row (sanity rows included) with its "
                        "paired standard error over the same samples")
    p.add_argument("--paired_metric", default="NDCG@10",
                   help="metric of --paired: NDCG@k, HR@k or MRR (default: NDCG@10)")
    a = p.parse_args(argv)
    with exit_on_user_error():
        print(compare(a.paths, a.names, a.K_eval, a.markdown, a.paired, a.paired_metric))


if __name__ == "__main__":
    main()
