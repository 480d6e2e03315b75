"""One metrics table for several result JSONs that ranked the same candidates.

python tools/compare_results.py outputs/test/results.json outputs/deepseek/results.json --names ours deepseek

Several training seeds of a method (one result file per seed, all on the same candidates): name it once per file
with a repeated --names entry, or write NAME=FILE1,FILE2,... in place of a file:

python tools/compare_results.py runs/s1/results.json runs/s2/results.json runs/s3/results.json api/results.json \
    --names ours ours ours api --paired ours
python tools/compare_results.py ours=runs/s1/results.json,runs/s2/results.json api=api/results.json --paired ours

Refuses (exit 2) unless every file has the same interaction ids with the same candidate sets as the first
(so the numbers are comparable). Metrics are recomputed from each sample's target_rank with
trainers/evaluation/metrics.py; a method with several seeds shows the mean over its seeds in the table, and a
block below gives --paired_metric's mean +- std over seeds. The sanity rows (random, popularity, content-tfidf)
come from the first file's sanity_rows, if present. --paired NAME adds the margin of row NAME over every other row
with its paired standard error (same samples, same candidates; the sanity rows' per-sample ranks are stored in the
file as sanity_ranks); with several seeds of NAME, one margin and SE per seed and their mean +- std over seeds.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from trainers.evaluation.api import api_row_label
from trainers.evaluation.metrics import (eval_ks, format_metrics_table, format_paired_margins, format_seed_margins,
                                         format_seed_spread, mean_over_seeds, metrics_from_ranks, per_sample_metric,
                                         seed_paired_margins)
from trainers.evaluation.results import check_same_candidates, load_result_json, sample_rank
from foundation.config import HelpFormatter, positive_int
from foundation.errors import UserInputError, exit_on_user_error


def method_files(paths: list[str], names: list[str] | None = None) -> dict[str, list[str]]:
    """{row name: its result files, one per training seed}. With --names, one name per file and a repeated name
    groups its files; else an entry NAME=FILE1,FILE2 names a group, and a plain file is a row named by its path."""
    if names:
        if len(names) != len(paths):
            raise UserInputError(f"--names: got {len(names)} names for {len(paths)} files")
        groups: dict[str, list[str]] = {}
        for name, path in zip(names, paths):
            groups.setdefault(name, []).append(path)
        return groups
    groups = {}
    for i, entry in enumerate(paths):
        if "=" in entry and not Path(entry).is_file():
            name, _, files = entry.partition("=")
            found = [f for f in files.split(",") if f]
            if not name or not found:
                raise UserInputError(f"{entry!r}: expected NAME=FILE1,FILE2,... (or a result file)")
            if name in groups:
                raise UserInputError(f"{entry!r}: the name {name!r} is given twice; list all its files in one entry")
            groups[name] = found
        else:
            groups[entry if entry not in groups else f"{entry} [{i + 1}]"] = [entry]
    return groups


def compare(paths: list[str], names: list[str] | None = None, K_eval: int | None = None,
            markdown: bool = False, paired: str | None = None, paired_metric: str = "NDCG@10") -> str:
    """The comparison table as text (raises UserInputError on mismatching files). With `paired`, the name of one
    row, also the margin of that row over every other one in `paired_metric`, with its paired standard error."""
    groups = method_files(paths, names)
    files = [f for fs in groups.values() for f in fs]
    datas = [load_result_json(p, flag="result file") for p in files]
    for p, d in zip(files, datas):
        if not d["samples"]:
            raise UserInputError(f"{p}: no samples")
    check_same_candidates(files, datas)
    try:
        per_sample_metric([1], paired_metric)
    except ValueError as e:
        raise UserInputError(f"--paired_metric {paired_metric!r}: {e}")
    ks = sorted(eval_ks(K_eval))
    order = [int(s["interaction_id"]) for s in datas[0]["samples"]]
    data_of = iter(datas)
    rows: dict[str, dict] = {}
    ranks: dict[str, list[list[int]]] = {}  # per seed, per sample in the first file's order: what margins compare
    for name, fs in groups.items():
        ranks[name] = []
        for f in fs:
            d = next(data_of)
            meta = d.get("meta") or {}
            asked, served = meta.get("model") or "", meta.get("served_model") or []
            if name == f and any(m != asked for m in served):  # an unnamed API run answered by another model
                name = f"{f} ({api_row_label(asked, served)})"
                ranks[name] = ranks.pop(f)
            by_id = {int(s["interaction_id"]): sample_rank(s) for s in d["samples"]}
            ranks[name].append([by_id[j] for j in order])
        rows[name] = mean_over_seeds([metrics_from_ranks(r, ks) for r in ranks[name]])
    # Sanity rows were computed on the first file's candidates, which all files share.
    for k, m in (datas[0].get("sanity_rows") or {}).items():
        rows[k] = m
        per_sample = (datas[0].get("sanity_ranks") or {}).get(k)
        if per_sample is not None and all(str(j) in per_sample for j in order):
            ranks[k] = [[int(per_sample[str(j)]) for j in order]]
    text = format_metrics_table(rows, ks, markdown=markdown)
    several = {name: [float(per_sample_metric(r, paired_metric).mean()) for r in seeds]
               for name, seeds in ranks.items() if len(seeds) > 1}
    if several:
        text += "\n\n" + format_seed_spread(several, paired_metric) + "\n  (the table shows their mean over seeds)"
    if paired:
        if paired not in ranks:
            raise UserInputError(f"--paired {paired!r}: not a row name; rows: {', '.join(rows)}")
        margins = seed_paired_margins(ranks, paired, paired_metric)
        if len(ranks[paired]) == 1:
            text += "\n\n" + format_paired_margins({k: v[0] for k, v in margins.items()}, paired, paired_metric)
        else:
            text += "\n\n" + format_seed_margins(margins, paired, paired_metric)
        missing = [k for k in rows if k not in ranks]
        if missing:
            text += f"\n  (no per-sample ranks stored for {', '.join(missing)}: older result file)"
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Compare result JSONs on identical candidate sets (several training "
                                            "seeds per method: a repeated --names entry, or NAME=FILE1,FILE2).",
                                formatter_class=HelpFormatter)
    p.add_argument("paths", nargs="+", metavar="FILE|NAME=FILE1,FILE2",
                   help="result JSON files (test.py, compare_model/*.py); NAME=FILE1,FILE2,... groups the result "
                        "files of one method's training seeds under NAME")
    p.add_argument("--names", nargs="+", default=None,
                   help="row names, one per file (default: the paths); a repeated name groups its files as seeds")
    p.add_argument("--K_eval", type=positive_int, default=None, help="extra cut-off besides 1, 5, 10")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--paired", default=None, metavar="NAME",
                   help="also print the margin of row NAME over every other row (sanity rows included) with its "
                        "paired standard error over the same samples (one per seed when NAME has several)")
    p.add_argument("--paired_metric", default="NDCG@10",
                   help="metric of --paired and of the spread over seeds: NDCG@k, HR@k or MRR (default: NDCG@10)")
    a = p.parse_args(argv)
    with exit_on_user_error():
        print(compare(a.paths, a.names, a.K_eval, a.markdown, a.paired, a.paired_metric))


if __name__ == "__main__":
    main()
