"""API baselines on our candidates (compare_model/deepseek.py): answers -> result-JSON samples and metrics.

`evaluate_with_api` turns (example, candidates) pairs into API jobs, keeps the raw answers in a resumable
JSONL (models/api_client.run_jobs) and derives result-JSON samples from them (trainers/evaluation/results.py);
the answers are parsed by prompters/answer_parsing.parse_ranking.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

from prompters.answer_parsing import STATUSES, fallback_ranking, parse_ranking
from trainers.evaluation.metrics import metrics_from_ranks, target_rank
from trainers.foundation.errors import UserInputError

API_ERROR = "api_error"  # the request failed after all retries (not a parse status of an answer)


def sample_from_row(example: dict, candidates: Sequence[int], row: dict, titles: Sequence[str]) -> dict:
    """A result-JSON sample from one raw API row (an answer or a failure)."""
    cands = [int(c) for c in candidates]
    target = int(example["item_id"])
    t_idx = cands.index(target)
    K = len(cands)
    if row.get("error"):
        idx, status = fallback_ranking(K, t_idx), API_ERROR
    else:
        idx, status = parse_ranking(row.get("content"), titles, K, target_index=t_idx)
    # Scores encode the ranking (K for the first, 1 for the last) so the shared metrics code reads the rank.
    scores = [0.0] * K
    for pos, i in enumerate(idx):
        scores[i] = float(K - pos)
    outputs: dict[str, Any] = {"response": row.get("content"), "parse_status": status}
    if row.get("error"):
        outputs["error"] = row["error"]
    return {"interaction_id": int(example["interaction_id"]), "user_id": example["user_id"],
            "target_item_id": target, "candidates": cands, "scores": scores, "ranking": [cands[i] for i in idx],
            "target_rank": target_rank(scores, t_idx), "outputs": outputs}


def api_metrics(samples: Sequence[dict], ks: Iterable[int]) -> dict:
    """NDCG/HR/MRR over all samples plus how many answers parsed fully, partly, not at all, or failed."""
    out: dict[str, Any] = metrics_from_ranks([s["target_rank"] for s in samples], ks)
    counts = {k: 0 for k in (*STATUSES, API_ERROR)}
    for s in samples:
        counts[s["outputs"]["parse_status"]] += 1
    out.update({"parse_ok": counts["ok"], "parse_partial": counts["partial"],
                "parse_unparseable": counts["unparseable"], "parse_failures": counts["unparseable"],
                "api_errors": counts[API_ERROR]})
    return out


def evaluate_with_api(client, prompter, items: Sequence[tuple[dict, list[int]]], responses_path: str | os.PathLike,
                      writer, concurrency: int = 4, retry_errors: bool = True, progress: bool = True,
                      desc: str = "API ranking") -> list[dict]:
    """Ask the API to rank each item's candidates; return the samples in the items' order.

    Raw answers go to responses_path (resumable: answered ids are skipped). The ResultWriter is kept in sync
    with it: samples whose answer is missing (e.g. a failure being retried) are dropped, answered ones that
    lack a sample (a kill between the two writes) are added, so the result JSON is a function of the answers.
    """
    from models.api_client import ApiJob, load_done, run_jobs

    by_id: dict[str, tuple[dict, list[int]]] = {}
    jobs = []
    for ex, cands in items:
        iid = int(ex["interaction_id"])
        cands = [int(c) for c in cands]
        by_id[str(iid)] = (ex, cands)
        jobs.append(ApiJob(id=iid, messages=prompter.messages(ex, cands),
                           extra={"user_id": ex["user_id"], "target_item_id": int(ex["item_id"]), "candidates": cands}))

    done = load_done(responses_path, retry_errors=retry_errors)
    for key, row in done.items():
        if key in by_id and row.get("candidates") is not None and [int(c) for c in row["candidates"]] != by_id[key][1]:
            raise UserInputError(f"{responses_path}: interaction {key} was answered for other candidates (different "
                                 "--K/--seed/--candidate_json_path?); use a new --output_dir")

    def add(row: dict) -> None:
        ex, cands = by_id[str(row["id"])]
        writer.add(sample_from_row(ex, cands, row, prompter.candidate_titles(cands)))

    for iid in list(writer.samples):
        if str(iid) not in done:
            writer.samples.pop(iid)
    for key, row in done.items():
        if key in by_id and int(key) not in writer.samples:
            add(row)
    run_jobs(client, jobs, responses_path, concurrency=concurrency, retry_errors=retry_errors, on_row=add,
             desc=desc, progress=progress)
    return writer.ordered_samples([int(ex["interaction_id"]) for ex, _ in items])
