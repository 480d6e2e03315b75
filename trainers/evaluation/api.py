"""API baselines on our candidates (compare_model/deepseek.py, tools/run_r1.py): answers -> result-JSON samples.

`evaluate_with_api` turns (example, candidates) pairs into API jobs, keeps the raw answers in a resumable
JSONL (models/api_client.run_jobs) and derives result-JSON samples from them (trainers/evaluation/results.py);
the answers are parsed by prompters/answer_parsing.parse_ranking.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from prompters.answer_parsing import STATUSES, fallback_ranking, parse_ranking
from trainers.evaluation.metrics import metrics_from_ranks, target_rank
from trainers.evaluation.runner import Ranker

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


# ---------------------------------------------------------------------------------------------- the API ranker
class ApiRanker(Ranker):
    """An API model as trainers/evaluation/runner.py's ranker (compare_model/deepseek.py, tools/run_r1.py). Its record
    is the raw answers file (responses.jsonl: every answer kept as it arrives, a rerun asks only what is missing),
    so it ranks through rank_recorded, in one process, and the result JSON is rebuilt from the answers every run."""

    def __init__(self, opts, client, prompter, responses: Path, desc: str) -> None:
        self.opts, self.client, self.prompter, self.responses, self.desc = opts, client, prompter, responses, desc
        self.name = opts.model_name

    def rank_recorded(self, job) -> Any:
        """Ask for every item's ranking (resuming the answers file); the ResultWriter holding the samples. With
        --overwrite_output_dir the old answers and results go only once this run has recorded its own (a rejected
        key or any other failure before the first answer leaves them where they were)."""
        from foundation.files import replaced_after_success
        from trainers.evaluation.results import ResultWriter, partial_path

        o = self.opts
        old = [self.responses, job.result_file, partial_path(job.result_file)] if job.fresh else []
        with replaced_after_success(old):
            _, writer = evaluate_with_api(
                self.client, self.prompter, job.items, self.responses,
                lambda: ResultWriter(job.result_file, job.meta, resume=False, flush_every=job.flush_every),
                concurrency=o.concurrency, retry_errors=not o.no_retry_errors, redo_changed=o.redo_changed,
                progress=not o.no_progress, desc=self.desc)
        return writer

    def metrics(self, samples, K_eval: int) -> dict[str, dict]:
        from trainers.evaluation.metrics import eval_ks

        return {self.name: api_metrics(samples, eval_ks(K_eval))}

    def update_meta(self, meta: dict, samples) -> None:
        meta["served_model"] = served_models(samples)

    def row_label(self, meta: dict) -> str:
        return api_row_label(self.name, meta["served_model"])

    def report(self, job, rows: dict[str, dict], samples) -> list[str]:
        m = rows[self.name]
        return [f"answers: {m['parse_ok']} ok, {m['parse_partial']} partial, {m['parse_unparseable']} unparseable, "
                f"{m['api_errors']} API errors"]

    def written(self, job) -> list[Path]:
        return [job.result_file, self.responses]


def run_api_evaluation(opts, script: str, with_valid_pass: bool) -> dict[str, dict]:
    """Rank the candidates of a dataset split with the API model (docs/baselines.md): the test split, preceded
    by a validation pass when with_valid_pass; json mode ranks exactly the reference's split and candidates. Every
    split's candidates and outputs are checked before the first request. Returns the metrics by split; a split in
    which every request failed is saved, then the run exits 1 (such a table ranks every target last: not a
    result). `opts`: trainers.evaluation.options.ApiEvalOptions, validated."""
    from foundation.errors import UserInputError, die
    from foundation.files import RunLock, check_output_path
    from models.api_client import resolve_api_key
    from prompters.api_prompter import ApiRankingPrompter
    from trainers.data.dataset import load_processed_dataset
    from trainers.evaluation.results import load_result_json
    from trainers.evaluation.runner import EvalJob, candidate_items, check_resume, finish

    resolve_api_key(opts.api_key)
    dataset = load_processed_dataset(opts.dataset_dir, flag="--dataset_dir")
    reference, splits = None, (["valid", "test"] if with_valid_pass else ["test"])
    if opts.candidate_mode == "json":
        reference = load_result_json(opts.candidate_json_path, flag="--candidate_json_path")
        if not reference["samples"]:
            raise UserInputError(f"--candidate_json_path {opts.candidate_json_path}: no samples")
        splits = [str(reference.get("meta", {}).get("split") or "test")]
    opts.resolve_candidates(reference)
    client = opts.client()
    prompter = ApiRankingPrompter(dataset.item_rows, user_window_size=opts.user_window_size,
                                  max_len_per_item=opts.max_len_per_item, dataset_type=opts.dataset_type,
                                  template_file=opts.prompt_template, system_prompt=opts.system_prompt)
    out_dir = check_output_path(opts.output_dir, "--output_dir", kind="dir")
    jobs, rankers = {}, {}
    for split in splits:  # every split's candidates and output checked before the first request
        suffix = "" if split == "test" else f"_{split}"
        meta = {**opts.public_dict(), "script": script, "split": split,
                "dataset": os.path.basename(os.path.normpath(opts.dataset_dir)), "model": opts.model_name,
                "reference_json": opts.candidate_json_path}
        meta.pop("no_progress", None)
        items = candidate_items(dataset, split, opts.test_samples, opts.K, opts.seed, reference, opts.dataset_dir,
                                split_flag=None)
        jobs[split] = EvalJob(dataset=dataset, split=split, items=items, result_file=out_dir / f"results{suffix}.json",
                              meta=meta, seed=opts.seed, K_eval=opts.K_eval, fresh=opts.overwrite_output_dir,
                              resume_keys=opts.RESUME_KEYS, flush_every=20)
        rankers[split] = ApiRanker(opts, client, prompter, out_dir / f"responses{suffix}.jsonl",
                                   f"{opts.model_name} ({split})")
        try:
            check_resume(jobs[split])
        except UserInputError as e:
            if "other settings" in str(e):
                raise
            raise UserInputError(f"{e}; it is rebuilt from {rankers[split].responses.name}: delete "
                                 f"{jobs[split].result_file} and rerun")
    metrics = {}
    try:  # one run per output dir at a time: a second one would ask (and pay for) every request twice
        with RunLock(opts.output_dir):
            for split in splits:
                job, ranker = jobs[split], rankers[split]
                data = finish(job, ranker, ranker.rank_recorded(job))
                metrics[split] = data["metrics"]
    finally:
        client.close()
    failed = [f"{split} ({len(jobs[split].items)} requests)" for split, m in metrics.items()
              if m["api_errors"] == len(jobs[split].items)]
    if failed:  # a table of only failed requests ranks every target last: not a result, so not a success
        die(f"every request of the {', '.join(failed)} split failed after retries; the failures are saved in "
            f"{opts.output_dir} and a rerun of the same command asks them again", status=1)
    return metrics


def answer_prompt_jobs(opts, jobs: Sequence, output_file: str, model: str,
                       content_key: str = "content") -> dict[str, dict]:
    """models.api_client.run_jobs with a client from `opts` (trainers.evaluation.options.ApiClientOptions; then
    closed), holding a lock beside output_file: a second run appending to the same file would ask (and pay for)
    each request twice. For the scripts that answer a prompt JSONL (tools/run_r1.py, sft_train/
    get_response_by_deepseek.py)."""
    from foundation.files import RunLock, check_output_path
    from models.api_client import run_jobs

    out = check_output_path(output_file, "--output_file")  # before the lock creates its folder
    client = opts.client(model)
    try:
        with RunLock(out.parent, flag="--output_file", name=f".{out.name}.lock", label=out):
            return run_jobs(client, jobs, output_file, concurrency=opts.concurrency, content_key=content_key,
                            retry_errors=not opts.no_retry_errors, redo_changed=opts.redo_changed, desc=model,
                            progress=not getattr(opts, "no_progress", False))
    finally:
        client.close()
