"""API baselines on our candidates (compare_model/deepseek.py, tools/run_r1.py): answers -> result-JSON samples.

`evaluate_with_api` turns (example, candidates) pairs into API jobs, keeps the raw answers in a resumable
JSONL (models/api_client.run_jobs) and derives result-JSON samples from them (trainers/evaluation/results.py);
the answers are parsed by prompters/answer_parsing.parse_ranking.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Sequence

from prompters.answer_parsing import STATUSES, fallback_ranking, parse_ranking
from trainers.evaluation.metrics import metrics_from_ranks, target_rank

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
    if row.get("model"):
        outputs["served_model"] = row["model"]  # what the server says answered (a stand-in says so)
    if row.get("error"):
        outputs["error"] = row["error"]
    return {"interaction_id": int(example["interaction_id"]), "user_id": example["user_id"],
            "target_item_id": target, "candidates": cands, "scores": scores, "ranking": [cands[i] for i in idx],
            "target_rank": target_rank(scores, t_idx), "outputs": outputs}


def served_models(samples: Sequence[dict]) -> list[str]:
    """The model names the server reported for these samples' answers."""
    return sorted({s["outputs"]["served_model"] for s in samples if s.get("outputs", {}).get("served_model")})


def api_row_label(requested: str, served: Sequence[str]) -> str:
    """An API run's row name: the model asked for, and what the server reported when that differs (e.g. the
    offline stand-in, tools/loopback_llm_server.py: 'deepseek-chat (served as loopback-standin)')."""
    other = [m for m in served if m != requested]
    return f"{requested} (served as {', '.join(other)})" if other else requested


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
                      make_writer: Callable[[], Any], concurrency: int = 4, retry_errors: bool = True,
                      redo_changed: bool = False, progress: bool = True, desc: str = "API ranking") -> tuple[list, Any]:
    """Ask the API to rank each item's candidates; return (the samples in the items' order, the ResultWriter).

    Raw answers go to responses_path (resumable; a saved answer counts only for the same prompt and candidates,
    see models.api_client.run_jobs). The result JSON is a function of the answers: every sample is rebuilt
    from its answer, so a damaged or stale result file never leaks into the metrics. The writer is made by
    make_writer() only once there is a sample to write (a run that records nothing, e.g. a rejected key,
    leaves no result file behind).
    """
    from models.api_client import ApiJob, run_jobs

    by_id: dict[str, tuple[dict, list[int]]] = {}
    jobs = []
    for ex, cands in items:
        iid = int(ex["interaction_id"])
        cands = [int(c) for c in cands]
        by_id[str(iid)] = (ex, cands)
        jobs.append(ApiJob(id=iid, messages=prompter.messages(ex, cands),
                           extra={"user_id": ex["user_id"], "target_item_id": int(ex["item_id"]), "candidates": cands}))
    order = [int(ex["interaction_id"]) for ex, _ in items]
    state: dict[str, Any] = {"writer": None, "new": 0}

    def sample(row: dict) -> dict:
        ex, cands = by_id[str(row["id"])]
        return sample_from_row(ex, cands, row, prompter.candidate_titles(cands))

    def add(row: dict) -> None:
        if state["writer"] is None:
            state["writer"] = make_writer()
            state["writer"].samples.clear()
            state["writer"].write(order=order)  # meta on disk with the first answer: a resumed run is checked on it
        state["writer"].add(sample(row))

    def resumed(rows: dict[str, dict]) -> None:
        answered = {int(k): sample(r) for k, r in rows.items() if k in by_id}
        if answered:
            state["writer"] = make_writer()
            state["writer"].samples = answered
            state["writer"].write(order=order)

    rows = run_jobs(client, jobs, responses_path, concurrency=concurrency, retry_errors=retry_errors,
                    redo_changed=redo_changed, on_row=add, on_resume=resumed, desc=desc, progress=progress)
    writer = state["writer"]
    missing = [k for k in by_id if k not in rows]
    if writer is None or missing:  # pragma: no cover - run_jobs answers every job or raises
        raise RuntimeError(f"no answer for {len(missing)} interaction(s)")
    return writer.ordered_samples(order), writer
